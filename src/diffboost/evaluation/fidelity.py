"""Generation fidelity (the paper's Table I): images generated from held-out test images' edges and
prompts, compared with the real images, intensities in [0, 1].

Per image: MAE, MSE, RMSE, SSIM (scikit-image, Gaussian window as Wang et al.) and MS-SSIM (MONAI).
MS-SSIM uses as many of the standard five scales (weights 0.0448, 0.2856, 0.3001, 0.2363, 0.1333,
renormalised) as the image size allows for an 11-px window: 3 at 96 px, 4 at 128 px, 5 from 176 px.

With a teacher (a segmenter trained on the fold's training part, e.g. ``seg/none/seed0/foldK/model``)
each method also gets the label consistency of its generated test images: the teacher's Dice on them
over its Dice on the real test images, both against the real masks (:mod:`.consistency`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..data.store import PreparedSet
from ..utils.atomic import atomic_write_text
from ..utils.progress import progress_iter

FIDELITY_METRICS = ("mae", "mse", "rmse", "ssim", "ms_ssim")
_MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_scales(size: int, kernel: int = 11) -> int:
    """The most scales (2 to 5) MONAI's MS-SSIM accepts at this size; 1 means plain SSIM."""
    for k in range(5, 1, -1):
        if size // (k - 1) ** 2 > kernel - 1:
            return k
    return 1


def image_fidelity(real: np.ndarray, gen: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image metrics of ``[N, H, W]`` arrays in [0, 1]."""
    from monai.metrics.regression import compute_ms_ssim
    from skimage.metrics import structural_similarity

    real, gen = np.asarray(real, np.float64), np.asarray(gen, np.float64)
    if real.shape != gen.shape:
        raise ValueError(f"real {real.shape} and generated {gen.shape} images differ in shape")
    err = gen - real
    mse = (err ** 2).mean(axis=(1, 2))
    ssim = np.array([structural_similarity(r, g, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False) for r, g in zip(real, gen)])
    k = ms_ssim_scales(min(real.shape[1:]))
    if k > 1:
        w = np.array(_MS_WEIGHTS[:k])
        ms = compute_ms_ssim(torch.from_numpy(gen[:, None]).float(), torch.from_numpy(real[:, None]).float(),
                             spatial_dims=2, data_range=1.0, weights=tuple(w / w.sum()))
        ms = ms.reshape(len(real)).numpy().astype(np.float64)
    else:
        ms = ssim.copy()
    return {"mae": np.abs(err).mean(axis=(1, 2)), "mse": mse, "rmse": np.sqrt(mse), "ssim": ssim, "ms_ssim": ms}


def summarise(per_image: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    return {m: {"mean": float(np.mean(v)), "std": float(np.std(v))} for m, v in per_image.items()}


def held_out_images(ps: PreparedSet, fold: int, limit: int | None = None) -> list[int]:
    """The fold's held-out test samples the training stages would use (foreground slices of volumes)."""
    idx = ps.indices(ps.fold(fold).test, training=True)
    return idx if limit is None else idx[:: max(1, len(idx) // limit)][:limit]


def diffusion_rows(model: str | Path, ps: PreparedSet, idx: list[int], settings: list[tuple[str, int]],
                   guidance: float = 3.0, seed: int = 0, batch_size: int = 16, progress: bool = True,
                   strength: float = 1.0, no_mask: bool = False):
    """One row per (sampler, steps): generated from each test image's condition and prompt (no
    augmentation text), from noise or, with ``strength`` < 1, from the real image noised to that
    fraction of the timesteps (as ``generate`` draws variants); ``no_mask`` gives the model what
    ``generate --unlabelled`` gives an image without a label: its edges, and an ``edges+mask`` model's
    "no mask" input (learnt with ``train.unlabelled`` or ``mask_dropout``). Returns ``rows, {setting: generated images}``."""
    from ..diffusion.conditions import condition_inputs
    from ..diffusion.pipeline import DiffBoostPipeline
    from ..generation.generate import mask_labels, timestep_cap

    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength:g}")
    cap = timestep_cap(model)
    if strength > cap + 1e-9:
        hint = ("Table I generates from noise: fine-tune with train.max_timestep_fraction 1, or compare the "
                f"variants it draws with strength <= {cap:g}") if strength >= 1 else f"use strength <= {cap:g}"
        raise ValueError(f"{model}: was trained on timesteps up to {cap:g} x T only; {hint}")
    pipe = DiffBoostPipeline.from_pretrained(model)
    pipe.denoiser.eval()
    labels = mask_labels(pipe, ps)  # an ``edges+mask`` model also gets each test image's filled mask
    rows_idx = np.asarray(idx)
    cond, masks = condition_inputs(ps, rows_idx, np.full(len(idx), no_mask), labels,
                                   pipe.config.mask_channels if labels is not None else None)
    cond = cond[:, 0]
    images = np.asarray(ps.images[rows_idx], np.float32)
    real = (images + 1) / 2
    how = (f", strength {strength:g}" if strength < 1 else "") + (", no mask" if no_mask else "")
    rows, outs = [], {}
    for sampler, steps in settings:
        t0 = time.perf_counter()
        gen = []
        for i in progress_iter(range(0, len(idx), batch_size), f"fidelity {sampler} {steps}", enabled=progress):
            sl = slice(i, i + batch_size)
            gen.append(pipe([ps.manifest[j]["prompt"] for j in idx[sl]], cond[sl],
                            seeds=[seed * 1_000_003 + j for j in idx[sl]], sampler=sampler, steps=steps,
                            guidance=guidance, masks=None if masks is None else masks[sl],
                            strength=strength, images=images[sl] if strength < 1 else None))
        gen = np.clip((np.concatenate(gen) + 1) / 2, 0, 1)
        rows.append({"method": f"diffusion {sampler} {steps} steps{how}", **summarise(image_fidelity(real, gen)),
                     "seconds_per_image": (time.perf_counter() - t0) / len(idx)})
        outs[f"{sampler}-{steps}"] = gen
    return rows, outs


def pix2pix_row(model: str | Path, ps: PreparedSet, idx: list[int]):
    from ..generation.pix2pix import Pix2PixGenerator

    gen = Pix2PixGenerator(model)
    arr = ps.conditions if gen.cfg.condition == "condition" else ps.edges
    t0 = time.perf_counter()
    out = np.clip((gen(np.asarray(arr[np.asarray(idx)], np.float32) / 255.0) + 1) / 2, 0, 1)
    real = (np.asarray(ps.images[np.asarray(idx)], np.float32) + 1) / 2
    return {"method": "Pix2Pix", **summarise(image_fidelity(real, out)),
            "seconds_per_image": (time.perf_counter() - t0) / len(idx)}, out


def table_markdown(rows: list[dict]) -> str:
    heads = ["MAE ↓", "MSE ↓", "RMSE ↓", "SSIM ↑", "MS-SSIM ↑"]
    teacher = any("label_consistency" in r for r in rows)
    if teacher:
        heads += ["teacher Dice (%)", "label consistency ↑"]
    lines = ["| method | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for r in rows:
        cells = [f"{r[m]['mean']:.4f} ± {r[m]['std']:.4f}" for m in FIDELITY_METRICS]
        if teacher:
            c = r.get("label_consistency") or {}
            ratio = c.get("consistency")
            cells += ["—" if not c else f"{c['teacher_dice_generated'] * 100:.2f}",
                      "—" if ratio is None else f"{ratio:.3f}"]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def add_label_consistency(rows: list[dict], outs: dict, teacher: str | Path, ps: PreparedSet, idx: list[int]) -> dict:
    """Add to each row (in the order of ``outs``) the teacher's label consistency of its generated images
    (``[N, S, S]`` in [0, 1]); return the teacher's description."""
    from .consistency import Teacher, generated_consistency

    t = Teacher(teacher)
    real = np.asarray(ps.images[np.asarray(idx)], np.float32)
    masks = np.asarray(ps.masks[np.asarray(idx)])
    for row, gen in zip(rows, outs.values()):
        row["label_consistency"] = generated_consistency(t, real, np.asarray(gen, np.float32) * 2 - 1, masks)
    return t.info()


def fidelity(model: str | Path, prepared: str | Path | PreparedSet, fold: int, out: str | Path,
             settings: list[tuple[str, int]] = (("dpm++", 20),), pix2pix: str | Path | None = None,
             guidance: float = 3.0, limit: int | None = None, progress: bool = True,
             teacher: str | Path | None = None, strength: float = 1.0, no_mask: bool = False) -> list[dict]:
    """Table I for a fold's test images: the diffusion model at each sampler setting (from noise, or at
    ``strength`` < 1 from the real image; ``no_mask``: see :func:`diffusion_rows`), and Pix2Pix when a
    model is given (and, with a ``teacher`` segmenter, each one's label consistency). Writes ``table.md``,
    ``table.json`` and ``grid.png`` into ``out``."""
    from ..data.preview import grid_png, to_uint8

    ps = (prepared if isinstance(prepared, PreparedSet) else PreparedSet(prepared)).for_fold(fold)
    idx = held_out_images(ps, fold, limit)
    if not idx:
        raise ValueError(f"{ps.root}: fold {fold} has no test images")
    rows, outs = diffusion_rows(model, ps, idx, list(settings), guidance, progress=progress, strength=strength,
                                no_mask=no_mask)
    if pix2pix is not None:
        row, img = pix2pix_row(pix2pix, ps, idx)
        rows.append(row)
        outs["pix2pix"] = img
    teacher_info = add_label_consistency(rows, outs, teacher, ps, idx) if teacher is not None else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    note = ("" if teacher is None else " Label consistency: the teacher's Dice on the generated images over its "
            "Dice on the real test images, both against the real masks.")
    given = "edges and the 'no mask' input" if no_mask else "condition (edges + mask boundary)"
    start = "from noise" if strength >= 1 else f"from the image itself at strength {strength:g}"
    atomic_write_text(out / "table.md", table_markdown(rows) + f"\n{len(idx)} test images of fold {fold}, "
                      f"intensities in [0, 1], generated {start} with each image's {given} and prompt.{note}\n")
    atomic_write_text(out / "table.json", json.dumps({"fold": fold, "images": len(idx), "model": str(model),
                                                      "pix2pix": str(pix2pix) if pix2pix else None,
                                                      "guidance": guidance, "strength": strength,
                                                      "no_mask": no_mask, "teacher": teacher_info,
                                                      "rows": rows}, indent=1))
    pick = list(range(0, len(idx), max(1, len(idx) // 6)))[:6]
    real = (np.asarray(ps.images[np.asarray(idx)], np.float32) + 1) / 2
    grid = [[to_uint8(real[k], 0, 1), np.asarray(ps.conditions[idx[k]])] + [to_uint8(o[k], 0, 1) for o in outs.values()]
            for k in pick]
    (out / "grid.png").write_bytes(grid_png(grid, [""] * len(grid), ["real (test)", "condition", *outs],
                                            tile=max(128, ps.size)))
    return rows
