"""What a stage was made from, and what a resume does about it.

Each stage folder of a run (``prepared/``, ``pretrain/``, ``models/foldK/``) holds ``stage.json``: the
stage's identity and the diffboost version that made it. An identity describes content, not places.
It holds:

- hashes of the source files or of the prepared set, never absolute paths;
- the options that change the result, never the cosmetic ones (:data:`COSMETIC`).

So moving the run or the data, or changing ``log_every``, reuses everything.

On resume, :func:`check_stage` compares the stored identity with the current one:

- the same: the stage is reused;
- different: the stage is **refused** with one message naming it and what changed, and nothing is
  deleted, unless the user asked for it with ``--redo STAGE``, which also redoes every later stage,
  or ``--overwrite``;
- a version change is reported and the stage reused.

Folders made before identities had a version (``"v"`` absent) are compared on what they recorded,
their absolute paths left out, and upgraded in place. A finished run of an older diffboost is
therefore reused, not recomputed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from . import __version__
from .utils.atomic import read_control, write_control

# stages in the order a run makes them; a redo of one redoes everything after it
STAGES = ("prepare", "pretrain", "finetune", "generate", "seg")
IDENTITY_VERSION = 2
# options that change how a stage reports or checkpoints, not what it makes
COSMETIC = frozenset({"log_every", "checkpoint_every", "checkpoints_limit", "validate_every", "max_minutes",
                      "preview_cases", "skip_bad"})
# what identities of before version 2 held that depends on where things are, not what they are
_PLACES = frozenset({"source", "upstream", "prepared", "synthetic", "corpus"})


class StaleStage(RuntimeError):
    """A stage was made from other inputs or options than the run has now."""


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# options added after stages were first recorded, with the value those stages were made with: at that
# value an option is left out of the comparison, so an older stage stays reusable
ADDED_DEFAULTS = {"unlabelled": False, "mask_dropout": 0.0, "target_style": False, "target": None,
                  # the semi-supervised learners' options (SegConfig)
                  "confidence": 0.95, "unlabelled_batch": None, "unlabelled_weight": 1.0, "cutmix_prob": 0.5,
                  "self_train_keep": 0.5, "self_train_rounds": 1}


def comparable(obj, drop: frozenset = COSMETIC):
    """An identity without its cosmetic options (at any depth), nor options added later at their default."""
    if isinstance(obj, dict):
        return {k: comparable(v, drop) for k, v in obj.items()
                if k not in drop and not (k in ADDED_DEFAULTS and v == ADDED_DEFAULTS[k])}
    if isinstance(obj, list):
        return [comparable(v, drop) for v in obj]
    return obj


def redo_set(redo) -> set[str]:
    """The stages to redo: each one named and every later stage (``all`` = every stage)."""
    names = {r.strip() for r in (redo or ()) if r and r.strip()}
    if "all" in names:
        return set(STAGES)
    unknown = sorted(names - set(STAGES))
    if unknown:
        raise ValueError(f"--redo {', '.join(unknown)}: not a stage; choose among {', '.join(STAGES)} or all")
    first = min((STAGES.index(n) for n in names), default=len(STAGES))
    return set(STAGES[first:])


def file_fingerprint(files) -> str:
    """A hash of files' names (relative to their common folder, so a moved folder keeps it), sizes and
    contents."""
    import os

    files = sorted(Path(f).absolute() for f in files)
    h = hashlib.sha256()
    if not files:
        return h.hexdigest()[:16]
    common = Path(os.path.commonpath([str(f.parent) for f in files]))
    for f in files:
        h.update(str(f.relative_to(common)).encode())
        h.update(str(f.stat().st_size).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16]


def listing_fingerprint(files) -> str:
    """Names and sizes only (a corpus of a million images is not read for its hash)."""
    import os

    files = sorted(Path(f).absolute() for f in files)
    if not files:
        return digest([])
    common = Path(os.path.commonpath([str(f.parent) for f in files]))
    return digest([[str(f.relative_to(common)), f.stat().st_size] for f in files])


def prepared_fingerprint(ps) -> str:
    """The prepared set's content: its manifest, folds and original label maps."""
    from .utils.atomic import file_sha256

    return digest([file_sha256(ps.root / n) for n in ("manifest.csv", "folds.json", "originals.npz")
                   if (ps.root / n).exists()])


def source_fingerprint(source: str | Path, prepare_cfg) -> str:
    """The content of what ``prepare`` reads from ``source``: every image, mask and table the reader finds."""
    from .data.readers import get_reader

    from .data.preparation import check_file_names

    reader = get_reader(source, prepare_cfg)
    refs = reader.scan()
    check_file_names(refs)  # refused by name before a --redo removes anything
    files = {Path(p) for r in refs for p in (r.image, *r.masks)}
    root = Path(source)
    for extra in ("dataset.json", "diagnosis.csv"):
        if (root / extra).is_file():
            files.add(root / extra)
    files.update(getattr(reader, "tables", []))  # the CSVs it read: bus_data.csv, the --categories file
    for folder in getattr(prepare_cfg, "unlabelled", None) or []:  # images without labels: their files too
        from .data.readers.unlabelled import UnlabelledReader

        files.update(Path(r.image) for r in UnlabelledReader(folder, prepare_cfg, refs).scan())
    if getattr(prepare_cfg, "target", None):  # the other site's images, masks and tables
        from .data.readers.target import read_target

        treader, trefs = read_target(prepare_cfg.target, prepare_cfg, refs)
        files.update(Path(p) for r in trefs for p in (r.image, *r.masks))
        files.update(treader.tables)
    return file_fingerprint(files)


def _changed(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if comparable(old.get(k)) != comparable(new.get(k))]


def check_stage(folder: Path, stage: str, identity: dict, redo: set[str], legacy: dict | None = None,
                note=print) -> bool:
    """True: ``folder`` holds this stage made from ``identity``, reuse it. False: there is nothing
    (or, with ``stage`` in ``redo``, it was removed) and the caller makes it, then :func:`stamp` s it.
    A stage made from other inputs is :class:`StaleStage` unless redone. ``legacy`` is the identity as
    a diffboost before identity version 2 wrote it, to recognise its folders."""
    folder = Path(folder)
    path = folder / "stage.json"
    if path.exists():
        record = read_control(path)
        old = record.get("identity") or {}
        if record.get("v") == IDENTITY_VERSION:
            same = comparable(old) == comparable(identity)
        else:  # an older diffboost's record: compared without its absolute paths, then upgraded
            same = legacy is not None and comparable(old, COSMETIC | _PLACES) == comparable(legacy, COSMETIC | _PLACES)
        if same:
            made_by = record.get("diffboost_version")
            if made_by not in (None, __version__):
                note(f"{folder}: made by diffboost {made_by}, reused by {__version__} (--redo {stage} to remake it)")
            if record.get("v") != IDENTITY_VERSION:
                stamp(folder, identity)
            return True
        if stage not in redo:
            what = _changed(old if record.get("v") == IDENTITY_VERSION else comparable(old, _PLACES),
                            identity if record.get("v") == IDENTITY_VERSION else comparable(legacy or identity, _PLACES))
            raise StaleStage(f"{folder}: the {stage} stage was made from other inputs or options "
                             f"({', '.join(what) or 'its record'} changed); nothing was deleted. Rerun with --redo {stage} "
                             f"to redo it and every later stage, or use another --out")
    elif folder.exists() and any(folder.iterdir()) and stage not in redo:
        raise StaleStage(f"{folder}: holds a {stage} stage without a record of what made it; nothing was deleted. "
                         f"Rerun with --redo {stage} to redo it, or use another --out")
    if folder.exists():
        shutil.rmtree(folder)
    return False


def stamp(folder: Path, identity: dict) -> None:
    """Record what ``folder`` is made from (atomically; the stage's own files record its wall time)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_control(folder / "stage.json", {"v": IDENTITY_VERSION, "identity": identity, "diffboost_version": __version__})
