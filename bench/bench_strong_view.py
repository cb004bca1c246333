"""What the strong view carries: ``fixmatch+classic`` and ``fixmatch-diffboost+classic`` with CutMix off
(``cutmix_prob`` 0), beside the same rows with CutMix on (0.5, the default).

With CutMix on, both strong views get a box of another unlabelled image, and the DiffBoost variant is one
perturbation among several. With it off, the strong view of ``fixmatch`` is the image through nnU-Net's
intensity transforms, and that of ``fixmatch-diffboost`` the image's DiffBoost variant through the same
transforms: their difference is what the diffusion view adds (the labelled batch still differs: Algorithm 1
in ``fixmatch-diffboost``, as in the rows it ablates).

- CutMix on: ``fixmatch+classic`` from ``bench_final_checkpoint.py`` (``budgets/B/final``), and
  ``fixmatch-diffboost+classic`` from ``bench_semisup_diffboost.py --generator every`` (its recorded last
  epoch), ``classic`` from ``bench_final_checkpoint.py`` as the reference;
- CutMix off: both trained here under the same final-epoch rule into ``budgets/B/strong_view/``, with the
  generator's variants of ``bench_semisup_diffboost.py`` (the folds that have them, or ``--folds``).

    python bench/bench_semisup_diffboost.py --data ddti --generator every --folds 0,1,2,3,4   # the variants
    python bench/bench_final_checkpoint.py --data ddti --strategies fixmatch+classic,classic --verify-fold -1
    python bench/bench_strong_view.py --data ddti --jobs 1          # ~80 min of one core on 5 folds

Same partitions, folds, seed and optimiser steps; corrected repeated k-fold interval over the runs both
rows have. Resumable (finished runs are reused; their records are archived as the other benches' are).
Writes ``bench/results/strong_view_<data>[_<budget>].{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from common import (BUDGET_DATA as SOURCES, archive_runs, budget_set, budget_suffix, diff_cell, final_rule_seg,
                    recorded_dice, write_results)

ROWS = ("fixmatch+classic", "fixmatch-diffboost+classic")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=list(SOURCES), default="ddti")
    ap.add_argument("--budget", default="0.1")
    ap.add_argument("--folds", default=None, help="comma-separated folds (default: those with variants)")
    ap.add_argument("--steps-per-epoch", type=int, default=25)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()

    from diffboost.evaluation.stats import holdout_ratio
    from diffboost.segmentation.compare import compare, run_dice, run_stats
    from diffboost.segmentation.curves import budget_name
    from diffboost.segmentation.jobs import run_folder

    base, keep, budget_root, ps = budget_set(args.data, args.budget, "bench_budgets.py, bench_final_checkpoint.py "
                                             "and bench_semisup_diffboost.py --generator every")
    gen_root = budget_root / "generator_every"
    have = [k for k in range(len(ps.folds)) if (gen_root / "synthetic" / f"fold{k}").is_dir()]
    folds = [int(k) for k in args.folds.split(",")] if args.folds else have
    if missing := sorted(set(folds) - set(have)):
        raise SystemExit(f"{gen_root / 'synthetic'}: no variants of fold(s) {missing} "
                         "(run bench_semisup_diffboost.py --generator every for them first)")
    if not folds:
        raise SystemExit(f"{gen_root / 'synthetic'}: no variants (run bench_semisup_diffboost.py --generator every first)")
    off = dataclasses.replace(final_rule_seg(args.steps_per_epoch), cutmix_prob=0.0,
                              synthetic=str(gen_root / "synthetic" / "fold{fold}"))
    t0 = time.perf_counter()
    try:
        compare(ps, list(ROWS), off, budget_root / "strong_view", folds, jobs=args.jobs)
    finally:
        print(f"archived the records of {archive_runs(base, keep)} finished run(s) in {keep}")

    def on_final(s):  # {(fold, seed): Dice} of the final-rule runs of bench_final_checkpoint.py
        return run_dice(budget_root / "final" / "seg", s, folds, [0], finished_only=True)

    rows = {"classic": on_final("classic"),
            "fixmatch+classic, CutMix on": on_final("fixmatch+classic"),
            "fixmatch-diffboost+classic, CutMix on": recorded_dice(
                {(k, 0): run_folder(gen_root / "seg", "fixmatch-diffboost+classic", k, 0) for k in folds})[1]}
    for s in ROWS:
        rows[f"{s}, CutMix off"] = run_dice(budget_root / "strong_view" / "seg", s, folds, [0])
    ratio = holdout_ratio([ps.fold(k) for k in folds])
    pairs = [("fixmatch-diffboost+classic, CutMix off", "fixmatch+classic, CutMix off"),
             ("fixmatch-diffboost+classic, CutMix on", "fixmatch+classic, CutMix on"),
             ("fixmatch+classic, CutMix off", "fixmatch+classic, CutMix on"),
             ("fixmatch-diffboost+classic, CutMix off", "fixmatch-diffboost+classic, CutMix on"),
             *[(f"{s}, CutMix {c}", "classic") for s in ROWS for c in ("off", "on")]]
    diffs = {f"{a} − {b}": {k: v for k, v in run_stats(rows[a], rows[b], ratio).items()
                             if k in ("dice_diff", "ci95", "runs", "p")}
             for a, b in pairs if rows[a] and rows[b]}
    table = {s: {"dice": 100 * float(np.mean(list(r.values()))) if r else None, "runs": len(r)} for s, r in rows.items()}
    lines = [f"{SOURCES[args.data]} at {budget_name(args.budget)} labels, final checkpoint, folds "
             f"{', '.join(map(str, folds))}, seed 0. Dice (%); differences in Dice points, corrected 95% interval.", "",
             "| row | runs | Dice |", "|---|---|---|"]
    lines += [f"| {s} | {t['runs']} | {'–' if t['dice'] is None else format(t['dice'], '.2f')} |" for s, t in table.items()]
    lines += ["", "| difference | runs | Dice points [95%] |", "|---|---|---|"]
    lines += [f"| {name} | {d['runs']} | {diff_cell(d)} |" for name, d in diffs.items()]
    lines += ["", "Per fold (Dice, %):", "", "| fold | " + " | ".join(rows) + " |", "|---" * (1 + len(rows)) + "|"]
    lines += [f"| {k} | " + " | ".join(f"{100 * r[(k, 0)]:.1f}" if (k, 0) in r else "–" for r in rows.values()) + " |"
              for k in folds]
    md = "\n".join(lines) + "\n"
    print(md)
    name = f"strong_view_{args.data}" + budget_suffix(args.budget)
    write_results(name, {"data": SOURCES[args.data], "budget": args.budget, "folds": folds, "rule": "final epoch",
                         "cutmix_prob_off": 0.0, "table": table, "differences": diffs, "threads_per_job": 1,
                         "jobs": args.jobs, "seconds_this_call": round(time.perf_counter() - t0, 1)}, md)


if __name__ == "__main__":
    main()
