"""Errors raised on bad input. Each names the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


def shown(path: str | Path) -> str:
    """A path as one printable line: control characters (a newline in a file name) written as escapes."""
    text = str(path)
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class DataError(ValueError):
    """A source file or folder cannot be used; the message names it and the problem."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{shown(self.path)}: {problem}" if self.path else problem)


class ControlFileError(RuntimeError):
    """A file that controls resume (``stage.json``, ``run.json``, ``identity.json``, ...) cannot be read.
    Not a ValueError: no caller mistakes it for "other settings" and replaces finished work."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        super().__init__(f"{shown(path)}: {problem}; this file controls what a rerun reuses, so nothing was changed. "
                         "Restore it, or remove its folder to redo that stage")
