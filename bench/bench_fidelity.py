"""Table I on real BUSI: the fine-tuned diffusion model against Pix2Pix, on a fold's held-out test images.

Both generators see only the fold's TRAINING images, at the same size; each test image is generated
from its own condition (edges + mask boundary) and prompt, and compared with the real image
(intensities in [0, 1]): MAE, MSE, RMSE, SSIM, MS-SSIM, mean ± std, side by side in one run, with
the diffusion model at each sampler setting.

    python bench/bench_fidelity.py                          # edges+mask condition, Min-SNR-5 (the cpu preset's)
    python bench/bench_fidelity.py --condition edges --snr-gamma 0 --work bench/work/busi96   # the earlier Table I

The diffusion model is trained on every timestep (Table I draws from noise), so it is not the cpu
preset's image-to-image model (trained on t < 0.6 T), but its condition and loss weighting. A model
already in ``--work`` is reused.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import REPO, SHARED_DATA, need, report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=None, help="default bench/work/fidelity<size>_<condition>")
    ap.add_argument("--condition", choices=["edges", "edges+mask"], default="edges+mask")
    ap.add_argument("--snr-gamma", type=float, default=5.0, help="Min-SNR-gamma weighting; 0 = off")
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

    args.work = args.work or REPO / "bench" / "work" / f"fidelity{args.size}_{args.condition}"
    tag = "" if args.condition == "edges" and not args.snr_gamma else f"_{args.condition.replace('+', '_')}"
    prep = args.work / "prepared"
    ps = PreparedSet(prep) if (prep / "dataset.json").exists() else prepare(
        need(SHARED_DATA / "BUSI"), prep, PrepareConfig(size=args.size))
    f = ps.fold(args.fold)
    run = args.work / "models" / f"fold{args.fold}"
    t0 = time.perf_counter()
    if not (run / "model").exists():
        train_diffusion(ps, run, ps.indices(f.train, training=True),
                        ModelConfig(image_size=ps.size, condition=args.condition),
                        TrainConfig(steps=args.diffusion_steps, batch_size=8, snr_gamma=args.snr_gamma or None),
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
    (REPO / "bench" / "results" / f"fidelity_busi{tag}.md").write_text(md)
    flat = [{"method": r["method"], **{f"{m}": r[m]["mean"] for m in ("mae", "mse", "rmse", "ssim", "ms_ssim")},
             **{f"{m}_std": r[m]["std"] for m in ("mae", "mse", "rmse", "ssim", "ms_ssim")},
             "s_per_image": r["seconds_per_image"]} for r in rows]
    report(f"fidelity_busi{tag}", flat, {"condition": args.condition, "snr_gamma": args.snr_gamma,
                                         "diffusion_steps": args.diffusion_steps, "fold": args.fold, "test_images": len(ps.indices(f.test, training=True)),
                                   "size": ps.size, "diffusion_train_seconds_this_call": round(t_diff, 1),
                                   "pix2pix_train_seconds_this_call": round(t_p2p, 1),
                                   "pix2pix_steps": args.pix2pix_steps, "grid": str(out / "grid.png")})


if __name__ == "__main__":
    main()
