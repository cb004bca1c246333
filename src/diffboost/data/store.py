"""The prepared-set store: what ``diffboost prepare`` writes and every later stage reads.

Folder contents::

    dataset.json      format, source, size, labels, counts, skipped files, timing, version
    config.yaml       the PrepareConfig that made it
    manifest.csv      one row per 2D sample (slice): case id, slice, class, prompt, sizes, spacing,
                      source files, scanner (``device``, empty when the source does not name it)...
    images.npy        float16 [N, S, S] in [-1, 1]
    masks.npy         uint8   [N, S, S] output labels (nearest-resized)
    edges.npy         uint8   [N, S, S] soft image edges, 0..255 for [0, 1]
    conditions.npy    uint8   [N, S, S] clip(edges + mask boundary), the fine-tuning condition
    originals.npz     per case: the label map at the original size (whole volume for 3D), for
                      metrics on the original grid
    folds.json        case-wise folds: train / val / test case ids
    preview.png       image | mask | edges | condition for a few cases

Arrays are plain ``.npy`` so they open memory-mapped in milliseconds.
"""

from __future__ import annotations

import csv
import json
from functools import cached_property
from pathlib import Path

import numpy as np

from .folds import Fold

MANIFEST_FIELDS = [
    "index", "case_id", "slice_index", "slice_axis", "category", "prompt",
    "orig_height", "orig_width", "spacing_row", "spacing_col",
    "case_shape", "case_spacing", "foreground_pixels", "train", "source_image", "source_mask", "device",
    "labelled",
]
ARRAYS = ("images", "masks", "edges", "conditions")


def group_rows(rows: list[dict], key: str) -> dict:
    """``row[key]`` -> the ``index`` of its rows, in first-seen order of the keys."""
    out: dict = {}
    for r in rows:
        out.setdefault(r[key], []).append(r["index"])
    return out


def _convert(row: dict) -> dict:
    out = dict(row)
    for k in ("index", "slice_index", "slice_axis", "orig_height", "orig_width", "foreground_pixels"):
        out[k] = int(out[k])
    for k in ("spacing_row", "spacing_col"):
        out[k] = float(out[k])
    out["train"] = out["train"] in ("1", "True", "true", True)
    out["labelled"] = out.get("labelled") not in ("0", "False", "false", False)  # absent (older sets): labelled
    out["case_shape"] = tuple(int(v) for v in out["case_shape"].split("x"))
    out["case_spacing"] = tuple(float(v) for v in out["case_spacing"].split("x"))
    return out


class HiddenLabel(RuntimeError):
    """A stage asked for a label it may not read: an unlabelled image's, or one a label budget hides."""


class LabelView:
    """A read-only view of ``masks.npy`` or ``conditions.npy`` (whose mask boundary is a label too) that
    refuses the rows whose label is not readable (:meth:`PreparedSet.label_readable`)."""

    def __init__(self, array: np.ndarray, readable: np.ndarray, ps: "PreparedSet", what: str):
        self.array, self.readable, self.ps, self.what = array, readable, ps, what
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __len__(self) -> int:
        return len(self.array)

    def _check(self, rows) -> None:
        ok = self.readable[rows]
        if not np.all(ok):
            bad = np.atleast_1d(np.arange(len(self.readable))[rows])[~np.atleast_1d(ok)]
            raise self.ps.hidden_error(int(bad[0]), self.what, int(bad.size))

    def __getitem__(self, idx):
        self._check(idx[0] if isinstance(idx, tuple) else idx)
        return self.array[idx]

    def __array__(self, dtype=None, copy=None):
        self._check(slice(None))
        return np.asarray(self.array, dtype=dtype)


class PreparedSet:
    """Read access to a prepared set (arrays memory-mapped, manifest as a list of dicts).

    Labels are read through one accessor: ``masks``, ``conditions`` (they hold the mask boundary) and
    :meth:`original_mask` refuse (:class:`HiddenLabel`) the samples without a readable label: images
    prepared without one (``--unlabelled``), and, under a label budget, cases whose label is hidden. A
    stage binds its fold with :meth:`for_fold`: it then reads the labels of that fold's training,
    validation and test cases, and nothing else; unbound, only labels no fold hides are readable."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.scope: int | None = None
        meta = self.root / "dataset.json"
        if not meta.exists():
            raise FileNotFoundError(f"{self.root}: not a prepared set (no dataset.json); run `diffboost prepare`")
        self.meta: dict = json.loads(meta.read_text())

    def __len__(self) -> int:
        return len(self.manifest)

    def __repr__(self) -> str:
        return f"PreparedSet({str(self.root)!r}, samples={len(self)}, cases={len(self.case_ids)})"

    @cached_property
    def manifest(self) -> list[dict]:
        with open(self.root / "manifest.csv", newline="") as f:
            return [_convert(r) for r in csv.DictReader(f)]

    def _array(self, name: str) -> np.ndarray:
        return np.load(self.root / f"{name}.npy", mmap_mode="r")

    @cached_property
    def images(self) -> np.ndarray:
        return self._array("images")

    @cached_property
    def _masks(self) -> np.ndarray:
        return self._array("masks")

    @cached_property
    def _conditions(self) -> np.ndarray:
        return self._array("conditions")

    @property
    def masks(self) -> np.ndarray | LabelView:
        """Label maps ``[N, S, S]``; a :class:`LabelView` when some sample's label is not readable here."""
        r = self._readable
        return self._masks if r is None else LabelView(self._masks, r, self, "label")

    @property
    def conditions(self) -> np.ndarray | LabelView:
        """Fine-tuning conditions (edges + mask boundary); guarded like :attr:`masks` (stages read the
        ``edges`` of an image whose label they may not read)."""
        r = self._readable
        return self._conditions if r is None else LabelView(self._conditions, r, self, "condition (edges + label boundary)")

    @cached_property
    def edges(self) -> np.ndarray:
        return self._array("edges")

    def for_fold(self, k: int) -> "PreparedSet":
        """This set as fold ``k``'s stages see it: the labels of its training, validation and test cases
        are readable, no other."""
        import copy

        self.fold(k)  # an error naming the folds there are
        bound = copy.copy(self)
        bound.__dict__.pop("_readable", None)
        bound.scope = k
        return bound

    @cached_property
    def _readable(self) -> np.ndarray | None:
        """Per sample, whether its label may be read here; None when every one may (no check needed)."""
        if not self.meta.get("has_masks", True):
            return None  # a corpus: no labels to read or to hide (its conditions are its edges)
        labelled = np.array([r["labelled"] for r in self.manifest], bool)
        case_of = [r["case_id"] for r in self.manifest]
        if self.scope is not None:
            allowed = set(self.fold(self.scope).labelled)
            ok = labelled & np.array([c in allowed for c in case_of], bool)
            return None if ok.all() else ok
        hidden = {c for f in self.folds for c in f.hidden}
        if labelled.all() and not hidden:
            return None
        return labelled & np.array([c not in hidden for c in case_of], bool)

    def label_readable(self, index: int) -> bool:
        r = self._readable
        return True if r is None else bool(r[index])

    @property
    def labelled_cases(self) -> list[str]:
        """Cases prepared with a label (whatever a budget hides in one fold or another)."""
        return [c for c, rows in self._rows_by_case.items() if self.manifest[rows[0]]["labelled"]]

    @property
    def unlabelled_cases(self) -> list[str]:
        """Cases prepared without a label (``prepare --unlabelled``)."""
        return [c for c, rows in self._rows_by_case.items() if not self.manifest[rows[0]]["labelled"]]

    def hidden_error(self, index: int, what: str = "label", count: int = 1) -> HiddenLabel:
        row = self.manifest[index]
        case = row["case_id"]
        if not row["labelled"]:
            why = "an image prepared without a label (--unlabelled)"
        elif self.scope is not None:
            why = f"its label is hidden in fold {self.scope} by the label budget {self.meta.get('budget')}"
        else:
            why = f"its label is hidden in some fold by the label budget {self.meta.get('budget')}; bind a fold " \
                  "(PreparedSet.for_fold)"
        more = f" (and {count - 1} more sample(s))" if count > 1 else ""
        return HiddenLabel(f"{self.root}: the {what} of case {case!r}{more} cannot be read: {why}. Stages read the "
                           "labels of their fold's training, validation and test cases only")

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    @property
    def label_names(self) -> dict[int, str]:
        return {int(k): v for k, v in self.meta["labels"].items()}

    @cached_property
    def case_ids(self) -> list[str]:
        return list(self._rows_by_case)

    @cached_property
    def _rows_by_case(self) -> dict[str, list[int]]:
        return group_rows(self.manifest, "case_id")

    def indices(self, case_ids, training: bool = False) -> list[int]:
        """Sample indices of these cases, slices in order; ``training`` keeps only the slices the
        training stages use (``slices: foreground`` drops the empty slices of 3D volumes)."""
        rows = self._rows_by_case
        out = []
        for c in case_ids:
            if c not in rows:
                raise KeyError(f"{self.root}: unknown case id {c!r}")
            out += [i for i in rows[c] if not training or self.manifest[i]["train"]]
        return out

    @cached_property
    def folds(self) -> list[Fold]:
        data = json.loads((self.root / "folds.json").read_text())
        return [Fold.from_dict(d) for d in data["folds"]]

    def fold(self, k: int) -> Fold:
        """Fold ``k``; a ValueError naming the set and its folds when there is no such fold."""
        n = len(self.folds)
        if not 0 <= k < n:
            have = f"{n} folds (0-{n - 1})" if n > 1 else ("1 fold (0)" if n == 1 else "no folds")
            raise ValueError(f"fold {k} does not exist: {self.root} has {have}")
        return self.folds[k]

    def original_mask(self, case_id: str) -> np.ndarray:
        """The label map of a case at its original size (the whole volume for 3D)."""
        rows = self._rows_by_case.get(case_id)
        if rows and not self.label_readable(rows[0]):
            raise self.hidden_error(rows[0])
        with np.load(self.root / "originals.npz") as z:
            if case_id not in z.files:
                raise KeyError(f"{self.root}: no original mask for case {case_id!r}")
            return z[case_id]

    def sample(self, index: int) -> dict:
        """One sample as a dict of float32 arrays (image in [-1, 1], edges/condition in [0, 1])."""
        return {
            "image": np.asarray(self.images[index], dtype=np.float32),
            "mask": np.asarray(self.masks[index]),
            "edges": np.asarray(self.edges[index], dtype=np.float32) / 255.0,
            "condition": np.asarray(self.conditions[index], dtype=np.float32) / 255.0,
            **self.manifest[index],
        }
