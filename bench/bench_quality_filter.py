"""Ablation: does the synthetic-quality filter help Dice? diffboost with and without it, same folds,
seeds and settings as ``bench_seg_compare.py`` (run that first: its diffboost runs are reused), plus
what the filter removed per fold.

    python bench/bench_quality_filter.py [--work bench/work/busi96] [same settings as the compare]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
from common import REPO, report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "work" / "busi96")
    ap.add_argument("--folds", default="0,1,2")
    ap.add_argument("--network", default="attention_unet")
    ap.add_argument("--channels", default="8,16,32,64,64,128")
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    from scipy.stats import wilcoxon

    from diffboost.data.store import PreparedSet
    from diffboost.segmentation import SegConfig, train_seg

    ps = PreparedSet(args.work / "prepared")
    folds = [int(k) for k in args.folds.split(",")]
    base = SegConfig(network=args.network, channels=tuple(int(c) for c in args.channels.split(",")), epochs=args.epochs,
                     batch_size=args.batch, learning_rate=args.lr, precision=args.precision, threads=args.threads,
                     aug="diffboost")
    per: dict[str, list[dict]] = {"diffboost": [], "diffboost + quality filter": []}
    removed = {}
    for k in folds:
        for name, cfg, out in (("diffboost", base, args.work / "seg" / "diffboost" / f"fold{k}"),
                               ("diffboost + quality filter", dataclasses.replace(base, quality_filter=True),
                                args.work / "seg_quality" / "diffboost" / f"fold{k}")):
            train_seg(ps, k, cfg, out)
            with open(out / "metrics.csv", newline="") as f:
                per[name] += list(csv.DictReader(f))
        removed[k] = json.loads((args.work / "synthetic" / f"fold{k}" / "quality.json").read_text())
    rows = []
    for name, rs in per.items():
        rows.append({"strategy": name, "cases": len(rs),
                     **{m: float(np.mean([float(r[m]) for r in rs])) for m in ("dice", "precision", "recall", "hd95", "assd")},
                     "dice_std": float(np.std([float(r["dice"]) for r in rs]))})
    a = np.array([float(r["dice"]) for r in per["diffboost + quality filter"]])
    b = np.array([float(r["dice"]) for r in per["diffboost"]])
    p = float(wilcoxon(a, b).pvalue) if np.any(a != b) else 1.0
    report("quality_filter_busi", rows, {"wilcoxon_p_dice": p, "removed": removed, "seg_config": base.identity()})


if __name__ == "__main__":
    main()
