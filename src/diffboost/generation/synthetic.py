"""A synthetic set on disk: the variants of a fold's training images, each tied to its real image
(whose mask is its label), text and seed.

    images.npy       [N, S, S] float16 variants in [-1, 1]
    masks.npy        [N, S, S] uint8 labels, only in sets whose variants have labels of their own (new
                     lesions in new places, :mod:`.layout`); else a variant's label is its real image's
    manifest.csv     one row per variant (``SYN_FIELDS``, and the placement's fields in layout sets)
    config.yaml      the generator's options
    generation.json  what the set was made from (identity, fold, model, timing)
    preview.png      real | condition | first variants

Caches made from the set's images (replaced with them, so a regenerated set drops them):
``quality.csv``/``quality.json`` (:mod:`.quality`) and the teacher's ``consistency.csv``,
``consistency.json``, ``teacher_loss.npy`` (:mod:`diffboost.evaluation.consistency`).

Written whole through a temporary folder (``write_synthetic_set``), read with :class:`SyntheticSet`.
Generators: the diffusion model (:mod:`.generate`) and the Pix2Pix baseline (:mod:`.pix2pix`).
"""

from __future__ import annotations

import csv
import hashlib
import json
from functools import cached_property
from pathlib import Path

import numpy as np

from ..config import save_yaml
from ..data.store import PreparedSet, group_rows
from ..utils.atomic import artifact_dir, recover_artifact

SYN_FIELDS = ["index", "real_index", "case_id", "slice_index", "variant", "category", "prompt", "text",
              "seed", "sampler", "steps", "guidance", "model_hash"]
SET_FILES = ("images.npy", "masks.npy", "manifest.csv", "config.yaml", "generation.json", "preview.png")
# made from the set's images: replaced with them (a new set is written whole, without them)
# the teacher's check of a set (evaluation.consistency writes them, the segmentation filters read them)
CONSISTENCY_CSV, CONSISTENCY_JSON, TEACHER_LOSS = "consistency.csv", "consistency.json", "teacher_loss.npy"
_SET_CACHES = ("quality.csv", "quality.json", CONSISTENCY_CSV, CONSISTENCY_JSON, TEACHER_LOSS)


def check_set_folder(out: str | Path) -> None:
    """Refuse an ``out`` that holds files other than a synthetic set's: the whole folder is replaced
    when a set is written (hidden entries, such as ``.work``, are the tool's own)."""
    out = Path(out)
    if not out.is_dir():
        return
    other = sorted(p.name for p in out.iterdir()
                   if not p.name.startswith(".") and p.name not in SET_FILES + _SET_CACHES)
    if other:
        raise ValueError(f"{out}: holds files that are not part of a synthetic set ({', '.join(other[:3])}"
                         f"{', ...' if len(other) > 3 else ''}); choose an empty or new --out")


def variant_seed(seed: int, case_id: str, slice_index: int, variant: int) -> int:
    """A stable 63-bit seed per (run seed, case, slice, variant)."""
    key = f"{seed}|{case_id}|{slice_index}|{variant}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


class SyntheticSet:
    """Read access to a synthetic set (images memory-mapped, manifest as a list of dicts)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        recover_artifact(self.root)  # a kill while a new set was swapped in leaves the previous one aside
        if not (self.root / "generation.json").exists():
            raise FileNotFoundError(f"{self.root}: not a synthetic set (no generation.json); run `diffboost generate`")
        self.meta = json.loads((self.root / "generation.json").read_text())

    def __len__(self) -> int:
        return len(self.manifest)

    @cached_property
    def manifest(self) -> list[dict]:
        with open(self.root / "manifest.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            for k in ("index", "real_index", "slice_index", "variant", "seed", "steps"):
                r[k] = int(r[k])
            r["guidance"] = float(r["guidance"])
        return rows

    @cached_property
    def images(self) -> np.ndarray:
        return np.load(self.root / "images.npy", mmap_mode="r")

    @cached_property
    def masks(self) -> np.ndarray | None:
        """The variants' own labels, or None: each variant's label is its real image's mask."""
        path = self.root / "masks.npy"
        return np.load(path, mmap_mode="r") if path.exists() else None

    @property
    def fold(self) -> int | None:
        """The fold whose training images it varies, as its record says (None when it does not)."""
        made_for = self.meta.get("fold", (self.meta.get("identity") or {}).get("fold"))
        return None if made_for is None else int(made_for)

    def bind(self, ps: PreparedSet) -> PreparedSet:
        """``ps`` as this set's fold sees it (the labels it may read); unchanged when already bound."""
        return ps if self.fold is None or ps.scope is not None else ps.for_fold(self.fold)

    def check_fold(self, ps: PreparedSet, fold: int) -> None:
        """Refuse a set made for another fold, or holding variants of images outside the fold's
        training part, labelled or not (they would leak validation or test images into training)."""
        made_for = self.meta.get("fold", self.meta.get("identity", {}).get("fold"))
        if made_for is not None and int(made_for) != fold:
            raise ValueError(f"{self.root}: synthetic set was generated for fold {made_for}, not fold {fold}")
        f = ps.fold(fold)
        foreign = sorted({r["real_index"] for r in self.manifest} - set(ps.indices([*f.train, *f.unlabelled], training=True)))
        if foreign:
            raise ValueError(f"{self.root}: {len(foreign)} variant source image(s) are not training samples of fold "
                             f"{fold} (e.g. sample {foreign[0]}); generate them from this fold's training part only")

    @cached_property
    def by_real(self) -> dict[int, list[int]]:
        """Real sample index -> the rows of its variants."""
        return group_rows(self.manifest, "real_index")


def write_synthetic_set(out: Path, ps: PreparedSet, rows: list[dict], images: np.ndarray, cfg, meta: dict,
                        masks: np.ndarray | None = None, fields: tuple[str, ...] = ()) -> None:
    """Write a synthetic set (``images.npy``, ``manifest.csv``, ``config.yaml``, ``generation.json``,
    ``preview.png``; ``masks.npy`` when the variants have labels of their own) through a temporary
    folder that replaces ``out`` whole, so a reader never sees half of it and a kill keeps the previous
    set (see ``utils.atomic.artifact_dir``). ``rows`` follow ``SYN_FIELDS`` plus ``fields``; ``cfg`` is
    the generator's config dataclass (saved under ``generate:``)."""
    from ..data.preview import grid_png, to_uint8

    out = Path(out)
    check_set_folder(out)
    # the whole folder is swapped: the previous set (and its .work, quality cache) stays until this one is complete
    with artifact_dir(out) as tmp:
        np.save(tmp / "images.npy", images)
        if masks is not None:
            if len(masks) != len(images):
                raise ValueError(f"{len(masks)} label maps for {len(images)} variants")
            np.save(tmp / "masks.npy", np.asarray(masks, np.uint8))
        with open(tmp / "manifest.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=SYN_FIELDS + [k for k in fields if k not in SYN_FIELDS])
            w.writeheader()
            w.writerows(rows)
        save_yaml(cfg, tmp / "config.yaml", section="generate")
        (tmp / "generation.json").write_text(json.dumps(meta, indent=1))
        # preview: real | condition | the first four variants, for four real images
        by_real = group_rows(rows, "real_index")
        reals = list(by_real)[:: max(1, len(by_real) // 4)][:4]
        k = min(4, max(len(v) for v in by_real.values()))
        # real | condition (or, for variants with labels of their own, the first one's label) | variants
        second = ((lambda ri: np.asarray(masks[by_real[ri][0]] > 0, np.uint8) * 255) if masks is not None
                  else (lambda ri: np.asarray(ps.conditions[ri] if ps.label_readable(ri) else ps.edges[ri])))
        grid = [[to_uint8(ps.images[ri]), second(ri)] + [to_uint8(images[j]) for j in by_real[ri][:k]] for ri in reals]
        first = by_real[reals[0]]
        heads = (["real", "v0's label" if masks is not None else "condition"]
                 + [f"v{i}: {rows[first[i]]['text'] or 'plain'}" for i in range(min(k, len(first)))])
        (tmp / "preview.png").write_bytes(grid_png(grid, [""] * len(grid), heads, tile=max(128, ps.size)))
