"""An optional quality filter for synthetic variants (off by default).

Two checks per variant, both against what the real data itself does:

1. **Edges follow the condition near the label.** In the neighbourhood of the mask (a band of
   ``band`` px around its boundary; the whole image for an empty mask) the Pearson correlation
   between the variant's soft edges and the condition it was generated from is its *edge agreement*.
   The real image's own edges give the reference agreement. A variant is rejected when its agreement
   is below ``edge_ratio`` times the real image's (default: less than half as good).
2. **Intensity statistics are not outliers.** The variant's mean and standard deviation are
   z-scored against those of the fold's real training images; |z| > ``max_z`` (default 3) on either
   is rejected.

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
from scipy import ndimage

from ..conditioning.edges import mask_boundary, soft_edges
from ..data.store import PreparedSet
from ..utils.atomic import atomic_write_text

FIELDS = ["row", "real_index", "variant", "edge_agreement", "real_edge_agreement", "z_mean", "z_std", "keep", "reason"]


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


def score_variants(syn, ps: PreparedSet, cfg: QualityConfig | None = None) -> list[dict]:
    """One row per variant of the synthetic set ``syn`` (rows in manifest order)."""
    cfg = cfg or QualityConfig()
    reals = sorted(syn.by_real)
    real_imgs = np.asarray(ps.images[np.asarray(reals)], np.float32)
    means, stds = real_imgs.mean(axis=(1, 2)), real_imgs.std(axis=(1, 2))
    mu_m, sd_m = means.mean(), max(means.std(), 1e-6)
    mu_s, sd_s = stds.mean(), max(stds.std(), 1e-6)
    ref: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
    for k, ri in enumerate(reals):
        cond = np.asarray(ps.conditions[ri], np.float32) / 255.0
        region = _region(np.asarray(ps.masks[ri]) > 0, cfg.band)
        ref[ri] = (cond, region, _corr(soft_edges(real_imgs[k])[region], cond[region]))
    rows = []
    for r in syn.manifest:
        img = np.asarray(syn.images[r["index"]], np.float32)
        cond, region, real_agree = ref[r["real_index"]]
        agree = _corr(soft_edges(img)[region], cond[region])
        z_m, z_s = (img.mean() - mu_m) / sd_m, (img.std() - mu_s) / sd_s
        reasons = []
        if agree < cfg.edge_ratio * real_agree:
            reasons.append("edges")
        if abs(z_m) > cfg.max_z or abs(z_s) > cfg.max_z:
            reasons.append("intensity")
        rows.append({"row": r["index"], "real_index": r["real_index"], "variant": r["variant"],
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
    if cache.exists() and summary.exists() and json.loads(summary.read_text()).get("config") == asdict(cfg):
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
        "config": asdict(cfg), "variants": len(rows), "kept": len(rows) - len(removed), "removed": len(removed),
        "removed_for_edges": sum("edges" in r["reason"] for r in removed),
        "removed_for_intensity": sum("intensity" in r["reason"] for r in removed),
        "mean_edge_agreement": float(np.mean([r["edge_agreement"] for r in rows])),
        "mean_real_edge_agreement": float(np.mean([r["real_edge_agreement"] for r in rows]))}, indent=1))
    return {r["row"] for r in rows if r["keep"]}
