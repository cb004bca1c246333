"""ControlNet vs concatenation: which edge injection trains the small model better per CPU-minute?

Both variants are trained from scratch for the same wall-clock budget on the training part of BUSI
fold 0, then generate each validation image of that fold from its condition and prompt; the table
gives SSIM / MAE to the real image (intensities in [0, 1]), steps done and seconds per step.

    python bench/bench_control.py [--minutes 10] [--size 128]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from common import REPO, SHARED_DATA, need, report
from skimage.metrics import structural_similarity as ssim


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--work", default=str(REPO / "bench" / "work"))
    args = ap.parse_args()
    from pathlib import Path

    from diffboost.config import PrepareConfig
    from diffboost.data.preparation import prepare
    from diffboost.data.store import PreparedSet
    from diffboost.diffusion.models import ModelConfig
    from diffboost.diffusion.pipeline import DiffBoostPipeline
    from diffboost.diffusion.train import TrainConfig, train_diffusion

    work = Path(args.work)
    prep = work / f"busi{args.size}"
    ps = PreparedSet(prep) if (prep / "dataset.json").exists() else prepare(
        need(SHARED_DATA / "BUSI"), prep, PrepareConfig(size=args.size))
    fold = ps.fold(0)
    train_idx, val_idx = ps.indices(fold.train, training=True), ps.indices(fold.val, training=True)
    real = (np.asarray(ps.images[val_idx], np.float32) + 1) / 2
    cond = np.asarray(ps.conditions[val_idx], np.float32) / 255.0
    rows = []
    for control in ("concat", "controlnet"):
        mcfg = ModelConfig(image_size=ps.size, control=control)
        run = work / f"control_{control}_{args.minutes:g}min"
        t0 = time.perf_counter()
        # the same wall-clock budget for both; a constant learning rate since the step count is open
        model = train_diffusion(ps, run, train_idx, mcfg, TrainConfig(
            steps=10**6, batch_size=args.batch, lr_schedule="constant", checkpoint_every=10**6,
            max_minutes=args.minutes), progress=False)
        minutes = (time.perf_counter() - t0) / 60
        steps = int(json.loads((model / "training.json").read_text())["steps_done"])
        sec_per_step = minutes * 60 / steps
        pipe = DiffBoostPipeline.from_pretrained(model)
        gen = np.concatenate([pipe([ps.manifest[j]["prompt"] for j in val_idx[i:i + 16]], cond[i:i + 16],
                                   seeds=list(range(i, min(i + 16, len(val_idx)))), steps=20)
                              for i in range(0, len(val_idx), 16)])
        gen = (gen + 1) / 2
        s = np.array([ssim(r, g, data_range=1.0) for r, g in zip(real, gen)])
        rows.append({"control": control, "train minutes": minutes, "steps": steps, "s/step": sec_per_step,
                     "val SSIM": float(s.mean()), "val MAE": float(np.abs(real - gen).mean())})
    report("control_injection", rows, {"size": ps.size, "batch": args.batch, "val_images": len(val_idx)})


if __name__ == "__main__":
    main()
