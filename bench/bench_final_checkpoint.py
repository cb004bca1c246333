"""The semi-supervised comparison at a label budget under nnU-Net's checkpoint rule: the final epoch, for
every strategy, instead of the epoch chosen on the budget's validation part.

Why, decided before these runs' test folds were read: at 10% of BUSI the validation part holds 10-11
cases; on them the best epoch lies 4-13 Dice points above the last one and a third of the runs chose an
epoch in the first third of training (``bench_checkpoint_rule.py``, validation records only). Selection on
so few cases follows noise, and it treats strategies unequally (it can cut a slow learner short). nnU-Net
keeps its final checkpoint; so does this table, for every row.

- ``classic``, ``fixmatch+classic`` and ``self-train+classic`` (``bench_semisup.py``'s references; the
  teacher is the fold's ``classic`` run under the rule; ``--strategies`` picks some) train again with
  ``min_val_cases`` above the validation size (the last epoch is kept) into ``budgets/B/final/``;
- runs that record their last epoch's test metrics beside the chosen checkpoint's (``summary.json``:
  ``last_epoch_metrics``, the same weights as a final-checkpoint run, which ``tests/test_segmentation.py``
  checks) stand for themselves: the DiffBoost rows of ``bench_semisup_diffboost.py --generator every``,
  ``classic`` when it is not trained again, and ``classic`` with every label (the labels-saved reference;
  trained again into ``final/`` where its runs predate the record, unless ``--no-full``);
- ``--verify-fold K`` trains fold K of ``fixmatch-diffboost+classic`` under the rule and checks that its
  Dice is the recorded one;
- ``--diffboost-students`` trains ``diffboost+classic`` under the rule into ``generator_every/final/`` (its
  Dice checked against the recorded last epochs) and ``self-train+diffboost+classic`` taught by it, as
  ``self-train+classic`` is by ``classic``. Once that student has run on every fold it stands for the row
  (a later call without the flag reads it too, from its archived records); until then the row is the
  recorded one, whose teacher is ``diffboost+classic`` at the checkpoint chosen on validation.

    python bench/bench_final_checkpoint.py --data busi                # ~2 h on 2 cores (40 runs + 1)
    python bench/bench_final_checkpoint.py --data busbra --strategies fixmatch+classic --verify-fold -1
    python bench/bench_final_checkpoint.py --data ddti --strategies classic --verify-fold -1
    python bench/bench_final_checkpoint.py --data busi --budget 0.25 --strategies fixmatch+classic,classic --verify-fold -1
    python bench/bench_final_checkpoint.py --data ddti --strategies classic --verify-fold -1 --diffboost-students

Same partitions, folds, seed and optimiser steps as ``bench_budgets.py``; corrected repeated k-fold
interval over the r x k runs. Resumable. Writes ``bench/results/final_checkpoint_<data>.{json,md}``
(``final_checkpoint_<data>_<budget>`` at a budget other than 0.1).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from common import (BUDGET_DATA as SOURCES, archive_runs, budget_set, budget_suffix, copy_teachers, diff_cell,
                    final_rule_seg, recorded_dice, write_results)

RETRAINED = ("fixmatch+classic", "classic", "self-train+classic")  # the longest first; the teacher before its student
FULL = "classic, every label"
TWINS = {"diffboost+classic": "classic", "fixmatch-diffboost+classic": "fixmatch+classic",
         "self-train+diffboost+classic": "self-train+classic"}  # each DiffBoost row and its learner without it
RECORDED = tuple(TWINS)  # the DiffBoost rows, read at their recorded last epoch


def same_dice(a: float, b: float) -> bool:
    """A run trained again gives the recorded Dice (fractions; to the precision of the records)."""
    return bool(abs(a - b) < 1e-4)


def fold_list(runs: dict) -> str:
    """``0, 1, 2`` for runs keyed ``(fold, seed)``."""
    return ", ".join(str(k) for k, _ in sorted(runs))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=list(SOURCES), default="busi")
    ap.add_argument("--budget", default="0.1")
    ap.add_argument("--steps-per-epoch", type=int, default=25)
    ap.add_argument("--verify-fold", type=int, default=0, help="fold of fixmatch-diffboost+classic trained again (-1: none)")
    ap.add_argument("--strategies", default=",".join(RETRAINED), help="of " + ", ".join(RETRAINED))
    ap.add_argument("--diffboost-students", action="store_true", help="train self-train+diffboost+classic again "
                    "with a final-rule diffboost+classic teacher (needs bench_semisup_diffboost.py --generator every)")
    ap.add_argument("--no-full", action="store_true", help="leave out classic with every label (the labels-saved reference)")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    unknown = [s for s in args.strategies.split(",") if s not in RETRAINED]
    if unknown:
        ap.error(f"--strategies: {', '.join(unknown)} not among {', '.join(RETRAINED)}")

    from diffboost.data.store import PreparedSet
    from diffboost.evaluation.stats import holdout_ratio
    from diffboost.segmentation.compare import compare, run_dice, run_stats
    from diffboost.segmentation.curves import budget_name
    from diffboost.segmentation.jobs import SegJob, run_folder, run_jobs

    base, keep, budget_root, ps = budget_set(args.data, args.budget, "bench_budgets.py, bench_semisup.py and "
                                             "bench_semisup_diffboost.py")
    folds = list(range(len(ps.folds)))
    retrained = [s for s in RETRAINED if s in args.strategies.split(",")]
    gen_root = budget_root / "generator_every"
    final = final_rule_seg(args.steps_per_epoch)
    final_gen = dataclasses.replace(final, synthetic=str(gen_root / "synthetic" / "fold{fold}"))
    need = (set(folds) if args.diffboost_students else set()) | ({args.verify_fold} if args.verify_fold >= 0 else set())
    if missing := [k for k in sorted(need) if not (gen_root / "synthetic" / f"fold{k}").is_dir()]:
        raise SystemExit(f"{gen_root / 'synthetic'}: no variants of fold(s) {', '.join(map(str, missing))} for "
                         "--verify-fold or --diffboost-students (run bench_semisup_diffboost.py --generator every "
                         "first, or pass --verify-fold -1 without --diffboost-students)")

    def last_epochs(root, s) -> dict:  # {(fold, seed): the last epoch's test Dice} of the runs that record it
        return recorded_dice({(k, 0): run_folder(root / "seg", s, k, 0) for k in folds})[1]

    # classic with every label: its runs' recorded last epochs where every fold has one, else trained again
    full_recorded = last_epochs(base, "classic")
    train_full = not args.no_full and len(full_recorded) < len(folds)
    t0 = time.perf_counter()
    try:
        if supervised := [s for s in retrained if s != "self-train+classic"]:
            compare(ps, supervised, final, budget_root / "final", folds, jobs=args.jobs)
        copy_teachers(budget_root / "final" / "seg", retrained, folds, [0])  # the classic runs just made teach
        check = [SegJob(dataclasses.replace(final_gen, aug="fixmatch-diffboost+classic"), args.verify_fold,
                        run_folder(gen_root / "final" / "seg", "fixmatch-diffboost+classic", args.verify_fold, 0))
                 ] if args.verify_fold >= 0 else []
        students = [SegJob(dataclasses.replace(final, aug="self-train+classic"), k,
                           run_folder(budget_root / "final" / "seg", "self-train+classic", k, 0))
                    for k in folds if "self-train+classic" in retrained]
        run_jobs(ps, check + students, args.jobs)  # the check beside the students
        if args.diffboost_students:  # the same for DiffBoost's self-training row: a final-rule teacher
            compare(ps, ["diffboost+classic"], final_gen, gen_root / "final", folds, jobs=args.jobs)
            copy_teachers(gen_root / "final" / "seg", ["self-train+diffboost+classic"], folds, [0])
            compare(ps, ["self-train+diffboost+classic"], final_gen, gen_root / "final", folds, jobs=args.jobs)
        if train_full:
            compare(PreparedSet(base / "prepared"), ["classic"], final, base / "final", folds, jobs=args.jobs)
    finally:
        print(f"archived the records of {archive_runs(base, keep)} finished run(s) in {keep}")

    def finished(root, s) -> dict:  # {(fold, seed): Dice} of the runs that finished
        return run_dice(root / "seg", s, folds, [0], finished_only=True)

    # the rows trained this call, and those a former call trained for every fold
    rows = {s: r for s in RETRAINED if (r := finished(budget_root / "final", s)) and (s in retrained or len(r) == len(folds))}
    rows |= {s: r for s in RECORDED if (r := last_epochs(gen_root, s))}
    teachers_check = None
    if (again := finished(gen_root / "final", "diffboost+classic")) and "diffboost+classic" in rows:
        same = [k for k in again if k in rows["diffboost+classic"] and same_dice(again[k], rows["diffboost+classic"][k])]
        teachers_check = {"runs": len(again), "same_as_recorded": len(same)}
    final_student = len(student := finished(gen_root / "final", "self-train+diffboost+classic")) == len(folds)
    if final_student:  # taught by a final-rule teacher: stands in for the recorded row (no chosen run of its own)
        rows["self-train+diffboost+classic"] = student
    chosen = {s: finished(budget_root if s in RETRAINED else gen_root, s) for s in rows
              if not (s == "self-train+diffboost+classic" and final_student)}
    classic_recorded = last_epochs(budget_root, "classic")
    if "classic" not in rows and classic_recorded:  # runs that record their last epoch stand for it
        rows["classic"], chosen["classic"] = classic_recorded, finished(budget_root, "classic")
    if not args.no_full:
        rows[FULL] = finished(base / "final", "classic") if train_full else full_recorded
        chosen[FULL] = finished(base, "classic")
    verify = None  # this call's check, or (with --verify-fold -1) an earlier call's, from its archived records
    again = finished(gen_root / "final", "fixmatch-diffboost+classic")
    checked = sorted(k for k in again if k in rows.get("fixmatch-diffboost+classic", {}))
    if args.verify_fold >= 0 or checked:
        k = (args.verify_fold, 0) if args.verify_fold >= 0 else checked[0]
        recorded = rows["fixmatch-diffboost+classic"].get(k)
        verify = {"fold": k[0], "trained_again": 100 * again[k], "recorded_last_epoch": 100 * recorded,
                  "same": same_dice(again[k], recorded), "folds_trained_again": [f for f, _ in checked]}
    ratio = holdout_ratio([ps.fold(k) for k in folds])
    refs = [ref for ref in ("classic", "fixmatch+classic", FULL) if ref in rows]
    table = {}
    for s, r in rows.items():
        table[s] = {"dice": 100 * float(np.mean(list(r.values()))), "runs": len(r),
                    "chosen_checkpoint_dice": 100 * float(np.mean(list(chosen[s].values()))) if chosen.get(s) else None,
                    **{f"vs {ref}": {k: v for k, v in run_stats(r, rows[ref], ratio).items()
                                     if k in ("dice_diff", "ci95", "runs", "p")}
                       for ref in refs if ref != s}}
    lines = [f"{SOURCES[args.data]} at {budget_name(args.budget)} labels, final checkpoint for every strategy "
             f"({len(folds)} folds, seed 0, {final.epochs} x {args.steps_per_epoch} optimiser steps). Dice (%); "
             "differences in Dice points, corrected 95% interval.", "",
             "| strategy | runs | Dice | " + " | ".join(f"− {ref}" for ref in refs) + " |", "|---" * (3 + len(refs)) + "|"]
    for s, t in table.items():
        cells = [diff_cell(t.get(f"vs {ref}")) for ref in refs]
        lines.append(f"| {s} | {t['runs']} | {t['dice']:.2f} | {' | '.join(cells)} |")
    twins = [(s, t) for s, t in TWINS.items() if s in rows and t in rows and set(rows[s]) <= set(rows[t])]
    if twins:  # what DiffBoost adds to each learner: the row against the same learner without it
        lines += ["", "DiffBoost's part: each DiffBoost row against the same learner without DiffBoost:", ""]
        for s, t in twins:
            table[s]["vs its learner"] = {"learner": t, **{k: v for k, v in run_stats(rows[s], rows[t], ratio).items()
                                                          if k in ("dice_diff", "ci95", "runs", "p")}}
            mixed = s == "self-train+diffboost+classic" and not final_student
            some = len(rows[s]) < len(folds)  # paired on the DiffBoost row's folds
            lines.append(f"- {s} − {t}: {diff_cell(table[s]['vs its learner'])} (p {table[s]['vs its learner']['p']:.2f})"
                         + (f" (folds {fold_list(rows[s])} only)" if some else "")
                         + (" (its teacher at the checkpoint chosen on validation: --diffboost-students)" if mixed else ""))
    for s, r in rows.items():  # a row over some folds: the others' Dice on the same runs, to read it against
        if len(r) < len(folds):
            same = {ref: 100 * float(np.mean([rows[ref][k] for k in r])) for ref in refs if set(r) <= set(rows[ref])}
            table[s]["refs_on_its_runs"] = same
            lines += ["", f"{s} ran on folds {fold_list(r)} only; on them "
                          + ", ".join(f"{ref} {d:.2f}" for ref, d in same.items()) + f" (its own {table[s]['dice']:.2f})."]
    lines += ["", "The same rows' Dice with the checkpoint chosen on validation (bench_semisup*.py): " + ", ".join(
        f"{s} {t['chosen_checkpoint_dice']:.2f}" for s, t in table.items() if t["chosen_checkpoint_dice"] is not None)]
    if verify:
        lines += ["", f"Check: fold {verify['fold']} of fixmatch-diffboost+classic trained again under the rule: "
                      f"{verify['trained_again']:.2f}, recorded last epoch {verify['recorded_last_epoch']:.2f} "
                      f"({'same' if verify['same'] else 'DIFFERENT'}; the run of this call or an earlier one, "
                      f"from its records)."]
    if teachers_check:
        lines += ["", f"Check: diffboost+classic trained again under the rule (to teach self-train+diffboost+classic "
                      f"under it): {teachers_check['same_as_recorded']} of "
                      f"{teachers_check['runs']} runs give the recorded last epoch's Dice."]
    md = "\n".join(lines) + "\n"
    print(md)
    name = f"final_checkpoint_{args.data}" + budget_suffix(args.budget)
    write_results(name, {"data": SOURCES[args.data], "budget": args.budget, "folds": folds, "rule": "final epoch",
                         "table": table, "verify": verify, "diffboost_teachers_check": teachers_check, "threads_per_job": 1, "jobs": args.jobs,
                         "seconds_this_call": round(time.perf_counter() - t0, 1)}, md)


if __name__ == "__main__":
    main()
