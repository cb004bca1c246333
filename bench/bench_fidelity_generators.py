"""Table I of both generators at a label budget: the `cpu` preset's generator fine-tuned on the budget's
labelled images only (``generator_labelled``) against the one fine-tuned on every training image
(``generator_every``: the unlabelled images with the "no mask" input, ``mask_dropout`` 0.1), as
``bench_semisup_diffboost.py --generator labelled|every`` makes them (the same folders: one reuses the other's).

Each fold's held-out test images (labelled, never seen by either generator) are redrawn as the variants are
drawn: from the image itself at the generation strength (0.3; the models train on t < 0.6 T, so Table I from
noise does not apply), dpm++ 15 steps, guidance 3, no augmentation text, the same seeds for every row. Rows:
both generators with the mask condition (how labelled images' variants are drawn) and the every-image
generator with the "no mask" input (how the unlabelled images' variants, FixMatch's strong views, are drawn).
MAE, MSE, RMSE, SSIM, MS-SSIM against the real image, pooled over the folds' test images, and each row minus
the labelled generator's, paired per image (t interval over images). With ``--teachers`` (a seg folder whose
``classic/seed0/foldK/model`` holds weights) each row also gets its label consistency: the teacher's Dice on the
redrawn images over its Dice on the real ones; without it, the fold's ``classic`` segmenter is trained for it
(the `cpu` preset, 25 steps per epoch as the budget benches, fp32: a measuring instrument, not a compared row)
into ``BUDGET/fidelity_teachers``.

    python bench/bench_fidelity_generators.py --data ddti --budget 0.25 --folds 6,7   # ~1 h per pair of folds

Resumable (fine-tuning resumes, finished generators are kept). Writes
``bench/results/fidelity_generators_<data>_<budget>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from common import BUDGET_DATA as SOURCES, REPO, budget_set, fold_generator, write_results

ROWS = (("labelled", False), ("every", False), ("every", True))  # (generator, no mask)
METRICS = ("mae", "mse", "rmse", "ssim", "ms_ssim")


def _name(gen: str, no_mask: bool) -> str:
    return ("labelled images only" if gen == "labelled" else "every training image") + (", no mask" if no_mask else ", mask")


def _paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean of ``a - b`` over paired images with a t 95% interval."""
    from scipy import stats

    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return {"diff": float(d.mean()), "ci95": [float(d.mean() - half), float(d.mean() + half)]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=list(SOURCES), default="ddti")
    ap.add_argument("--budget", default="0.25")
    ap.add_argument("--folds", default="6,7", help="comma-separated folds")
    ap.add_argument("--jobs", type=int, default=2, help="generators fine-tuned side by side, one thread each")
    ap.add_argument("--teachers", default=None, help="a seg folder with classic/seed0/foldK/model (label consistency); "
                    "default: train them, fp32, into BUDGET/fidelity_teachers")
    args = ap.parse_args()

    import dataclasses

    import torch

    from diffboost.evaluation.consistency import Teacher, teacher_dice
    from diffboost.evaluation.fidelity import diffusion_rows, held_out_images, image_fidelity
    from diffboost.runconfig import preset
    from diffboost.segmentation.compare import compare
    from diffboost.data.preview import grid_png, to_uint8

    _, _, budget_root, ps = budget_set(args.data, args.budget, "bench_budgets.py")
    folds = [int(k) for k in args.folds.split(",")]
    gen_cfg = preset("cpu").generate
    t0 = time.perf_counter()
    jobs = [(str(ps.root), str(budget_root / f"generator_{g}"), k, g == "every", False)
            for k in folds for g in ("labelled", "every")]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for done in pool.map(fold_generator, jobs):
            print(f"generator ready: {done}")
    t_gen = time.perf_counter() - t0
    teachers = Path(args.teachers) if args.teachers else budget_root / "fidelity_teachers" / "seg"
    if not args.teachers:
        seg = dataclasses.replace(preset("cpu").seg, precision="fp32", steps_per_epoch=25)
        compare(ps, ["classic"], seg, teachers.parent, folds, jobs=args.jobs, progress=False)

    torch.set_num_threads(1)
    per_image = {r: {m: [] for m in (*METRICS, "teacher_dice")} for r in ROWS}
    real_dice, images, grid = [], 0, []
    for k in folds:
        fps = ps.for_fold(k)
        idx = held_out_images(fps, k)
        real = (np.asarray(fps.images[np.asarray(idx)], np.float32) + 1) / 2
        masks = np.asarray(fps.masks[np.asarray(idx)])
        w = teachers / "classic" / "seed0" / f"fold{k}" / "model"
        teacher = Teacher(w) if w.exists() else None
        if teacher is None:
            print(f"fold {k}: no teacher weights in {w}; no label consistency for it")
        if teacher is not None:
            real_dice.append(teacher_dice(teacher, real * 2 - 1, masks))
        outs = {}
        for gen, no_mask in ROWS:
            model = budget_root / f"generator_{gen}" / "models" / f"fold{k}" / "model"
            _, out = diffusion_rows(model, fps, idx, [(gen_cfg.sampler, gen_cfg.steps)], gen_cfg.guidance,
                                    progress=False, strength=gen_cfg.strength, no_mask=no_mask)
            img = next(iter(out.values()))
            outs[(gen, no_mask)] = img
            for m, v in image_fidelity(real, img).items():
                per_image[(gen, no_mask)][m].append(v)
            if teacher is not None:
                per_image[(gen, no_mask)]["teacher_dice"].append(teacher_dice(teacher, img * 2 - 1, masks))
        images += len(idx)
        for j in list(range(0, len(idx), max(1, len(idx) // 3)))[:3]:
            grid.append([to_uint8(real[j], 0, 1)] + [to_uint8(outs[r][j], 0, 1) for r in ROWS])
        print(f"fold {k}: {len(idx)} test images")

    pooled = {r: {m: np.concatenate(v) for m, v in d.items() if v} for r, d in per_image.items()}
    rdice = np.concatenate(real_dice) if real_dice else None
    base = pooled[ROWS[0]]
    table = {}
    for r in ROWS:
        row = {m: {"mean": float(pooled[r][m].mean()), "std": float(pooled[r][m].std())} for m in METRICS}
        if r != ROWS[0]:
            row["minus labelled"] = {m: _paired(pooled[r][m], base[m]) for m in METRICS}
        if rdice is not None:
            g = float(pooled[r]["teacher_dice"].mean())
            row["label_consistency"] = {"teacher_dice_generated": g, "teacher_dice_real": float(rdice.mean()),
                                        "consistency": g / float(rdice.mean())}
        table[_name(*r)] = row

    heads = ["MAE ↓", "MSE ↓", "RMSE ↓", "SSIM ↑", "MS-SSIM ↑"] + (["label consistency ↑"] if rdice is not None else [])
    lines = [f"{SOURCES[args.data]} at {args.budget} labels, folds {', '.join(map(str, folds))}: {images} held-out test "
             f"images redrawn at strength {gen_cfg.strength:g} ({gen_cfg.sampler} {gen_cfg.steps} steps, guidance "
             f"{gen_cfg.guidance:g}), intensities in [0, 1]; mean ± std over images.", "",
             "| generator fine-tuned on, condition | " + " | ".join(heads) + " |", "|---" * (1 + len(heads)) + "|"]
    for name, row in table.items():
        cells = [f"{row[m]['mean']:.4f} ± {row[m]['std']:.4f}" for m in METRICS]
        if rdice is not None:
            cells.append(f"{row['label_consistency']['consistency']:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if rdice is not None:
        lines += ["", f"Label consistency: the teacher's Dice on the redrawn test images over its Dice on the real ones "
                  f"({100 * rdice.mean():.1f}%), both against the real masks; teachers: the folds' classic segmenters in {teachers}."]
    lines += ["", "Minus the labelled-images generator (mask), paired per test image, 95% t interval:", "",
              "| row | " + " | ".join(heads[:5]) + " |", "|---" * 6 + "|"]
    for name, row in table.items():
        if "minus labelled" in row:
            d = row["minus labelled"]
            lines.append(f"| {name} | " + " | ".join(f"{d[m]['diff']:+.4f} [{d[m]['ci95'][0]:+.4f}, {d[m]['ci95'][1]:+.4f}]"
                                                      for m in METRICS) + " |")
    md = "\n".join(lines) + "\n"
    print(md)
    name = f"fidelity_generators_{args.data}_{args.budget}"
    (REPO / "bench" / "results" / f"{name}.png").write_bytes(
        grid_png(grid, [""] * len(grid), ["real (test)", "labelled, mask", "every, mask", "every, no mask"],
                 tile=max(128, ps.size)))
    write_results(name, {"data": SOURCES[args.data], "budget": args.budget, "folds": folds, "test_images": images,
                         "generation": {"strength": gen_cfg.strength, "sampler": gen_cfg.sampler, "steps": gen_cfg.steps,
                                        "guidance": gen_cfg.guidance},
                         "teachers": str(teachers), "table": table, "jobs": args.jobs, "threads_per_job": 1,
                         "generator_seconds_this_call": round(t_gen, 1),
                         "seconds_this_call": round(time.perf_counter() - t0, 1)}, md)


if __name__ == "__main__":
    main()
