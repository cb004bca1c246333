"""Training the small model from scratch on a CPU budget: today's loss vs Min-SNR-gamma vs Min-SNR +
a timestep cap, side by side on real BUSI (fold 0, prepared at 64 px for speed in bench/work/).

Every arm trains the same model from the same seed for the same number of steps on one thread (so
the same CPU time; measured and reported), then is judged on the fold's held-out TEST images:

- training loss per CPU-minute: the plain v-prediction MSE as logged (``loss.csv``), averaged per
  CPU-minute (arms with a cap train on other timesteps, so compare them on the held-out MSE);
- held-out MSE: the plain v-MSE of the EMA model on test images at fixed timesteps and noise, for
  t < T/2 (what image-to-image at strength 0.5 runs) and t >= T/2;
- image-to-image variants at ``--strength`` (DPM-Solver++, guidance 3, the image's own prompt and
  condition; for ``edges+mask`` arms its mask): MAE and SSIM to the real image (intensities in
  [0, 1]), and a label-preservation proxy: the correlation of variant and real pixels inside the
  lesion mask and outside it, and the lesion contrast kept (mean of a 3 px ring around the lesion
  minus mean inside, variant / real);
- for context, today's model from noise (strength 1), as ``diffboost generate`` did until now.

    python bench/bench_diffusion_training.py                 # about 6 CPU-minutes (one thread)
    python bench/bench_diffusion_training.py --steps 1500 --arms today,min-snr+cap,min-snr+cap+mask

Writes ``bench/results/diffusion_training_busi<size>.json`` (or ``--name``) and prints the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, SHARED_DATA, need, report

# arm -> (TrainConfig overrides, ModelConfig overrides)
ARMS = {
    "today": ({}, {}),
    "min-snr": ({"snr_gamma": 5.0}, {}),
    "min-snr+cap": ({"snr_gamma": 5.0, "max_timestep_fraction": 0.6}, {}),
    "cap": ({"max_timestep_fraction": 0.6}, {}),
    "min-snr+cap+mask": ({"snr_gamma": 5.0, "max_timestep_fraction": 0.6}, {"condition": "edges+mask"}),
}


def heldout_mse(pipe, ps, idx: list[int], labels, t_values: list[int]) -> float:
    """Plain v-MSE of the model on ``idx`` at timesteps ``t_values`` (fixed noise)."""
    from diffboost.diffusion.models import label_channels

    sched = pipe.scheduler
    img = torch.from_numpy(np.asarray(ps.images[idx], np.float32))[:, None]
    cond = torch.from_numpy(np.asarray(ps.conditions[idx], np.float32) / 255.0)[:, None]
    masks = torch.from_numpy(label_channels(ps.masks[idx], labels)) if labels is not None else None
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        z0 = pipe.encode_images(img)
        c = pipe.encode_condition(cond, masks)
        states, m = pipe.text_states([ps.manifest[i]["prompt"] for i in idx])
        errs = []
        for t in t_values:
            tt = torch.full((len(idx),), t, dtype=torch.long)
            noise = torch.randn(z0.shape, generator=g)
            pred = pipe.denoiser(sched.add_noise(z0, noise, tt), tt, states, m, c)
            errs.append(float(torch.mean((pred - sched.get_velocity(z0, noise, tt)) ** 2)))
    return float(np.mean(errs))


def variant_scores(gen: np.ndarray, real: np.ndarray, masks: np.ndarray) -> dict:
    """MAE, SSIM, correlation inside / outside the lesion and lesion contrast kept (means)."""
    from scipy import ndimage
    from skimage.metrics import structural_similarity as ssim

    g01, r01 = (gen + 1) / 2, (real + 1) / 2
    out = {"MAE": [], "SSIM": [], "r inside": [], "r outside": [], "contrast kept": []}
    for g, r, m in zip(g01, r01, masks > 0):
        out["MAE"].append(float(np.abs(g - r).mean()))
        out["SSIM"].append(float(ssim(r, g, data_range=1.0)))
        ring = ndimage.binary_dilation(m, iterations=3) & ~m
        out["r inside"].append(float(np.corrcoef(g[m], r[m])[0, 1]))
        out["r outside"].append(float(np.corrcoef(g[~m], r[~m])[0, 1]))
        real_c = r[ring].mean() - r[m].mean()
        out["contrast kept"].append(float((g[ring].mean() - g[m].mean()) / real_c) if abs(real_c) > 0.02 else np.nan)
    return {k: float(np.nanmean(v)) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=500, help="training steps per arm (same for every arm)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--eval", type=int, default=48, help="held-out test images (with a lesion) to judge on")
    ap.add_argument("--strength", type=float, default=0.5)
    ap.add_argument("--gen-steps", type=int, default=20)
    ap.add_argument("--arms", default="today,min-snr,min-snr+cap", help=f"comma-separated from {', '.join(ARMS)}")
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "work")
    ap.add_argument("--name", default=None, help="results file (default diffusion_training_busi<size>)")
    args = ap.parse_args()
    arms = [a.strip() for a in args.arms.split(",")]
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise SystemExit(f"unknown arm(s) {bad}; choose from {', '.join(ARMS)}")
    torch.set_num_threads(1)

    from diffboost.config import PrepareConfig
    from diffboost.data.preparation import prepare
    from diffboost.data.store import PreparedSet
    from diffboost.diffusion.models import ModelConfig, foreground_labels
    from diffboost.diffusion.pipeline import DiffBoostPipeline
    from diffboost.diffusion.train import TrainConfig, new_pipeline, train_diffusion

    src = need(SHARED_DATA / "BUSI")
    prep = args.work / f"busi{args.size}"
    ps = (PreparedSet(prep) if (prep / "dataset.json").exists()
          else prepare(src, prep, PrepareConfig(size=args.size), progress=False))
    fold = ps.fold(args.fold)
    train_idx = ps.indices(fold.train, training=True)
    test_idx = [i for i in ps.indices(fold.test) if ps.manifest[i]["foreground_pixels"] > 0][: args.eval]
    real = np.asarray(ps.images[test_idx], np.float32)
    masks = np.asarray(ps.masks[test_idx])
    cond = np.asarray(ps.conditions[test_idx], np.float32) / 255.0
    prompts = [ps.manifest[i]["prompt"] for i in test_idx]
    seeds = list(range(len(test_idx)))
    low_t, high_t = list(range(25, 500, 50)), list(range(525, 1000, 50))

    new_pipeline(ModelConfig(image_size=ps.size))  # imports and loads once, outside the timed arms
    rows, curves, context = [], {}, None
    for arm in arms:
        t_over, m_over = ARMS[arm]
        run = args.work / f"difftrain{args.size}_{arm}"
        shutil.rmtree(run, ignore_errors=True)
        tcfg = TrainConfig(steps=args.steps, batch_size=args.batch, warmup_steps=min(100, args.steps // 10),
                           log_every=10, checkpoint_every=10**9, checkpoints_limit=1, **t_over)
        mcfg = ModelConfig(image_size=ps.size, **m_over)
        c0, w0 = time.process_time(), time.perf_counter()
        model = train_diffusion(ps, run, train_idx, mcfg, tcfg, progress=False)
        cpu_s, wall_s = time.process_time() - c0, time.perf_counter() - w0
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
        log = np.genfromtxt(run / "loss.csv", delimiter=",", names=True)
        per_min = cpu_s / 60 / args.steps  # CPU minutes per step (constant per arm)
        minute = np.floor(log["step"] * per_min).astype(int)
        curves[arm] = {int(k): float(log["loss"][minute == k].mean()) for k in np.unique(minute)}
        pipe = DiffBoostPipeline.from_pretrained(model)
        pipe.denoiser.eval()
        labels = foreground_labels(ps.label_names) if pipe.config.condition == "edges+mask" else None
        mk = masks if labels is not None else None
        g0 = time.perf_counter()
        gen = pipe(prompts, cond, seeds, sampler="dpm++", steps=args.gen_steps, guidance=3.0,
                   images=real, strength=args.strength, masks=mk)
        t_gen = time.perf_counter() - g0
        tail = log["loss"][log["step"] > 0.8 * args.steps]
        rows.append({"arm": arm, "steps": args.steps, "CPU min": cpu_s / 60, "wall min": wall_s / 60,
                     "train loss (last 20%)": float(tail.mean()),
                     "held-out MSE t<T/2": heldout_mse(pipe, ps, test_idx, labels, low_t),
                     "held-out MSE t>=T/2": heldout_mse(pipe, ps, test_idx, labels, high_t),
                     **variant_scores(gen, real, masks), "gen s": t_gen})
        if arm == "today":
            full = pipe(prompts, cond, seeds, sampler="dpm++", steps=args.gen_steps, guidance=3.0)
            context = {"arm": "today, from noise (strength 1)", **variant_scores(full, real, masks)}
    table = [{k: r[k] for k in ("arm", "CPU min", "train loss (last 20%)", "held-out MSE t<T/2",
                                 "held-out MSE t>=T/2", "MAE", "SSIM", "r inside", "r outside", "contrast kept")}
             for r in rows]
    if context is not None:
        table.append({k: context.get(k, float("nan")) for k in table[0]} | {"arm": context["arm"]})
    extra = {"size": ps.size, "fold": args.fold, "train_samples": len(train_idx), "eval_images": len(test_idx),
             "strength": args.strength, "gen_steps": args.gen_steps, "batch": args.batch,
             "arms": {a: {"train": ARMS[a][0], "model": ARMS[a][1]} for a in arms}, "details": rows,
             "loss_per_cpu_minute": curves}
    report(args.name or f"diffusion_training_busi{ps.size}", table, extra)
    print("\ntraining loss (plain v-MSE) per CPU-minute\n")
    print("| CPU minute | " + " | ".join(arms) + " |")
    print("|---|" + "---|" * len(arms))
    for k in sorted({k for c in curves.values() for k in c}):
        print(f"| {k} | " + " | ".join(f"{curves[a][k]:.4f}" if k in curves[a] else "" for a in arms) + " |")


if __name__ == "__main__":
    main()
