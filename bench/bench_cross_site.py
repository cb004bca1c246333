"""The cross-site baseline: segmenters trained on BUSI (Egypt) applied to BUS-BRA (Brazil, other
scanners) through the user's commands, `diffboost predict` + `diffboost evaluate`.

It takes the fold models of a `bench/bench_budgets.py --data busi` run (partition 0's folds by default),
predicts every BUS-BRA image at its original size and scores it against BUS-BRA's masks, beside the same
model's Dice on the lesion images of its own BUSI test fold (BUS-BRA has a lesion in every image):

    python bench/bench_budgets.py --data busi           # first: the models
    python bench/bench_cross_site.py                    # ~1 min per model on one thread

Writes ``bench/results/cross_site_busi_to_busbra.json`` and prints the table: per strategy and budget,
mean Dice (%) over the fold models on their BUSI test folds and on all of BUS-BRA, and the drop. The
BUS-BRA column's interval is a t-interval over the models (they share one test set, so it says how much
the models vary, not how a new site would).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from common import REPO, SHARED_DATA, need


def _t_interval(values: list[float]) -> list[float]:
    from scipy import stats

    v = np.asarray(values, float)
    if len(v) < 2:
        return [float("nan"), float("nan")]
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return [float(v.mean() - half), float(v.mean() + half)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=Path, default=REPO / "bench" / "work" / "budgets_busi")
    ap.add_argument("--strategies", default="none,classic")
    ap.add_argument("--budgets", default="0.1,1")
    ap.add_argument("--folds", default="0,1,2,3,4", help="fold models to apply (partition 0 of a 2 x 5 protocol)")
    args = ap.parse_args()

    import torch

    from diffboost.segmentation.apply import evaluate_folder, predict_folder

    torch.set_num_threads(1)
    target = need(SHARED_DATA / "BUS-BRA")
    need(args.runs / "prepared")
    work = REPO / "bench" / "work" / "cross_site"
    rows, t0 = [], time.perf_counter()
    for budget in [b for b in args.budgets.split(",") if b]:
        root = args.runs if budget == "1" else args.runs / "budgets" / budget
        for strategy in [s for s in args.strategies.split(",") if s]:
            own, other, ids = [], [], []
            for k in [int(f) for f in args.folds.split(",")]:
                run = root / "seg" / strategy / "seed0" / f"fold{k}"
                if not (run / "summary.json").exists():
                    print(f"skip {run}: not trained yet")
                    continue
                out = work / f"{budget}_{strategy}_fold{k}"
                if not (out / "evaluation" / "summary.json").exists():
                    if not (out / "predictions.csv").exists():
                        predict_folder(run, target, out, overwrite=True, progress=False)
                    evaluate_folder(out, target, progress=False)
                summary = json.loads((out / "evaluation" / "summary.json").read_text())
                with open(run / "metrics.csv", newline="") as f:
                    # BUS-BRA has a lesion in every image: compare with the BUSI test images that have one
                    own.append(100 * float(np.mean([float(r["dice"]) for r in csv.DictReader(f)
                                                    if int(r["reference_empty"]) == 0])))
                other.append(100 * summary["metrics"]["dice"])
                ids.append(k)
            if not ids:
                continue
            rows.append({"budget": budget, "strategy": strategy, "models": len(ids),
                         "BUSI test fold Dice, lesion images": round(float(np.mean(own)), 2),
                         "BUS-BRA Dice": round(float(np.mean(other)), 2),
                         "BUS-BRA t95 over models": [round(v, 2) for v in _t_interval(other)],
                         "drop": round(float(np.mean(own) - np.mean(other)), 2),
                         "per_model_busbra": [round(v, 2) for v in other], "folds": ids})
    print("| budget | strategy | models | BUSI test fold, lesion images | BUS-BRA (t95 over models) | drop |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["BUS-BRA t95 over models"]
        print(f"| {r['budget']} | {r['strategy']} | {r['models']} | {r['BUSI test fold Dice, lesion images']:.2f} | "
              f"{r['BUS-BRA Dice']:.2f} [{lo:.2f}, {hi:.2f}] | {r['drop']:.2f} |")
    path = REPO / "bench" / "results" / "cross_site_busi_to_busbra.json"
    path.write_text(json.dumps({"name": "cross_site_busi_to_busbra", "source_runs": str(args.runs),
                                "target": str(target), "rows": rows, "threads": 1,
                                "seconds_this_call": round(time.perf_counter() - t0, 1)}, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
