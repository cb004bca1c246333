"""Table II on real data with the CPU preset: every strategy on the same 3 folds and seeds.

For each fold the diffusion model is fine-tuned on that fold's TRAINING part only and generates n
variants of each training image (skipped when already there), then ``compare`` trains and evaluates
none, the 8 classical strategies, deepstack and diffboost (finished runs are reused), and the script
prints Table II with the wall time of every stage.

    python bench/bench_seg_compare.py --data busi          # ../shared/data/BUSI, 96 px
    python bench/bench_seg_compare.py --data hippocampus --size 48 --epochs 8

Options name every setting that changes the result; all are written into the JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import REPO, SHARED_DATA, need, report

SOURCES = {"busi": ("BUSI", {}), "hippocampus": (
    "MSD/Task04_Hippocampus", {"label_map": {1: 1, 2: 1}, "prompt": {"organ": "Hippocampus"}})}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=list(SOURCES), default="busi")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--augs", default="none,contrast,gamma,brightness,noise,resolution,mirror,rotate,scale,deepstack,diffboost")
    ap.add_argument("--folds", default="0,1,2")
    ap.add_argument("--network", default="attention_unet")
    ap.add_argument("--channels", default="8,16,32,64,64,128")
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 when sharing the CPU)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--alpha", type=float, default=0.6)
    ap.add_argument("--patch", type=int, default=None)
    ap.add_argument("--mix", default="input")
    ap.add_argument("--diffusion-steps", type=int, default=2500)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--sample-steps", type=int, default=15)
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "work")
    args = ap.parse_args()
    from diffboost.config import PrepareConfig
    from diffboost.data.preparation import prepare
    from diffboost.data.store import PreparedSet
    from diffboost.diffusion.models import ModelConfig
    from diffboost.diffusion.train import TrainConfig, train_diffusion
    from diffboost.generation import GenerateConfig, generate
    from diffboost.segmentation import SegConfig, compare

    sub, prep_opts = SOURCES[args.data]
    src = need(SHARED_DATA / sub)
    work = args.work / f"{args.data}{args.size}"
    augs = [a for a in args.augs.split(",") if a]
    folds = [int(k) for k in args.folds.split(",")]
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    prep = work / "prepared"
    ps = PreparedSet(prep) if (prep / "dataset.json").exists() else prepare(
        src, prep, PrepareConfig(size=args.size, **prep_opts))
    times["prepare"] = time.perf_counter() - t0

    if any(a.startswith("diffboost") for a in augs):
        for k in folds:
            run = work / "models" / f"fold{k}"
            t0 = time.perf_counter()
            if not (run / "model").exists():
                f = ps.fold(k)
                train_diffusion(ps, run, ps.indices(f.train, training=True), ModelConfig(image_size=ps.size),
                                TrainConfig(steps=args.diffusion_steps, batch_size=8),
                                resume="latest" if (run / "checkpoints").exists() else None,
                                val_indices=ps.indices(f.val, training=True))
            times[f"finetune fold{k}"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            generate(run / "model", ps, work / "synthetic" / f"fold{k}", k,
                     GenerateConfig(n=args.n, steps=args.sample_steps))
            times[f"generate fold{k}"] = time.perf_counter() - t0

    cfg = SegConfig(network=args.network, channels=tuple(int(c) for c in args.channels.split(",")),
                    epochs=args.epochs, batch_size=args.batch, learning_rate=args.lr, precision=args.precision,
                    alpha=args.alpha, patch=args.patch, mix=args.mix, threads=args.threads)
    t0 = time.perf_counter()
    result = compare(ps, augs, cfg, work, folds)
    times["compare (this call)"] = time.perf_counter() - t0
    train_s = result["train_seconds"]
    seg_total = 0.0
    for s in augs:
        for k in folds:
            summ = json.loads((work / "seg" / s / f"fold{k}" / "summary.json").read_text())
            seg_total += summ["train_seconds"] + summ["eval_seconds"]
    rows = []
    for s, e in result["table"].items():
        rows.append({"strategy": s, **{f"{m}": e[m]["mean"] for m in ("dice", "precision", "recall", "hd95", "assd")},
                     "dice_std": e["dice"]["std"], "dice_gain_vs_none": e.get("dice_gain_vs_none", 0.0),
                     "p_vs_none": e.get("wilcoxon_p_vs_none", 1.0),
                     "train_s_per_fold": sum(train_s[f"{s}/fold{k}"] for k in folds) / len(folds)})
    md = (work / "compare" / "table.md").read_text()
    print("\n" + md)
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"seg_compare_{args.data}.md").write_text(md)
    report(f"seg_compare_{args.data}", rows, {
        "settings": vars(args) | {"work": str(args.work)}, "seg_config": cfg.identity(),
        "stage_seconds": {k: round(v, 1) for k, v in times.items()},
        "segmentation_seconds_all_runs": round(seg_total, 1), "unit": result["unit"],
        "cases": {s: e["cases"] for s, e in result["table"].items()}})


if __name__ == "__main__":
    main()
