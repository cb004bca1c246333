"""Where a result was made: package versions, the machine, and the code's commit.

Training is deterministic on one machine but not across machines (a CPU or torch build changes the
floating-point sums from the first step), so two records of the "same" run can differ. Every run
summary records this so that such differences can be traced.
"""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("diffboost", "torch", "monai", "diffusers", "accelerate", "transformers")


def versions() -> dict[str, str]:
    """Python's version and the installed versions of the packages that make a result."""
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


@lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def code_commit() -> str | None:
    """The git commit of the checkout this package runs from, with ``+modified`` when tracked files differ
    from it; None when the package is not in a git checkout (an installed wheel) or git is missing."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30)  # refreshes stale file times first
        dirty = status.returncode != 0 or bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+modified" if dirty else "")


def environment(device: str | None = None) -> dict:
    """``versions()`` plus the machine (CPU model, cores, torch's threads and build, the device used)
    and :func:`code_commit`."""
    import torch

    machine = {"cpu": _cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "torch_cuda": torch.version.cuda, "platform": platform.platform()}
    if device is not None:
        machine["device"] = str(device)
        if str(device).startswith("cuda") and torch.cuda.is_available():
            machine["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return {"versions": versions(), "machine": machine, "commit": code_commit()}


def native_bf16(device: str | None = None) -> bool:
    """Whether ``device`` (None: CUDA when available, else the CPU) computes bfloat16 natively: a CUDA GPU
    that supports it, or a CPU with AVX512-BF16 or AMX. Elsewhere torch emulates bf16, and a bf16 autocast
    trains about 10x slower than fp32 (an AVX2 CPU: ``bench/bench_seg_step.py``)."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda"):  # emulated bf16 (pre-Ampere GPUs) does not count
        if not torch.cuda.is_available():
            return False
        with torch.cuda.device(torch.device(device)):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    # private torch.cpu checks: absent from a torch that lacks them counts as not native
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
