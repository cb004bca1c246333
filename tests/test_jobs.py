"""Parallel comparisons: ``jobs=2`` and two processes of ``accelerate launch`` train the same models
and write the same Table II as a serial run.

On a CPU-only machine ``accelerate launch --cpu --num_processes 2`` starts a single process (several
CPU processes need MPI there), so the two-process launch uses ``--multi_gpu``, torchrun underneath,
which starts two CPU processes on this machine as it starts one per GPU on a GPU machine."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from diffboost.config import PrepareConfig
from diffboost.data.preparation import prepare
from diffboost.segmentation import SegConfig, compare

STRATEGIES = ["none", "classic"]
SEEDS = [0, 1]
CFG = dict(channels=(8, 16, 32), epochs=2, batch_size=4, threads=1)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, phantom_root):
    return prepare(phantom_root, tmp_path_factory.mktemp("jobs") / "prepared", PrepareConfig(size=32, folds=2),
                   progress=False)


def _table(out: Path) -> tuple[dict, list[dict]]:
    table = json.loads((out / "compare" / "table.json").read_text())["table"]
    rows = sorted(csv.DictReader(open(out / "compare" / "cases.csv")),
                  key=lambda r: (r["strategy"], r["seed"], r["fold"], r["case_id"]))
    return table, rows


def test_jobs_and_accelerate_launch_give_the_serial_table(prepared, tmp_path):
    cfg = SegConfig(**CFG)
    compare(prepared, STRATEGIES, cfg, tmp_path / "serial", seeds=SEEDS, progress=False)
    serial = _table(tmp_path / "serial")
    assert {r["seed"] for r in serial[1]} == {"0", "1"} and len(serial[1]) == 2 * 2 * len(prepared.manifest)
    # the seeds really are different runs
    runs = serial[0]["none"]["dice_runs"]
    assert runs["fold0/seed0"] != runs["fold0/seed1"]

    compare(prepared, STRATEGIES, cfg, tmp_path / "pool", seeds=SEEDS, progress=False, jobs=2)
    assert _table(tmp_path / "pool") == serial

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.skip("accelerate's launcher is not installed beside this Python")
    out = tmp_path / "launched"
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "diffboost.cli", "compare", str(prepared.root), "--out", str(out),
           "--augs", ",".join(STRATEGIES), "--seeds", ",".join(map(str, SEEDS)), "--channels", "8,16,32",
           "--epochs", "2", "--batch-size", "4", "--threads", "1", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _table(out) == serial
    # each process trained its own share of the 8 runs, not all of them
    said = proc.stdout + proc.stderr
    assert "process 1/2 trains 4 of 8 runs" in said and "process 2/2 trains 4 of 8 runs" in said, said[-2000:]


def test_workers_end_when_their_parent_is_killed(tmp_path):
    """A killed `compare --jobs 2` leaves no worker training on into the run folder."""
    import signal
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "import multiprocessing as mp\n"
        "from diffboost.segmentation.jobs import _exit_with\n"
        "import time\n"
        "def work(_):\n"
        "    print(os.getpid(), flush=True)\n"
        "    time.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    with ProcessPoolExecutor(2, mp_context=mp.get_context('spawn'), initializer=_exit_with,\n"
        "                             initargs=(os.getpid(),)) as pool:\n"
        "        list(pool.map(work, range(2)))\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    workers = [int(proc.stdout.readline()) for _ in range(2)]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    alive = workers
    while alive and time.time() < deadline:
        time.sleep(0.5)
        alive = [w for w in workers if Path(f"/proc/{w}").exists() and "zombie" not in
                 Path(f"/proc/{w}/status").read_text().lower()]
    assert not alive, f"workers {alive} outlived their parent"
