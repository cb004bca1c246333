"""Is the ``none`` baseline converged? The same network trained E and 3E epochs, side by side.

On BUSI (3-fold CV, near-duplicate-aware folds) ``none`` is trained with the ``cpu`` preset's
segmentation settings for E epochs and for ``--factor`` x E epochs, for every fold and seed, in
``--jobs`` one-thread processes (longest runs first). The criterion of the issue "An honest
yardstick": the E-epoch baseline is within 1.5 Dice points of the 3E-epoch one (mean over runs,
paired by fold and seed, with its 95% interval). Writes ``bench/results/convergence_<data>.json``
and prints the table. Finished runs in ``bench/work/`` are reused, so an interrupted benchmark resumes.

    python bench/bench_convergence.py                       # the cpu preset's settings
    python bench/bench_convergence.py --epochs 30 --size 96  # another candidate
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
from common import REPO, SHARED_DATA, bench_preset, need, report

SOURCES = {"busi": "BUSI", "hippocampus": "MSD/Task04_Hippocampus"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=list(SOURCES), default="busi")
    ap.add_argument("--preset", default="cpu", help="segmentation and prepare settings to start from")
    ap.add_argument("--epochs", type=int, default=None, help="E (default: the preset's seg.epochs)")
    ap.add_argument("--factor", type=int, default=3)
    ap.add_argument("--size", type=int, default=None, help="prepared size (default: the preset's)")
    ap.add_argument("--network", default=None)
    ap.add_argument("--channels", default=None)
    ap.add_argument("--seeds", default=None, help="comma-separated (default: the preset's compare.seeds)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--tolerance", type=float, default=1.5, help="Dice points")
    args = ap.parse_args()

    from diffboost.data.preparation import prepare
    from diffboost.data.store import PreparedSet
    from diffboost.evaluation.stats import mean_ci
    from diffboost.segmentation.jobs import SegJob, run_folder, run_jobs

    src = need(SHARED_DATA / SOURCES[args.data])
    cfg = bench_preset(args.preset)
    prep = dataclasses.replace(cfg.prepare, **({"size": args.size} if args.size else {}))
    if args.data == "hippocampus":
        prep = dataclasses.replace(prep, label_map=None)
    seg = cfg.seg
    if args.network:
        seg = dataclasses.replace(seg, network=args.network)
    if args.channels:
        seg = dataclasses.replace(seg, channels=tuple(int(c) for c in args.channels.split(",")))
    E = args.epochs or seg.epochs
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else cfg.compare.seed_list(seg)
    work = REPO / "bench" / "work" / f"convergence_{args.data}{prep.size}"
    if not (work / "prepared" / "dataset.json").exists():
        prepare(src, work / "prepared", prep, overwrite=True, progress=False)
    ps = PreparedSet(work / "prepared")
    folds = list(range(len(ps.folds)))
    tag = f"{seg.network}-{'-'.join(map(str, seg.channels or ()))}"
    jobs = [SegJob(dataclasses.replace(seg, aug="none", seed=s, epochs=e), k,
                   run_folder(work / tag / f"E{e}", "none", k, s))
            for e in (args.factor * E, E) for s in seeds for k in folds]  # the long runs first
    t0 = time.perf_counter()
    summaries = run_jobs(ps, jobs, args.jobs, progress=True)
    wall = time.perf_counter() - t0
    by = {(j.cfg.epochs, j.cfg.seed, j.fold): s for j, s in zip(jobs, summaries)}
    rows, gaps = [], []
    for s in seeds:
        for k in folds:
            short, long = by[(E, s, k)], by[(args.factor * E, s, k)]
            d_short, d_long = short["metrics"]["dice"]["mean"] * 100, long["metrics"]["dice"]["mean"] * 100
            gaps.append(d_long - d_short)
            rows.append({"fold": k, "seed": s, f"Dice E={E}": round(d_short, 2),
                         f"Dice {args.factor}E={args.factor * E}": round(d_long, 2), "gap": round(d_long - d_short, 2),
                         f"best epoch E": short["best_epoch"] + 1, f"best epoch {args.factor}E": long["best_epoch"] + 1,
                         "train s (E)": short["train_seconds"], f"train s ({args.factor}E)": long["train_seconds"]})
    gap, lo, hi = mean_ci(gaps)
    mean_short = float(np.mean([r[f"Dice E={E}"] for r in rows]))
    mean_long = float(np.mean([r[f"Dice {args.factor}E={args.factor * E}"] for r in rows]))
    rows.append({"fold": "mean", "seed": "", f"Dice E={E}": round(mean_short, 2),
                 f"Dice {args.factor}E={args.factor * E}": round(mean_long, 2), "gap": round(gap, 2),
                 "best epoch E": "", f"best epoch {args.factor}E": "", "train s (E)": "", f"train s ({args.factor}E)": ""})
    converged = gap <= args.tolerance
    print(f"\n{args.factor}E - E = {gap:+.2f} Dice points, 95% CI [{lo:+.2f}, {hi:+.2f}] over {len(gaps)} runs: "
          f"{'CONVERGED' if converged else 'NOT converged'} (tolerance {args.tolerance})")
    report(f"convergence_{args.data}", rows, {
        "data": f"shared {SOURCES[args.data]}, prepared at {prep.size} px, {len(folds)} folds (near-duplicate aware)",
        "settings": {k: v for k, v in dataclasses.asdict(seg).items() if k not in ("aug", "seed", "synthetic")},
        "E": E, "factor": args.factor, "seeds": seeds, "jobs": args.jobs, "threads_per_job": 1,
        "gap_mean": gap, "gap_ci95": [lo, hi], "tolerance": args.tolerance, "converged": converged,
        "wall_seconds_this_call": round(wall, 1),
        "command": f"python bench/bench_convergence.py --data {args.data} --epochs {E} --size {prep.size} "
                   f"--network {seg.network} --channels {','.join(map(str, seg.channels or ()))}"})


if __name__ == "__main__":
    main()
