"""Many segmentation runs (strategy x fold x seed) at once: in this process, in ``jobs`` local
processes, or shared among the processes of ``accelerate launch`` (one GPU or node each).

Every run draws all its randomness from its own seed (see :mod:`.trainer`), so where it runs does
not change what it learns: a serial run, ``jobs=2`` and ``accelerate launch --num_processes 2``
give the same weights and the same metrics, given the same number of torch threads per run. On a
CPU a job gets one torch thread unless ``SegConfig.threads`` says otherwise (two one-thread jobs on
2 cores finished 2.3x sooner than one two-thread job after the other).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..utils.progress import ProgressBar, progress_iter
from .config import SegConfig


def run_folder(root: str | Path, strategy: str, fold: int, seed: int) -> Path:
    """Where one segmentation run of a comparison lives: ``ROOT/<strategy>/seed<s>/fold<k>``."""
    return Path(root) / strategy / f"seed{seed}" / f"fold{fold}"


@dataclass(frozen=True)
class SegJob:
    """One segmentation run: train on ``fold`` with ``cfg`` into ``out``."""

    cfg: SegConfig
    fold: int
    out: Path


def _state():
    import torch
    from accelerate import PartialState

    # without a GPU the processes still meet (gloo): accelerate only does that when told cpu=True
    return PartialState(cpu=not torch.cuda.is_available())


def distributed() -> tuple[int, int]:
    """``(process index, number of processes)`` under ``accelerate launch`` / torchrun, else (0, 1).

    On a machine without GPUs, ``accelerate launch --multi_gpu --num_processes N`` (torchrun
    underneath) starts N CPU processes that share the jobs; ``--cpu`` alone starts one process
    unless MPI is set up."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    state = _state()
    return state.process_index, state.num_processes


def barrier() -> None:
    """Wait for every process of a distributed launch (nothing to do otherwise)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _state().wait_for_everyone()


def _placed(cfg: SegConfig, slot: int) -> SegConfig:
    """The job's device and threads when the user left them open: GPU ``slot`` modulo the GPUs there
    are, or the CPU with one thread."""
    import torch

    if cfg.device is None and torch.cuda.is_available():
        return dataclasses.replace(cfg, device=f"cuda:{slot % torch.cuda.device_count()}")
    if cfg.threads is None and (cfg.device or "cpu") == "cpu":
        return dataclasses.replace(cfg, threads=1)
    return cfg


def _run_one(prepared: str, job: SegJob, replace_stale: bool) -> dict:
    from .trainer import train_seg

    return train_seg(prepared, job.fold, job.cfg, job.out, progress=False, replace_stale=replace_stale)


def run_jobs(prepared, jobs: list[SegJob], n_jobs: int = 1, progress: bool = True,
             replace_stale: bool = False) -> list[dict]:
    """Run (or reuse) every job; return their summaries in the order given.

    Under a distributed launch each process trains the jobs ``i`` with ``i % processes == index``
    and then reads everybody's results, so every process returns the full list. Otherwise
    ``n_jobs > 1`` trains in that many local worker processes, and 1 trains here, one after the other.
    """
    from ..data.store import PreparedSet
    from .trainer import train_seg

    root = str((prepared.root if isinstance(prepared, PreparedSet) else Path(prepared)).resolve())
    rank, world = distributed()
    if n_jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {n_jobs}")
    if world > 1:
        slot = int(os.environ.get("LOCAL_RANK", rank))  # this process's GPU on its node
        mine = [dataclasses.replace(j, cfg=_placed(j.cfg, slot)) for i, j in enumerate(jobs) if i % world == rank]
        print(f"segmentation: process {rank + 1}/{world} trains {len(mine)} of {len(jobs)} runs", file=sys.stderr, flush=True)
        for job in progress_iter(mine, f"segmentation (process {rank + 1}/{world})", enabled=progress and rank == 0):
            _run_one(root, job, replace_stale)
        barrier()
        return [train_seg(root, j.fold, _placed(j.cfg, slot), j.out, progress=False) for j in jobs]  # all finished: read
    if n_jobs == 1:
        return [train_seg(root, j.fold, j.cfg, j.out, progress=progress, replace_stale=replace_stale) for j in jobs]
    return _pool(root, [dataclasses.replace(j, cfg=_placed(j.cfg, i)) for i, j in enumerate(jobs)], n_jobs,
                 progress, replace_stale)


def _exit_with(parent: int) -> None:
    """Worker initializer: end this worker when the process that started it is gone (killed), so no
    orphan keeps training into a run folder a new call may be writing."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _pool(root: str, jobs: list[SegJob], n_jobs: int, progress: bool, replace_stale: bool) -> list[dict]:
    import multiprocessing as mp
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    results: list[dict | None] = [None] * len(jobs)
    with ProcessPoolExecutor(max_workers=min(n_jobs, len(jobs)) or 1, mp_context=mp.get_context("spawn"),
                             initializer=_exit_with, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(_run_one, root, j, replace_stale): i for i, j in enumerate(jobs)}
        bar = ProgressBar(f"segmentation ({n_jobs} processes)", len(jobs), enabled=progress)
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    results[futures[fut]] = fut.result()  # a failed job raises here, naming its folder
                    bar.update(sum(r is not None for r in results))
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
        finally:
            bar.close()
    return results  # type: ignore[return-value]
