"""DiffBoost with unlabelled images at a label budget, beside the rows of ``bench_semisup.py`` (same
partitions, folds, seed and optimiser steps; its ``classic`` and ``fixmatch+classic`` runs are the references):

- the generator, fine-tuned per fold with the `cpu` preset on the budget's labelled images only
  (``--generator labelled``) or on every training image (``--generator every``: ``train.unlabelled``,
  ``mask_dropout`` 0.1), draws 3 variants of every training image, labelled (mask condition) and unlabelled
  ("no mask" condition);
- ``diffboost+classic``, ``fixmatch-diffboost+classic`` and ``self-train+diffboost+classic`` train on them;
- the label consistency of the unlabelled images' variants, for this benchmark only: the fold's ``classic``
  segmenter (trained on the budget's labels) scores each variant and its real image against the real image's
  hidden label, read from the prepared arrays directly (no stage can read it).

    python bench/bench_semisup.py --data busi                                 # first: the references
    python bench/bench_semisup_diffboost.py --data busi --generator every     # ~45 min per fold and job

Resumable: fine-tuning resumes from its checkpoints, generation from the variants written, finished
segmentation runs are reused. Writes ``bench/results/semisup_diffboost_<data>_<generator>.{json,md}``
(``..._0.25`` at another budget than 0.1, ``..._folds0-1-2-3`` when ``--folds`` leaves folds out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from common import (BUDGET_DATA as SOURCES, REPO, archive_runs, budget_set, budget_suffix, checkpoint_rule, copy_teachers,
                    diff_cell, fold_generator, folds_suffix, write_results)

STRATEGIES = ("diffboost+classic", "fixmatch-diffboost+classic", "self-train+diffboost+classic")


PER_FOLD_REFS = ("classic", "fixmatch+classic", "self-train+classic")  # bench_semisup.py's runs, beside each fold


def _fold_cell(run: Path) -> str:
    """``Dice (chosen epoch)`` of one finished run, from its summary; ``–`` where it has not run."""
    f = run / "summary.json"
    if not f.exists():
        return "–"
    summary = json.loads(f.read_text())
    return f"{100 * summary['metrics']['dice']['mean']:.1f} ({summary['best_epoch']})"


def _consistency(ps, root: Path, seg_root: Path, folds: list[int]) -> dict:
    """Teacher Dice on the unlabelled images' variants / on their real images, against the hidden labels
    (benchmark only: the masks are read from the arrays, past the store's guard)."""
    from diffboost.evaluation.metrics import label_dice
    from diffboost.generation.synthetic import SyntheticSet
    from diffboost.segmentation.data import to_size
    from diffboost.segmentation.jobs import run_folder
    from diffboost.segmentation.predict import predict_probs
    from diffboost.segmentation.trainer import load_segmenter

    masks = np.load(ps.root / "masks.npy", mmap_mode="r")  # hidden labels: this benchmark's scoring only
    out = {}
    for k in folds:
        teacher = run_folder(seg_root, "classic", k, 0) / "model"
        if not teacher.is_dir():  # a run restored from its archived record has no weights
            print(f"label consistency: fold {k} skipped, {teacher} holds no weights")
            continue
        syn = SyntheticSet(root / "synthetic" / f"fold{k}")
        net, conf = load_segmenter(teacher)
        hidden = set(ps.indices(ps.fold(k).hidden))  # images with a label, hidden by the budget
        rows = [r for r in syn.manifest if r["real_index"] in hidden]
        reals = sorted({r["real_index"] for r in rows})
        size = conf["size"]
        pred_real = predict_probs(net, to_size(ps.images[np.asarray(reals)], size)).argmax(1).numpy()
        pred_var = predict_probs(net, to_size(np.asarray(syn.images[np.asarray([r["index"] for r in rows])],
                                                         np.float32), size)).argmax(1).numpy()
        ref = {ri: to_size(masks[[ri]], size, labels=True)[0, 0].numpy() for ri in reals}
        d_real = {ri: label_dice(p, ref[ri], [1]) for ri, p in zip(reals, pred_real)}
        d_var = [label_dice(p, ref[r["real_index"]], [1]) for r, p in zip(rows, pred_var)]
        out[k] = {"variants": len(rows), "teacher_dice_variant": float(np.mean(d_var)),
                  "teacher_dice_real": float(np.mean(list(d_real.values())))}
    if not out:
        return None
    v = np.mean([o["teacher_dice_variant"] for o in out.values()])
    r = np.mean([o["teacher_dice_real"] for o in out.values()])
    return {"per_fold": out, "teacher_dice_variant": float(v), "teacher_dice_real": float(r),
            "consistency": float(v / r) if r > 0 else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=list(SOURCES), default="busi")
    ap.add_argument("--budget", default="0.1")
    ap.add_argument("--generator", choices=["every", "labelled"], default="every")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--folds", default=None, help="comma-separated folds (default: all)")
    ap.add_argument("--steps-per-epoch", type=int, default=25)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--teachers", default=None, help="seg folder of the classic runs (with weights) that score the "
                    "variants' label consistency; default: the learning curve's, BUDGET/seg")
    args = ap.parse_args()

    from diffboost.evaluation.stats import holdout_ratio
    from diffboost.runconfig import preset
    from diffboost.segmentation.compare import compare, run_dice, run_stats
    from diffboost.segmentation.config import semi_of
    from diffboost.segmentation.jobs import run_folder

    base, keep, budget_root, ps = budget_set(args.data, args.budget, "bench_budgets.py and bench_semisup.py")
    root = budget_root / f"generator_{args.generator}"
    folds = [int(k) for k in args.folds.split(",")] if args.folds else list(range(len(ps.folds)))
    t0 = time.perf_counter()
    jobs = [(str(ps.root), str(root), k, args.generator == "every", False) for k in folds]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for done in pool.map(fold_generator, jobs):
            print(f"generator ready: {done}")
    seg = dataclasses.replace(preset("cpu").seg, steps_per_epoch=args.steps_per_epoch,
                              synthetic=str(root / "synthetic" / "fold{fold}"))
    strategies = [s for s in args.strategies.split(",") if s]
    try:
        first = [s for s in strategies if semi_of(s) != "self-train"]  # the teachers first
        if first:
            compare(ps, first, seg, root, folds, jobs=args.jobs)
        copy_teachers(root / "seg", strategies, folds, [0])  # the diffboost runs just made teach
        compare(ps, strategies, seg, root, folds, jobs=args.jobs)
    finally:
        print(f"archived the records of {archive_runs(base, keep)} finished run(s) in {keep}")

    ratio = holdout_ratio([ps.fold(k) for k in folds])
    refs = {s: run_dice(budget_root / "seg", s, folds, [0], finished_only=True) for s in ("classic", "fixmatch+classic")}
    table = {}
    for s in strategies:
        r = run_dice(root / "seg", s, folds, [0])
        table[s] = {"dice": 100 * float(np.mean(list(r.values()))), "runs": len(r),
                    **{f"vs {ref}": {k: v for k, v in run_stats(r, rr, ratio).items() if k in ("dice_diff", "ci95", "runs")}
                       for ref, rr in refs.items() if rr}}
        table[s]["checkpoint_rule"] = checkpoint_rule({(k, 0): run_folder(root / "seg", s, k, 0) for k in folds}, ratio)
    for ref, rr in refs.items():
        table[ref] = {"dice": 100 * float(np.mean(list(rr.values()))) if rr else None, "runs": len(rr)}
    teachers = Path(args.teachers).resolve() if args.teachers else budget_root / "seg"
    consistency = _consistency(ps, root, teachers, folds)
    lines = [f"{SOURCES[args.data]} at {args.budget} labels, generator from {args.generator} training images; "
             f"{len(folds)} folds, seed 0. Dice (%); differences in Dice points, corrected 95% interval.", "",
             "| strategy | Dice | − classic | − fixmatch+classic |", "|---|---|---|---|"]
    for s, t in table.items():
        cells = [diff_cell(t.get(f"vs {ref}")) for ref in ("classic", "fixmatch+classic")]
        lines.append(f"| {s} | {'–' if t['dice'] is None else format(t['dice'], '.2f')} | {cells[0]} | {cells[1]} |")
    rules = {s: t["checkpoint_rule"] for s, t in table.items() if t.get("checkpoint_rule")}
    if rules:
        lines += ["", "Checkpoint rule (test Dice of the checkpoint chosen on the validation part, and of the last epoch):", "",
                  "| strategy | chosen | last epoch | last − chosen |", "|---|---|---|---|"]
        lines += [f"| {s} | {r['chosen']:.2f} | {r['last_epoch']:.2f} | {r['last_minus_chosen']:+.2f} "
                  f"[{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}] |" for s, r in rules.items()]
    lines += ["", "Per fold: Dice (%) and the epoch of the chosen checkpoint:", "",
              "| fold | " + " | ".join(PER_FOLD_REFS + tuple(strategies)) + " |", "|---" * (1 + len(PER_FOLD_REFS) + len(strategies)) + "|"]
    where = {**{s: budget_root for s in PER_FOLD_REFS}, **{s: root for s in strategies}}
    for k in folds:
        lines.append(f"| {k} | " + " | ".join(_fold_cell(run_folder(where[s] / "seg", s, k, 0)) for s in where) + " |")
    if consistency:
        lines += ["", f"Label consistency of the unlabelled images' variants (teacher: the fold's classic run in "
                      f"{teachers.relative_to(REPO) if teachers.is_relative_to(REPO) else teachers}; against "
                      f"the hidden labels; {len(consistency['per_fold'])} folds): "
                      f"{100 * consistency['teacher_dice_variant']:.1f} / {100 * consistency['teacher_dice_real']:.1f} "
                      f"= {consistency['consistency']:.2f}"]
    md = "\n".join(lines) + "\n"
    print(md)
    # a partial table is named for its folds: it never overwrites the whole one
    name = f"semisup_diffboost_{args.data}_{args.generator}{budget_suffix(args.budget)}{folds_suffix(folds, len(ps.folds))}"
    write_results(name, {"data": SOURCES[args.data], "budget": args.budget, "generator": args.generator, "folds": folds,
                         "table": table, "unlabelled_variant_consistency": consistency, "teachers": str(teachers),
                         "jobs": args.jobs, "threads_per_job": 1, "seconds_this_call": round(time.perf_counter() - t0, 1)}, md)


if __name__ == "__main__":
    main()
