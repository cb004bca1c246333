"""Table I on real BUSI: the fine-tuned diffusion model against Pix2Pix, on a fold's held-out test images.

Both generators see only the fold's TRAINING images, at the same size; each test image is generated
from its own condition (edges + mask boundary) and prompt, and compared with the real image
(intensities in [0, 1]): MAE, MSE, RMSE, SSIM, MS-SSIM, mean ± std, side by side in one run, with
the diffusion model at each sampler setting.

    python bench/bench_fidelity.py [--work bench/work/busi96] [--fold 0] [--pix2pix-steps 2000]

It reuses the fold's diffusion model from ``bench_seg_compare.py`` (or trains one the same way).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import REPO, SHARED_DATA, need, report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "work" / "busi96")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--diffusion-steps", type=int, default=2500)
    ap.add_argument("--pix2pix-steps", type=int, default=2000)
    ap.add_argument("--samplers", default="dpm++:15,dpm++:20,ddim:50")
    args = ap.parse_args()
    from diffboost.config import PrepareConfig
    from diffboost.data.preparation import prepare
    from diffboost.data.store import PreparedSet
    from diffboost.diffusion.models import ModelConfig
    from diffboost.diffusion.train import TrainConfig, train_diffusion
    from diffboost.evaluation.fidelity import fidelity, table_markdown
    from diffboost.generation.pix2pix import Pix2PixConfig, train_pix2pix

    prep = args.work / "prepared"
    ps = PreparedSet(prep) if (prep / "dataset.json").exists() else prepare(
        need(SHARED_DATA / "BUSI"), prep, PrepareConfig(size=args.size))
    f = ps.fold(args.fold)
    run = args.work / "models" / f"fold{args.fold}"
    t0 = time.perf_counter()
    if not (run / "model").exists():
        train_diffusion(ps, run, ps.indices(f.train, training=True), ModelConfig(image_size=ps.size),
                        TrainConfig(steps=args.diffusion_steps, batch_size=8),
                        resume="latest" if (run / "checkpoints").exists() else None,
                        val_indices=ps.indices(f.val, training=True))
    t_diff = time.perf_counter() - t0
    t0 = time.perf_counter()
    p2p = train_pix2pix(ps, args.fold, args.work / "pix2pix" / f"fold{args.fold}",
                        Pix2PixConfig(steps=args.pix2pix_steps))
    t_p2p = time.perf_counter() - t0
    settings = [(s.split(":")[0], int(s.split(":")[1])) for s in args.samplers.split(",")]
    out = args.work / "fidelity" / f"fold{args.fold}"
    rows = fidelity(run / "model", ps, args.fold, out, settings, pix2pix=p2p)
    md = table_markdown(rows)
    print("\n" + md)
    (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (REPO / "bench" / "results" / "fidelity_busi.md").write_text(md)
    flat = [{"method": r["method"], **{f"{m}": r[m]["mean"] for m in ("mae", "mse", "rmse", "ssim", "ms_ssim")},
             **{f"{m}_std": r[m]["std"] for m in ("mae", "mse", "rmse", "ssim", "ms_ssim")},
             "s_per_image": r["seconds_per_image"]} for r in rows]
    report("fidelity_busi", flat, {"fold": args.fold, "test_images": len(ps.indices(f.test, training=True)),
                                   "size": ps.size, "diffusion_train_seconds_this_call": round(t_diff, 1),
                                   "pix2pix_train_seconds_this_call": round(t_p2p, 1),
                                   "pix2pix_steps": args.pix2pix_steps, "grid": str(out / "grid.png")})


if __name__ == "__main__":
    main()
