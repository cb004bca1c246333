"""``prepare``: any supported source -> a prepared 2D set with prompts, edges and folds."""

from __future__ import annotations

import csv
import dataclasses
import json
import platform
import resource
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__
from ..conditioning.edges import soft_edges, task_condition
from ..conditioning.prompts import build_prompt, site_style
from ..config import PrepareConfig, load_section, save_yaml, to_dict
from ..errors import DataError
from ..utils.atomic import atomic_dir
from ..utils.lock import locks_folder
from ..utils.progress import progress_iter
from .folds import Fold, apply_budget, cross_site_folds, parse_budget, partition_seed, split_by_case
from .preprocess import (
    in_plane_spacing,
    iter_slices,
    normalize_intensity,
    resize_image,
    resize_mask,
    through_plane_axis,
)
from .io import is_nifti
from .preview import preview_png
from .readers import get_reader
from .readers.unlabelled import read_unlabelled
from .store import MANIFEST_FIELDS, PreparedSet
from .types import Case


def edge_detector(cfg: PrepareConfig) -> Callable[[np.ndarray], np.ndarray]:
    """The image-edge function chosen by the config (soft edges, or HED from local weights)."""
    if cfg.edges == "hed":
        from ..conditioning.hed import HEDEdgeDetector

        return HEDEdgeDetector(weights=cfg.hed_weights)
    return soft_edges


class _NpyAppender:
    """One ``.npy`` array written item by item: the items go to a raw file as they come, and ``close``
    puts the header (now that the count is known) in front of them. Memory stays at one item, so a
    corpus of a million images prepares like one of a hundred."""

    def __init__(self, path: Path, dtype):
        self.path, self.dtype, self.shape, self.count = path, np.dtype(dtype), None, 0
        self.raw = path.with_suffix(".raw")
        self.f = open(self.raw, "wb")

    def append(self, item: np.ndarray) -> None:
        item = np.ascontiguousarray(item, self.dtype)
        if self.shape is None:
            self.shape = item.shape
        elif item.shape != self.shape:
            raise ValueError(f"{self.path.name}: item of shape {item.shape} after items of shape {self.shape}")
        self.f.write(item.tobytes())
        self.count += 1

    def close(self) -> None:
        import shutil

        self.f.close()
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.count, *(self.shape or ()))}
        with open(self.path, "wb") as out, open(self.raw, "rb") as raw:
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(raw, out, 16 << 20)
        self.raw.unlink()


_ARRAY_TYPES = {"images": np.float16, "masks": np.uint8, "edges": np.uint8, "conditions": np.uint8}


class _Collector:
    """Streams samples to the arrays' files and keeps rows and original masks while cases come in."""

    def __init__(self, cfg: PrepareConfig, edges: Callable[[np.ndarray], np.ndarray], has_masks: bool, folder: Path):
        self.cfg, self.edges, self.has_masks = cfg, edges, has_masks
        self.arrays = {name: _NpyAppender(folder / f"{name}.npy", dtype) for name, dtype in _ARRAY_TYPES.items()}
        self.rows: list[dict] = []
        self.originals: dict[str, np.ndarray] = {}
        self.cases: dict[str, str] = {}  # case id -> category
        self.unlabelled: list[str] = []  # case ids of the images without a label
        self.target: list[str] = []  # cross-site: the case ids of the target site
        self.groups: dict[str, list[str]] = {}  # patient / examination -> its case ids (kept in one fold)
        self.physical = False  # whether any spacing came from a NIfTI header (mm)

    def add(self, case: Case, labelled: bool = True, site: str | None = None) -> None:
        """Add a case; ``site``: the target site of a cross-site set, whose scanner (else the site's name) ends
        its prompt (``US, Breast, benign, GE Logiq 7``)."""
        cfg, ref = self.cfg, case.ref
        if ref.case_id in self.cases:
            raise DataError(ref.image, f"case id {ref.case_id!r} appears twice")
        category = cfg.prompt.category or ref.category or "normal"
        prompt = build_prompt(cfg.prompt, ref.modality, ref.organ, ref.category)
        if site is not None:
            prompt = f"{prompt}, {site_style(ref.device, site)}"
        image = normalize_intensity(case.image, cfg.percentiles, cfg.window)
        mask = case.mask if case.mask is not None else np.zeros(case.image.shape, np.uint8)
        common = {
            "case_id": ref.case_id, "category": category, "prompt": prompt,
            "case_shape": "x".join(str(s) for s in case.image.shape),
            "case_spacing": "x".join(f"{s:g}" for s in case.spacing),
            "source_image": str(ref.image), "source_mask": ";".join(str(m) for m in ref.masks),
            "device": ref.device or "", "labelled": int(labelled),
        }
        if case.is_3d:
            axis = cfg.axis if cfg.axis is not None else through_plane_axis(case.spacing)
            if not 0 <= axis < 3:
                raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
            sp = in_plane_spacing(case.spacing, axis)
            planes = zip(iter_slices(image, axis), iter_slices(mask, axis))
            for (k, img2d), (_, m2d) in planes:
                self._add_slice(img2d, m2d, k, axis, sp, common, 3, labelled)
        else:
            self._add_slice(image, mask, 0, -1, tuple(case.spacing[:2]), common, 2, labelled)
        if labelled:
            self.originals[ref.case_id] = mask.astype(np.uint8)
        elif self.has_masks:  # an image without a label beside labelled ones (a corpus is split as before)
            self.unlabelled.append(ref.case_id)
        self.cases[ref.case_id] = category
        if ref.group is not None:
            self.groups.setdefault(ref.group, []).append(ref.case_id)
        self.physical = self.physical or is_nifti(ref.image)

    def _add_slice(self, img2d, m2d, k, axis, spacing, common, ndim, labelled: bool) -> None:
        size = self.cfg.size
        img = resize_image(img2d, size)
        m = resize_mask(m2d, size)
        e = np.clip(self.edges(img), 0, 1)
        c = task_condition(e, m if labelled else None)
        fg = int(np.count_nonzero(m2d))
        self.arrays["images"].append(img)
        self.arrays["masks"].append(m)
        self.arrays["edges"].append(np.rint(e * 255))
        self.arrays["conditions"].append(np.rint(c * 255))
        train = ndim == 2 or self.cfg.slices == "all" or fg > 0 or not labelled
        self.rows.append({
            **common, "index": len(self.rows), "slice_index": k, "slice_axis": axis,
            "orig_height": img2d.shape[0], "orig_width": img2d.shape[1],
            "spacing_row": f"{spacing[0]:g}", "spacing_col": f"{spacing[1]:g}",
            "foreground_pixels": fg, "train": int(train),
        })


def check_file_names(refs) -> None:
    """A name that cannot go into the manifest (not UTF-8) or onto one line of a table or a log (a newline or
    another control character) fails now, naming the file with escapes, not after every case is read."""
    for ref in refs:
        for p in (ref.image, *ref.masks):
            try:
                str(p).encode("utf-8")
            except UnicodeEncodeError:
                raise DataError(ascii(str(p)), "the file name is not valid UTF-8; rename it") from None
            if not str(p).isprintable():
                raise DataError(p, "the file name holds a control character (a newline, a tab, ...); rename it")


@locks_folder("out")
def prepare(
    source: str | Path,
    out: str | Path,
    cfg: PrepareConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PreparedSet:
    """Read ``source``, preprocess every case and write a prepared set to ``out`` atomically.

    Returns the :class:`PreparedSet` written. Bad input raises :class:`DataError` naming the file
    (or, with ``cfg.skip_bad``, is listed under ``skipped`` in ``dataset.json``); nothing is
    left at ``out`` when an error stops the run.
    """
    cfg = cfg or PrepareConfig()
    source, out = Path(source), Path(out)
    t0 = time.perf_counter()
    reader = get_reader(source, cfg)
    refs = reader.scan()
    check_file_names(refs)
    extra = read_unlabelled(cfg.unlabelled, cfg, refs)
    if extra and not reader.has_masks:
        raise DataError(source, "--unlabelled adds images without labels to a labelled set; this source has no "
                                "labels at all")
    for _, more in extra:
        check_file_names(more)
    sites = []
    if cfg.target:  # cross-site: the target's cases, labelled, for the test folds
        from .readers.target import read_target

        if not reader.has_masks:
            raise DataError(source, "--target tests on another site a segmenter trained on this source; this "
                                    "source has no labels")
        treader, trefs = read_target(cfg.target, cfg, refs + [r for _, more in extra for r in more])
        check_file_names(trefs)
        if set(treader.label_names) != set(reader.label_names):  # the values; their names may differ
            raise DataError(cfg.target, f"--target: its label values {sorted(treader.label_names)} differ from the "
                                        f"source's {sorted(reader.label_names)}; map them with label_map")
        sites = [(treader, trefs, True)]
    detector = edge_detector(cfg)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        collector = _Collector(cfg, detector, reader.has_masks, tmp)
        for r, todo, labelled in [(reader, refs, True)] + sites + [(u, more, False) for u, more in extra]:
            for ref in progress_iter(todo, f"prepare {r.name}" + ("" if labelled else f" {r.root.name}"),
                                     enabled=progress):
                try:
                    case = r.load(ref)
                except DataError as e:
                    r.bad(e.path or ref.image, e.problem)  # raises unless skip_bad
                    continue
                collector.add(case, labelled=labelled and reader.has_masks,
                              site=r.prefix.rstrip("/") if sites and r is sites[0][0] else None)
            if r is not reader:
                reader.skipped += r.skipped  # dataset.json lists every skipped file, labelled or not
        if sites:
            collector.target = [r.case_id for r in sites[0][1] if r.case_id in collector.cases]
            if len(collector.target) < cfg.folds:
                raise DataError(cfg.target, f"--target: {len(collector.target)} usable case(s), fewer than the "
                                            f"{cfg.folds} test folds")
        if not any(r["labelled"] for r in collector.rows) and reader.has_masks:
            raise DataError(source, "no usable cases (every case was skipped)")
        if not collector.rows:
            raise DataError(source, "no usable cases (every case was skipped)")
        if reader.skipped:
            warnings.warn(f"{source}: skipped {len(reader.skipped)} bad file(s); listed under 'skipped' "
                          f"in {out / 'dataset.json'}", stacklevel=2)
        _write(tmp, source, cfg, reader, collector, time.perf_counter() - t0)
    return PreparedSet(out)


def make_folds(cfg: PrepareConfig, case_ids: list[str], categories: dict[str, str], together: list[list[str]],
               unlabelled: list[str]) -> list[Fold]:
    """The folds of every partition (``cfg.repeats``, each seeded on its own; fold ``index`` counts over
    all of them), with the label budget applied and the unlabelled images in every fold's training part."""
    if len(case_ids) < cfg.folds:
        return []
    budget = parse_budget(cfg.budget)
    strata = [categories[c] for c in case_ids]
    folds: list[Fold] = []
    for p in range(cfg.repeats or 1):
        seed = partition_seed(cfg.seed, p)
        split = split_by_case(case_ids, cfg.folds, cfg.val_fraction, seed, strata, together)
        split = apply_budget(split, budget, cfg.val_fraction, categories, together, seed)
        folds += [dataclasses.replace(f, index=len(folds) + f.index, partition=p,
                                      unlabelled=tuple(sorted(set(f.unlabelled) | set(unlabelled))))
                  for f in split]
    return folds


def merge_groups(groups: list[list[str]]) -> list[list[str]]:
    """Groups that share a case, merged (a near-duplicate pair across two patients joins them)."""
    parent: dict[str, str] = {}

    def find(c: str) -> str:
        while parent.setdefault(c, c) != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    for g in groups:
        for c in g[1:]:
            parent[find(c)] = find(g[0])
        find(g[0])
    merged: dict[str, list[str]] = {}
    for c in parent:
        merged.setdefault(find(c), []).append(c)
    return [sorted(m) for m in merged.values() if len(m) > 1]


def _near_duplicates(cfg: PrepareConfig, col: _Collector, images: np.ndarray) -> dict:
    """Near-duplicate groups of a labelled 2D set (each kept inside one fold); 3D volumes and unlabelled
    corpora (no test folds to protect; pretraining reads all of it) are not compared."""
    from .duplicates import near_duplicate_groups

    info = {"threshold": cfg.duplicates, "method": "32x32 thumbnail correlation (diffboost.data.duplicates)",
            "groups": []}
    is_2d = all(r["slice_axis"] < 0 for r in col.rows)
    if cfg.duplicates is None or not is_2d or not col.has_masks:
        info["note"] = ("off" if cfg.duplicates is None else "not applied to 3D volumes" if not is_2d else
                        "not applied to an unlabelled corpus (no test folds to keep apart)")
        return info
    lab = [i for i, r in enumerate(col.rows) if r["labelled"]]
    ids = [col.rows[i]["case_id"] for i in lab]
    info["groups"] = near_duplicate_groups(ids, images if len(lab) == len(col.rows) else images[lab], cfg.duplicates)
    info["cases_in_groups"] = sum(len(g) for g in info["groups"])
    if len(lab) < len(col.rows):
        _refuse_unlabelled_duplicates(cfg, col, images, lab)
        info["unlabelled_checked"] = len(col.rows) - len(lab)
    return info


def _split_across_sites(cfg: PrepareConfig, col: _Collector, groups: list[list[str]]) -> list[list[str]]:
    """Near-duplicate groups of a cross-site set, each cut into its source and target parts; a source-target
    pair confirmed at the finer scale (:func:`_fine_correlation`) is refused, naming the files."""
    target = set(col.target)
    src_image = {r["case_id"]: r["source_image"] for r in col.rows}
    out, confirmed = [], []
    for g in groups:
        s, t = [c for c in g if c not in target], [c for c in g if c in target]
        for a in s if t else []:
            for b in t:
                corr = _fine_correlation(cfg, src_image[a], src_image[b])
                if corr >= cfg.duplicates:
                    confirmed.append(f"{src_image[a]} ~ {src_image[b]} ({corr:.3f})")
        out += [part for part in (s, t) if len(part) > 1]
    if confirmed:
        raise DataError(confirmed[0].split(" ~ ")[0], f"{len(confirmed)} source image(s) are near-duplicates of target "
                        f"images (thumbnail correlation >= {cfg.duplicates}), which are test cases: "
                        f"{'; '.join(confirmed[:5])}. Remove them from one of the two sets (or raise duplicates)")
    return out


def _fine_correlation(cfg: PrepareConfig, a: str, b: str) -> float:
    """Thumbnail correlation of two source images at 64 x 64 (rendered at 128 px): re-crops and re-exports of
    one image stay above 0.95; different BUSI and BUS-BRA images that pass at 32 x 32 fall to about 0.90."""
    from .duplicates import thumbnails
    from .io import read_any

    arrays = [read_any(p)[0] for p in (a, b)]
    if any(x.ndim != 2 for x in arrays):
        return 1.0  # a slice of a volume: the working-size check stands
    tiles = [resize_image(normalize_intensity(x, cfg.percentiles, cfg.window), 128) for x in arrays]
    t = thumbnails(np.stack(tiles), size=64)
    return float(t[0] @ t[1])


def _refuse_unlabelled_duplicates(cfg: PrepareConfig, col: _Collector, images: np.ndarray, lab: list[int]) -> None:
    """Every labelled image is a test case in some fold, and unlabelled images train in every fold: an
    unlabelled near-duplicate of a labelled image would leak a test case into training. Refused, naming
    the pairs."""
    from .duplicates import similar_pairs, thumbnails

    unl = [i for i, r in enumerate(col.rows) if not r["labelled"]]
    i, j, corr = similar_pairs(thumbnails(images[unl]), thumbnails(images[lab]), cfg.duplicates)
    if len(i):  # confirmed at a finer scale from the files: ultrasound images of two sites can look alike
        fine = np.array([_fine_correlation(cfg, col.rows[unl[a]]["source_image"], col.rows[lab[b]]["source_image"])
                         for a, b in zip(i, j)])
        keep = fine >= cfg.duplicates
        i, j, corr = i[keep], j[keep], fine[keep]
    if len(i):
        order = np.argsort(-corr)
        pairs = [f"{col.rows[unl[i[k]]]['source_image']} ~ {col.rows[lab[j[k]]]['source_image']} ({corr[k]:.3f})"
                 for k in order[:5]]
        more = f" and {len(i) - 5} more" if len(i) > 5 else ""
        raise DataError(col.rows[unl[i[order[0]]]]["source_image"],
                        f"{len(i)} unlabelled image(s) are near-duplicates of labelled images (thumbnail correlation "
                        f">= {cfg.duplicates}), which are test cases in some fold: {'; '.join(pairs)}{more}. Remove "
                        "them from the unlabelled folder (or raise duplicates)")


def _write(tmp: Path, source: Path, cfg: PrepareConfig, reader, col: _Collector, elapsed: float) -> None:
    for appender in col.arrays.values():
        appender.close()
    with open(tmp / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        w.writeheader()
        w.writerows(col.rows)
    if col.originals:
        np.savez_compressed(tmp / "originals.npz", **col.originals)
    unlabelled = set(col.unlabelled)
    case_ids = [c for c in col.cases if c not in unlabelled]
    images = np.load(tmp / "images.npy", mmap_mode="r")
    dups = _near_duplicates(cfg, col, images)
    patients = [g for g in col.groups.values() if len(g) > 1]
    if col.target:  # a near-duplicate across the sites would test the target on a training image
        dups["groups"] = _split_across_sites(cfg, col, dups["groups"])
    together = merge_groups(dups["groups"] + patients)
    if col.target:
        target = set(col.target)
        folds = []
        for p in range(cfg.repeats or 1):
            split = cross_site_folds([c for c in case_ids if c not in target], col.target, cfg.folds,
                                     cfg.val_fraction, partition_seed(cfg.seed, p), col.cases, together)
            folds += [dataclasses.replace(f, index=len(folds) + f.index, partition=p,
                                          unlabelled=tuple(sorted(set(f.unlabelled) | unlabelled))) for f in split]
    else:
        folds = make_folds(cfg, case_ids, col.cases, together, col.unlabelled)
    (tmp / "folds.json").write_text(json.dumps(
        {"k": cfg.folds, "repeats": cfg.repeats or 1, "val_fraction": cfg.val_fraction, "seed": cfg.seed,
         "budget": cfg.budget, "groups": together,
         "by": "case, stratified by category, near-duplicate groups and the images of one patient kept together",
         "folds": [f.to_dict() for f in folds]}, indent=1))
    save_yaml(cfg, tmp / "config.yaml", section="prepare")
    (tmp / "preview.png").write_bytes(preview_png(
        images, np.load(tmp / "masks.npy", mmap_mode="r"), np.load(tmp / "edges.npy", mmap_mode="r"),
        np.load(tmp / "conditions.npy", mmap_mode="r"), col.rows, cfg.preview_cases))
    categories: dict[str, int] = {}
    for c in col.cases.values():
        categories[c] = categories.get(c, 0) + 1
    meta = {
        "diffboost_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": str(source.resolve()),
        "format": reader.name,
        "size": cfg.size,
        "has_masks": reader.has_masks,
        "labels": {str(k): v for k, v in reader.label_names.items()},
        "num_cases": len(col.cases),
        "num_labelled_cases": len(case_ids) if reader.has_masks else 0,
        "num_unlabelled_cases": len(col.unlabelled),
        "unlabelled_sources": [str(Path(u).resolve()) for u in cfg.unlabelled or []],
        "cross_site": {"target": str(Path(cfg.target).resolve()), "target_cases": len(col.target),
                       "source_cases": len(case_ids) - len(col.target),
                       "protocol": "every source case trains (a fixed share validates); the target's cases are "
                                   "split into the test folds; a fold's other target cases are unlabelled training "
                                   "images (labels hidden)"} if col.target else None,
        "budget": cfg.budget,
        "repeats": cfg.repeats or 1,
        "labels_per_fold": [{"train": len(f.train), "val": len(f.val), "test": len(f.test), "hidden": len(f.hidden),
                             "unlabelled": len(f.unlabelled)} for f in folds],
        "num_samples": len(col.rows),
        "num_training_samples": sum(r["train"] for r in col.rows),
        "cases_per_category": categories,
        "is_3d": any(r["slice_axis"] >= 0 for r in col.rows),
        # distances are in mm when the spacing came from NIfTI headers (2D NIfTI too), else in pixels
        "spacing_unit": "mm" if col.physical else "px",
        "prompts": sorted({r["prompt"] for r in col.rows}),
        "near_duplicates": dups,
        "case_groups": {"pattern": getattr(reader, "case_pattern", None), "groups": len(col.groups),
                        "with_several_images": len(patients), "images_in_them": sum(map(len, patients))}
        if col.groups else None,
        "skipped": reader.skipped,
        "config": to_dict(cfg),
        "seconds": round(elapsed, 2),
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "python": platform.python_version(),
    }
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=1))


def with_budget(prepared: str | Path | PreparedSet, budget: str, out: str | Path) -> PreparedSet:
    """The prepared set ``prepared`` (every label) at a label budget, written to ``out``: the same cases,
    arrays (hard links, else copies), partitions and test folds, each fold keeping the labels of the budget's
    share of its training + validation part (see :func:`~diffboost.data.folds.apply_budget`). It is what
    ``prepare --budget`` writes, without reading the source again; reused when ``out`` already holds it."""
    ps = prepared if isinstance(prepared, PreparedSet) else PreparedSet(prepared)
    if ps.meta.get("budget") is not None:
        raise ValueError(f"{ps.root}: already at a label budget ({ps.meta['budget']}); derive budgets from a set "
                         "prepared with every label")
    if ps.meta.get("cross_site") or ps.meta.get("derived"):
        raise ValueError(f"{ps.root}: a cross-site set (or one derived from it) takes no label budget")
    parsed = parse_budget(budget)
    out = Path(out)
    have = _existing_derived(ps, out, lambda m: parse_budget(m.get("budget")) == parsed,  # 25% and 0.25: one budget
                             f"{ps.root} at budget {budget}")
    if have is not None:
        return have
    spec = json.loads((ps.root / "folds.json").read_text())
    cfg = load_section(ps.root / "config.yaml", "prepare", PrepareConfig)
    categories = {r["case_id"]: r["category"] for r in ps.manifest}
    groups = spec.get("groups") or (ps.meta.get("near_duplicates") or {}).get("groups") or []
    labelled = [dataclasses.replace(f, unlabelled=tuple(c for c in f.unlabelled if c not in set(f.hidden)))
                for f in ps.folds]
    folds: list[Fold] = []
    for p in sorted({f.partition for f in labelled}):
        part = [f for f in labelled if f.partition == p]
        seed = partition_seed(cfg.seed, p)
        local = [dataclasses.replace(f, index=j) for j, f in enumerate(part)]
        for f, g in zip(part, apply_budget(local, parsed, cfg.val_fraction, categories, groups, seed)):
            folds.append(dataclasses.replace(g, index=f.index, partition=p,
                                             unlabelled=tuple(sorted(set(g.unlabelled) | set(f.unlabelled)))))
    return _derived_set(ps, out, folds, {"budget": str(budget)}, dataclasses.replace(cfg, budget=str(budget)),
                        {"budget": str(budget)})


def _existing_derived(ps: PreparedSet, out: Path, matches, what: str) -> PreparedSet | None:
    """The set already derived at ``out`` when ``matches(its meta)`` and it was derived from ``ps`` as it is
    now; None when ``out`` holds none; an error when it holds another."""
    if not (out / "dataset.json").exists():
        return None
    have = PreparedSet(out)
    if matches(have.meta) and have.meta.get("derived_from") == _fingerprint(ps):
        return have
    raise FileExistsError(f"{out}: holds another prepared set (not {what}); remove it or choose another folder")


def _derived_set(ps: PreparedSet, out: Path, folds: list[Fold], spec: dict, cfg: PrepareConfig, meta: dict) -> PreparedSet:
    """Write ``ps`` with other folds to ``out``: its arrays as hard links (else copies), ``folds.json`` with
    ``spec`` updates, ``config.yaml`` from ``cfg``, ``dataset.json`` with ``meta`` updates."""
    import os
    import shutil

    from ..utils.atomic import artifact_dir

    with artifact_dir(out) as tmp:
        for name in os.listdir(ps.root):
            src = ps.root / name
            if name in ("folds.json", "dataset.json", "config.yaml") or not src.is_file():
                continue
            try:
                os.link(src, tmp / name)
            except OSError:
                shutil.copy2(src, tmp / name)
        old = json.loads((ps.root / "folds.json").read_text())
        (tmp / "folds.json").write_text(json.dumps({**old, **spec, "folds": [f.to_dict() for f in folds]}, indent=1))
        save_yaml(cfg, tmp / "config.yaml", section="prepare")
        (tmp / "dataset.json").write_text(json.dumps({
            **ps.meta, **meta, "derived_from": _fingerprint(ps),
            "labels_per_fold": [{"train": len(f.train), "val": len(f.val), "test": len(f.test), "hidden": len(f.hidden),
                                 "unlabelled": len(f.unlabelled)} for f in folds]}, indent=1))
    return PreparedSet(out)


def target_supervised(prepared: str | Path | PreparedSet, out: str | Path) -> PreparedSet:
    """The ceiling of a cross-site set: the same target test folds, each fold training on the target's other
    cases with their labels (a seeded, stratified ``val_fraction`` of them validating), the source unused.
    Written to ``out`` like :func:`with_budget` (hard links); reused when ``out`` already holds it."""
    from .folds import _units, validation_part

    ps = prepared if isinstance(prepared, PreparedSet) else PreparedSet(prepared)
    if not ps.meta.get("cross_site") or ps.meta.get("derived"):
        raise ValueError(f"{ps.root}: not a cross-site set as prepared (prepare SOURCE --target DIR)")
    out = Path(out)
    have = _existing_derived(ps, out, lambda m: m.get("derived") == "target-supervised",
                             f"the target-supervised ceiling of {ps.root}")
    if have is not None:
        return have
    spec = json.loads((ps.root / "folds.json").read_text())
    cfg = load_section(ps.root / "config.yaml", "prepare", PrepareConfig)
    categories = {r["case_id"]: r["category"] for r in ps.manifest}
    folds = []
    for f in ps.folds:
        pool = sorted(f.hidden)  # the target's other cases
        units = _units(pool, [[c for c in g if c in set(pool)] for g in spec.get("groups") or []])
        names = sorted(units)
        cats = {u: categories[units[u][0]] for u in names}
        val = validation_part(units, cats, max(1, int(round(cfg.val_fraction * len(pool)))),
                              np.random.default_rng([cfg.seed, f.index, 31]))
        extra = tuple(c for c in f.unlabelled if c not in set(f.hidden))  # --unlabelled images, if any
        folds.append(dataclasses.replace(f, train=tuple(sorted(set(pool) - set(val))), val=tuple(val),
                                         unlabelled=extra, hidden=()))
    return _derived_set(ps, out, folds, {"derived": "target-supervised"}, cfg, {"derived": "target-supervised"})


def _fingerprint(ps: PreparedSet) -> str:
    from ..stages import prepared_fingerprint

    return prepared_fingerprint(ps)
