"""Semi-supervised learners against classical augmentation at a label budget: ``classic`` (nnU-Net's
augmentation), ``fixmatch+classic`` and ``self-train+classic`` learning from the budget's hidden images
as unlabelled ones, with the `cpu` preset's segmenter, on the partitions, folds, seed and steps of
``bench_budgets.py`` (whose ``none`` / ``classic`` runs are reused, and whose ``classic`` with every label
is the reference of "labels saved").

Settings of the learners are the literature's defaults, not tuned here: confidence threshold 0.95 and
an unlabelled batch as large as the labelled one with weight 1 (UniMatch's medical setting), CutMix
with probability 0.5; self-training keeps the more confident half of the unlabelled images, one round.

    python bench/bench_semisup.py --data busi                        # 10% labels, 2 x 5 folds, 2 one-thread jobs
    python bench/bench_semisup.py --data busi --budgets 0.1,0.25

Resumable (finished runs are reused; their records are kept in ``bench/results/budgets_<data>_runs/``).
A self-training teacher is the fold's ``classic`` run at the same budget: it is copied in, not trained
again (same settings, same identity). Writes ``bench/results/semisup_<data>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from common import (BUDGET_DATA as SOURCES, REPO, SHARED_DATA, archive_runs, bench_preset, copy_teachers, need, restore_runs,
                    write_results)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=list(SOURCES), default="busi")
    ap.add_argument("--budgets", default="0.1")
    ap.add_argument("--strategies", default="fixmatch+classic,self-train+classic")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps-per-epoch", type=int, default=25)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    from diffboost.data.preparation import with_budget
    from diffboost.data.store import PreparedSet
    from diffboost.segmentation.curves import budget_name, curve_markdown, learning_curve

    need(SHARED_DATA / SOURCES[args.data])
    out = REPO / "bench" / "work" / f"budgets_{args.data}"  # bench_budgets.py's folder: its runs are reused
    if not (out / "prepared" / "dataset.json").exists():
        raise SystemExit(f"{out / 'prepared'}: run `python bench/bench_budgets.py --data {args.data}` first "
                         "(its partitions, folds and baselines are this comparison's)")
    ps = PreparedSet(out / "prepared")
    keep = REPO / "bench" / "results" / f"budgets_{args.data}_runs"
    print(f"restored {restore_runs(keep, out)} finished run(s) from {keep}")
    cfg = bench_preset("cpu")
    seg = dataclasses.replace(cfg.seg, steps_per_epoch=args.steps_per_epoch)
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = [b for b in args.budgets.split(",") if b] + ["1"]
    semi = [s for s in args.strategies.split(",") if s]
    strategies = ["none", "classic", *semi]
    t0 = time.perf_counter()
    # a self-training teacher trains as the fold's classic run did: copy that run in (train_seg reuses it)
    for b in budgets[:-1]:
        root = out / "budgets" / budget_name(b)
        sps = with_budget(ps, b, root / "prepared")
        copy_teachers(root / "seg", semi, range(len(sps.folds)), seeds)
    try:
        curve = learning_curve(ps, budgets, strategies, seg, out, seeds=seeds, jobs=args.jobs)
    finally:
        print(f"archived the records of {archive_runs(out, keep)} finished run(s) in {keep}")
    md = curve_markdown(curve)
    print(md)
    name = f"semisup_{args.data}{'_' + args.tag if args.tag else ''}"
    result = {"data": SOURCES[args.data], "protocol": {
        "folds": len(ps.folds), "seeds": seeds, "budgets": budgets, "strategies": strategies,
        "steps_per_epoch": args.steps_per_epoch, "epochs": seg.epochs,
        "learners": {k: getattr(seg, k) for k in ("confidence", "unlabelled_batch", "unlabelled_weight", "cutmix_prob",
                                                  "self_train_keep", "self_train_rounds")},
        "segmenter": {k: v for k, v in dataclasses.asdict(seg).items() if k in ("network", "channels", "batch_size")},
        "jobs": args.jobs, "threads_per_job": 1},
        "curve": curve, "seconds_this_call": round(time.perf_counter() - t0, 1)}
    path = write_results(name, result, md)
    from diffboost.report.figures import learning_curve as curve_png

    path.with_suffix(".png").write_bytes(curve_png(curve))


if __name__ == "__main__":
    main()
