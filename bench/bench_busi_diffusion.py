"""The small model on real BUSI (fold 0, CPU preset), end to end, with the issue's targets.

1. fine-tune from scratch on the TRAINING part of fold 0 (edges + mask boundary): wall time;
2. generate n variants of every training image (about 1,000 images): wall time;
3. fidelity on the fold's held-out TEST images: generate from each image's condition and prompt
   (no augmentation text) and compare with the real image (intensities in [0, 1]): SSIM and MAE,
   side by side with a blurred-edge baseline (a per-pixel linear fit of intensity on the blurred
   condition, fitted on the training images) — the generated images must beat it;
4. a grid: real | condition | generated | baseline for a few test images.

    python bench/bench_busi_diffusion.py [--steps 4000] [--n 3] [--work bench/work]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import REPO, SHARED_DATA, need, report
from scipy import ndimage
from skimage.metrics import structural_similarity as ssim


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--control", default="concat")
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "work")
    args = ap.parse_args()
    from diffboost.config import PrepareConfig
    from diffboost.data.preparation import prepare
    from diffboost.data.preview import grid_png, to_uint8
    from diffboost.data.store import PreparedSet
    from diffboost.diffusion.models import ModelConfig
    from diffboost.diffusion.pipeline import DiffBoostPipeline
    from diffboost.diffusion.train import TrainConfig, train_diffusion
    from diffboost.generation import GenerateConfig, generate

    src = need(SHARED_DATA / "BUSI")
    prep = args.work / f"busi{args.size}"
    ps = PreparedSet(prep) if (prep / "dataset.json").exists() else prepare(src, prep, PrepareConfig(size=args.size))
    fold = ps.fold(args.fold)
    train_idx = ps.indices(fold.train, training=True)
    run = args.work / f"busi_{args.control}_fold{args.fold}"
    t0 = time.perf_counter()
    model = run / "model"
    if not model.exists():
        train_diffusion(ps, run, train_idx, ModelConfig(image_size=ps.size, control=args.control),
                        TrainConfig(steps=args.steps, batch_size=args.batch, checkpoint_every=500, validate_every=1000),
                        resume="latest" if (run / "checkpoints").exists() else None,
                        val_indices=ps.indices(fold.val, training=True))
    t_train = time.perf_counter() - t0

    t0 = time.perf_counter()
    syn = generate(model, ps, run / "synthetic", args.fold, GenerateConfig(n=args.n))
    t_gen = time.perf_counter() - t0

    # fidelity on held-out test images
    test_idx = ps.indices(fold.test)
    pipe = DiffBoostPipeline.from_pretrained(model)
    pipe.denoiser.eval()
    real = (np.asarray(ps.images[test_idx], np.float32) + 1) / 2
    cond = np.asarray(ps.conditions[test_idx], np.float32) / 255.0
    gen = []
    for i in range(0, len(test_idx), 16):
        sl = slice(i, i + 16)
        gen.append(pipe([ps.manifest[j]["prompt"] for j in test_idx[sl]], cond[sl],
                        seeds=[10_000 + j for j in test_idx[sl]], steps=20))
    gen = (np.concatenate(gen) + 1) / 2

    # blurred-edge baseline: intensity ~ a + b * blur(condition), least squares on training images
    def blurred(c):
        return np.stack([ndimage.gaussian_filter(x, 3) for x in c])

    tr_real = (np.asarray(ps.images[train_idx], np.float32) + 1) / 2
    tr_b = blurred(np.asarray(ps.conditions[train_idx], np.float32) / 255.0)
    design = np.stack([np.ones(tr_b.size), tr_b.ravel().astype(np.float64)], 1)
    (a, b), *_ = np.linalg.lstsq(design, tr_real.ravel().astype(np.float64), rcond=None)
    base = np.clip(a + b * blurred(cond), 0, 1).astype(np.float32)

    def scores(x):
        s = np.array([ssim(r, g, data_range=1.0) for r, g in zip(real, x)])
        mae = np.abs(real - x).mean(axis=(1, 2))
        return s, mae

    s_gen, mae_gen = scores(gen)
    s_base, mae_base = scores(base)
    rows = [
        {"method": "diffboost small (generated)", "SSIM": float(s_gen.mean()), "SSIM std": float(s_gen.std()),
         "MAE": float(mae_gen.mean()), "MAE std": float(mae_gen.std())},
        {"method": "blurred-edge baseline", "SSIM": float(s_base.mean()), "SSIM std": float(s_base.std()),
         "MAE": float(mae_base.mean()), "MAE std": float(mae_base.std())},
    ]
    pick = list(range(0, len(test_idx), max(1, len(test_idx) // 6)))[:6]
    grid = [[to_uint8(real[k], 0, 1), to_uint8(cond[k], 0, 1), to_uint8(gen[k], 0, 1), to_uint8(base[k], 0, 1)]
            for k in pick]
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"busi_{args.control}_test_grid.png").write_bytes(
        grid_png(grid, [""] * len(grid), ["real (test)", "condition", "generated", "blurred-edge baseline"]))
    extra = {"train_seconds": round(t_train, 1), "train_steps": args.steps, "batch": args.batch,
             "train_samples": len(train_idx), "generate_seconds": round(t_gen, 1), "generated_images": len(syn),
             "seconds_per_1000_images": round(t_gen / len(syn) * 1000, 1), "test_images": len(test_idx),
             "synthetic_preview": str(syn.root / "preview.png"),
             "test_grid": str(out / f"busi_{args.control}_test_grid.png")}
    print(extra)
    report(f"busi_diffusion_{args.control}", rows, extra)


if __name__ == "__main__":
    main()
