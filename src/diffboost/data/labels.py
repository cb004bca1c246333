"""Label maps: merge or select source labels, and refuse values nobody declared."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError


def parse_label_map(spec: str | None) -> dict[int, int] | None:
    """Parse a CLI label map.

    ``"1,2"`` merges source labels 1 and 2 into output label 1 (prostate PZ+TZ -> 1);
    ``"2"`` selects label 2 only (others become background); ``"1=1,2=2"`` maps explicitly.
    """
    if spec is None or spec.strip() == "":
        return None
    out: dict[int, int] = {}
    for part in spec.split(","):
        part = part.strip()
        try:
            if "=" in part:
                src, dst = part.split("=", 1)
                out[int(src)] = int(dst)
            else:
                out[int(part)] = 1
        except ValueError:
            raise ValueError(f"bad label map {spec!r}: use '1,2' (merge into 1) or '1=1,2=2'") from None
    return out


def apply_label_map(
    mask: np.ndarray,
    label_map: dict[int, int] | None,
    declared: set[int] | None,
    path: str | Path,
) -> np.ndarray:
    """Return the output label array (uint8).

    Without a map, values must be among ``declared`` (when known). With a map, declared labels
    missing from the map become background (the map selects), and a value that is neither in the
    map nor declared is an error naming ``path``.
    """
    if mask.dtype.kind == "f":
        if not np.isfinite(mask).all():
            raise DataError(path, "label volume contains NaN or Inf values")
        if not np.all(mask == np.round(mask)):
            raise DataError(path, "label values are not integers")
    values = {int(v) for v in np.unique(mask)}
    if label_map is None:
        if declared is not None:
            bad = sorted(values - declared)
            if bad:
                raise DataError(path, f"label values {bad} are not declared labels {sorted(declared)}")
        if max(values, default=0) > 255 or min(values, default=0) < 0:
            raise DataError(path, f"label values {sorted(values)} do not fit 0..255")
        return mask.astype(np.uint8)
    known = set(label_map) | (declared or set())
    bad = sorted(v for v in values if v != 0 and v not in known)
    if bad:
        raise DataError(path, f"label values {bad} are outside the label map {label_map}")
    out = np.zeros(mask.shape, dtype=np.uint8)
    for src, dst in label_map.items():
        out[mask == src] = dst
    return out


def output_label_names(names: dict[int, str], label_map: dict[int, int] | None) -> dict[int, str]:
    """Names of the output labels: targets of the map get the joined names of their sources."""
    if label_map is None:
        return {0: "background", **{k: v for k, v in names.items() if k != 0}}
    out: dict[int, list[str]] = {}
    for src, dst in sorted(label_map.items()):
        if dst != 0:
            out.setdefault(dst, []).append(names.get(src, str(src)))
    return {0: "background", **{k: "+".join(v) for k, v in sorted(out.items())}}
