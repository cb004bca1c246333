"""Learning curves of the baselines: `none` and `classic` (nnU-Net's augmentation) at label budgets of
10%, 25% and 100%, with the `cpu` preset's segmenter, over 2 x 5 case-wise folds (repeated k-fold, one
seed each), on real data as downloaded.

Every budget keeps the same test folds; a fold at a budget keeps the labels of a stratified, seeded,
nested share of its training + validation part. Every run trains the same number of optimiser steps
(``--steps-per-epoch`` x the preset's epochs), so 10% of the labels train as long as 100%. Differences
carry the corrected repeated k-fold interval over the r x k runs (r*k - 1 degrees of freedom).

    python bench/bench_budgets.py --data busi          # ~1.5 h on 2 cores (60 runs, 2 one-thread jobs)
    python bench/bench_budgets.py --data ddti
    python bench/bench_budgets.py --data busbra
    python bench/bench_budgets.py --data busi --convergence   # + classic at the smallest budget, twice the steps

Resumable: finished runs are reused (run folders under bench/work/budgets_<data>); their records (not
their weights) are kept in bench/results/budgets_<data>_runs/ and put back when bench/work is gone. Writes
``bench/results/budgets_<data>.json`` (and ``.md``, and ``.png``: the learning curve with its bands) (the learning curve, labels saved, per-budget gains, the steps per
run and the convergence check) and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from common import BUDGET_DATA as SOURCES, REPO, SHARED_DATA, bench_preset, need
from common import archive_runs as _archive, restore_runs as _restore


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=list(SOURCES), default="busi")
    ap.add_argument("--budgets", default="0.1,0.25,1")
    ap.add_argument("--strategies", default="none,classic")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps-per-epoch", type=int, default=25,
                    help="optimiser steps per epoch at every budget (25 = one pass over BUSI's ~400 training images)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--convergence", action="store_true",
                    help="also train classic at the smallest budget for twice the epochs (the convergence check)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--tag", default="", help="suffix of the results' name (e.g. a partial summary of some budgets)")
    args = ap.parse_args()

    from diffboost.data.preparation import prepare
    from diffboost.data.store import PreparedSet
    from diffboost.segmentation.curves import budget_name, curve_markdown, learning_curve

    src = need(SHARED_DATA / SOURCES[args.data])
    out = args.out or REPO / "bench" / "work" / f"budgets_{args.data}"
    cfg = bench_preset("cpu")
    pcfg = dataclasses.replace(cfg.prepare, folds=args.folds, repeats=args.repeats)
    t0 = time.perf_counter()
    if (out / "prepared" / "dataset.json").exists():
        ps = PreparedSet(out / "prepared")
    else:
        ps = prepare(src, out / "prepared", pcfg, progress=True)
    keep = REPO / "bench" / "results" / f"budgets_{args.data}_runs"  # the finished runs' records, committed
    print(f"restored {_restore(keep, out)} finished run(s) from {keep}")
    seg = dataclasses.replace(cfg.seg, steps_per_epoch=args.steps_per_epoch)
    strategies = [s for s in args.strategies.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = [b for b in args.budgets.split(",") if b]
    try:
        curve = learning_curve(ps, budgets, strategies, seg, out, seeds=seeds, jobs=args.jobs)
        # without --convergence, an earlier call's check is read from its runs' records (when all finished)
        convergence = _convergence(curve, ps, seg, seeds, out, args.jobs, train=args.convergence)
    finally:
        print(f"archived the records of {_archive(out, keep)} finished run(s) in {keep}")
    md = curve_markdown(curve)
    print(md)
    if convergence:
        print(f"convergence at {convergence['budget']}: classic with {convergence['epochs'][1]} epochs - "
              f"{convergence['epochs'][0]}: {convergence['dice_diff_2x_minus_1x']:+.2f} "
              f"[{convergence['ci95'][0]:+.2f}, {convergence['ci95'][1]:+.2f}]")
    name = f"budgets_{args.data}{'_' + args.tag if args.tag else ''}"
    result = {"name": name, "data": str(src), "protocol": {
        "folds": args.folds, "repeats": args.repeats, "seeds": seeds, "strategies": strategies, "budgets": budgets,
        "budget_names": [budget_name(b) for b in budgets], "steps_per_epoch": args.steps_per_epoch,
        "epochs": seg.epochs, "optimiser_steps_per_run": args.steps_per_epoch * seg.epochs,
        "segmenter": {k: v for k, v in dataclasses.asdict(seg).items() if k in ("network", "channels", "batch_size", "precision")},
        "size": pcfg.size, "jobs": args.jobs, "threads_per_job": 1},
        "curve": curve, "convergence": convergence, "seconds_this_call": round(time.perf_counter() - t0, 1)}
    path = REPO / "bench" / "results" / f"{name}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    (path.with_suffix(".md")).write_text(md)
    from diffboost.report.figures import learning_curve as curve_png

    path.with_suffix(".png").write_bytes(curve_png(curve))  # the report's plot: Dice against labels, bands
    print(f"written {path}")


def _convergence(curve: dict, ps, seg, seeds: list[int], out: Path, jobs: int, train: bool = True) -> dict | None:
    """`classic` at the smallest budget for twice the epochs, against the curve's own runs: does longer
    training move Dice by more than the corrected interval? With ``train`` False, only runs that have
    finished (or were restored from their records) are read: None unless every one of them has."""
    from diffboost.data.store import PreparedSet
    from diffboost.evaluation.stats import holdout_ratio
    from diffboost.segmentation.compare import _mean_dice, _run_key, read_rows, run_stats
    from diffboost.segmentation.jobs import SegJob, run_folder, run_jobs

    small = curve["budgets"][0]
    root = out / "budgets" / small if small != "1" else out
    longer = dataclasses.replace(seg, epochs=2 * seg.epochs)
    sps = PreparedSet(root / "prepared") if small != "1" else ps
    folds = list(range(len(sps.folds)))
    todo = [SegJob(dataclasses.replace(longer, aug="classic", seed=s), k,
                   run_folder(root / "seg_2x", "classic", k, s)) for s in seeds for k in folds]
    if not train and not all((j.out / "summary.json").exists() for j in todo):
        return None
    try:
        run_jobs(sps, todo, jobs)  # finished runs are reused; without --convergence nothing trains
    except ValueError as e:  # an earlier check with other settings: this re-read leaves it out
        if train:
            raise
        print(f"convergence check left out: {e}")
        return None
    base = [SegJob(dataclasses.replace(seg, aug="classic", seed=s), k, run_folder(root / "seg", "classic", k, s))
            for s in seeds for k in folds]
    stats = run_stats(_mean_dice(read_rows(todo), _run_key), _mean_dice(read_rows(base), _run_key),
                      holdout_ratio([ps.fold(k) for k in folds]))
    half = (stats["ci95"][1] - stats["ci95"][0]) / 2
    return {"budget": small, "strategy": "classic", "epochs": [seg.epochs, longer.epochs],
            "dice_diff_2x_minus_1x": stats["dice_diff"], "ci95": stats["ci95"], "half_width": half,
            "converged": abs(stats["dice_diff"]) < half}


if __name__ == "__main__":
    main()
