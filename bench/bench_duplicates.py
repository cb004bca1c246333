"""Near-duplicate groups on real BUSI at several thresholds (how the default 0.92 was chosen).

Prepares BUSI at 64 px (duplicates off), computes the 32 x 32 thumbnail correlation of every pair
(``diffboost.data.duplicates``) and, per threshold, the groups ``prepare`` would keep in one fold:
their number, the images in them and the largest group (a sign of unrelated images chaining). Also
writes a side-by-side sheet of pairs near each threshold (``bench/results/duplicates_pairs.png``) to
look at.

    python bench/bench_duplicates.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from common import REPO, SHARED_DATA, need, report

THRESHOLDS = (0.85, 0.88, 0.90, 0.92, 0.93, 0.95, 0.97, 0.99)


def main() -> None:
    from diffboost.config import PrepareConfig
    from diffboost.data.duplicates import DEFAULT_THRESHOLD, near_duplicate_groups, similarity
    from diffboost.data.preparation import prepare

    src = need(SHARED_DATA / "BUSI")
    with tempfile.TemporaryDirectory() as tmp:
        ps = prepare(src, Path(tmp) / "busi", PrepareConfig(size=64, duplicates=None), progress=False)
        images = np.asarray(ps.images, np.float32)
        rows = ps.manifest
        ids = [r["case_id"] for r in rows]
        sim = similarity(images)
        out = []
        for th in THRESHOLDS:
            groups = near_duplicate_groups(ids, images, th)
            cross = sum(len({ps.manifest[ids.index(c)]["category"] for c in g}) > 1 for g in groups)
            out.append({"threshold": th, "groups": len(groups), "images_in_groups": sum(map(len, groups)),
                        "largest_group": max(map(len, groups), default=0), "groups_across_categories": cross})
        default = near_duplicate_groups(ids, images, DEFAULT_THRESHOLD)
        _pairs_sheet(sim, rows, REPO / "bench" / "results" / "duplicates_pairs.png")
    report("duplicates_busi", out, {"data": "shared BUSI, 624 images, prepared at 64 px",
                                    "default_threshold": DEFAULT_THRESHOLD, "default_groups": default})


def _pairs_sheet(sim: np.ndarray, rows: list[dict], path: Path) -> None:
    from PIL import Image, ImageDraw

    iu = np.triu_indices(len(sim), 1)
    v = sim[iu]
    order = np.argsort(-v)
    tiles = []
    for t in (0.99, 0.97, 0.95, 0.94, 0.93, 0.925, 0.92, 0.915, 0.91, 0.90, 0.89, 0.88):
        k = order[np.argmin(np.abs(v[order] - t))]
        i, j = iu[0][k], iu[1][k]
        tile = Image.new("L", (330, 145), 255)
        for x, idx in ((0, i), (170, j)):
            tile.paste(Image.open(rows[idx]["source_image"]).convert("L").resize((160, 128)), (x, 0))
        ImageDraw.Draw(tile).text((2, 131), f"{v[k]:.3f}  {rows[i]['case_id']} | {rows[j]['case_id']}", fill=0)
        tiles.append(tile)
    sheet = Image.new("L", (330 * 3, 145 * 4), 255)
    for n, tile in enumerate(tiles):
        sheet.paste(tile, ((n % 3) * 330, (n // 3) * 145))
    sheet.save(path)


if __name__ == "__main__":
    main()
