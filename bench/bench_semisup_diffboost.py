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
segmentation runs are reused; a fold whose runs have all finished is read from its records (restored
when ``bench/work`` is gone) without its generator, and keeps the label consistency an earlier call
measured with one of the same ``--teachers`` folders (comma-separated; per fold, the first holding weights).
Writes ``bench/results/semisup_diffboost_<data>_<generator>.{json,md}`` (``..._0.25`` at another budget
than 0.1, ``..._folds0-1-2-3`` when ``--folds`` leaves folds out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from common import (BUDGET_DATA as SOURCES, REPO, archive_runs, bench_preset, budget_set, budget_suffix, checkpoint_rule, copy_teachers,
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


def _other_settings(run: Path, cfg) -> list[str]:
    """The options on which a finished run's recorded config differs from ``cfg``, as the trainer's own
    check reads them, where its variants lie aside (they may be gone)."""
    from diffboost.segmentation.trainer import changed_options, recorded_config

    old = recorded_config(json.loads((run / "run.json").read_text())["config"])
    return [k for k in changed_options(old, cfg.identity()) if k != "synthetic"]


def _work_path(p) -> str:
    """A folder under ``bench/work/`` named the same in any checkout (results record absolute paths); any
    other folder as given."""
    return str(p).split("bench/work/", 1)[-1]


def _shown(t: str) -> str:
    return t if Path(t).is_absolute() else f"bench/work/{t}"


def _measured_before(name: str, teachers: list[Path], default: Path) -> dict[int, dict]:
    """Per-fold consistency that earlier calls wrote to ``NAME.json`` or ``NAME_folds....json``, scored by a
    teacher in one of ``teachers``: a fold whose variants or teacher weights are gone since (``bench/work``
    is not kept) is not lost. A file that names no teacher per fold used its ``teachers`` (one folder), or
    ``default`` when it names none."""
    allowed = {_work_path(t) for t in teachers}
    out = {}
    for f in sorted((REPO / "bench" / "results").glob(f"{name}*.json")):
        if f.stem != name and not f.stem.startswith(f"{name}_folds"):
            continue
        d = json.loads(f.read_text())
        c = d.get("unlabelled_variant_consistency")
        given = d.get("teachers") or [str(default)]
        given = [given] if isinstance(given, str) else given
        for k, v in (c["per_fold"] if c else {}).items():
            teacher = v.get("teacher") or (_work_path(given[0]) if len(given) == 1 else None)  # older files: one folder
            if teacher in allowed:
                out.setdefault(int(k), {**v, "teacher": teacher, "measured_in": v.get("measured_in", f.name)})
    return out


def _consistency(ps, root: Path, teachers: list[Path], folds: list[int], before: dict[int, dict]) -> dict:
    """Teacher Dice on the unlabelled images' variants / on their real images, against the hidden labels
    (benchmark only: the masks are read from the arrays, past the store's guard). A fold's teacher is its
    ``classic`` run in the first of ``teachers`` that holds its weights; a fold that cannot be measured now
    keeps its value from ``before`` (``_measured_before``), marked with the file it came from."""
    from diffboost.evaluation.metrics import label_dice
    from diffboost.generation.synthetic import SyntheticSet
    from diffboost.segmentation.data import to_size
    from diffboost.segmentation.jobs import run_folder
    from diffboost.segmentation.predict import predict_probs
    from diffboost.segmentation.trainer import load_segmenter

    masks = np.load(ps.root / "masks.npy", mmap_mode="r")  # hidden labels: this benchmark's scoring only
    out = {}
    for k in folds:
        held = [t for t in teachers if (run_folder(t, "classic", k, 0) / "model").is_dir()]
        variants = root / "synthetic" / f"fold{k}"
        if not held or not variants.is_dir():  # a run restored from its archived record has no weights
            if k in before:
                out[k] = before[k]
                print(f"label consistency: fold {k} as measured in {before[k]['measured_in']}")
            else:
                print(f"label consistency: fold {k} skipped, no classic weights in {teachers} or no {variants}")
            continue
        syn = SyntheticSet(variants)
        net, conf = load_segmenter(run_folder(held[0], "classic", k, 0) / "model")
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
                  "teacher_dice_real": float(np.mean(list(d_real.values()))), "teacher": _work_path(held[0])}
    if not out:
        return None
    v = np.mean([o["teacher_dice_variant"] for o in out.values()])
    r = np.mean([o["teacher_dice_real"] for o in out.values()])
    return {"per_fold": out, "teacher_dice_variant": float(v), "teacher_dice_real": float(r),
            "consistency": float(v / r) if r > 0 else float("nan")}


def _consistency_line(c: dict) -> str:
    """The consistency sentence of the table: which teachers scored which folds, and the ratio."""
    by_teacher = {}
    for k, o in sorted(c["per_fold"].items()):
        by_teacher.setdefault(o["teacher"], []).append(k)
    where = "; ".join(f"{_shown(t)} (folds {', '.join(map(str, ks))})" for t, ks in by_teacher.items())
    kept = sorted(k for k, o in c["per_fold"].items() if "measured_in" in o)
    return (f"Label consistency of the unlabelled images' variants (teacher: the fold's classic run in {where}; "
            f"against the hidden labels; {len(c['per_fold'])} folds, "
            f"{sum(o['variants'] for o in c['per_fold'].values()):,} variants): "
            f"{100 * c['teacher_dice_variant']:.1f} / {100 * c['teacher_dice_real']:.1f} = {c['consistency']:.2f}"
            + (f" (folds {', '.join(map(str, kept))} as measured by an earlier call)" if kept else ""))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=list(SOURCES), default="busi")
    ap.add_argument("--budget", default="0.1")
    ap.add_argument("--generator", choices=["every", "labelled"], default="every")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--folds", default=None, help="comma-separated folds (default: all)")
    ap.add_argument("--steps-per-epoch", type=int, default=25)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--teachers", default=None, help="seg folder(s), comma-separated, of the classic runs (with weights) that score the "
                    "variants' label consistency; default: the learning curve's, BUDGET/seg")
    args = ap.parse_args()

    from diffboost.evaluation.stats import holdout_ratio
    from diffboost.segmentation.compare import compare, run_dice, run_stats
    from diffboost.segmentation.config import semi_of
    from diffboost.segmentation.jobs import run_folder

    base, keep, budget_root, ps = budget_set(args.data, args.budget, "bench_budgets.py and bench_semisup.py")
    root = budget_root / f"generator_{args.generator}"
    folds = [int(k) for k in args.folds.split(",")] if args.folds else list(range(len(ps.folds)))
    t0 = time.perf_counter()
    seg = dataclasses.replace(bench_preset("cpu").seg, steps_per_epoch=args.steps_per_epoch,
                              synthetic=str(root / "synthetic" / "fold{fold}"))
    strategies = [s for s in args.strategies.split(",") if s]
    # a fold whose runs have all finished (or been restored from their records) needs neither its generator
    # nor its variants again: only the others fine-tune, draw and train
    todo = [k for k in folds if not all((run_folder(root / "seg", s, k, 0) / "summary.json").exists() for s in strategies)]
    if len(todo) < len(folds):
        for k in sorted(set(folds) - set(todo)):
            for s in strategies:  # what compare() would check, but for the variants (which may be gone)
                run = run_folder(root / "seg", s, k, 0)
                differ = _other_settings(run, dataclasses.replace(seg, aug=s))
                if differ:
                    raise SystemExit(f"{run}: a run with other settings ({', '.join(differ)}) than this call's")
        print(f"folds {sorted(set(folds) - set(todo))}: every run finished, read from its records")
    jobs = [(str(ps.root), str(root), k, args.generator == "every", False) for k in todo]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for done in pool.map(fold_generator, jobs):
            print(f"generator ready: {done}")
    try:
        first = [s for s in strategies if semi_of(s) != "self-train"]  # the teachers first
        if first and todo:
            compare(ps, first, seg, root, todo, jobs=args.jobs)
        copy_teachers(root / "seg", strategies, todo, [0])  # the diffboost runs just made teach
        if todo:
            compare(ps, strategies, seg, root, todo, jobs=args.jobs)
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
    default = (budget_root / "seg").resolve()
    teachers = [Path(t).resolve() for t in args.teachers.split(",")] if args.teachers else [default]
    name = f"semisup_diffboost_{args.data}_{args.generator}{budget_suffix(args.budget)}"
    consistency = _consistency(ps, root, teachers, folds, _measured_before(name, teachers, default))
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
        lines += ["", _consistency_line(consistency)]
    md = "\n".join(lines) + "\n"
    print(md)
    # a partial table is named for its folds: it never overwrites the whole one
    write_results(name + folds_suffix(folds, len(ps.folds)), {"data": SOURCES[args.data], "budget": args.budget, "generator": args.generator, "folds": folds,
                         "table": table, "unlabelled_variant_consistency": consistency, "teachers": [str(t) for t in teachers],
                         "jobs": args.jobs, "threads_per_job": 1, "seconds_this_call": round(time.perf_counter() - t0, 1)}, md)


if __name__ == "__main__":
    main()
