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
