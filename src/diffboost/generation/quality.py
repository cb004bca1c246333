"""An optional quality filter for synthetic variants (off by default).

Two checks per variant, both against what the real data itself does:

1. **Edges follow the condition near the label.** In the neighbourhood of the mask (a band of
   ``band`` px around its boundary; the whole image for an empty mask) the Pearson correlation
   between the variant's soft edges and the condition it was generated from is its *edge agreement*.
   The real image's own edges give the reference agreement. A variant is rejected when its agreement
   is below ``edge_ratio`` times the real image's (default: less than half as good).
2. **Intensity statistics are not outliers for what the text asks.** An augmentation text asks
   for an appearance change ("enhanced contrast", "dark", ...): the variant's mean and standard
   deviation are z-scored against those of the fold's real training images *changed as its text
   says* (:func:`diffboost.conditioning.augment_text.apply_phrase`, strengths drawn over the
   phrase's range); the plain prompt against the real images themselves, a text the phrases do not
   know against all of these pooled. |z| > ``max_z`` (default 3) on either is rejected: a "dark"
   variant that is as dark as the darkened real images passes, a plain variant that dark does not.

Every real image keeps at least its best variant (highest edge agreement), so Algorithm 1 always has
a variant to mix. Scores are written to ``quality.csv`` in the synthetic set (one row per variant,
with the reason when rejected) and a summary to ``quality.json``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ..conditioning.edges import mask_boundary, soft_edges
from ..data.store import PreparedSet
from ..utils.atomic import atomic_write_text

FIELDS = ["row", "real_index", "variant", "text", "edge_agreement", "real_edge_agreement", "z_mean", "z_std",
          "keep", "reason"]

VERSION = 2  # bump when the scores change: a cache made by another version is recomputed
_REFERENCE_IMAGES = 256  # real images (evenly spaced) whose changed versions give a text's reference
_DRAWS = 3  # strengths drawn per real image and phrase


@dataclass
class QualityConfig:
    band: int = 6
    edge_ratio: float = 0.5
    max_z: float = 3.0


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def _region(mask: np.ndarray, band: int) -> np.ndarray:
    if not mask.any():
        return np.ones(mask.shape, bool)
    return ndimage.binary_dilation(mask_boundary(mask.astype(np.uint8)) > 0, iterations=band)


def _moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image means and standard deviations of ``[N, H, W]`` images."""
    return images.mean(axis=(1, 2)), images.std(axis=(1, 2))


def _text_statistics(real: np.ndarray, texts) -> dict[str, tuple[float, float, float, float]]:
    """Per text, ``(mean, sd)`` over images of the image means and of the image standard deviations
    of the real images as that text asks them to look (see the module's check 2)."""
    from ..conditioning.augment_text import PHRASES

    sub = real[np.linspace(0, len(real) - 1, min(len(real), _REFERENCE_IMAGES)).astype(int)]
    changed: dict[str, tuple[np.ndarray, np.ndarray]] = {"": _moments(real)}

    def phrase(text: str) -> tuple[np.ndarray, np.ndarray]:
        if text not in changed:
            from ..conditioning.augment_text import apply_phrase

            x = torch.from_numpy(np.repeat(sub, _DRAWS, axis=0))[:, None]
            changed[text] = _moments(apply_phrase(text, x, torch.Generator().manual_seed(0))[:, 0].numpy())
        return changed[text]

    out = {}
    for text in texts:
        if text in PHRASES or text == "":
            m, s = changed[""] if text == "" else phrase(text)
        else:  # an appearance change the phrases do not name: anything they or the real images span
            parts = [changed[""]] + [phrase(p) for p in PHRASES]
            m, s = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        out[text] = (float(m.mean()), max(float(m.std()), 1e-6), float(s.mean()), max(float(s.std()), 1e-6))
    return out


def score_variants(syn, ps: PreparedSet, cfg: QualityConfig | None = None) -> list[dict]:
    """One row per variant of the synthetic set ``syn`` (rows in manifest order)."""
    cfg = cfg or QualityConfig()
    # variants of images without a readable label (fixmatch-diffboost's strong views) are not scored: kept
    reals = sorted(ri for ri in syn.by_real if ps.label_readable(ri))
    real_imgs = np.asarray(ps.images[np.asarray(reals)], np.float32)
    stats = _text_statistics(real_imgs, {r["text"] for r in syn.manifest})
    ref: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
    for k, ri in enumerate(reals):
        cond = np.asarray(ps.conditions[ri], np.float32) / 255.0
        region = _region(np.asarray(ps.masks[ri]) > 0, cfg.band)
        ref[ri] = (cond, region, _corr(soft_edges(real_imgs[k])[region], cond[region]))
    rows = []
    for r in syn.manifest:
        if r["real_index"] not in ref:
            rows.append({"row": r["index"], "real_index": r["real_index"], "variant": r["variant"], "text": r["text"],
                         "edge_agreement": float("nan"), "real_edge_agreement": float("nan"), "z_mean": float("nan"),
                         "z_std": float("nan"), "keep": 1, "reason": "no label to check against"})
            continue
        img = np.asarray(syn.images[r["index"]], np.float32)
        cond, region, real_agree = ref[r["real_index"]]
        agree = _corr(soft_edges(img)[region], cond[region])
        mu_m, sd_m, mu_s, sd_s = stats[r["text"]]
        z_m, z_s = (img.mean() - mu_m) / sd_m, (img.std() - mu_s) / sd_s
        reasons = []
        if agree < cfg.edge_ratio * real_agree:
            reasons.append("edges")
        if abs(z_m) > cfg.max_z or abs(z_s) > cfg.max_z:
            reasons.append("intensity")
        rows.append({"row": r["index"], "real_index": r["real_index"], "variant": r["variant"], "text": r["text"],
                     "edge_agreement": round(agree, 5), "real_edge_agreement": round(real_agree, 5),
                     "z_mean": round(float(z_m), 4), "z_std": round(float(z_s), 4), "keep": int(not reasons),
                     "reason": "+".join(reasons)})
    by_real: dict[int, list[dict]] = {}
    for row in rows:
        by_real.setdefault(row["real_index"], []).append(row)
    for group in by_real.values():  # every real image keeps at least its best variant
        if not any(x["keep"] for x in group):
            best = max(group, key=lambda x: x["edge_agreement"])
            best["keep"], best["reason"] = 1, best["reason"] + " (kept: best of its image)"
    return rows


def quality_filter(syn, ps: PreparedSet, cfg: QualityConfig | None = None) -> set[int]:
    """The manifest rows of ``syn`` that pass; scores cached in ``quality.csv`` for these settings."""
    cfg = cfg or QualityConfig()
    root = Path(syn.root)
    cache, summary = root / "quality.csv", root / "quality.json"
    stored = json.loads(summary.read_text()) if summary.exists() else {}
    if cache.exists() and stored.get("config") == asdict(cfg) and stored.get("version") == VERSION:
        with open(cache, newline="") as f:
            return {int(r["row"]) for r in csv.DictReader(f) if r["keep"] == "1"}
    rows = score_variants(syn, ps, cfg)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(cache, buf.getvalue())
    removed = [r for r in rows if not r["keep"]]
    atomic_write_text(summary, json.dumps({
        "config": asdict(cfg), "version": VERSION, "variants": len(rows), "kept": len(rows) - len(removed),
        "removed": len(removed),
        "removed_for_edges": sum("edges" in r["reason"] for r in removed),
        "removed_for_intensity": sum("intensity" in r["reason"] for r in removed),
        "mean_edge_agreement": float(np.nanmean([r["edge_agreement"] for r in rows])),
        "mean_real_edge_agreement": float(np.nanmean([r["real_edge_agreement"] for r in rows]))}, indent=1))
    return {r["row"] for r in rows if r["keep"]}
