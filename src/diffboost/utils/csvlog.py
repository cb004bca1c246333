"""Training logs as CSV, one row per step or epoch, that survive a resume: rows are appended as
training goes, and a resumed run first trims the rows past its saved state (and gives a log of an
older version the current columns)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path

from .atomic import atomic_write_text


def append_row(path: str | Path, fields: Sequence[str], row: Sequence) -> None:
    """Append ``row`` to the log at ``path``, writing the header ``fields`` first if it is new."""
    path = Path(path)
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(fields)
        w.writerow(row)


def trim_rows(path: str | Path, fields: Sequence[str], keep: Callable[[int], bool]) -> None:
    """Keep the rows whose first column (a step or epoch number) satisfies ``keep``; rows of an older
    version, with fewer columns, are padded to ``fields``. Rewritten atomically; no file, nothing to do."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    body = [r + [""] * max(0, len(fields) - len(r)) for r in rows[1:] if r and keep(int(r[0]))]
    buf = io.StringIO()
    csv.writer(buf).writerows([list(fields)] + body)
    atomic_write_text(path, buf.getvalue())
