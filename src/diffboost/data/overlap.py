"""Does a pretraining corpus hold cases of the task being evaluated?

Pretraining on a task's own images leaks its test folds into the diffusion model that later makes the
synthetic training data. A corpus sample counts as a task case when its source file is one of the
task's files (same resolved path), has the same bytes as one of the task's images (sha256), prepares
to the same image (sha256 of the prepared array, when both sets have the same size), or is a
near-duplicate of one of the task's images, of any fold: a re-cropped, re-scaled or re-exported copy
(the thumbnail correlation of :mod:`diffboost.data.duplicates`, at ``threshold``).

The near-duplicate comparison streams the corpus in blocks against the task's thumbnails, so its
memory grows with the task, not with the corpus. Measured (``bench/bench_pretrain.py``): the shared
corpus's highest correlation with any BUSI image is 0.82 (fetal-head ultrasound), under the 0.92
that marks re-crops of one scan within BUSI.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..utils.atomic import file_sha256
from .duplicates import DEFAULT_THRESHOLD
from .store import PreparedSet

_CHUNK = 512  # samples read at once from images.npy


def _resolved(path: str) -> Path:
    return Path(path).expanduser().resolve()


def _sizes(paths) -> dict[Path, int]:
    out = {}
    for p in paths:
        try:
            if p.is_file():
                out[p] = p.stat().st_size
        except OSError:
            continue
    return out


def _same_images(corpus: PreparedSet, task: PreparedSet) -> dict[int, int]:
    """Corpus sample -> task sample with the same prepared image (constant images, such as empty
    slices, are not evidence and are skipped). A middle-row key keeps the full hashes few."""
    mid = task.size // 2
    keys: dict[bytes, list[int]] = defaultdict(list)
    full: dict[int, bytes] = {}
    for start in range(0, len(task), _CHUNK):
        block = np.asarray(task.images[start : start + _CHUNK])
        for j, img in enumerate(block):
            if img.min() != img.max():
                keys[img[mid].tobytes()].append(start + j)
    found: dict[int, int] = {}
    for start in range(0, len(corpus), _CHUNK):
        rows = np.asarray(corpus.images[start : start + _CHUNK, mid])
        for j, row in enumerate(rows):
            cands = keys.get(row.tobytes())
            if not cands:
                continue
            img = np.asarray(corpus.images[start + j])
            digest = hashlib.sha256(img.tobytes()).digest()
            for t in cands:
                if t not in full:
                    full[t] = hashlib.sha256(np.asarray(task.images[t]).tobytes()).digest()
                if full[t] == digest:
                    found[start + j] = t
                    break
    return found


def _near_duplicates(corpus: PreparedSet, task: PreparedSet, threshold: float) -> dict[int, tuple[int, float]]:
    """Corpus sample -> (task sample, correlation) of its most similar task image at ``>= threshold``;
    flat images (no structure to compare: empty slices) are skipped on both sides."""
    from .duplicates import BLOCK, similar_pairs, thumbnails

    def informative(images) -> np.ndarray:
        keep = []
        for start in range(0, len(images), BLOCK):
            block = np.asarray(images[start : start + BLOCK], np.float32)
            keep.append(block.reshape(len(block), -1).std(1) > 1e-3)
        return np.concatenate(keep) if keep else np.zeros(0, bool)

    task_rows = np.flatnonzero(informative(task.images))
    if not len(task_rows) or not len(corpus):
        return {}
    task_thumbs = thumbnails(np.asarray(task.images)[task_rows] if len(task_rows) < len(task) else task.images)
    found: dict[int, tuple[int, float]] = {}
    for start in range(0, len(corpus), BLOCK):
        block = np.asarray(corpus.images[start : start + BLOCK], np.float32)
        flat = block.reshape(len(block), -1).std(1) <= 1e-3
        ci, tj, corr = similar_pairs(thumbnails(block), task_thumbs, threshold)
        for i, j, c in zip(ci, tj, corr):
            if flat[i]:
                continue
            k = start + int(i)
            if k not in found or c > found[k][1]:
                found[k] = (int(task_rows[j]), float(c))
    return found


def task_overlap(corpus: PreparedSet, task: PreparedSet, threshold: float | None = DEFAULT_THRESHOLD) -> list[dict]:
    """The corpus files that are cases of ``task``: one ``{"corpus", "task", "by"}`` per corpus file,
    ``by`` being ``same path``, ``same file bytes``, ``same prepared image`` or ``near-duplicate``
    (then with its ``correlation``; ``threshold`` None skips that check)."""
    task_files: dict[Path, str] = {}  # every image and mask file of the task
    task_images: set[Path] = set()
    for r in task.manifest:
        img = _resolved(r["source_image"])
        task_images.add(img)
        task_files.setdefault(img, r["case_id"])
        for m in filter(None, r["source_mask"].split(";")):
            task_files.setdefault(_resolved(m), r["case_id"])
    corpus_rows: dict[Path, list[int]] = defaultdict(list)
    for r in corpus.manifest:
        corpus_rows[_resolved(r["source_image"])].append(r["index"])
    found: dict[Path, dict] = {}
    for p in corpus_rows:
        if p in task_files:
            found[p] = {"corpus": str(p), "task": str(p), "by": "same path"}
    by_size: dict[int, list[Path]] = defaultdict(list)
    for p, n in _sizes(task_images).items():
        by_size[n].append(p)
    task_sha: dict[Path, str] = {}
    for p, n in _sizes(q for q in corpus_rows if q not in found).items():
        if n not in by_size:
            continue
        digest = file_sha256(p)
        for t in by_size[n]:
            if t not in task_sha:
                task_sha[t] = file_sha256(t)
            if task_sha[t] == digest:
                found[p] = {"corpus": str(p), "task": str(t), "by": "same file bytes"}
                break
    if corpus.size == task.size and len(corpus) and len(task):
        row_file = {i: p for p, rows in corpus_rows.items() for i in rows}
        for ci, ti in _same_images(corpus, task).items():
            p = row_file[ci]
            if p not in found:
                found[p] = {"corpus": str(p), "task": task.manifest[ti]["source_image"], "by": "same prepared image"}
    if threshold is not None:
        row_file = {i: p for p, rows in corpus_rows.items() for i in rows}
        for ci, (ti, corr) in sorted(_near_duplicates(corpus, task, threshold).items()):
            p = row_file[ci]
            if p not in found:
                found[p] = {"corpus": str(p), "task": task.manifest[ti]["source_image"], "by": "near-duplicate",
                            "correlation": round(corr, 4)}
    return [found[p] for p in sorted(found)]


def overlap_error(corpus_source: str | Path, task_source: str | Path, files: list[dict]) -> DataError:
    """The one error that refuses a corpus holding task cases, naming the overlapping files."""
    def named(f: dict) -> str:
        if f["by"] == "same path":
            return f["corpus"]
        if f["by"] == "near-duplicate":
            return f"{f['corpus']} (near-duplicate of {f['task']}, correlation {f['correlation']:.3f})"
        return f"{f['corpus']} ({f['by']} as {f['task']})"

    near = sum(f["by"] == "near-duplicate" for f in files)
    shown = "; ".join(named(f) for f in files[:5])
    more = f"; and {len(files) - 5} more" if len(files) > 5 else ""
    return DataError(corpus_source, f"the pretraining corpus holds {len(files)} file(s) of the task being evaluated "
                                    f"({task_source}; {near} of them near-duplicates), which would leak its test "
                                    f"folds into the model: {shown}{more}. "
                                    "Remove them from the corpus, or allow it explicitly with pretrain.allow_task_overlap: "
                                    "true / --allow-task-overlap (the report then says so)")


def check_task_overlap(corpus: PreparedSet, task: PreparedSet, allow: bool = False,
                       record: str | Path | None = None, threshold: float | None = DEFAULT_THRESHOLD) -> list[dict]:
    """``task_overlap``, written to ``record`` (JSON) when given; an error naming the files when
    there are any and ``allow`` is false."""
    from ..utils.atomic import atomic_write_text

    corpus_source = corpus.meta.get("source", str(corpus.root))
    task_source = task.meta.get("source", str(task.root))
    files = task_overlap(corpus, task, threshold)
    if record is not None:
        atomic_write_text(record, json.dumps({"corpus": corpus_source, "task": task_source, "allowed": bool(allow),
                                              "near_duplicate_threshold": threshold,
                                              "near_duplicates": sum(f["by"] == "near-duplicate" for f in files),
                                              "files": files}, indent=1))
    if files and not allow:
        raise overlap_error(corpus_source, task_source, files)
    return files
