"""The report's figures, each from the files a run folder already holds (PNG bytes out).

| figure | like the paper's | reads |
|---|---|---|
| ``boxplots`` | Table II, per case | ``compare/cases.csv`` |
| ``fold_boxplots`` | Table II, per case and fold | ``compare/cases.csv`` |
| ``variants`` | Fig. 3 | ``prepared/``, ``synthetic/foldK/`` (with ``consistency.csv``: teacher Dice ratios) |
| ``alpha_strip`` | Fig. 4 | one real image and one of its variants |
| ``overlays`` | Fig. 5 | ``seg/<strategy>/seed<s>/foldK/predictions.npz`` |
| ``ablation_plot`` | Fig. 6 / 7 | ``ablations/<param>.json`` |
| ``curves`` | — | ``models/foldK/loss.csv``, ``seg/<strategy>/seed<s>/foldK/log.csv`` |
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..data.preview import grid_png, overlay, to_uint8
from ..data.store import PreparedSet
from ..evaluation.metrics import HIGHER_IS_BETTER, METRICS


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def boxplots(rows: list[dict], strategies: list[str], unit: str = "px") -> bytes:
    """One panel per metric: the per-case distribution of each strategy."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 4.2))
    for ax, m in zip(axes, METRICS):
        data = [[float(r[m]) * (100 if HIGHER_IS_BETTER[m] else 1) for r in rows if r["strategy"] == s]
                for s in strategies]
        ax.boxplot(data, showmeans=True, widths=0.6)
        ax.set_xticks(range(1, len(strategies) + 1), strategies, rotation=70, fontsize=8)
        ax.set_title(m.upper() if m in ("hd95", "assd") else m.capitalize())
        ax.set_ylabel("%" if HIGHER_IS_BETTER[m] else unit)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("per-case metrics on the test folds (triangle = mean)")
    return _png(fig)


def fold_boxplots(rows: list[dict], strategies: list[str]) -> bytes:
    """Per-case Dice of each strategy, one panel per test fold (every seed's run pooled): whether a
    gain holds on each split or comes from one."""
    plt = _plt()
    folds = sorted({int(r["fold"]) for r in rows})
    fig, axes = plt.subplots(1, len(folds), figsize=(max(4.0, 0.45 * len(strategies)) * len(folds), 4.2),
                             sharey=True, squeeze=False)
    for ax, k in zip(axes[0], folds):
        data = [[float(r["dice"]) * 100 for r in rows if r["strategy"] == s and int(r["fold"]) == k] for s in strategies]
        ax.boxplot(data, showmeans=True, widths=0.6)
        ax.set_xticks(range(1, len(strategies) + 1), strategies, rotation=70, fontsize=8)
        ax.set_title(f"fold {k}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("Dice (%)")
    fig.suptitle("per-case Dice on each test fold (triangle = mean)")
    return _png(fig)


def learning_curve(curve: dict) -> bytes:
    """Dice against the number of labelled images per strategy, the corrected 95% intervals as bands, and
    the reference (``classic`` with every label) as a dashed line."""
    plt = _plt()
    order = curve["budgets"]
    x = [curve["labelled_images"][n] for n in order]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for s, by in curve["dice"].items():
        at = [j for j, n in enumerate(order) if by[n] is not None]  # a semi-supervised strategy: not at 100%
        xs = [x[j] for j in at]
        mean = np.array([by[order[j]]["mean"] for j in at], float) * 100
        lo = np.array([by[order[j]]["low"] for j in at], float) * 100
        hi = np.array([by[order[j]]["high"] for j in at], float) * 100
        line, = ax.plot(xs, mean, marker="o", label=s)
        lo, hi = np.where(np.isfinite(lo), lo, mean), np.where(np.isfinite(hi), hi, mean)
        if len(xs) == 1:  # one budget (a semi-supervised strategy): its interval as an error bar
            ax.errorbar(xs, mean, yerr=[mean - lo, hi - mean], color=line.get_color(), capsize=4)
        else:
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
    ref = curve.get("reference", "")
    name = ref.split(" ")[0]
    if name in curve["dice"] and curve["dice"][name][order[-1]] is not None:
        ax.axhline(curve["dice"][name][order[-1]]["mean"] * 100, color="grey", ls="--", lw=1, label=ref)
    ax.set_xscale("log")
    from ..segmentation.curves import budget_label

    ax.set_xticks(x, [f"{v:.0f}\n({budget_label(n)})" for v, n in zip(x, order)])
    ax.minorticks_off()
    ax.set_xlabel("labelled images per fold (budget)")
    ax.set_ylabel("Dice (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("learning curve: mean over fold x seed runs, corrected 95% interval")
    return _png(fig)


def _captioned(tile: np.ndarray, text: str, size: int) -> np.ndarray:
    """``tile`` (RGB) enlarged to ``size`` px with ``text`` on a white band along its top."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(tile).resize((size, size), Image.NEAREST)
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 0, size - 1, 12), fill=(255, 255, 255))
    draw.text((3, 1), text, fill=(0, 0, 0))
    return np.asarray(im)


def _dice_ratio(row: dict | None) -> str:
    """A variant's teacher Dice over its real image's (``consistency.csv`` row)."""
    if row is None:
        return "not checked"
    v, r = row["teacher_dice_variant"], row["teacher_dice_real"]
    return f"Dice ratio {v / r:.2f}" if r > 0 else f"Dice {v:.2f} (real 0)"


def variants(ps: PreparedSet, syn, n_images: int = 4, n_variants: int = 4) -> bytes:
    """Real image, its condition, the mask outline, and several variants with their texts. When the set
    holds the teacher's ``consistency.csv``, each variant's title band gives its teacher Dice ratio
    (Dice on the variant / Dice on its real image, both against the real mask)."""
    from ..evaluation.consistency import load_consistency

    ps = syn.bind(ps)
    loaded = load_consistency(syn.root)
    checked = {r["variant_index"]: r for r in loaded[1]} if loaded else None
    tile = max(128, ps.size)
    by_real = syn.by_real
    # the labelled images only: a variant of an unlabelled one has no mask to outline (nor a size to sort by)
    reals = sorted((i for i in by_real if ps.label_readable(i)), key=lambda i: -ps.manifest[i]["foreground_pixels"])
    reals = [reals[k] for k in np.linspace(0, max(len(reals) // 2 - 1, 0), n_images).astype(int)] if reals else []
    rows, heads = [], []
    for ri in dict.fromkeys(reals):
        img = np.asarray(ps.images[ri], np.float32)
        vs = sorted(by_real[ri], key=lambda j: syn.manifest[j]["variant"])[:n_variants]
        tiles = [overlay(np.asarray(syn.images[j], np.float32), np.asarray(ps.masks[ri]), fill=0.0) for j in vs]
        if checked is not None:
            tiles = [_captioned(t, _dice_ratio(checked.get(syn.manifest[j]["index"])), tile) for t, j in zip(tiles, vs)]
        rows.append([to_uint8(img), np.asarray(ps.conditions[ri]), overlay(img, np.asarray(ps.masks[ri]), fill=0.0)]
                    + tiles)
        heads = ["real", "condition", "mask outline"] + [
            f"v{syn.manifest[j]['variant']}: {syn.manifest[j]['text'] or 'plain'}"[:22] for j in vs]
    return grid_png(rows, [""] * len(rows), heads, tile=tile)


def target_styles(ps: PreparedSet, syn, n_images: int = 4) -> bytes:
    """Cross-site sets: a source image, its edges, and its variants in the target's scanner styles (each
    variant's scanner in its title band, the source's mask outlined)."""
    from ..conditioning.prompts import site_style

    ps = syn.bind(ps)
    tile = max(128, ps.size)
    by_real = syn.by_real
    reals = [i for i in by_real if ps.label_readable(i)]
    reals = reals[:: max(1, len(reals) // n_images)][:n_images]
    site = Path((ps.meta.get("cross_site") or {}).get("target", "target")).name
    rows, shown = [], 0
    for ri in reals:
        img = np.asarray(ps.images[ri], np.float32)
        vs = sorted(by_real[ri], key=lambda j: syn.manifest[j]["variant"])
        shown = max(shown, len(vs))
        own = ps.manifest[ri]["prompt"]
        tiles = [_captioned(overlay(np.asarray(syn.images[j], np.float32), np.asarray(ps.masks[ri]), fill=0.0),
                            syn.manifest[j]["prompt"].removeprefix(own).strip(", ")[:24] or site_style("", site), tile)
                 for j in vs]
        rows.append([overlay(img, np.asarray(ps.masks[ri]), fill=0.0), np.asarray(ps.edges[ri])] + tiles)
    heads = ["source image, its mask", "edges"] + [f"variant {v}: scanner" for v in range(shown)]
    return grid_png(rows, [""] * len(rows), heads, tile=tile)


def layout_variants(ps: PreparedSet, syn, n_images: int = 4, n_variants: int = 3) -> bytes:
    """Variants with labels of their own (new lesions in new places): the real image with its mask
    outlined, the first variant's new label, and the variants with their own labels outlined."""
    ps = syn.bind(ps)
    tile = max(128, ps.size)
    by_real = syn.by_real
    reals = [i for i in by_real if ps.label_readable(i)]
    reals = reals[:: max(1, len(reals) // n_images)][:n_images]
    rows, shown = [], 0
    for ri in reals:
        img = np.asarray(ps.images[ri], np.float32)
        vs = sorted(by_real[ri], key=lambda j: syn.manifest[j]["variant"])[:n_variants]
        shown = max(shown, len(vs))
        rows.append([overlay(img, np.asarray(ps.masks[ri]), fill=0.0),
                     (np.asarray(syn.masks[vs[0]]) > 0).astype(np.uint8) * 255]
                    + [overlay(np.asarray(syn.images[j], np.float32), np.asarray(syn.masks[j]), fill=0.0) for j in vs])
    heads = ["real, its mask", "v0's new label"] + [f"v{v}, its label" for v in range(shown)]
    return grid_png(rows, [""] * len(rows), heads, tile=tile)


def alpha_strip(real: np.ndarray, synthetic: np.ndarray, patch: int, alphas=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                seed: int = 0) -> bytes:
    """Algorithm 1's mixed input for each alpha, with one fixed draw of the grid."""
    import torch

    from ..segmentation.patchmix import mix, patch_mask

    h, w = real.shape
    tiles = []
    for a in alphas:  # the same seed each time: the same draw of the grid, thresholded at each alpha
        m = patch_mask(1, h, w, a, patch, generator=torch.Generator().manual_seed(seed))
        tiles.append(to_uint8(mix(torch.from_numpy(real)[None, None], torch.from_numpy(synthetic)[None, None], m)[0, 0].numpy()))
    return grid_png([tiles], [""], [f"alpha = {a:g}" for a in alphas], tile=max(128, h))


def _outline(image: np.ndarray, ref: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Reference outlined in green, prediction in red, on the image."""
    from ..conditioning.edges import mask_boundary

    rgb = np.repeat(to_uint8(image)[..., None], 3, axis=2)
    rgb[mask_boundary((ref > 0).astype(np.uint8)) > 0] = (40, 220, 60)
    rgb[mask_boundary((pred > 0).astype(np.uint8)) > 0] = (235, 40, 40)
    return rgb


def overlays(ps: PreparedSet, seg_root: Path, strategies: list[str], fold: int = 0, n: int = 5,
             seed: int = 0) -> bytes | None:
    """The same test cases under each strategy: reference (green) and prediction (red) outlines."""
    from ..data.preprocess import resize_mask
    from ..segmentation.jobs import run_folder

    preds = {}
    for s in strategies:
        p = run_folder(seg_root, s, fold, seed) / "predictions.npz"
        if p.exists():
            preds[s] = np.load(p)
    if not preds:
        return None
    ps = ps.for_fold(fold)
    cases = [c for c in ps.fold(fold).test if ps.original_mask(c).any()]
    cases = [cases[k] for k in np.linspace(0, len(cases) - 1, min(n, len(cases))).astype(int)] if cases else []
    rows, labels = [], []
    for case in cases:
        ref = ps.original_mask(case)
        idx = ps.indices([case])
        row0 = ps.manifest[idx[0]]
        if row0["slice_axis"] < 0:
            sample, plane = idx[0], (lambda v: v)
        else:  # the slice with the most reference foreground
            axis = row0["slice_axis"]
            k = int(np.argmax(np.count_nonzero(np.moveaxis(ref, axis, 0), axis=(1, 2))))
            sample = next(i for i in idx if ps.manifest[i]["slice_index"] == k)
            plane = (lambda v, a=axis, k=k: np.take(v, k, axis=a))
        img = np.asarray(ps.images[sample], np.float32)
        ref2 = resize_mask(plane(ref), ps.size)
        rows.append([_outline(img, ref2, ref2 * 0)] + [_outline(img, ref2, resize_mask(plane(p[case]), ps.size))
                                                        for p in preds.values()])
        labels.append(case[:20])
    return grid_png(rows, labels, ["reference"] + list(preds), tile=max(128, ps.size))


def curves(run: Path, strategies: list[str], seed: int = 0) -> bytes | None:
    """Diffusion training loss per fold; segmentation validation Dice per epoch per strategy (fold 0)."""
    from ..segmentation.jobs import run_folder

    plt = _plt()
    losses = sorted((run / "models").glob("fold*/loss.csv"))
    logs = [(s, run_folder(run / "seg", s, 0, seed) / "log.csv") for s in strategies]
    logs = [(s, p) for s, p in logs if p.exists()]
    if not losses and not logs:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    for p in losses:
        rows = list(csv.DictReader(open(p)))
        a1.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], label=p.parent.name, lw=0.8)
    a1.set(title="diffusion fine-tuning loss", xlabel="step", ylabel="MSE (v-prediction)", yscale="log")
    if losses:
        a1.legend()
    for s, p in logs:
        rows = [r for r in csv.DictReader(open(p)) if r["val_dice"]]
        a2.plot([int(r["epoch"]) + 1 for r in rows], [float(r["val_dice"]) for r in rows], label=s, lw=1.0)
    a2.set(title="segmentation: validation Dice (fold 0)", xlabel="epoch", ylabel="Dice")
    if logs:
        a2.legend(fontsize=7, ncol=2)
    for a in (a1, a2):
        a.grid(alpha=0.3)
    return _png(fig)


def ablation_plot(results: dict) -> bytes:
    """Fig. 6 / 7 style: mean Dice per value with a ± std band over folds, and the baseline's level."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    values = [str(v) for v in results["values"]]
    # a numeric sweep on its own axis; names (network, condition) or an "off" value (None) as categories
    categorical = any(v is None or isinstance(v, (str, bool)) for v in results["values"])
    x = np.arange(len(values)) if categorical else np.asarray(results["values"], float)
    for s, per in results["dice"].items():
        m = np.array([per[v]["mean"] for v in values]) * 100
        sd = np.array([per[v]["std"] for v in values]) * 100
        ax.plot(x, m, marker="o", label=s)
        ax.fill_between(x, m - sd, m + sd, alpha=0.2)
    if results.get("baseline") is not None:
        ax.axhline(results["baseline"] * 100, color="grey", ls="--", label=f"{results.get('reference', 'none')} (baseline)")
    if categorical:
        ax.set_xticks(x, values, rotation=20)
    ax.set(xlabel=results["param"], ylabel="Dice (%)", title=f"ablation: {results['param']} (mean ± std over runs)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)
