"""Configuration dataclasses, saved as YAML beside every output.

A config file may hold one section per stage (``prepare:``, ...); each stage reads its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


@dataclass
class PromptConfig:
    """How the text prompt of a case is built.

    ``template`` is formatted with ``modality``, ``organ`` and ``category``; the default gives the
    paper's triplet ("US, Breast, benign"). Any free text is accepted, e.g.
    ``"an ultrasound image of the breast with a {category} lesion"``. ``modality``, ``organ`` and
    ``category`` override what the source provides.
    """

    template: str = "{modality}, {organ}, {category}"
    modality: str | None = None
    organ: str | None = None
    category: str | None = None


@dataclass
class PrepareConfig:
    """Options of ``diffboost prepare``."""

    format: str = "auto"  # auto | busi | ddti | busbra | folders | msd | nnunet | corpus
    size: int = 128  # square working size in pixels
    slices: Literal["foreground", "all"] = "foreground"  # 3D: which slices the training stages use
    axis: int | None = None  # 3D: slicing axis; None = the through-plane (largest-spacing) axis
    channel: int | None = None  # 4D: which channel (e.g. prostate T2 = 0)
    label_map: dict[int, int] | None = None  # source label -> output label; None keeps labels
    window: tuple[float, float] | None = None  # fixed intensity window (e.g. CT -160, 240)
    percentiles: tuple[float, float] = (0.5, 99.5)  # per-image clipping when no window
    edges: Literal["soft", "hed"] = "soft"
    hed_weights: str | None = None
    prompt: PromptConfig = field(default_factory=PromptConfig)
    folds: int = 3
    duplicates: float | None = 0.92  # near-duplicate threshold (2D thumbnail correlation); None = off
    val_fraction: float = 0.2
    seed: int = 0
    # repeated k-fold: this many partitions of the cases into ``folds`` folds, each seeded on its own (None: 1)
    repeats: int | None = None
    # label budget: the share of each fold's training + validation labels kept ("0.1", "25%"), or a number of
    # labelled images ("30"); the rest of that part becomes unlabelled. None: every label
    budget: str | None = None
    # folders of images without labels (any layout prepare reads; their masks, if any, are not read)
    unlabelled: list[str] | None = None
    # cross-site: a labelled layout of another site. Its cases are split into the test folds; every source case
    # trains; a fold's other target cases are its unlabelled training images (labels hidden). None: one site
    target: str | None = None
    skip_bad: bool = False
    preview_cases: int = 8
    # folders layouts (e.g. DDTI's cropped/ + mask/): the image and mask folders (None: detected), a regex
    # whose group ``case`` (or first group) names the patient / examination an image belongs to (its images
    # stay in one fold; None: each image its own case), a CSV of NAME,CATEGORY rows for the prompt or
    # FILE:COLUMN (a CSV with a header; its ID column, else its first, names the image), and the mask's file
    # stem as a template of {stem} (the image's stem) and {id} (the stem without its first "_" token), e.g.
    # "mask_{id}" (None: STEM, STEM_mask, STEM_seg, STEM_label(s), mask_STEM or mask_ID)
    image_dir: str | None = None
    mask_dir: str | None = None
    case_pattern: str | None = None
    categories: str | None = None
    mask_pattern: str | None = None

    def __post_init__(self):
        if isinstance(self.prompt, dict):
            self.prompt = PromptConfig(**self.prompt)
        if self.window is not None:
            self.window = tuple(float(v) for v in self.window)  # type: ignore[assignment]
            if len(self.window) != 2 or self.window[0] >= self.window[1]:
                raise ValueError(f"window must be (low, high) with low < high, got {self.window}")
        self.percentiles = tuple(float(v) for v in self.percentiles)  # type: ignore[assignment]
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        if self.label_map is not None:
            self.label_map = {int(k): int(v) for k, v in self.label_map.items()}
        if self.size < 8:
            raise ValueError(f"size must be at least 8 pixels, got {self.size}")
        if self.slices not in ("foreground", "all"):
            raise ValueError(f"slices must be 'foreground' or 'all', got {self.slices!r}")
        if self.edges not in ("soft", "hed"):
            raise ValueError(f"edges must be 'soft' or 'hed', got {self.edges!r}")
        if self.edges == "hed" and not self.hed_weights:
            raise ValueError("edges='hed' needs hed_weights: a local BSDS500 HED weight file")
        if self.duplicates is not None and not 0 < self.duplicates <= 1:
            raise ValueError(f"duplicates must be a correlation in (0, 1] or null (off), got {self.duplicates}")
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.case_pattern is not None:
            import re

            try:
                rx = re.compile(self.case_pattern)
            except re.error as e:
                raise ValueError(f"case_pattern {self.case_pattern!r} is not a regular expression ({e})") from None
            if rx.groups < 1:
                raise ValueError(f"case_pattern {self.case_pattern!r} needs a group naming the case, e.g. "
                                 "'^(?P<case>[^_]+)_'")
        if self.mask_pattern is not None:
            check_mask_pattern(self.mask_pattern)
        if self.repeats is not None and int(self.repeats) < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")
        if self.budget is not None:
            from .data.folds import parse_budget

            self.budget = str(self.budget)
            parse_budget(self.budget)
        if self.unlabelled is not None:
            self.unlabelled = [str(u) for u in ([self.unlabelled] if isinstance(self.unlabelled, str) else self.unlabelled)]
        if self.target is not None:
            self.target = str(self.target)
            if self.budget is not None:
                raise ValueError("target (cross-site) and budget do not combine: the target's training labels are "
                                 "hidden already, and every source label trains")


def check_mask_pattern(pattern: str) -> None:
    """A ValueError unless ``pattern`` is a mask file stem template of ``{stem}`` and/or ``{id}``."""
    import string

    hint = ("mask_pattern names the mask's file stem with {stem} (the image's file stem) and/or {id} (the stem "
            "without its first '_' token), e.g. 'mask_{id}' or '{stem}_gt'")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None}
        pattern.format(stem="x", id="x")
    except (ValueError, IndexError, KeyError) as e:
        raise ValueError(f"mask_pattern {pattern!r} is not a template ({e}); {hint}") from None
    if not fields or not fields <= {"stem", "id"} or any(c in pattern for c in "/\\"):
        raise ValueError(f"mask_pattern {pattern!r}: {hint}")


def to_dict(cfg: Any) -> dict:
    """A plain, YAML-friendly dict of a config dataclass (tuples become lists)."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def from_dict(cls: type, data: dict) -> Any:
    """Build a config dataclass from a dict, rejecting unknown keys by name; an option renamed since
    (the class's ``RENAMED``: old -> new name) is read under its new name."""
    renamed = getattr(cls, "RENAMED", {})
    data = {renamed.get(k, k): v for k, v in data.items()}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}")
    return cls(**data)


def save_yaml(cfg: Any, path: str | Path, section: str | None = None) -> None:
    from .utils.atomic import atomic_write_text

    data = to_dict(cfg)
    if section:
        data = {section: data}
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML config file's top-level mapping, or one clear error naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def load_section(path: str | Path, section: str, cls: type) -> Any:
    """Read ``section`` of a YAML config file (or the whole file if it has no sections)."""
    path = Path(path)
    data = read_yaml_mapping(path)
    names = {f.name for f in dataclasses.fields(cls)}
    if section in data:
        data = data[section] or {}
    elif any(isinstance(v, dict) and k not in names for k, v in data.items()):
        data = {}  # a file of other stages' sections: this stage keeps its defaults
    try:
        return from_dict(cls, data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
