"""New lesions in new places: a donor lesion, transformed, placed where lesions occur, and the
copy-paste control that draws it without a generative model.

For variant ``v`` of a training image (normal images included), everything is drawn from
``(seed, real sample index, v)``, so every generator that draws lesions into layouts (copy-paste,
and the diffusion model later) gets the same donor, transform and position for the same seed:

1. **Donor**: another training image of the same fold with a lesion, and one connected component of
   its mask (with a ring of surrounding tissue, ``ring`` px).
2. **Transform** of the donor's crop and mask together: a left-right flip (``flip``), a rotation
   uniform in ``[-rotation, rotation]`` degrees, a scale uniform in ``scale``, and a mild elastic warp
   (a smooth random displacement field whose spread is ``elastic`` x the lesion's size).
3. **Position** (``placement``):

   - ``uniform``: anywhere in the image that does not touch an existing lesion (``gap`` px kept free)
     — the naive rule, which an independent check on BUSI found to lower Dice;
   - ``tissue`` (default): uniform over the positions where the whole new lesion lies inside the tissue (the
     field of view: the smoothed image above the dark background, its largest component, holes
     filled, eroded by ``ring`` px, so not over the background nor across the image's edge);
   - ``depth`` (informed): ``tissue``, each position weighted by how often lesions of the
     fold's training part have their centre at that depth (a Gaussian kernel density of the centres'
     rows as a fraction of the height, bandwidth ``depth_bandwidth``): lesions go to the depths
     where lesions are.

   ``tissue`` is the default because validation Dice chose it on BUSI (``copy-paste+classic``, 3 folds x
   2 seeds, ``bench/results/layout_busi_ablation_placement.json``): tissue 63.79, uniform 63.52, depth
   62.87 — differences within the protocol's noise, so a weak choice.

   A donor that fits nowhere is replaced by another draw (up to ``tries``). When none of the draws
   fits (an image that a large lesion already fills, as many thyroid ultrasound crops are), the same
   draws are tried again shrunk in steps of 0.8 (the largest size that fits first) while their scale
   stays at least ``min_scale``; only then is the variant given up. The scale a variant was placed at
   is the one in its manifest.
4. **Label**: the union of the real mask and the placed donor mask (the donor's label values).

``copy-paste`` (TumorCP / CarveMix style) pastes the transformed donor pixels at that position with
an alpha map that is 1 on the lesion and falls off over the ``ring`` px around it (a Gaussian
feather), and no other change: the control that tells whether a generative model is needed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

PLACEMENTS = ("uniform", "tissue", "depth")


@dataclass
class LayoutConfig:
    """Options of the layout variants and of the copy-paste control (saved beside the set)."""

    n: int = 3  # layout variants per training image
    scale: tuple[float, float] = (0.7, 1.4)
    rotation: float = 180.0  # degrees: uniform in [-rotation, rotation]
    flip: bool = True
    elastic: float = 0.04  # spread of the elastic warp, as a fraction of the lesion's size (0 = off)
    placement: str = "tissue"  # uniform | tissue (chosen on validation) | depth
    depth_bandwidth: float = 0.05  # kernel bandwidth of the lesion depths, as a fraction of the height
    gap: int = 2  # px kept free around existing lesions
    ring: int = 4  # px of donor tissue around the lesion, feathered into the image (copy-paste)
    tries: int = 20  # donors and transforms drawn for a variant before they are shrunk
    min_scale: float | None = 0.25  # smallest scale a draw that fits nowhere is shrunk to (None: given up)
    seed: int = 0

    def __post_init__(self):
        self.scale = tuple(float(s) for s in self.scale)
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be [low, high] with 0 < low <= high, got {list(self.scale)}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        for name in ("rotation", "elastic", "gap", "ring"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")
        if not self.depth_bandwidth > 0:
            raise ValueError(f"depth_bandwidth must be positive, got {self.depth_bandwidth}")
        if self.tries < 1:
            raise ValueError(f"tries must be at least 1, got {self.tries}")
        if self.min_scale is not None and not self.min_scale > 0:
            raise ValueError(f"min_scale must be positive or null (no shrinking), got {self.min_scale}")

    def identity(self) -> dict:
        """The options that change the variants (n does not: more variants only add to the set)."""
        d = dataclasses.asdict(self)
        d.pop("n")
        d["scale"] = list(d["scale"])
        return d


@dataclass(frozen=True)
class Placement:
    """Variant ``variant`` of real sample ``real_index``: donor sample and mask component, transform,
    and the top-left corner of the transformed donor crop in the real image."""

    real_index: int
    variant: int
    donor_index: int
    component: int
    flip: bool
    angle: float
    scale: float
    elastic_seed: int
    top: int
    left: int
    rule: str

    def to_row(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_row(cls, row: dict) -> "Placement":
        kinds = {f.name: f.type for f in dataclasses.fields(cls)}
        out = {}
        for k, t in kinds.items():
            v = row[k]
            out[k] = (v in (True, "True", "true", "1", 1)) if t == "bool" else float(v) if t == "float" else \
                int(v) if t == "int" else str(v)
        return cls(**out)


def tissue_map(image: np.ndarray, background: float = -0.85, sigma: float = 2.0, erode: int = 4) -> np.ndarray:
    """Where the scan is (bool ``[H, W]``) of a prepared image in [-1, 1]: the smoothed image above the
    dark background, its largest component with holes filled (dark lesions are tissue), eroded by
    ``erode`` px. An image without background is all tissue, less the border."""
    from scipy import ndimage as ndi

    smooth = ndi.gaussian_filter(np.asarray(image, np.float32), sigma)
    fov = smooth > background
    lab, n = ndi.label(fov)
    if n > 1:
        fov = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    fov = ndi.binary_fill_holes(fov)
    if erode:
        fov = ndi.binary_erosion(fov, iterations=erode, border_value=0)
    return fov


def lesion_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components (8-connected) of the foreground: the label image and their number."""
    from scipy import ndimage as ndi

    return ndi.label(np.asarray(mask) > 0, structure=np.ones((3, 3), int))


def donor_components(mask: np.ndarray, share: float = 0.25, least: int = 16) -> list[int]:
    """The components of a donor's mask worth pasting: those of at least ``share`` x the largest one's
    area and ``least`` px (specks and fragments of a lesion are not lesions); the largest always."""
    lab, n = lesion_components(mask)
    areas = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    keep = [k + 1 for k, a in enumerate(areas) if a >= max(share * areas.max(), least)]
    return keep or [int(np.argmax(areas)) + 1]


def lesion_depths(masks: np.ndarray) -> np.ndarray:
    """The centre row of every lesion component of ``masks`` ``[N, H, W]``, as a fraction of the height."""
    from scipy import ndimage as ndi

    out = []
    for m in masks:
        lab, n = lesion_components(m)
        if n:
            out += [c[0] / m.shape[0] for c in ndi.center_of_mass(np.ones_like(lab), lab, range(1, n + 1))]
    return np.asarray(out, np.float64)


def donor_crop(image: np.ndarray, mask: np.ndarray, component: int, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """The donor's image and label values inside the component's bounding box grown by ``margin`` px
    (clipped to the image); labels outside the component are 0."""
    lab, _ = lesion_components(mask)
    rows, cols = np.nonzero(lab == component)
    r0, r1 = max(rows.min() - margin, 0), min(rows.max() + margin + 1, mask.shape[0])
    c0, c1 = max(cols.min() - margin, 0), min(cols.max() + margin + 1, mask.shape[1])
    sel = lab[r0:r1, c0:c1] == component
    return (np.asarray(image[r0:r1, c0:c1], np.float32).copy(),
            np.where(sel, np.asarray(mask[r0:r1, c0:c1]), 0).astype(np.uint8))


def transform_crop(image: np.ndarray, labels: np.ndarray, flip: bool, angle: float, scale: float,
                   elastic: float, elastic_seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The donor crop and its labels under one geometric transform (flip, rotation about the centre
    with the canvas grown to hold it, scale, elastic warp): image bilinear, labels nearest. Returns
    ``(image, labels, support)`` cut to the bounding box of the support (bool: where the transformed
    crop has pixels of the donor; 0 elsewhere in the image and labels)."""
    from scipy import ndimage as ndi
    from skimage.transform import rescale, rotate

    img, lab = np.asarray(image, np.float32), np.asarray(labels, np.uint8)
    support = np.ones(img.shape, np.float32)
    if flip:
        img, lab, support = img[:, ::-1], lab[:, ::-1], support[:, ::-1]
    if angle:
        img = rotate(img, angle, resize=True, order=1, mode="constant", cval=0.0, preserve_range=True)
        support = rotate(support, angle, resize=True, order=1, mode="constant", cval=0.0, preserve_range=True)
        lab = rotate(lab.astype(np.float32), angle, resize=True, order=0, mode="constant", cval=0,
                     preserve_range=True)
    if scale != 1.0:
        img = rescale(img, scale, order=1, mode="constant", cval=0.0, preserve_range=True, anti_aliasing=scale < 1)
        support = rescale(support, scale, order=1, mode="constant", cval=0.0, preserve_range=True)
        lab = rescale(np.asarray(lab, np.float32), scale, order=0, mode="constant", cval=0, preserve_range=True,
                      anti_aliasing=False)
    lab = np.rint(lab).astype(np.uint8)
    if elastic > 0 and lab.any():
        rng = np.random.default_rng(elastic_seed)
        rows, cols = np.nonzero(lab)
        size = max(np.ptp(rows), np.ptp(cols)) + 1
        field = [ndi.gaussian_filter(rng.normal(size=img.shape), size / 4) for _ in range(2)]
        spread = max(np.std(field[0]), np.std(field[1]), 1e-9)
        dy, dx = (f / spread * elastic * size for f in field)
        yy, xx = np.meshgrid(np.arange(img.shape[0]), np.arange(img.shape[1]), indexing="ij")
        coords = np.stack([yy + dy, xx + dx])
        img = ndi.map_coordinates(img, coords, order=1, mode="constant", cval=0.0)
        support = ndi.map_coordinates(support, coords, order=1, mode="constant", cval=0.0)
        lab = ndi.map_coordinates(lab, coords, order=0, mode="constant", cval=0)
    inside = support > 0.99
    if not inside.any():
        return img[:0, :0], lab[:0, :0], inside[:0, :0]
    r, c = np.nonzero(inside)
    sl = (slice(r.min(), r.max() + 1), slice(c.min(), c.max() + 1))
    lab = np.where(inside, lab, 0)[sl].astype(np.uint8)
    return np.where(inside, img, 0)[sl].astype(np.float32), lab, inside[sl]


def valid_positions(allowed: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Bool ``[H - h + 1, W - w + 1]``: top-left corners where every pixel of ``footprint`` ``[h, w]``
    falls on ``allowed``."""
    from scipy.signal import fftconvolve

    h, w = footprint.shape
    if h > allowed.shape[0] or w > allowed.shape[1] or not footprint.any():
        return np.zeros((max(allowed.shape[0] - h + 1, 0), max(allowed.shape[1] - w + 1, 0)), bool)
    hits = fftconvolve(allowed.astype(np.float32), footprint[::-1, ::-1].astype(np.float32), mode="valid")
    return hits > footprint.sum() - 0.5


def depth_weights(depths: np.ndarray, height: int, bandwidth: float) -> np.ndarray:
    """``[height]`` weights of a lesion centre at each row: a Gaussian kernel density of ``depths``
    (fractions of the height); uniform without depths."""
    if not len(depths):
        return np.ones(height)
    rows = (np.arange(height) + 0.5) / height
    return np.exp(-0.5 * ((rows[:, None] - depths[None]) / bandwidth) ** 2).sum(1) + 1e-12


class LayoutPlanner:
    """Draws the placements of a fold's training samples (see the module's steps) from a prepared set."""

    def __init__(self, ps, indices: list[int], cfg: LayoutConfig):
        self.ps, self.cfg = ps, cfg
        self.indices = list(indices)
        masks = np.asarray(ps.masks[np.asarray(self.indices)]) if self.indices else np.zeros((0, ps.size, ps.size))
        self.donors = [i for i, m in zip(self.indices, masks) if m.any()]
        self.components = {i: donor_components(m) for i, m in zip(self.indices, masks) if m.any()}
        self.depth = depth_weights(lesion_depths(masks), ps.size, cfg.depth_bandwidth)
        self._allowed: tuple[int | None, np.ndarray | None] = (None, None)
        self.shrunk = 0  # placements found only by shrinking the draws below their drawn scale
        self._inradius: dict[tuple[int, int], float] = {}

    def allowed(self, real_index: int) -> np.ndarray:
        """Where a new lesion may lie in the real image: off its lesions (``gap`` px free), and inside
        the tissue unless the rule is ``uniform`` (kept for the image's other variants)."""
        if self._allowed[0] != real_index:
            self._allowed = (real_index, self._allowed_of(real_index))
        return self._allowed[1]

    def inradius(self, donor: int, component: int) -> float:
        """The radius of the largest disk inside a donor lesion (px, untransformed), cached."""
        key = (donor, component)
        if key not in self._inradius:
            from scipy import ndimage as ndi

            lab, _ = lesion_components(np.asarray(self.ps.masks[donor]))
            self._inradius[key] = float(ndi.distance_transform_edt(np.pad(lab == component, 1)).max())
        return self._inradius[key]

    def _allowed_of(self, real_index: int) -> np.ndarray:
        from scipy import ndimage as ndi

        mask = np.asarray(self.ps.masks[real_index]) > 0
        free = ~ndi.binary_dilation(mask, iterations=self.cfg.gap) if self.cfg.gap else ~mask
        if self.cfg.placement == "uniform":
            return free
        return free & tissue_map(np.asarray(self.ps.images[real_index], np.float32), erode=self.cfg.ring)

    def transformed(self, p: Placement) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The donor crop, labels and support of ``p``, transformed (:func:`transform_crop`)."""
        crop, labels = donor_crop(np.asarray(self.ps.images[p.donor_index], np.float32),
                                  np.asarray(self.ps.masks[p.donor_index]), p.component, self.cfg.ring + 2)
        return transform_crop(crop, labels, p.flip, p.angle, p.scale, self.cfg.elastic, p.elastic_seed)

    def plan(self, real_index: int, variant: int) -> Placement | None:
        """Variant ``variant`` of ``real_index``: None when no donor fits after ``tries`` draws, nor
        shrunk down to ``min_scale``."""
        cfg = self.cfg
        donors = [d for d in self.donors if d != real_index]
        if not donors:
            return None
        from scipy import ndimage as ndi

        rng = np.random.default_rng([cfg.seed, int(real_index), int(variant)])
        allowed = self.allowed(real_index)
        room = (int(allowed.sum()), float(ndi.distance_transform_edt(np.pad(allowed, 1)).max()))  # area, largest disk
        draws = []
        for _ in range(cfg.tries):
            donor = int(donors[rng.integers(len(donors))])
            comps = self.components[donor]
            p = Placement(real_index, variant, donor, int(comps[rng.integers(len(comps))]),
                          bool(cfg.flip and rng.random() < 0.5), float(rng.uniform(-cfg.rotation, cfg.rotation)),
                          float(rng.uniform(*cfg.scale)), int(rng.integers(2**31)), 0, 0, cfg.placement)
            found = self._position(p, allowed, rng, room)
            if found is not None:
                return found
            draws.append(p)
        factor = 0.8
        while cfg.min_scale is not None:  # the same draws, smaller: the largest size that fits first
            smaller = [dataclasses.replace(p, scale=p.scale * factor) for p in draws
                       if p.scale * factor >= cfg.min_scale]
            if not smaller:
                break
            for p in smaller:
                found = self._position(p, allowed, rng, room)
                if found is not None:
                    self.shrunk += 1
                    return found
            factor *= 0.8
        return None

    def _position(self, p: Placement, allowed: np.ndarray, rng: np.random.Generator,
                  room: tuple[int, float]) -> Placement | None:
        """``p`` at a position the rule draws among those where its transformed lesion fits; None if none.
        ``room`` is the free area (px) and the radius of the largest disk inside it: a lesion whose largest
        inner disk, scaled, is clearly wider cannot fit, and is refused without transforming it (a margin
        for the warp and resampling)."""
        from scipy import ndimage as ndi

        area, radius = room
        if 0.7 * p.scale * self.inradius(p.donor_index, p.component) - 2 > radius:
            return None
        _, labels, _ = self.transformed(p)
        if np.count_nonzero(labels) > area:  # cannot fit anywhere: no need to look
            return None
        ok = valid_positions(allowed, labels > 0)
        if not ok.any():
            return None
        weight = ok.astype(np.float64)
        if self.cfg.placement == "depth":  # the lesion's centre row at each top: the depth density there
            cy = ndi.center_of_mass(labels > 0)[0]
            centre = np.clip(np.rint(np.arange(ok.shape[0]) + cy).astype(int), 0, len(self.depth) - 1)
            weight *= self.depth[centre][:, None]
        flat = weight.ravel() / weight.sum()
        top, left = np.unravel_index(int(rng.choice(len(flat), p=flat)), ok.shape)
        return dataclasses.replace(p, top=int(top), left=int(left))


def placed(shape: tuple[int, int], crop: np.ndarray, top: int, left: int) -> np.ndarray:
    """``crop`` written into a zero array of ``shape`` at (``top``, ``left``)."""
    out = np.zeros(shape, crop.dtype)
    out[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    return out


def layout_label(real: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The union of the real label map and the placed donor labels (the real label where both are set)."""
    real = np.asarray(real)
    return np.where(real > 0, real, np.asarray(new)).astype(real.dtype)


def feather(lesion: np.ndarray, ring: int) -> np.ndarray:
    """Alpha map of a pasted lesion: 1 on it, falling off smoothly over ``ring`` px around it."""
    from scipy import ndimage as ndi

    lesion = np.asarray(lesion, bool)
    if ring == 0:
        return lesion.astype(np.float32)
    dist = ndi.distance_transform_edt(~lesion)
    return np.clip(1.0 - dist / (ring + 1), 0.0, 1.0).astype(np.float32) ** 1.5


def copy_paste(real: np.ndarray, crop: np.ndarray, labels: np.ndarray, support: np.ndarray, top: int, left: int,
               ring: int, keep: np.ndarray | None = None) -> np.ndarray:
    """The real image with the transformed donor pixels pasted at (``top``, ``left``): alpha 1 on the
    lesion, feathered over ``ring`` px of the donor's surrounding tissue (never beyond the donor's
    ``support``, and never over ``keep``: the real image's own lesions stay as their label says)."""
    real = np.asarray(real, np.float32)
    alpha = feather(placed(real.shape, labels > 0, top, left), ring)
    alpha *= placed(real.shape, support, top, left)
    if keep is not None:
        alpha *= ~(np.asarray(keep) > 0)
    return (alpha * placed(real.shape, crop, top, left) + (1 - alpha) * real).astype(np.float32)


# the placement's fields a layout set's manifest adds to SYN_FIELDS
LAYOUT_FIELDS = ("donor_index", "component", "flip", "angle", "scale", "elastic_seed", "top", "left", "rule")
COPY_PASTE = "copy-paste"


def copy_paste_set(prepared, fold: int, out, cfg: LayoutConfig | None = None, progress: bool = True):
    """The ``copy-paste`` control of a fold: ``cfg.n`` layout variants of every training sample (a donor
    lesion pasted where :class:`LayoutPlanner` puts it, feathered; label = the union), written as a
    synthetic set with its own labels (``masks.npy``) and each variant's placement in the manifest.
    A sample that no donor fits has fewer variants (none: it trains on its real image). A set made with
    the same options for at least ``cfg.n`` variants is reused as it is."""
    import json
    import time
    from pathlib import Path

    from ..data.store import PreparedSet
    from ..stages import prepared_fingerprint
    from ..utils.progress import progress_iter
    from .synthetic import SyntheticSet, write_synthetic_set

    cfg = cfg or LayoutConfig()
    ps = prepared if isinstance(prepared, PreparedSet) else PreparedSet(prepared)
    out = Path(out)
    identity = {"generator": COPY_PASTE, "fold": fold, "layout": cfg.identity(), "prepared": prepared_fingerprint(ps)}
    if (out / "generation.json").exists():
        meta = json.loads((out / "generation.json").read_text())
        if meta.get("identity") == identity and meta.get("n", 0) >= cfg.n:
            return SyntheticSet(out)
    t0 = time.perf_counter()
    ps = ps.for_fold(fold)
    idx = ps.indices(ps.fold(fold).train, training=True)
    planner = LayoutPlanner(ps, idx, cfg)
    rows, images, masks, missing = [], [], [], 0
    for j in progress_iter(idx, f"copy-paste fold {fold}", enabled=progress):
        real = np.asarray(ps.images[j], np.float32)
        real_mask = np.asarray(ps.masks[j])
        r = ps.manifest[j]
        for v in range(cfg.n):
            p = planner.plan(j, v)
            if p is None:
                missing += 1
                continue
            crop, labels, support = planner.transformed(p)
            images.append(copy_paste(real, crop, labels, support, p.top, p.left, cfg.ring, real_mask).astype(np.float16))
            masks.append(layout_label(real_mask, placed(real.shape, labels, p.top, p.left)))
            rows.append({"index": len(rows), "real_index": j, "case_id": r["case_id"], "slice_index": r["slice_index"],
                         "variant": v, "category": r["category"], "prompt": r["prompt"], "text": COPY_PASTE,
                         "seed": p.elastic_seed, "sampler": "", "steps": 0, "guidance": 0.0, "model_hash": "",
                         **p.to_row()})
    if not rows:
        raise ValueError(f"{ps.root}: fold {fold} has no training image with a lesion to copy: no copy-paste variant")
    meta = {"identity": identity, "fold": fold, "n": cfg.n, "num_variants": len(rows), "missing_variants": missing,
            "shrunk_variants": planner.shrunk,
            "layout": dataclasses.asdict(cfg), "seconds": round(time.perf_counter() - t0, 1)}
    write_synthetic_set(out, ps, rows, np.stack(images), cfg, meta, masks=np.stack(masks), fields=LAYOUT_FIELDS)
    return SyntheticSet(out)
