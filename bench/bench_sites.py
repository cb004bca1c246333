"""Across sites, the protocol of `prepare SOURCE --target DIR`: every source image labelled and training,
the target's patients split into test folds, each fold's other target images training without their
labels. Table II per strategy on the target's test folds, with the corrected repeated k-fold interval
against ``classic`` over target folds x seeds; the floor is ``classic`` (source labels only), the ceiling
``classic`` trained on the target's own labelled training part (``target_supervised``).

    python bench/bench_sites.py                                   # BUSI -> BUS-BRA, 2 x 5 target folds
    python bench/bench_sites.py --source busbra --target busi     # the reverse (BUSI's normal images: false positives)
    python bench/bench_sites.py --strategies classic,histmatch+classic,fixmatch+classic,self-train+classic
    python bench/bench_sites.py --strategies classic,histmatch+classic --generator --folds-only 0,1,2,3,4
    python bench/bench_sites.py --strategies classic,self-train+classic --recorded diffboost-target+classic

``--seeds 0,1,2`` trains every row with each seed (the table is then named ``..._seeds0-1-2``, with the mean
per seed). ``--recorded`` puts rows in the table from their archived run records without training them (a missing
record fails), so that rows added later share one table with rows whose generators are no longer on disk.

``--generator`` adds ``diffboost-target+classic``: per fold, a generator fine-tuned with the `cpu` preset on
the source images and the fold's unlabelled target images (what `diffboost run` does with ``compare.augs:
[diffboost-target+classic]``, ``train.unlabelled: true`` and ``train.mask_dropout: 0.1``) draws 3 variants of every labelled source
image with a target scanner in the prompt (``generate.target_style``); about 30 min of one core per fold
(25 to fine-tune, 6 to draw).
``--folds-only 0,1,2,3,4`` runs partition 0 only (the table is then named ``..._folds0-1-2-3-4``). `cpu` preset
segmenter, 25 optimiser steps per epoch, the checkpoint chosen on the source's validation part; resumable
(fine-tuning from its checkpoints, finished runs reused). Writes ``bench/results/sites_<source>_to_<target>.json``
(and ``.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from concurrent.futures import ProcessPoolExecutor

from common import (BUDGET_DATA as SOURCES, REPO, SHARED_DATA, archive_runs, bench_preset, checkpoint_rule, diff_cell,
                    fold_generator, folds_suffix, need, restore_runs, write_results)

TARGET_STRATEGY = "diffboost-target+classic"


def read_row(folders: dict) -> dict:
    """One table row from its runs ``{(fold, seed): run folder}``: mean Dice per run, lesion Dice (cases with
    a lesion) and false positives on the target's empty references (BUSI's normal images)."""
    from diffboost.segmentation.compare import read_rows, run_means, summarise
    from diffboost.segmentation.config import SegConfig
    from diffboost.segmentation.jobs import SegJob

    rows = read_rows([SegJob(SegConfig(seed=s), k, f) for (k, s), f in folders.items()])
    t = summarise([{**r, "strategy": "row"} for r in rows], ["row"])["row"]
    return {"per_run": run_means(rows), "lesion_dice": 100 * t["lesion"]["dice"]["mean"],
            "lesion_cases": t["lesion"]["cases"], "empty_references": t["empty"]["references"],
            "false_positives": t["empty"]["false_positives"],
            "fp_rate": t["empty"]["fp_rate"] if t["empty"]["references"] else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", choices=list(SOURCES), default="busi")
    ap.add_argument("--target", choices=list(SOURCES), default="busbra")
    ap.add_argument("--strategies", default="classic,histmatch+classic,fixmatch+classic,self-train+classic")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--folds-only", dest="only", default=None, help="comma-separated folds (default: all)")
    ap.add_argument("--generator", action="store_true", help=f"add {TARGET_STRATEGY} (a generator per fold)")
    ap.add_argument("--no-ceiling", dest="ceiling", action="store_false", help="leave out the target-supervised row")
    ap.add_argument("--steps-per-epoch", type=int, default=25)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--recorded", default="", help="comma-separated strategies read from their archived run "
                    "records only, not trained this call (e.g. the DiffBoost rows when their generators are gone)")
    args = ap.parse_args()

    from diffboost.data.preparation import prepare, target_supervised
    from diffboost.data.store import PreparedSet
    from diffboost.evaluation.stats import holdout_ratio
    from diffboost.segmentation.compare import compare, run_stats
    from diffboost.segmentation.jobs import run_folder

    src, tgt = need(SHARED_DATA / SOURCES[args.source]), need(SHARED_DATA / SOURCES[args.target])
    out = REPO / "bench" / "work" / f"sites_{args.source}_to_{args.target}"
    cfg = bench_preset("cpu")
    pcfg = dataclasses.replace(cfg.prepare, folds=args.folds, repeats=args.repeats, target=str(tgt))
    t0 = time.perf_counter()
    ps = PreparedSet(out / "prepared") if (out / "prepared" / "dataset.json").exists() else \
        prepare(src, out / "prepared", pcfg, progress=True)
    seg = dataclasses.replace(cfg.seg, steps_per_epoch=args.steps_per_epoch)
    seeds = [int(s) for s in args.seeds.split(",")]
    strategies = [s for s in args.strategies.split(",") if s] + ([TARGET_STRATEGY] if args.generator else [])
    folds = [int(k) for k in args.only.split(",")] if args.only else list(range(len(ps.folds)))
    recorded = [s for s in args.recorded.split(",") if s]
    keep = REPO / "bench" / "results" / f"sites_{args.source}_to_{args.target}_runs"  # records without weights
    print(f"restored {restore_runs(keep, out)} finished run(s) from {keep}")
    if args.generator:  # the long part first, one fold per job
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for done in pool.map(fold_generator, [(str(ps.root), str(out), k, True, True) for k in folds]):
                print(f"generator ready: {done}")
    try:
        compare(ps, [s for s in strategies if s not in recorded], seg, out, folds, seeds=seeds, jobs=args.jobs)
        if args.ceiling:
            ceiling = target_supervised(ps, out / "ceiling" / "prepared")  # derived (written) only when asked
            compare(ceiling, ["classic"], seg, out / "ceiling", folds, seeds=seeds, jobs=args.jobs)
    finally:
        print(f"archived the records of {archive_runs(out, keep)} finished run(s) in {keep}")

    ratio = holdout_ratio([ps.fold(k) for k in folds])
    def run_folders(seg_root, strategy) -> dict:  # {(fold, seed): run folder}
        return {(k, x): run_folder(seg_root, strategy, k, x) for x in seeds for k in folds}

    runs = {name: run_folders(out / "seg", name) for name in strategies + [r for r in recorded if r not in strategies]}
    teachers = {key: f / "teacher" for key, f in runs.get("self-train+classic", {}).items()}
    if teachers and all((f / "metrics.csv").exists() for f in teachers.values()):  # archived since this session
        runs["classic trained again (self-train's teachers)"] = teachers  # classic, same seed, in its own folder
    if args.ceiling:
        runs["target-supervised classic (ceiling)"] = run_folders(out / "ceiling" / "seg", "classic")
    table = {name: read_row(folders) for name, folders in runs.items()}
    base = table["classic"]["per_run"]
    for name, t in table.items():
        r = t.pop("per_run")
        diff = None if name == "classic" else run_stats(r, base, ratio)
        table[name] = {"dice": 100 * sum(r.values()) / len(r), "vs_classic": None if diff is None else
                       {"dice_diff": diff["dice_diff"], "ci95": diff["ci95"], "runs": diff["runs"]}, **t}
        table[name]["per_seed"] = {x: 100 * sum(v for (_, s), v in r.items() if s == x) / len(folds) for x in seeds}
        table[name]["per_fold"] = {k: 100 * sum(v for (f, _), v in r.items() if f == k) / len(seeds) for k in folds}
    empties = any(t["empty_references"] for t in table.values())  # the target has normal images
    rules = {name: checkpoint_rule(runs[name], ratio) for name in strategies + recorded}  # chosen on source labels
    columns = ["Dice", "− classic"] + (["lesion Dice", "false positives"] if empties else []) + (
        ["per seed"] if len(seeds) > 1 else []) + [f"per fold ({', '.join(map(str, folds))})"]

    def cells(t: dict) -> list[str]:
        c = [f"{t['dice']:.2f}", diff_cell(t["vs_classic"])]
        if empties:
            c += [f"{t['lesion_dice']:.2f}", f"{t['false_positives']}/{t['empty_references']} ({100 * t['fp_rate']:.0f}%)"]
        if len(seeds) > 1:
            c.append(", ".join(f"{v:.2f}" for v in t["per_seed"].values()))
        return c + [", ".join(f"{v:.1f}" for v in t["per_fold"].values())]

    lines = [f"{SOURCES[args.source]} labels -> {SOURCES[args.target]} test folds ({len(folds)} folds, seeds {seeds}); "
             "Dice (%) mean over runs; difference to classic (source labels only) in Dice points, corrected 95% "
             "interval." + (" Lesion Dice over the cases with a lesion; false positives: empty references "
                            "(normal images) given any foreground." if empties else ""), "",
             "| strategy | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cells(t)) + " |" for name, t in table.items()]
    if any(rules.values()):
        lines += ["", "Checkpoint rule (target test Dice of the checkpoint chosen on the source's validation part, and "
                      "of the last epoch):", "", "| strategy | chosen | last epoch | last − chosen |", "|---|---|---|---|"]
        lines += [f"| {s} | {r['chosen']:.2f} | {r['last_epoch']:.2f} | {r['last_minus_chosen']:+.2f} "
                  f"[{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}] |" for s, r in rules.items() if r]
    md = "\n".join(lines) + "\n"
    print(md)
    name = f"sites_{args.source}_to_{args.target}{folds_suffix(folds, len(ps.folds))}" + (
        "" if seeds == [0] else "_seeds" + "-".join(map(str, seeds)))
    write_results(name, {"source": SOURCES[args.source], "target": SOURCES[args.target],
                         "protocol": {"folds": args.folds, "repeats": args.repeats, "seeds": seeds,
                                      "steps_per_epoch": args.steps_per_epoch, "epochs": seg.epochs,
                                      "jobs": args.jobs, "threads_per_job": 1, "cross_site": ps.meta["cross_site"]},
                         "folds_run": folds, "table": table, "checkpoint_rule": rules,
                         "seconds_this_call": round(time.perf_counter() - t0, 1)}, md)


if __name__ == "__main__":
    main()
