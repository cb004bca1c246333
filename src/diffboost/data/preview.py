"""Preview grids of a prepared set: image | mask | edges | condition per row."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from ..conditioning.edges import mask_boundary

# distinct colours for labels 1, 2, 3 ...
_COLOURS = np.array([[230, 50, 50], [50, 200, 80], [60, 120, 240], [240, 200, 40], [200, 60, 220]], np.uint8)


def to_uint8(image: np.ndarray, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    return (np.clip((np.asarray(image, np.float32) - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray, fill: float = 0.3) -> np.ndarray:
    """RGB image (uint8) with each label tinted and outlined in its colour."""
    rgb = np.repeat(to_uint8(image)[..., None], 3, axis=2).astype(np.float32)
    for lab in [v for v in np.unique(mask) if v != 0]:
        col = _COLOURS[(int(lab) - 1) % len(_COLOURS)].astype(np.float32)
        region = mask == lab
        rgb[region] = (1 - fill) * rgb[region] + fill * col
        rgb[mask_boundary(region.astype(np.uint8)) > 0] = col
    return rgb.astype(np.uint8)


def grid_png(rows: list[list[np.ndarray]], row_labels: list[str], col_labels: list[str], tile: int = 128) -> bytes:
    """Compose RGB/grey uint8 tiles into a labelled grid; return PNG bytes."""
    head, side = 18, 0 if not any(row_labels) else 120
    w = side + tile * len(col_labels)
    h = head + tile * len(rows)
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(col_labels):
        draw.text((side + j * tile + 4, 3), name, fill=(0, 0, 0))
    for i, (tiles, label) in enumerate(zip(rows, row_labels)):
        y = head + i * tile
        draw.text((4, y + tile // 2 - 6), label[:20], fill=(0, 0, 0))
        for j, t in enumerate(tiles):
            im = Image.fromarray(t if t.ndim == 3 else np.repeat(t[..., None], 3, axis=2))
            canvas.paste(im.resize((tile, tile), Image.NEAREST), (side + j * tile, y))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def pick_preview(manifest: list[dict], n: int) -> list[int]:
    """Up to ``n`` sample indices: one per case (its largest-foreground slice), classes in turn."""
    best: dict[str, dict] = {}
    for r in manifest:
        b = best.get(r["case_id"])
        if b is None or r["foreground_pixels"] > b["foreground_pixels"]:
            best[r["case_id"]] = r
    by_cat: dict[str, list[dict]] = {}
    for r in best.values():
        by_cat.setdefault(r["category"], []).append(r)
    queues = [sorted(v, key=lambda r: r["index"]) for _, v in sorted(by_cat.items())]
    out: list[int] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0)["index"])
    return out


def preview_png(images, masks, edges, conditions, manifest: list[dict], n: int = 8) -> bytes:
    idx = pick_preview(manifest, n)
    rows = [
        [to_uint8(images[i]), overlay(images[i], masks[i]), np.asarray(edges[i]), np.asarray(conditions[i])]
        for i in idx
    ]
    labels = [f"{manifest[i]['case_id']}" + (f" z{manifest[i]['slice_index']}" if manifest[i]["slice_axis"] >= 0 else "")
              for i in idx]
    return grid_png(rows, labels, ["image", "mask", "edges", "condition"], tile=max(128, images.shape[-1]))
