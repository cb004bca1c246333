"""Runs a user can trust: control files that a crash cannot half-write and that, when unreadable,
stop with one message naming them and replace nothing; a rerun after a kill during the first
checkpoint save; a time budget that leaves a resumable model (resumed as `run` resumes it); cosmetic
options that redo nothing."""

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
    # `run` (and the benches) resume through finetune_fold: from the checkpoint, on the fold's own samples
    seen = []

    def recording(*args, **kw):
        seen.append((args[2], kw["resume"], kw["val_indices"]))
        return real_train(*args, **kw)

    real_train, T.train_diffusion = T.train_diffusion, recording
    try:
        tcfg = TrainConfig(steps=8, batch_size=2, checkpoint_every=5)
        model = T.finetune_fold(ps, 0, folder, ModelConfig(**TINY), tcfg, progress=False)
        assert seen == [(idx, "latest", ps.indices(ps.fold(0).val, training=True))]
        assert json.loads((model / "training.json").read_text())["steps_done"] == 8 and finished_training(model)
        assert T.finetune_fold(ps, 0, folder, ModelConfig(**TINY), tcfg, progress=False) == model
        assert len(seen) == 1  # a finished model is kept, not trained again
    finally:
        T.train_diffusion = real_train
    rows = (folder / "loss.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows][-1] == 8


def test_cosmetic_options_do_not_make_a_stage_stale_and_a_real_change_is_refused(tmp_path):
    from diffboost.stages import StaleStage, check_stage, stamp

    stage = tmp_path / "models" / "fold0"
    made = {"fold": 0, "train": {"steps": 2500, "log_every": 10, "checkpoint_every": 500, "max_minutes": None}}
    stamp(stage, made)
    (stage / "work.txt").write_text("hours of it")
    resumed = {"fold": 0, "train": {"steps": 2500, "log_every": 50, "checkpoint_every": 100, "max_minutes": 90}}
    assert check_stage(stage, "finetune", resumed, set()) and (stage / "work.txt").exists()
    with pytest.raises(StaleStage, match=r"\(train changed\); nothing was deleted.*--redo finetune"):
        check_stage(stage, "finetune", {"fold": 0, "train": {"steps": 5000}}, set())
    assert (stage / "work.txt").exists()
    assert not check_stage(stage, "finetune", {"fold": 0, "train": {"steps": 5000}}, {"finetune"})  # asked for
    assert not stage.exists()


def test_a_stage_of_an_older_diffboost_is_recognised_without_its_paths(tmp_path):
    from diffboost.stages import check_stage
    from diffboost.utils.atomic import write_control

    stage = tmp_path / "prepared"
    stage.mkdir()
    write_control(stage / "stage.json", {"identity": {"source": "/data/old/place/BUSI", "prepare": {"size": 128}}})
    legacy = {"source": "/data/new/place/BUSI", "prepare": {"size": 128}}  # the data moved since
    assert check_stage(stage, "prepare", {"source": "ab12", "prepare": {"size": 128}}, set(), legacy)
    assert read_control(stage / "stage.json")["v"] == 2  # upgraded: content from now on


def test_redo_names_a_stage_and_everything_after_it():
    from diffboost.stages import redo_set

    assert redo_set(["generate"]) == {"generate", "seg"} and redo_set(["all"]) == redo_set(["prepare"])
    with pytest.raises(ValueError, match="not a stage"):
        redo_set(["segmentation"])


def test_a_moved_run_resumes_without_recomputing_and_a_fixed_mask_is_refused(tmp_path, phantom_root, monkeypatch):
    import shutil

    from PIL import Image

    import diffboost.diffusion.train as dtrain
    import diffboost.segmentation.trainer as strainer
    from diffboost.run import RunConfig, run
    from diffboost.stages import StaleStage

    cfg = {"prepare": {"size": 32}, "model": {"channels": [8, 16, 32], "attention": [False, True, True]},
           "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 2, "validate_every": 2, "warmup_steps": 1},
           "generate": {"n": 1, "steps": 2, "batch_size": 8},
           "seg": {"channels": [8, 16, 32], "epochs": 1, "batch_size": 4},
           "compare": {"augs": ["none", "diffboost"], "folds": [0]}, "ablate": {"sweeps": []}}
    data = tmp_path / "data"
    shutil.copytree(phantom_root, data)
    run(data, tmp_path / "a", RunConfig.from_dict(cfg), progress=False)
    shutil.move(tmp_path / "a", tmp_path / "moved")
    shutil.move(data, tmp_path / "data2")
    trained = []
    monkeypatch.setattr(dtrain, "train_diffusion", lambda *a, **k: pytest.fail("retrained the diffusion model"))
    real_epoch = strainer._train_epoch
    monkeypatch.setattr(strainer, "_train_epoch", lambda *a, **k: trained.append(a[4].aug) or real_epoch(*a, **k))
    cosmetic = {**cfg, "train": {**cfg["train"], "log_every": 1, "checkpoint_every": 1},
                "prepare": {**cfg["prepare"], "format": "busi", "preview_cases": 2}}  # `auto` found busi
    run(tmp_path / "data2", tmp_path / "moved", RunConfig.from_dict(cosmetic), progress=False)
    assert trained == []  # moved run, moved data, the detected format named, cosmetic options: nothing recomputed
    # a mask fixed in place in the source: the stages made from the old one are refused, with the reason
    mask = sorted((tmp_path / "data2").rglob("*_mask.png"))[0]
    arr = np.asarray(Image.open(mask)).copy()
    arr[:3, :3] = 255 - arr[:3, :3]
    Image.fromarray(arr).save(mask)
    with pytest.raises(StaleStage, match=r"prepare stage was made from other inputs or options \(source changed\)"):
        run(tmp_path / "data2", tmp_path / "moved", RunConfig.from_dict(cosmetic), progress=False)
    assert (tmp_path / "moved" / "models" / "fold0" / "model").exists() and trained == []


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


@pytest.mark.parametrize("text", ["null", "[1]", '"x"', "3"])
def test_a_control_file_of_the_wrong_shape_is_one_error_naming_it(tmp_path, text):
    from diffboost.errors import ControlFileError
    from diffboost.segmentation.trainer import _check_run
    from diffboost.stages import check_stage
    from diffboost.utils.atomic import read_control

    stage = tmp_path / "prepared"
    stage.mkdir()
    (stage / "stage.json").write_text(text)
    (stage / "manifest.csv").write_text("kept")
    with pytest.raises(ControlFileError, match=f"{stage / 'stage.json'}: holds .*, expected a JSON object"):
        check_stage(stage, "prepare", {"a": 1}, redo={"prepare"})  # even a redo deletes nothing it cannot read
    assert (stage / "manifest.csv").read_text() == "kept"
    run = tmp_path / "seg"
    run.mkdir()
    (run / "run.json").write_text(text)
    with pytest.raises(ControlFileError, match="run.json: holds"):
        _check_run(run, {"config": {}}, replace_stale=True)
    assert (run / "run.json").exists()
    with pytest.raises(ControlFileError):
        read_control(run / "run.json")


def test_a_stage_json_of_null_stops_run_with_one_line(tmp_path, phantom_root):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "run"
    (out / "prepared").mkdir(parents=True)
    (out / "prepared" / "stage.json").write_text("null")
    result = subprocess.run([str(Path(sys.executable).parent / "diffboost"), "run", "--data", str(phantom_root), "--out",
                             str(out), "--preset", "demo", "-q"], capture_output=True, text=True, timeout=300)
    said = (result.stdout + result.stderr).strip()
    assert result.returncode == 2 and len(said.splitlines()) == 1, said
    assert f"{out / 'prepared' / 'stage.json'}: holds null, expected a JSON object" in said
    assert (out / "prepared" / "stage.json").read_text() == "null"
