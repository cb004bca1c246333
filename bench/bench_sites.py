"""Across sites, the protocol of `prepare SOURCE --target DIR`: every source image labelled and training,
the target's patients split into test folds, each fold's other target images training without their
labels. Table II per strategy on the target's test folds, with the corrected repeated k-fold interval
against ``classic`` over target folds x seeds; the floor is ``classic`` (source labels only), the ceiling
``classic`` trained on the target's own labelled training part (``target_supervised``).

    python bench/bench_sites.py                                   # BUSI -> BUS-BRA, 2 x 5 target folds
    python bench/bench_sites.py --source busbra --target busi     # the reverse (BUSI's normal images: false positives)
    python bench/bench_sites.py --strategies classic,histmatch+classic,fixmatch+classic,self-train+classic
    python bench/bench_sites.py --strategies classic,histmatch+classic --generator --folds-only 0,1,2,3,4

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
import json
import time
from concurrent.futures import ProcessPoolExecutor

from common import (BUDGET_DATA as SOURCES, REPO, SHARED_DATA, archive_runs, checkpoint_rule, diff_cell,
                    fold_generator, folds_suffix, need, restore_runs)

TARGET_STRATEGY = "diffboost-target+classic"


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
    args = ap.parse_args()

    from diffboost.data.preparation import prepare, target_supervised
    from diffboost.data.store import PreparedSet
    from diffboost.evaluation.stats import holdout_ratio
    from diffboost.runconfig import preset
    from diffboost.segmentation.compare import compare, run_dice, run_stats
    from diffboost.segmentation.jobs import run_folder

    src, tgt = need(SHARED_DATA / SOURCES[args.source]), need(SHARED_DATA / SOURCES[args.target])
    out = REPO / "bench" / "work" / f"sites_{args.source}_to_{args.target}"
    cfg = preset("cpu")
    pcfg = dataclasses.replace(cfg.prepare, folds=args.folds, repeats=args.repeats, target=str(tgt))
    t0 = time.perf_counter()
    ps = PreparedSet(out / "prepared") if (out / "prepared" / "dataset.json").exists() else \
        prepare(src, out / "prepared", pcfg, progress=True)
    seg = dataclasses.replace(cfg.seg, steps_per_epoch=args.steps_per_epoch)
    seeds = [int(s) for s in args.seeds.split(",")]
    strategies = [s for s in args.strategies.split(",") if s] + ([TARGET_STRATEGY] if args.generator else [])
    folds = [int(k) for k in args.only.split(",")] if args.only else list(range(len(ps.folds)))
    keep = REPO / "bench" / "results" / f"sites_{args.source}_to_{args.target}_runs"  # records without weights
    print(f"restored {restore_runs(keep, out)} finished run(s) from {keep}")
    if args.generator:  # the long part first, one fold per job
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for done in pool.map(fold_generator, [(str(ps.root), str(out), k, True, True) for k in folds]):
                print(f"generator ready: {done}")
    try:
        compare(ps, strategies, seg, out, folds, seeds=seeds, jobs=args.jobs)
        if args.ceiling:
            ceiling = target_supervised(ps, out / "ceiling" / "prepared")  # derived (written) only when asked
            compare(ceiling, ["classic"], seg, out / "ceiling", folds, seeds=seeds, jobs=args.jobs)
    finally:
        print(f"archived the records of {archive_runs(out, keep)} finished run(s) in {keep}")

    ratio = holdout_ratio([ps.fold(k) for k in folds])
    base = run_dice(out / "seg", "classic", folds, seeds)
    rows = {s: run_dice(out / "seg", s, folds, seeds) for s in strategies}
    if args.ceiling:
        rows["target-supervised classic (ceiling)"] = run_dice(out / "ceiling" / "seg", "classic", folds, seeds)
    table = {}
    for name, r in rows.items():
        mean = 100 * sum(r.values()) / len(r)
        diff = None if name == "classic" else run_stats(r, base, ratio)
        table[name] = {"dice": mean, "vs_classic": None if diff is None else
                       {"dice_diff": diff["dice_diff"], "ci95": diff["ci95"], "runs": diff["runs"]}}
    rules = {s: checkpoint_rule({(k, x): run_folder(out / "seg", s, k, x) for x in seeds for k in folds}, ratio)
             for s in strategies}
    lines = [f"{SOURCES[args.source]} labels -> {SOURCES[args.target]} test folds ({len(folds)} folds, seeds {seeds}); "
             "Dice (%) mean over runs; difference to classic (source labels only) in Dice points, corrected 95% "
             "interval.", "", "| strategy | Dice | − classic |", "|---|---|---|"]
    for name, t in table.items():
        lines.append(f"| {name} | {t['dice']:.2f} | {diff_cell(t['vs_classic'])} |")
    if any(rules.values()):
        lines += ["", "Checkpoint rule (target test Dice of the checkpoint chosen on the source's validation part, and "
                      "of the last epoch):", "", "| strategy | chosen | last epoch | last − chosen |", "|---|---|---|---|"]
        lines += [f"| {s} | {r['chosen']:.2f} | {r['last_epoch']:.2f} | {r['last_minus_chosen']:+.2f} "
                  f"[{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}] |" for s, r in rules.items() if r]
    md = "\n".join(lines) + "\n"
    print(md)
    name = f"sites_{args.source}_to_{args.target}{folds_suffix(folds, len(ps.folds))}"
    path = REPO / "bench" / "results" / f"{name}.json"
    path.write_text(json.dumps({"name": name, "source": SOURCES[args.source], "target": SOURCES[args.target],
                                "protocol": {"folds": args.folds, "repeats": args.repeats, "seeds": seeds,
                                             "steps_per_epoch": args.steps_per_epoch, "epochs": seg.epochs,
                                             "jobs": args.jobs, "threads_per_job": 1,
                                             "cross_site": ps.meta["cross_site"]},
                                "folds_run": folds, "table": table, "checkpoint_rule": rules,
                                "seconds_this_call": round(time.perf_counter() - t0, 1)}, indent=1))
    path.with_suffix(".md").write_text(md)
    print(f"written {path}")


if __name__ == "__main__":
    main()
