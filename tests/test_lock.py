"""One writer per folder: a second invocation on a folder in use is refused at once, naming the
holder, and the first finishes unharmed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from diffboost.utils.lock import FolderBusy, folder_lock, holder_of, lock_path

BIN = Path(sys.executable).parent

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from diffboost.utils.lock import folder_lock
    folder, go = Path(sys.argv[1]), Path(sys.argv[2])
    with folder_lock(folder):
        print("held", flush=True)
        for _ in range(600):
            if go.exists():
                break
            time.sleep(0.1)
        folder.mkdir(exist_ok=True)
        (folder / "first.txt").write_text("finished")
""")


def test_a_second_invocation_is_refused_and_the_first_finishes(tmp_path, phantom_root):
    run_dir, go = tmp_path / "run", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), str(go)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        second = subprocess.run([str(BIN / "diffboost"), "run", "--data", str(phantom_root), "--out", str(run_dir),
                                 "--preset", "demo", "-q"], capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stdout + second.stderr
        said = " ".join((second.stdout + second.stderr).split())
        assert "in use by another diffboost process" in said and f"pid {first.pid}" in said
        assert time.perf_counter() - t0 < 60 and not (run_dir / "prepared").exists()  # refused before any work
    finally:
        go.write_text("")
        assert first.wait(timeout=60) == 0
    assert (run_dir / "first.txt").read_text() == "finished"
    assert holder_of(run_dir)["pid"] == first.pid  # the file names the last holder; the lock went with it
    with folder_lock(run_dir):  # and nobody holds it now
        assert holder_of(run_dir)["pid"] == os.getpid()


def test_the_lock_is_reentrant_within_a_process_and_a_stale_file_blocks_nobody(tmp_path):
    folder = tmp_path / "stage"
    lock_path(folder).parent.mkdir(parents=True, exist_ok=True)
    lock_path(folder).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "long ago"}))  # a dead writer's
    with folder_lock(folder):
        with folder_lock(folder):  # run holds its folder and calls a stage that locks it too
            pass
        assert holder_of(folder)["pid"] == os.getpid()
    assert not folder.exists()  # the lock lives beside the folder and creates nothing in it


def test_stage_functions_hold_their_folder(tmp_path):
    from diffboost.segmentation.trainer import train_seg

    out = tmp_path / "seg"
    probe = textwrap.dedent("""
        import sys
        from diffboost.utils.lock import folder_lock
        with folder_lock(sys.argv[1]):
            print("held", flush=True)
            sys.stdin.readline()
    """)
    other = subprocess.Popen([sys.executable, "-c", probe, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy, match="in use"):
            train_seg(tmp_path / "no-such-prepared-set", 0, out=out, progress=False)
    finally:
        other.stdin.write("\n")
        other.stdin.flush()
        other.wait(timeout=30)


# --- one folder, one lock, whatever it is called (issue: two writers through a symlink) ---

NESTED_HOLDER = textwrap.dedent("""
    import shutil, sys
    from pathlib import Path
    from diffboost.utils.lock import folder_lock
    run, redo = Path(sys.argv[1]), sys.argv[2] == "redo"
    with folder_lock(run), folder_lock(run / "models" / "fold0"):
        if redo:  # what `run --redo prepare` does while it holds the run: remove the stages, make them again
            shutil.rmtree(run / "models")
            (run / "models" / "fold0").mkdir(parents=True)
        print("held", flush=True)
        sys.stdin.readline()
""")


def _hold(run_dir: Path, redo: bool = False) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", NESTED_HOLDER, str(run_dir), "redo" if redo else "-"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def _release(p: subprocess.Popen) -> None:
    p.stdin.write("\n")
    p.stdin.flush()
    assert p.wait(timeout=60) == 0


def _hashes(folder: Path) -> dict[str, str]:
    import hashlib

    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def _one_line(result: subprocess.CompletedProcess) -> str:
    text = (result.stdout + result.stderr).strip()
    assert len(text.splitlines()) == 1, text
    return text


def test_a_second_run_through_a_symlink_is_refused_and_touches_nothing(tmp_path, phantom_root):
    run_dir = tmp_path / "r7"
    for f, data in {"prepared/manifest.csv": b"case\n1\n", "prepared/stage.json": b"{}",
                    "models/fold0/weights.bin": b"\x00\x01" * 64, "models/fold0/loss.csv": b"step,loss\n1,0.5\n"}.items():
        (run_dir / f).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / f).write_bytes(data)
    (tmp_path / "r7link").symlink_to(run_dir)
    first = _hold(run_dir)
    before = _hashes(run_dir)  # with the holder's own lock file of fold0
    try:
        for out in (tmp_path / "r7link", tmp_path / "r7" / ".." / "r7", Path(os.path.relpath(run_dir))):
            second = subprocess.run([str(BIN / "diffboost"), "run", "--data", str(phantom_root), "--out", str(out),
                                     "--preset", "demo", "--redo", "prepare", "-q"],
                                    capture_output=True, text=True, timeout=300)
            assert second.returncode == 2, second.stdout + second.stderr
            said = _one_line(second)
            assert "in use by another diffboost process" in said and f"pid {first.pid}" in said, said
        # a stage invoked on its own folder below the held run is refused too
        with pytest.raises(FolderBusy, match=f"pid {first.pid}"):
            with folder_lock(tmp_path / "r7link" / "models" / "fold0"):
                pass
    finally:
        _release(first)
    assert _hashes(run_dir) == before


def test_a_redo_by_the_holder_keeps_its_locks(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "models" / "fold0").mkdir(parents=True)
    (tmp_path / "link").symlink_to(run_dir)
    holder = _hold(run_dir, redo=True)  # it deleted models/ (and whatever lock file lived there) and remade it
    try:
        for folder in (run_dir / "models" / "fold0", run_dir / "models", run_dir, tmp_path / "link", tmp_path):
            with pytest.raises(FolderBusy, match=f"pid {holder.pid}"):
                with folder_lock(folder):
                    pass
    finally:
        _release(holder)
    with folder_lock(tmp_path / "link" / "models" / "fold0"):  # free again once the holder is gone
        assert holder_of(run_dir / "models" / "fold0")["pid"] == os.getpid()


def test_an_outer_folder_is_refused_while_a_process_works_inside_it(tmp_path):
    probe = textwrap.dedent("""
        import sys
        from diffboost.utils.lock import folder_lock
        with folder_lock(sys.argv[1]):
            print("held", flush=True)
            sys.stdin.readline()
    """)
    inner = tmp_path / "run" / "seg" / "none" / "seed0" / "fold0"
    other = subprocess.Popen([sys.executable, "-c", probe, str(inner)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy, match=f"{inner}.*pid {other.pid}"):
            with folder_lock(tmp_path / "run"):
                pass
        with folder_lock(tmp_path / "run" / "seg" / "none" / "seed0" / "fold1"):  # a sibling is free
            pass
    finally:
        other.stdin.write("\n")
        other.stdin.flush()
        other.wait(timeout=30)


def test_the_workers_of_a_holder_count_as_the_holder(tmp_path):
    child = textwrap.dedent("""
        import sys
        from diffboost.utils.lock import FolderBusy, folder_lock
        try:
            with folder_lock(sys.argv[1]):
                print("took it")
        except FolderBusy:
            print("refused")
    """)
    inner = tmp_path / "run" / "seg" / "fold0"
    with folder_lock(tmp_path / "run"):
        mine = subprocess.run([sys.executable, "-c", child, str(inner)], capture_output=True, text=True, timeout=60)
        assert mine.stdout.strip() == "took it", mine.stderr  # a worker of `run --jobs`: inherits the run's lock
        env = dict(os.environ)
        env["DIFFBOOST_HELD_LOCKS"] = json.dumps([{"pid": 999999999, "keys": [str((tmp_path / "run").resolve())]}])
        stranger = subprocess.run([sys.executable, "-c", child, str(inner)], capture_output=True, text=True, timeout=60,
                                  env=env)
        assert stranger.stdout.strip() == "refused", stranger.stderr  # a claim of a process that is no ancestor


def test_prepare_locks_its_out(tmp_path, phantom_root):
    out = tmp_path / "prepared"
    first = _hold(out)
    try:
        second = subprocess.run([str(BIN / "diffboost"), "prepare", str(phantom_root), "--out", str(out), "--size", "32"],
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and f"pid {first.pid}" in _one_line(second)
    finally:
        _release(first)
    assert not (out / "manifest.csv").exists()


def test_a_lock_that_cannot_be_created_is_one_line_naming_the_place(tmp_path, phantom_root):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {**os.environ, "DIFFBOOST_LOCK_DIR": str(blocker / "locks")}
    out = tmp_path / "prepared"
    result = subprocess.run([str(BIN / "diffboost"), "prepare", str(phantom_root), "--out", str(out), "--size", "32"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2
    said = _one_line(result)
    assert str(blocker / "locks") in said and "cannot create its lock file" in said and "DIFFBOOST_LOCK_DIR" in said
    assert not out.exists()
    # the lock beside the folder: its parent cannot be made
    result = subprocess.run([str(BIN / "diffboost"), "prepare", str(phantom_root), "--out", str(blocker / "sub" / "out"),
                             "--size", "32"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and str(blocker / "sub") in _one_line(result)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_folder_is_one_clear_error(tmp_path):
    from diffboost.utils.lock import LockError

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(LockError, match=f"{ro / 'out'}: cannot create its lock file"):
            with folder_lock(ro / "out"):
                pass
    finally:
        ro.chmod(0o755)


def test_a_symlink_followed_by_dotdot_is_the_folder_it_leads_to(tmp_path):
    target = tmp_path / "deep" / "inside"
    target.mkdir(parents=True)
    (tmp_path / "link").symlink_to(target)
    held = _hold(tmp_path / "deep" / "x")  # link/../x is deep/x, not tmp_path/x
    try:
        with pytest.raises(FolderBusy, match=f"pid {held.pid}"):
            with folder_lock(Path(str(tmp_path / "link") + "/../x")):
                pass
    finally:
        _release(held)
