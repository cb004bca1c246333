"""Is a run trained again on this machine the model its archived record describes?

Training is deterministic on one machine, but another machine's floating-point sums differ from the
first step, so a run trained in an earlier session may be another draw than one trained now. A
comparison whose rows were trained on different machines mixes that draw into its difference, and the
corrected interval does not see it. This bench trains ``bench_final_checkpoint.py``'s final-rule runs of
one strategy again (same prepared set, budget, fold, seed and config) into ``budgets/B/final_again/``,
and reports per fold: the first epoch's loss of both (equal digits: the same numerics), both test
Dice, and the other final-rule rows' differences against the archived runs and against the runs
trained again, on the same folds.

    python bench/bench_machine_draw.py --data ddti --strategy classic --folds 0,1,2,3,4   # ~20 min, one core

Writes ``bench/results/machine_draw_<data>_<budget>_<strategy>.{json,md}``. Resumable; the new runs'
records are archived with the learning curve's (``bench/results/budgets_<data>_runs``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import time

import numpy as np

from common import BUDGET_DATA as SOURCES, archive_runs, budget_set, diff_cell, final_rule_seg, write_results

OTHERS = ("fixmatch+classic", "self-train+classic", "classic")


def first_loss(run) -> str:
    with open(run / "log.csv", newline="") as fh:
        return next(csv.DictReader(fh))["loss"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=list(SOURCES), default="ddti")
    ap.add_argument("--budget", default="0.1")
    ap.add_argument("--strategy", default="classic")
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--steps-per-epoch", type=int, default=25)
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args()

    from diffboost.evaluation.stats import holdout_ratio
    from diffboost.segmentation.compare import run_dice, run_stats
    from diffboost.segmentation.jobs import SegJob, run_folder, run_jobs

    base, keep, root, ps = budget_set(args.data, args.budget, "bench_budgets.py and bench_final_checkpoint.py")
    folds = [int(k) for k in args.folds.split(",")]
    archived = root / "final" / "seg"
    missing = [k for k in folds if not (run_folder(archived, args.strategy, k, 0) / "summary.json").exists()]
    if missing:
        raise SystemExit(f"{archived / args.strategy}: no finished final-rule run of fold(s) {missing} to compare "
                         f"with (run bench_final_checkpoint.py --data {args.data} --budget {args.budget} first)")
    cfg = dataclasses.replace(final_rule_seg(args.steps_per_epoch), aug=args.strategy)  # as bench_final_checkpoint.py
    again = root / "final_again" / "seg"
    t0 = time.perf_counter()
    try:
        run_jobs(ps, [SegJob(cfg, k, run_folder(again, args.strategy, k, 0)) for k in folds], args.jobs)
    finally:
        print(f"archived the records of {archive_runs(base, keep)} finished run(s) in {keep}")

    old, new = run_dice(archived, args.strategy, folds, [0]), run_dice(again, args.strategy, folds, [0])
    per_fold = []
    for k in folds:
        a, b = run_folder(archived, args.strategy, k, 0), run_folder(again, args.strategy, k, 0)
        env = json.loads((b / "summary.json").read_text()).get("environment", {})
        loss_a, loss_b = first_loss(a), first_loss(b)
        per_fold.append({"fold": k, "archived_dice": 100 * old[k, 0], "again_dice": 100 * new[k, 0],
                         "archived_first_loss": loss_a, "again_first_loss": loss_b, "same_numerics": loss_a == loss_b,
                         "again_on": env.get("machine", {}).get("cpu")})
    ratio = holdout_ratio([ps.fold(k) for k in folds])
    others = {}
    for s in OTHERS:
        r = run_dice(archived, s, folds, [0], finished_only=True)
        if s == args.strategy or len(r) < len(folds):
            continue
        others[s] = {ref: {k: v for k, v in run_stats(r, runs, ratio).items() if k in ("dice_diff", "ci95", "p", "runs")}
                     for ref, runs in (("archived", old), ("again", new))}
    lines = [f"{SOURCES[args.data]} at {args.budget} labels, `{args.strategy}` under the final rule: the archived "
             f"runs against the same runs trained again on this machine (folds {args.folds}, seed 0). Dice (%).", "",
             "| fold | archived | trained again | difference | first-epoch loss (archived, again) |", "|---|---|---|---|---|"]
    for p in per_fold:
        lines.append(f"| {p['fold']} | {p['archived_dice']:.2f} | {p['again_dice']:.2f} | "
                     f"{p['again_dice'] - p['archived_dice']:+.2f} | {p['archived_first_loss']}, {p['again_first_loss']} |")
    mean_old, mean_new = 100 * np.mean(list(old.values())), 100 * np.mean(list(new.values()))
    lines.append(f"| mean | {mean_old:.2f} | {mean_new:.2f} | {mean_new - mean_old:+.2f} | |")
    if others:
        lines += ["", f"The other final-rule rows against `{args.strategy}` on these folds (corrected 95% interval):", "",
                  f"| strategy | − archived `{args.strategy}` | − `{args.strategy}` trained again |", "|---|---|---|"]
        lines += [f"| {s} | {diff_cell(d['archived'])} | {diff_cell(d['again'])} |" for s, d in others.items()]
    md = "\n".join(lines) + "\n"
    print(md)
    name = f"machine_draw_{args.data}_{args.budget}_{args.strategy}"
    write_results(name, {"data": SOURCES[args.data], "budget": args.budget, "folds": folds, "strategy": args.strategy,
                         "per_fold": per_fold, "others": others, "threads_per_job": 1, "jobs": args.jobs,
                         "seconds_this_call": round(time.perf_counter() - t0, 1)}, md)


if __name__ == "__main__":
    main()
