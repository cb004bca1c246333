"""The ablations of ``diffboost-target+classic`` across sites (``bench_sites.py --generator`` first: this reuses
its per-fold generators and runs). On the same target folds and seeds, each row changes one thing:

- ``strength 0.5``: the variants drawn further from the source image (image-to-image strength 0.5, not 0.3);
- ``no scanner in the prompt``: the same generator, the source's own prompt (``US, Breast, benign``), so the
  variants carry no target scanner;
- ``share 0.7``: the same variants, Algorithm 1 taking a patch from a variant with probability 0.7, not 0.4
  (``seg.alpha`` 0.3).

    python bench/bench_sites_ablation.py                      # BUSI -> BUS-BRA, folds 0-5, seed 0
    python bench/bench_sites_ablation.py --folds-only 0,1,2,3,4,5,6,7,8,9

Drawing took about 5 min (strength 0.3) to 8 min (0.5) of one core per fold, a segmenter about 6.5 min.
Resumable. Writes ``bench/results/sites_<source>_to_<target>_ablation_foldsA-B-....json``
(no suffix when every fold is run) (and ``.md``):
each row's Dice on the target's test folds, its difference to ``diffboost-target+classic`` and to ``classic``
with the corrected repeated k-fold interval, and the label consistency of each variant set (the teacher: the
fold's ``classic`` segmenter, trained on the source labels; see ``diffboost.evaluation.consistency``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from concurrent.futures import ProcessPoolExecutor

from common import BUDGET_DATA as SOURCES, REPO, archive_runs, bench_preset, diff_cell, folds_suffix, restore_runs, write_results

BASE = "diffboost-target+classic"
BASE_ROW = f"{BASE} (strength 0.3, scanner prompt, share 0.4)"
# name: (generation overrides, or None for the base variants; segmentation overrides)
ABLATIONS = {
    "strength 0.5": ({"strength": 0.5}, {}),
    "no scanner in the prompt": ({"target_style": False}, {}),
    "share 0.7": (None, {"alpha": 0.3}),
}


def slug(name: str) -> str:
    return name.replace(" ", "-")


def draw(job: tuple) -> str:
    """Draw fold k's variants with one ablation's generation settings, in one torch thread."""
    import torch

    from diffboost.generation.generate import generate
    from diffboost.runconfig import preset

    torch.set_num_threads(1)
    prepared, model, out, k, overrides = job
    gen = dataclasses.replace(preset("cpu").generate, **{"target_style": True, **overrides})
    generate(model, prepared, out, k, gen, progress=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", choices=list(SOURCES), default="busi")
    ap.add_argument("--target", choices=list(SOURCES), default="busbra")
    ap.add_argument("--folds-only", dest="only", default="0,1,2,3,4,5", help="comma-separated target folds")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps-per-epoch", type=int, default=25)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()

    from diffboost.data.store import PreparedSet
    from diffboost.diffusion.train import finished_training
    from diffboost.evaluation.stats import holdout_ratio
    from diffboost.segmentation.compare import run_dice, run_stats
    from diffboost.segmentation.jobs import SegJob, run_folder, run_jobs

    out = REPO / "bench" / "work" / f"sites_{args.source}_to_{args.target}"
    if not (out / "prepared" / "dataset.json").exists():
        raise SystemExit(f"{out / 'prepared'}: run bench/bench_sites.py --generator first")
    ps = PreparedSet(out / "prepared")
    folds = [int(k) for k in args.only.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    missing = [k for k in folds if not finished_training(out / "models" / f"fold{k}" / "model")]
    if missing:
        raise SystemExit(f"{out / 'models'}: no finished generator for fold(s) {missing}; run "
                         f"bench/bench_sites.py --generator --folds-only {','.join(map(str, missing))} first")
    t0 = time.perf_counter()
    keep = REPO / "bench" / "results" / f"sites_{args.source}_to_{args.target}_runs"
    print(f"restored {restore_runs(keep, out)} finished run(s) from {keep}")
    root = out / "ablation"
    draws = [(str(ps.root), str(out / "models" / f"fold{k}" / "model"), str(root / f"synthetic_{slug(a)}" / f"fold{k}"),
              k, g) for a, (g, _) in ABLATIONS.items() if g is not None for k in folds]
    draws.sort(key=lambda j: -j[4].get("strength", 0.3))  # the longest first
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for done in pool.map(draw, draws):
            print(f"variants ready: {done}")

    # label consistency of each variant set: the teacher is the fold's classic segmenter (source labels only)
    from diffboost.evaluation.consistency import label_consistency

    # each row's variant set: its own, or (segmentation-only ablations) the base one
    sets = {BASE_ROW: out / "synthetic_diffboost-target"}
    sets.update({a: root / f"synthetic_{slug(a)}" if g is not None else sets[BASE_ROW]
                 for a, (g, _) in ABLATIONS.items()})
    consistency = {}  # label_consistency reuses the files it wrote into a set: a shared set is checked once
    for name, folder in sets.items():
        per_fold = [label_consistency(run_folder(out / "seg", "classic", k, seeds[0]) / "model", ps,
                                      folder / f"fold{k}", k, progress=False)["overall"] for k in folds]
        consistency[name] = {key: sum(f[key] for f in per_fold) / len(per_fold)
                             for key in ("consistency", "teacher_dice_variant", "teacher_dice_real")}

    seg = dataclasses.replace(bench_preset("cpu").seg, steps_per_epoch=args.steps_per_epoch, aug=BASE)

    def cfg_of(a: str, seed: int):
        g, s = ABLATIONS[a]
        synthetic = str(root / f"synthetic_{slug(a)}" / "fold{fold}") if g is not None else None
        return dataclasses.replace(seg, seed=seed, synthetic=synthetic, **s)

    jobs = {a: [SegJob(cfg_of(a, x), k, run_folder(root / "seg", slug(a), k, x)) for x in seeds for k in folds]
            for a in ABLATIONS}
    try:
        run_jobs(ps, [j for js in jobs.values() for j in js], args.jobs)
    finally:
        print(f"archived the records of {archive_runs(out, keep)} finished run(s) in {keep}")

    ratio = holdout_ratio([ps.fold(k) for k in folds])
    classic, base = (run_dice(out / "seg", s, folds, seeds) for s in ("classic", BASE))
    rows = {BASE_ROW: base}
    rows.update({a: run_dice(root / "seg", slug(a), folds, seeds) for a in ABLATIONS})
    table = {}
    for name, r in rows.items():
        vs = {"vs_classic": run_stats(r, classic, ratio)}
        if r is not base:
            vs[f"vs_{BASE}"] = run_stats(r, base, ratio)
        table[name] = {"dice": 100 * sum(r.values()) / len(r), "label_consistency": consistency[name],
                       **{k: {"dice_diff": d["dice_diff"], "ci95": d["ci95"], "runs": d["runs"]} for k, d in vs.items()}}

    lines = [f"{SOURCES[args.source]} labels -> {SOURCES[args.target]} test folds {folds}, seeds {seeds}; Dice (%) "
             f"mean over runs; differences in Dice points with the corrected 95% interval. classic: "
             f"{100 * sum(classic.values()) / len(classic):.2f}.", "",
             f"| row | label consistency | Dice | − {BASE} | − classic |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {t['label_consistency']['consistency']:.3f} | {t['dice']:.2f} | "
              f"{diff_cell(t.get(f'vs_{BASE}'))} | {diff_cell(t['vs_classic'])} |" for n, t in table.items()]
    lines += ["", "Label consistency: the teacher's (the fold's classic segmenter, trained on the source labels) "
                  "mean Dice on the variants against their source masks over its Dice on the real source images, "
                  "mean over folds; a row that reuses the variants shares their value."]
    md = "\n".join(lines) + "\n"
    print(md)
    name = f"sites_{args.source}_to_{args.target}_ablation{folds_suffix(folds, len(ps.folds))}"
    write_results(name, {"source": SOURCES[args.source], "target": SOURCES[args.target], "folds_run": folds,
                         "seeds": seeds, "ablations": {a: {"generate": g, "seg": s} for a, (g, s) in ABLATIONS.items()},
                         "protocol": {"steps_per_epoch": args.steps_per_epoch, "epochs": seg.epochs,
                                      "jobs": args.jobs, "threads_per_job": 1},
                         "classic_dice": 100 * sum(classic.values()) / len(classic), "table": table,
                         "seconds_this_call": round(time.perf_counter() - t0, 1)}, md)


if __name__ == "__main__":
    main()
