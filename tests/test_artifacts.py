"""Crash-safe outputs: a kill between "move the previous version aside" and "move the new one in" keeps
the previous version (restored on the next start), a normal write replaces it, and every output gets the
permissions of a normal file under the user's umask."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from diffboost.utils.atomic import (
    artifact_dir,
    atomic_write_bytes,
    atomic_write_text,
    old_path,
    recover_artifact,
    recover_artifacts,
)


class Killed(BaseException):
    """Stands for SIGKILL: nothing the process would do after it happens."""


@contextlib.contextmanager
def killed_after_moving_aside(monkeypatch, name: str):
    """``os.replace`` as in a process killed right after it moved ``name`` aside to ``.name.old``:
    that rename happens, then the process is dead (every later rename fails too)."""
    real = os.replace
    dead = []

    def replace(src, dst, *a, **k):
        if dead:
            raise Killed
        real(src, dst, *a, **k)
        if Path(dst).name == f".{name}.old":
            dead.append(dst)
            raise Killed

    monkeypatch.setattr(os, "replace", replace)
    try:
        yield dead
    finally:
        monkeypatch.setattr(os, "replace", real)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _write(target: Path, payload: bytes) -> None:
    with artifact_dir(target) as tmp:
        (tmp / "weights.bin").write_bytes(payload)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "config.json").write_text(json.dumps({"n": len(payload)}))


# ---- the helper, killed for real --------------------------------------------------------------------

KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from diffboost.utils.atomic import artifact_dir

    target = Path(sys.argv[1])
    real = os.replace

    def replace(src, dst):
        real(src, dst)
        if Path(dst).name == "." + target.name + ".old":
            os.kill(os.getpid(), signal.SIGKILL)  # between the two renames

    os.replace = replace
    with artifact_dir(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"new" * 1000)
""")


def test_a_process_killed_between_the_two_renames_keeps_the_previous_version(tmp_path):
    target = tmp_path / "model"
    _write(target, b"old" * 1000)
    before = _files(target)
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(target)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # the kill came after the old version was moved aside and before the new one went in
    assert not target.exists() and old_path(target).is_dir()
    assert _files(old_path(target)) == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.tmp-")]
    assert len(leftovers) == 1  # the dead process's half-finished build
    # the next start puts the previous version back, intact, and drops the dead build
    assert recover_artifact(target) is True
    assert _files(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    # a normal second write replaces it and leaves nothing beside it
    _write(target, b"new" * 500)
    assert (target / "weights.bin").read_bytes() == b"new" * 500
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_the_next_write_recovers_first_and_a_failed_build_changes_nothing(tmp_path, monkeypatch):
    target = tmp_path / "out"
    _write(target, b"v1")
    with killed_after_moving_aside(monkeypatch, "out"), pytest.raises(Killed):
        _write(target, b"v2")
    assert not target.exists() and (old_path(target) / "weights.bin").read_bytes() == b"v1"
    with pytest.raises(RuntimeError), artifact_dir(target) as tmp:  # restores v1 on entry
        (tmp / "weights.bin").write_bytes(b"half")
        raise RuntimeError("build failed")
    assert (target / "weights.bin").read_bytes() == b"v1"
    _write(target, b"v3")
    assert (target / "weights.bin").read_bytes() == b"v3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_kill_after_the_new_version_went_in_keeps_the_new_one(tmp_path):
    target = tmp_path / "out"
    _write(target, b"new")
    old_path(target).mkdir()  # what a kill during the removal of the previous version leaves
    (old_path(target) / "weights.bin").write_bytes(b"old")
    assert recover_artifact(target) is False
    assert (target / "weights.bin").read_bytes() == b"new" and not old_path(target).exists()


# ---- every place that replaces a finished result -----------------------------------------------------

def test_save_segmenter_killed_midway_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from diffboost.segmentation.networks import build_network
    from diffboost.segmentation.trainer import load_segmenter, save_segmenter

    torch.manual_seed(0)
    first = build_network("unet", 2, (4, 8))
    config = {"network": "unet", "out_channels": 2, "channels": [4, 8]}
    path = save_segmenter(first, {**config, "epoch": 1}, tmp_path / "model")
    second = build_network("unet", 2, (4, 8))
    with killed_after_moving_aside(monkeypatch, "model"), pytest.raises(Killed):
        save_segmenter(second, {**config, "epoch": 2}, path)
    assert not path.exists()
    net, saved = load_segmenter(path)  # the reader restores the previous checkpoint
    assert saved["epoch"] == 1
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), first.state_dict().values()))
    save_segmenter(second, {**config, "epoch": 2}, path)
    net, saved = load_segmenter(path)
    assert saved["epoch"] == 2
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), second.state_dict().values()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory, phantom_root):
    from diffboost.config import PrepareConfig
    from diffboost.data.preparation import prepare

    return prepare(phantom_root, tmp_path_factory.mktemp("art") / "prepared", PrepareConfig(size=32, folds=3),
                   progress=False)


def test_training_state_killed_midway_resumes_from_the_previous_epoch(small_set, tmp_path, monkeypatch):
    import diffboost.segmentation.trainer as trainer
    from diffboost.segmentation import SegConfig

    cfg = SegConfig(channels=(8, 16, 32), epochs=3, batch_size=4)
    out = tmp_path / "seg"
    epochs = []
    real_epoch = trainer._train_epoch
    monkeypatch.setattr(trainer, "_train_epoch", lambda *a, **k: epochs.append(a[7]) or real_epoch(*a, **k))
    real_save = trainer._save_state

    def save(o, net, opt, counters):
        if counters["epoch"] == 2:  # the second save moves epoch 1's state aside, then the kill
            with killed_after_moving_aside(monkeypatch, "state"):
                return real_save(o, net, opt, counters)
        return real_save(o, net, opt, counters)

    monkeypatch.setattr(trainer, "_save_state", save)
    with pytest.raises(Killed):
        trainer.train_seg(small_set, 0, cfg, out, progress=False)
    assert not (out / "state").exists() and (out / ".state.old" / "state.json").exists()
    assert json.loads((out / ".state.old" / "state.json").read_text())["epoch"] == 1
    epochs.clear()
    monkeypatch.setattr(trainer, "_save_state", real_save)
    summary = trainer.train_seg(small_set, 0, cfg, out, progress=False)
    assert epochs == [1, 2]  # resumed after epoch 0, from the restored state; not from scratch
    assert summary["epochs"] == 3 and not (out / ".state.old").exists()


class _FakeAccelerator:
    is_main_process = True

    def __init__(self, payload: bytes):
        self.payload = payload

    def wait_for_everyone(self):
        pass

    def save_state(self, path: str, **kwargs):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(self.payload)


def test_a_diffusion_checkpoint_rewritten_and_killed_midway_is_restored(tmp_path, monkeypatch):
    from diffboost.diffusion.train import _latest_checkpoint, _save_checkpoint

    _save_checkpoint(_FakeAccelerator(b"first"), tmp_path, 5, limit=2)
    with killed_after_moving_aside(monkeypatch, "step_0000005"), pytest.raises(Killed):
        _save_checkpoint(_FakeAccelerator(b"again"), tmp_path, 5, limit=2)
    ckdir = tmp_path / "checkpoints"
    assert _latest_checkpoint(tmp_path) is None  # nothing to resume from until recovered
    assert recover_artifacts(ckdir) == [ckdir / "step_0000005"]
    assert (_latest_checkpoint(tmp_path) / "model.safetensors").read_bytes() == b"first"
    _save_checkpoint(_FakeAccelerator(b"again"), tmp_path, 5, limit=2)
    assert (ckdir / "step_0000005" / "model.safetensors").read_bytes() == b"again"
    assert sorted(p.name for p in ckdir.iterdir()) == ["step_0000005"]


def _synthetic(ps, value: float):
    idx = ps.indices(ps.fold(0).train, training=True)
    rows = [{"index": k, "real_index": ri, "case_id": ps.manifest[ri]["case_id"], "slice_index": 0, "variant": 0,
             "category": "", "prompt": "", "text": "", "seed": 0, "sampler": "test", "steps": 0, "guidance": 0.0,
             "model_hash": ""} for k, ri in enumerate(idx)]
    return rows, np.full((len(idx), ps.size, ps.size), value, np.float16)


def test_a_synthetic_set_replaced_and_killed_midway_is_kept_whole(small_set, tmp_path, monkeypatch):
    from diffboost.generation.generate import GenerateConfig, SyntheticSet, write_synthetic_set

    out = tmp_path / "syn"
    rows, images = _synthetic(small_set, 0.25)
    write_synthetic_set(out, small_set, rows, images, GenerateConfig(n=1), {"fold": 0, "n": 1})
    (out / ".work").mkdir()  # generation's own work folder is replaced with the set
    before = _files(out)
    rows2, images2 = _synthetic(small_set, -0.5)
    with killed_after_moving_aside(monkeypatch, "syn"), pytest.raises(Killed):
        write_synthetic_set(out, small_set, rows2 + rows2, np.concatenate([images2, images2]), GenerateConfig(n=2),
                            {"fold": 0, "n": 2})
    assert not out.exists()
    syn = SyntheticSet(out)  # the reader restores the previous set: all of it, not half of each
    assert _files(out) == before and syn.meta["n"] == 1
    np.testing.assert_array_equal(np.asarray(syn.images), images)
    write_synthetic_set(out, small_set, rows2, images2, GenerateConfig(n=1), {"fold": 0, "n": 1})
    np.testing.assert_array_equal(np.asarray(SyntheticSet(out).images), images2)
    assert not (out / ".work").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]
    # the whole folder is replaced: one holding other files is refused, before anything is written
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"syn: holds files that are not part of a synthetic set \(notes.txt\)"):
        write_synthetic_set(out, small_set, rows, images, GenerateConfig(n=1), {"fold": 0, "n": 1})
    assert (out / "notes.txt").read_text() == "mine"


# ---- permissions --------------------------------------------------------------------------------------

@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_outputs_get_a_normal_files_permissions(tmp_path, mask):
    from diffboost.config import PrepareConfig, save_yaml

    with umask(mask):
        atomic_write_text(tmp_path / "report.html", "<html></html>")
        atomic_write_bytes(tmp_path / "figure.png", b"\x89PNG")
        save_yaml(PrepareConfig(), tmp_path / "config.yaml")
        with artifact_dir(tmp_path / "model") as tmp:
            (tmp / "config.json").write_text("{}")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    files, folder = 0o666 & ~mask, 0o777 & ~mask
    assert mask != 0o022 or (files, folder) == (0o644, 0o755)
    for name in ("report.html", "figure.png", "config.yaml"):
        assert _mode(tmp_path / name) == files == _mode(plain), name
    assert _mode(tmp_path / "model") == folder
    assert _mode(tmp_path / "model" / "config.json") == files


def test_phantom_and_prepared_folders_get_a_normal_folders_permissions(tmp_path):
    from diffboost.data.phantoms import generate_phantoms

    with umask(0o022):
        out = generate_phantoms(tmp_path / "busi", n=3, seed=1)
    assert _mode(out) == 0o755
    assert _mode(out / "README.txt") == 0o644
