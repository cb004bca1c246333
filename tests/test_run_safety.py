"""Runs a user can trust: control files that a crash cannot half-write and that, when unreadable,
stop with one message naming them and replace nothing; a rerun after a kill during the first
checkpoint save; a time budget that leaves a resumable model; cosmetic options that redo nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffboost.diffusion.models import ModelConfig
from diffboost.diffusion.train import TrainConfig, finished_training, train_diffusion
from diffboost.errors import ControlFileError
from diffboost.utils.atomic import read_control, write_control

TINY = dict(image_size=32, channels=(8, 16, 32), attention=(False, True, True))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, phantom_root):
    from builders import prepared_with_variants

    root = tmp_path_factory.mktemp("safety")
    return root, prepared_with_variants(root, phantom_root, folds=(0,), n=1, steps=1)


def test_control_files_are_written_whole_and_a_truncated_one_is_named(tmp_path):
    path = tmp_path / "stage.json"
    write_control(path, {"identity": {"a": 1}})
    assert read_control(path) == {"identity": {"a": 1}} and not list(tmp_path.glob(".stage.json.*"))
    path.write_text('{"identity": {"a"')  # what a write cut by a crash leaves
    with pytest.raises(ControlFileError, match="stage.json: is not valid JSON"):
        read_control(path)


def test_a_truncated_identity_never_sends_generate_down_its_replace_path(tiny):
    from diffboost.generation import GenerateConfig, generate

    root, ps = tiny
    out = root / "synthetic" / "fold0"
    before = np.load(out / "images.npy").copy()
    work = out / ".work"
    work.mkdir()
    (work / "identity.json").write_text('{"n": 1, "stre')
    with pytest.raises(ControlFileError, match="identity.json"):
        generate(root / "model", ps, out, 0, GenerateConfig(n=1, steps=1, batch_size=8), progress=False,
                 replace_stale=True)
    assert np.array_equal(np.load(out / "images.npy"), before)  # the finished variants are still there


def test_a_truncated_run_json_stops_the_segmenter_with_its_name(tiny, tmp_path):
    from diffboost.segmentation.config import SegConfig
    from diffboost.segmentation.trainer import train_seg

    _, ps = tiny
    out = tmp_path / "seg"
    out.mkdir()
    (out / "run.json").write_text("{")
    with pytest.raises(ControlFileError, match="run.json"):
        train_seg(ps, 0, SegConfig(epochs=1, channels=(4, 8, 16), batch_size=4), out, progress=False, replace_stale=True)


def test_a_kill_during_the_first_checkpoint_save_leaves_a_folder_that_reruns(tiny, tmp_path):
    _, ps = tiny
    idx = ps.indices(ps.fold(0).train, training=True)
    folder = tmp_path / "ft"
    half = folder / "checkpoints" / ".step_0000002.tmp-12345"  # all a kill mid-save leaves
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"\0" * 10)
    model = train_diffusion(ps, folder, idx, ModelConfig(**TINY), TrainConfig(steps=2, batch_size=2, checkpoint_every=2),
                            resume="latest", progress=False)
    assert finished_training(model) and not half.exists()
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step_0000002"]


def test_a_time_budget_leaves_a_model_that_resumes_to_the_end(tiny, tmp_path):
    _, ps = tiny
    idx = ps.indices(ps.fold(0).train, training=True)
    folder = tmp_path / "budget"
    calls = {"n": 0}
    import diffboost.diffusion.train as T

    real = T.time.perf_counter
    # a clock that jumps a minute after the third step: the budget of 1 minute runs out mid-training
    def clock():
        calls["n"] += 1
        return real() + (120.0 if calls["n"] > 12 else 0.0)

    T.time.perf_counter = clock
    try:
        model = train_diffusion(ps, folder, idx, ModelConfig(**TINY),
                                TrainConfig(steps=8, batch_size=2, checkpoint_every=5, max_minutes=1.0), progress=False)
    finally:
        T.time.perf_counter = real
    info = json.loads((model / "training.json").read_text())
    assert 0 < info["steps_done"] < 8 and not finished_training(model)
    assert (folder / "checkpoints" / f"step_{info['steps_done']:07d}").exists()  # a checkpoint at the stop
    model = train_diffusion(ps, folder, idx, ModelConfig(**TINY), TrainConfig(steps=8, batch_size=2, checkpoint_every=5),
                            resume="latest", progress=False)
    assert json.loads((model / "training.json").read_text())["steps_done"] == 8 and finished_training(model)
    rows = (folder / "loss.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows][-1] == 8


def test_cosmetic_options_do_not_make_a_stage_stale(tmp_path):
    from diffboost.run import _fresh, _stamp

    stage = tmp_path / "models" / "fold0"
    made = {"fold": 0, "train": {"steps": 2500, "log_every": 10, "checkpoint_every": 500, "max_minutes": None}}
    _stamp(stage, made)
    (stage / "work.txt").write_text("hours of it")
    resumed = {"fold": 0, "train": {"steps": 2500, "log_every": 50, "checkpoint_every": 100, "max_minutes": 90}}
    assert _fresh(stage, resumed) and (stage / "work.txt").exists()
    assert not _fresh(stage, {"fold": 0, "train": {"steps": 5000, "log_every": 10}})  # a real change still redoes it


class _Planted:
    """A pickle that would leave a mark if anything unpickled it."""

    def __init__(self, mark):
        self.mark = str(mark)

    def __reduce__(self):
        return (open, (self.mark, "w"))


def test_a_checkpoint_keeps_ema_and_step_as_safetensors_and_a_planted_pickle_is_never_loaded(tiny, tmp_path):
    import pickle

    _, ps = tiny
    idx = ps.indices(ps.fold(0).train, training=True)
    folder = tmp_path / "ft"
    tcfg = TrainConfig(steps=2, batch_size=2, checkpoint_every=1)
    train_diffusion(ps, folder, idx, ModelConfig(**TINY), tcfg, progress=False)
    ckpt = folder / "checkpoints" / "step_0000001"
    assert (ckpt / "ema.safetensors").exists() and json.loads((ckpt / "training_state.json").read_text())["step"] == 1
    assert not list(ckpt.glob("custom_checkpoint_*")) and (ckpt / "model.safetensors").exists()
    mark = tmp_path / "unpickled"
    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl"):
        (ckpt / name).write_bytes(pickle.dumps(_Planted(mark)))
    (folder / "model").rename(folder / "model.done")
    import shutil

    shutil.rmtree(folder / "checkpoints" / "step_0000002")
    with pytest.raises(ValueError, match="never writes"):  # pickles beside our own files: refused, not opened
        train_diffusion(ps, folder, idx, ModelConfig(**TINY), tcfg, resume="latest", progress=False)
    assert not mark.exists()
    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl"):
        (ckpt / name).unlink()
    model = train_diffusion(ps, folder, idx, ModelConfig(**TINY), tcfg, resume="latest", progress=False)
    assert json.loads((model / "training.json").read_text())["steps_done"] == 2  # resumed from safetensors + JSON
    # an older checkpoint with only accelerate's pickles is refused unless the user allows it
    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl"):
        (ckpt / name).write_bytes(pickle.dumps(_Planted(mark)))
    (ckpt / "training_state.json").unlink()
    with pytest.raises(ValueError, match="DIFFBOOST_ALLOW_PICKLE"):
        train_diffusion(ps, tmp_path / "other", idx, ModelConfig(**TINY), tcfg, resume=str(ckpt), progress=False)
    assert not mark.exists()
