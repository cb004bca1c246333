"""How far does label consistency measure lost labels, and how far a teacher that is not robust?

Label consistency (``diffboost.evaluation.consistency``) is the teacher's Dice on variants over its
Dice on their real images, with the fold's ``none`` segmenter as teacher. A teacher trained without
augmentation also fails on variants whose label is intact by construction: a gamma or contrast change
of the real image keeps every pixel where it was. This benchmark scores, side by side on the same
training images of every fold of a finished run, with two teachers (``none`` and ``classic``, the
nnU-Net-augmented segmenter of the same fold and seed):

- the run's diffusion variants, per augmentation text;
- classical intensity variants of the same real images (the ``mix-classic`` transforms, one of each
  kind: gamma, contrast, noise, blur, brightness), whose label is preserved by construction.

The classical rows are the ceiling a variant whose label is intact can reach with that teacher.

    python bench/bench_teacher_calibration.py --run /work/runs/busi_cpu128m
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from common import report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True, help="a finished `diffboost run` folder with none and classic")
    ap.add_argument("--seed", type=int, default=0, help="the segmentation seed whose models teach")
    args = ap.parse_args()
    from diffboost.data.store import PreparedSet
    from diffboost.evaluation.consistency import Teacher, teacher_dice
    from diffboost.generation.synthetic import SyntheticSet
    from diffboost.segmentation.jobs import run_folder
    from diffboost.segmentation.variants import KINDS, classic_variants

    torch.set_num_threads(1)
    ps = PreparedSet(args.run / "prepared")
    sums: dict[tuple[str, str], list[float]] = {}  # (teacher, source) -> [sum variant dice, sum real dice, count]
    folds = sorted(int(p.name[4:]) for p in (args.run / "synthetic").glob("fold*"))
    for k in folds:
        syn = SyntheticSet(args.run / "synthetic" / f"fold{k}")
        rows = syn.manifest
        var_images = np.asarray(syn.images, np.float32)
        real_idx = sorted({r["real_index"] for r in rows})
        real = np.asarray(ps.images[real_idx], np.float32)
        masks = np.asarray(ps.masks[real_idx])
        pos = {ri: j for j, ri in enumerate(real_idx)}
        classic = classic_variants(torch.from_numpy(real)[:, None], real_idx, n=len(KINDS)).images[:, 0].numpy()
        for tname in ("none", "classic"):
            teacher = Teacher(run_folder(args.run / "seg", tname, k, args.seed) / "model", device="cpu")
            d_real = teacher_dice(teacher, real, masks)
            d_syn = teacher_dice(teacher, var_images, masks[[pos[r["real_index"]] for r in rows]])
            d_cls = teacher_dice(teacher, classic, np.repeat(masks, len(KINDS), axis=0))
            sources = {f"diffusion: {r or 'plain'}": [] for r in sorted({r['text'] for r in rows})}
            for r, d in zip(rows, d_syn):
                sources[f"diffusion: {r['text'] or 'plain'}"].append((d, d_real[pos[r["real_index"]]]))
            sources["diffusion: all"] = [(d, d_real[pos[r["real_index"]]]) for r, d in zip(rows, d_syn)]
            for v, kind in enumerate(KINDS):
                sources[f"classical: {kind}"] = [(d_cls[j * len(KINDS) + v], d_real[j]) for j in range(len(real_idx))]
            sources["classical: all"] = [(d_cls[i], d_real[i // len(KINDS)]) for i in range(len(d_cls))]
            for name, pairs in sources.items():
                acc = sums.setdefault((tname, name), [0.0, 0.0, 0])
                acc[0] += float(sum(p[0] for p in pairs))
                acc[1] += float(sum(p[1] for p in pairs))
                acc[2] += len(pairs)
        print(f"fold {k}: {len(rows)} diffusion variants, {len(classic)} classical variants, 2 teachers")
    out = []
    for source in dict.fromkeys(s for _, s in sums):
        row = {"source": source, "variants": sums[("none", source)][2]}
        for tname in ("none", "classic"):
            v, r, n = sums[(tname, source)]
            row[f"{tname} teacher: Dice variants %"] = round(100 * v / n, 2)
            row[f"{tname} teacher: consistency"] = round(v / r, 3)
        out.append(row)
    report("teacher_calibration", out, {"run": str(args.run), "folds": folds, "teacher_seed": args.seed,
                                        "classical_kinds": list(KINDS),
                                        "command": f"python bench/bench_teacher_calibration.py --run {args.run}"})


if __name__ == "__main__":
    main()
