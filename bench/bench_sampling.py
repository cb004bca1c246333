"""Sampling cost of the small model, side by side in one run.

1. Pipeline overhead: one full ``pipe(...)`` call vs the pure network evaluations it contains
   (steps x one guided denoiser forward on the same batch). Target: overhead <= 5%.
2. Throughput of the CPU preset: seconds per generated image (DPM-Solver++, 20 steps, guidance),
   and the projected time for 1,000 images. Target: <= 10 minutes per 1,000 on 2 cores.
3. With ``--model`` and ``--prepared``: DPM-Solver++ at 20 steps vs DDIM at 50 on the same seeds:
   time ratio (target <= 40%) and SSIM of each to the real images (target: within 1%).
4. Image-to-image at each ``--strengths`` s vs from noise (DPM-Solver++, same steps, same seeds):
   time ratio; target <= s + 5% (diffusers' img2img cost: int(s x steps) steps).

    python bench/bench_sampling.py [--size 128] [--batch 16] [--model DIR --prepared DIR --fold 0]
    python bench/bench_sampling.py --size 64 --batch 4 --skip-ddim --name sampling_small  # small: overhead and img2img only
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import report, timed

from diffboost.diffusion.models import ModelConfig
from diffboost.diffusion.pipeline import DiffBoostPipeline, make_scheduler
from diffboost.diffusion.train import new_pipeline


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--model")
    ap.add_argument("--prepared")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--strengths", default="0.25,0.5,0.75")
    ap.add_argument("--skip-ddim", action="store_true", help="skip the DPM++ 20 vs DDIM 50 comparison")
    ap.add_argument("--name", default="sampling", help="results file: bench/results/NAME.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    pipe = DiffBoostPipeline.from_pretrained(args.model) if args.model else new_pipeline(ModelConfig(image_size=args.size))
    pipe.denoiser.eval()
    size = pipe.config.image_size
    b = args.batch
    if args.prepared:
        from diffboost.data.store import PreparedSet

        ps = PreparedSet(args.prepared)
        idx = ps.indices(ps.fold(args.fold).test)[:b]
        cond = np.asarray(ps.conditions[idx], np.float32) / 255.0
        prompts = [ps.manifest[i]["prompt"] for i in idx]
        real = np.asarray(ps.images[idx], np.float32)
        b = len(idx)
    else:
        rng = np.random.default_rng(0)
        cond, prompts, real = rng.random((b, size, size), dtype=np.float32), ["US, Breast, benign"] * b, None
    images = real if real is not None else np.random.default_rng(1).uniform(-1, 1, (b, size, size)).astype(np.float32)
    seeds = list(range(b))

    # 1. overhead: the same guided forwards, without the pipeline around them
    states, mask = pipe.text_states(prompts)
    ns, nm = pipe.text_encoder([""] * b)
    c = pipe.encode_condition(torch.from_numpy(cond)[:, None])
    s2, m2, c2 = torch.cat([ns, states]), torch.cat([nm, mask]), torch.cat([c, c])
    x = torch.randn(2 * b, *pipe.model_shape(size))
    sched = make_scheduler("dpm++", pipe.scheduler.config)
    sched.set_timesteps(args.steps)

    def network_only():
        with torch.inference_mode():
            for t in sched.timesteps:
                pipe.denoiser(x, t.expand(2 * b), s2, m2, c2)

    def full(sampler="dpm++", steps=args.steps, strength=1.0):
        return pipe(prompts, cond, seeds, sampler=sampler, steps=steps, guidance=3.0, images=images,
                    strength=strength)

    full()  # warm-up (text cache, kernels)
    t_net, _ = timed(network_only, 2)
    t_full, out = timed(full, 2)
    rows = [{"measure": "network evaluations only (s)", "value": t_net},
            {"measure": "full pipeline call (s)", "value": t_full},
            {"measure": "overhead (%)", "value": 100 * (t_full / t_net - 1)},
            {"measure": "seconds per image", "value": t_full / b},
            {"measure": "projected minutes per 1000 images", "value": t_full / b * 1000 / 60}]
    extra = {"size": size, "batch": b, "steps": args.steps}
    # 4. image-to-image at strength s vs from noise, side by side (the from-noise time measured again
    # between them, so that a change of machine load shows)
    for s in (float(v) for v in args.strengths.split(",")):
        t_s, _ = timed(lambda: full(strength=s), 2)
        t_ref, _ = timed(full, 2)
        ratio = t_s / t_ref
        rows += [{"measure": f"img2img strength {s:g}: time / from noise", "value": ratio},
                 {"measure": f"img2img strength {s:g}: within s + 5%", "value": str(ratio <= s + 0.05)}]
    if args.skip_ddim:
        report(args.name, rows, extra)
        return
    # 3. DPM-Solver++ 20 vs DDIM 50 (fidelity only meaningful for a trained model and real data)
    t_ddim, out_ddim = timed(lambda: full("ddim", 50))
    rows.append({"measure": "DPM++20 / DDIM50 time (%)", "value": 100 * t_full / t_ddim})
    if real is not None:
        from skimage.metrics import structural_similarity as ssim

        def mean_ssim(gen):
            return float(np.mean([ssim((r + 1) / 2, (g + 1) / 2, data_range=1.0) for r, g in zip(real, gen)]))

        s_dpm, s_ddim = mean_ssim(out), mean_ssim(out_ddim)
        rows += [{"measure": "SSIM DPM++20", "value": s_dpm}, {"measure": "SSIM DDIM50", "value": s_ddim},
                 {"measure": "SSIM difference (%)", "value": 100 * (s_dpm - s_ddim) / s_ddim}]
    report(args.name, rows, extra)


if __name__ == "__main__":
    main()
