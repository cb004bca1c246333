"""Atomic outputs: write to a temporary name beside the target, then rename.

Files (``atomic_write_bytes``/``atomic_write_text``) are renamed over the target in one step. A folder
(``artifact_dir``/``commit_artifact``) is built in a temporary sibling and swapped in so that the previous
version is kept until the new one is in place: ``name`` -> ``.name.old``, temporary -> ``name``, then
``.name.old`` is removed. A process killed between the two renames leaves ``.name.old`` and no ``name``;
``recover_artifact`` (run by the next write, and by the readers that resume work) puts it back.

Outputs get the permissions of a normal file under the user's umask (0666 & ~umask, folders 0777 &
~umask), not the 0600 / 0700 of ``tempfile.mkstemp`` / ``mkdtemp``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def current_umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it is not thread-safe)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode a plain ``mkdir`` gives a new folder."""
    return 0o777 & ~current_umask()


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def make_temp_dir(target: str | Path) -> Path:
    """A new empty folder beside ``target`` to build it in, with a normal folder's permissions."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_tmp_prefix(target)}{os.getpid()}-", dir=target.parent))
    os.chmod(tmp, dir_mode())
    return tmp


def old_path(target: str | Path) -> Path:
    """Where the previous version of ``target`` waits while a new one is swapped in."""
    target = Path(target)
    return target.with_name(f".{target.name}.old")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def recover_artifact(target: str | Path) -> bool:
    """Finish a swap of ``target`` that a killed process left half done; True when the previous
    version was put back.

    ``.name.old`` without ``name``: the kill came between the two renames, the previous version is
    restored. Both present: the new version was in place already, ``.name.old`` is removed. Temporary
    folders of ``name`` whose process is gone (an interrupted build) are removed as well.
    """
    target = Path(target)
    old = old_path(target)
    restored = False
    if os.path.lexists(old):
        if os.path.lexists(target):
            _remove(old)
        else:
            try:
                os.replace(old, target)
                restored = True
            except FileNotFoundError:  # another process of the same run restored it first
                pass
    prefix = _tmp_prefix(target)
    if target.parent.is_dir():
        for p in target.parent.glob(glob.escape(prefix) + "*"):
            pid = p.name[len(prefix):].split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                _remove(p)
    return restored


def recover_artifacts(folder: str | Path) -> list[Path]:
    """``recover_artifact`` for every half-swapped artifact directly in ``folder``; the restored ones."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names = [p.name[1:-len(".old")] for p in folder.glob(".*.old")]
    return [folder / n for n in sorted(names) if n and recover_artifact(folder / n)]


def commit_artifact(tmp: str | Path, target: str | Path) -> Path:
    """Swap the finished folder ``tmp`` in as ``target``; the previous ``target`` stays (as
    ``.name.old``) until the new one is in place, and is removed after."""
    tmp, target = Path(tmp), Path(target)
    recover_artifact(target)
    if not os.path.lexists(target):
        os.replace(tmp, target)
        return target
    old = old_path(target)
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)  # an ordinary failure: put the previous version back at once
        raise
    _remove(old)
    return target


@contextlib.contextmanager
def artifact_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; when the block finishes it replaces
    ``target`` (see ``commit_artifact``). On an exception it is removed and ``target`` is left as it was.
    """
    target = Path(target)
    recover_artifact(target)
    tmp = make_temp_dir(target)
    try:
        yield tmp
        commit_artifact(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """``artifact_dir`` that refuses a non-empty ``target`` unless ``overwrite``."""
    target = Path(target)
    recover_artifact(target)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target}: already exists and is not empty (use --overwrite)")
    with artifact_dir(target) as tmp:
        yield tmp


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder (mode 0666 & ~umask);
    ``durable`` also flushes the file and then its folder to disk (for the files that control resume)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str, durable: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened or synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_control(path: str | Path, obj) -> None:
    """A JSON file that controls resume (``stage.json``, ``run.json``, ...): atomic and durable."""
    import json

    atomic_write_text(path, json.dumps(obj, indent=1, default=str), durable=True)


def read_control(path: str | Path, expect: type = dict):
    """Read a control file written by :func:`write_control`; a truncated or corrupt one, or one of
    another shape than ``expect`` (every control file is a JSON object), is one
    :class:`~diffboost.errors.ControlFileError` naming it, never a bare JSONDecodeError or AttributeError."""
    import json

    from ..errors import ControlFileError

    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except UnicodeDecodeError as e:
        raise ControlFileError(path, f"is not text ({e})") from None
    except json.JSONDecodeError as e:
        raise ControlFileError(path, f"is not valid JSON ({e.msg} at line {e.lineno}, truncated?)") from None
    if not isinstance(obj, expect):
        shapes = {dict: "a JSON object", list: "a JSON list"}
        raise ControlFileError(path, f"holds {_json_kind(obj)}, expected {shapes.get(expect, expect.__name__)}")
    return obj


def _json_kind(obj) -> str:
    if obj is None:
        return "null"
    kinds = {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return kinds.get(type(obj), type(obj).__name__)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
