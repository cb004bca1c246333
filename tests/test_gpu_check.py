"""bench/gpu_check.py without CUDA: it says that it needs CUDA, runs nothing and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


def test_gpu_check_without_cuda_says_so_and_exits_0(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = tmp_path / "gpu_check.json"
    p = subprocess.run([sys.executable, str(SCRIPT), "--json", str(result), "--work", str(tmp_path / "work")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "needs CUDA" in p.stdout and "--cpu-dry-run" in p.stdout
    assert not result.exists() and not (tmp_path / "work").exists()  # nothing ran, nothing written


def test_gpu_check_cpu_dry_run_passes(tmp_path):
    """The whole check at the smallest scale on CPU: the script patches project internals (checkpointing,
    the segmenter's epoch, the pipeline's call), so a changed signature there breaks it long before anyone
    has a GPU to notice. Every check must pass (the 2-GPU one and the CUDA time limit are skipped)."""
    import json

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = tmp_path / "dry.json"
    p = subprocess.run([sys.executable, str(SCRIPT), "--cpu-dry-run", "--json", str(result)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = {r["check"]: r["status"] for r in json.loads(result.read_text())["rows"]}
    assert "fail" not in rows.values(), rows
    assert sum(s == "pass" for s in rows.values()) >= 14, rows
