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
