"""One writer per folder: an advisory lock held for a whole invocation, keyed by the real folder.

``with folder_lock(run_dir):`` holds ``run_dir`` for this process. A second invocation on the same
folder, such as a requeued cluster job beside its survivor, is refused at once with a message naming
the holder (host, pid, start time, command). The locks are the kernel's (``flock``), so they go with
the process, whatever killed it, and a stale lock file never blocks anyone.

What makes one folder one lock, whatever it is called:

- **Keyed by the real folder.** The key is the resolved path (symlinks, ``..`` and relative paths
  undone), so ``--out r7`` and ``--out r7link`` (a symlink to it) are one folder.
- **Held where no stage deletes it.** The lock files live in one lock directory outside every run
  (``$DIFFBOOST_LOCK_DIR``, else ``~/.cache/diffboost/locks``, else the temporary directory), one file per
  folder, named by a hash of the key. A ``--redo`` that deletes and remakes ``models/`` therefore never
  takes a lock file away from under its holder and hands a fresh one to a second process.
- **Folders nest.** Holding a folder also holds, shared, every folder above it: a process inside
  ``r7/models/fold0`` keeps another from taking ``r7`` whole, and a process holding ``r7`` keeps every
  other process out of everything below it, whether the lower folder exists at that moment or not. This
  nesting is kept in the lock directory: among the processes of one user on one host (one lock directory).
- **Beside the folder too.** An exclusive lock file beside the resolved folder (``.NAME.diffboost-lock``)
  is the same file for every host that mounts the folder (NFSv4 carries ``flock``) and for every bind mount
  of it, which the lock directory does not see. It guards that folder itself, not the folders below it: two
  hosts sharing a run folder are kept apart when both name the run folder (a requeued ``run``), not when one
  of them runs a stage on a subfolder by hand.

The lock is re-entrant within a process (``run`` holds its folder and calls stages that lock their
own folders), and the worker processes a holder starts (``run --jobs``) count as the holder: the
folders a process holds are listed in ``DIFFBOOST_HELD_LOCKS`` for its children, and a process takes the
list of its direct parent only, while that parent lives.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import shown

_held: dict[str, int] = {}  # real folder -> depth, this process
_ENV = "DIFFBOOST_HELD_LOCKS"


class FolderBusy(RuntimeError):
    """Another invocation holds the folder (or a folder that contains it, or one inside it)."""


class LockError(RuntimeError):
    """A lock file cannot be created or opened: the message names the place and why."""


def real_folder(folder: str | Path) -> Path:
    """The folder a path names, whatever path names it: absolute, symlinks and ``..`` resolved (as far as
    it exists; the rest is taken as written)."""
    return Path(os.path.realpath(os.fspath(folder)))  # symlinks first, then "..": link/../x is beside the target


def lock_dir() -> Path:
    """Where the lock files live: ``$DIFFBOOST_LOCK_DIR``, else ``~/.cache/diffboost/locks`` (under
    ``$XDG_CACHE_HOME`` when set), else ``<tmp>/diffboost-locks-<uid>`` when the cache cannot be written."""
    named = os.environ.get("DIFFBOOST_LOCK_DIR")
    if named:
        return Path(named).absolute()  # one folder whatever the working directory
    with contextlib.suppress(OSError, RuntimeError, KeyError):  # no home folder: the temporary directory
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").absolute() / "diffboost" / "locks"
        cache.mkdir(parents=True, exist_ok=True)
        if os.access(cache, os.W_OK | os.X_OK):
            return cache
    return Path(tempfile.gettempdir()) / f"diffboost-locks-{os.getuid()}"


def lock_path(folder: str | Path) -> Path:
    """The lock file of ``folder`` in :func:`lock_dir`: named by a hash of the real folder's path."""
    key = str(real_folder(folder))
    return lock_dir() / f"{hashlib.sha256(key.encode('utf-8', 'surrogateescape')).hexdigest()[:32]}.lock"


def beside_path(folder: str | Path) -> Path:
    """The second lock file of ``folder``: beside the real folder, for other hosts and bind mounts."""
    real = real_folder(folder)
    return real.parent / f".{real.name or 'root'}.diffboost-lock"


def holder_of(folder: str | Path) -> dict | None:
    """Who holds (or last held) ``folder``, as its lock file says; None without one."""
    return _read(lock_path(folder))


def _read(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _say(info: dict | None) -> str:
    h = info or {}
    return (f"host {h.get('host', '?')}, pid {h.get('pid', '?')}, since {h.get('started', '?')}: "
            f"{shown(h.get('command', '?'))}")


def _open(path: Path, what: Path) -> int:
    """Open (creating) the lock file ``path`` of folder ``what``; one LockError naming both on failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        why = e.strerror or str(e)
        hint = ("; set DIFFBOOST_LOCK_DIR to a folder you can write" if path.parent == lock_dir()
                else "; choose an output folder whose parent you can write")
        raise LockError(f"{shown(what)}: cannot create its lock file {path} ({why}){hint}") from None


def _try(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _ancestors(real: Path) -> list[Path]:
    return list(reversed(real.parents))  # from the root down to the parent


def _inherited() -> set[str]:
    """The folders that this process's parent holds, as it listed them when it started this process (a
    worker of ``run --jobs``). Only the direct parent counts, and only while it lives: a grandchild, or a
    worker whose parent died and left it to another process, inherits nothing."""
    try:
        entries = json.loads(os.environ.get(_ENV) or "[]")
    except ValueError:
        return set()
    parent = os.getppid()
    return {k for e in entries if isinstance(e, dict) and e.get("pid") == parent for k in e.get("keys", [])}


def _publish() -> None:
    """List this process's held folders in the environment its children inherit."""
    try:
        entries = [e for e in json.loads(os.environ.get(_ENV) or "[]") if isinstance(e, dict) and e.get("pid") != os.getpid()]
    except ValueError:
        entries = []
    if _held:
        entries.append({"pid": os.getpid(), "keys": sorted(_held)})
    if entries:
        os.environ[_ENV] = json.dumps(entries)
    else:
        os.environ.pop(_ENV, None)


def _holder_inside(real: Path) -> dict | None:
    """The holder of a folder inside ``real`` (a process whose exclusive lock is below it), if any."""
    inside = str(real).rstrip("/") + "/"
    folder = lock_dir()
    for path in folder.glob("*.lock") if folder.is_dir() else ():
        info = _read(path)
        if not info or not str(info.get("folder", "")).startswith(inside):
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # gone or unreadable meanwhile: not the one
            continue
        try:
            if not _try(fd, fcntl.LOCK_SH):  # somebody holds it exclusively now
                return info
        finally:
            os.close(fd)
    return None


def _busy(folder: Path, why: str, info: dict | None) -> FolderBusy:
    return FolderBusy(f"{shown(folder)}: in use by another diffboost process ({why}{_say(info)}); wait for it to "
                      "finish, or use another output folder")


def _take(folder: Path, real: Path, fds: list[int]) -> None:
    """Take the locks of ``real`` (opened descriptors appended to ``fds``, so the caller closes them)."""
    mine = set(_held) | _inherited()
    for above in _ancestors(real):
        key = str(above)
        if key in mine:
            continue
        fd = _open(lock_path(above), folder)
        fds.append(fd)
        if not _try(fd, fcntl.LOCK_SH):
            raise _busy(folder, f"it holds {shown(above)}, which contains this folder; ", _read(lock_path(above)))
    central = lock_path(real)
    fd = _open(central, folder)
    fds.append(fd)
    if not _try(fd, fcntl.LOCK_EX):
        if _try(fd, fcntl.LOCK_SH):  # only shared holders: processes inside it
            fcntl.flock(fd, fcntl.LOCK_UN)
            inner = _holder_inside(real)
            raise _busy(folder, f"it works in {shown(inner.get('folder', '?'))}, inside this folder; " if inner else
                        "it works inside this folder; ", inner)
        raise _busy(folder, "", _read(central))
    beside = beside_path(real)
    bfd = _open(beside, folder)
    fds.append(bfd)
    if not _try(bfd, fcntl.LOCK_EX):
        raise _busy(folder, "through another path, host or mount; ", _read(beside))
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(sys.argv)[:300], "folder": str(real)}
    data = json.dumps(info).encode("utf-8", "surrogateescape")
    for f in (fd, bfd):
        os.ftruncate(f, 0)
        os.pwrite(f, data, 0)
        os.fsync(f)


@contextlib.contextmanager
def folder_lock(folder: str | Path, enabled: bool = True) -> Iterator[Path]:
    """Hold ``folder`` for this process (it need not exist yet); FolderBusy when another process holds it,
    a folder above it or one inside it; LockError when a lock file cannot be made. ``enabled=False`` (the
    non-main processes of one `accelerate launch`) takes nothing."""
    folder = Path(folder)
    if not enabled:
        yield folder
        return
    real = real_folder(folder)
    key = str(real)
    if key in _held:
        _held[key] += 1
        try:
            yield folder
        finally:
            _held[key] -= 1
        return
    inner = next((k for k in _held if k.startswith(key.rstrip("/") + "/")), None)
    if inner is not None:  # this process's own shared lock on the folder would refuse it
        raise RuntimeError(f"{shown(folder)}: locked after {shown(inner)}, a folder inside it; take the outer folder first")
    fds: list[int] = []
    try:
        try:
            real.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LockError(f"{shown(folder)}: cannot create its parent folder {real.parent} ({e.strerror or e})") from None
        _take(folder, real, fds)
        _held[key] = 1
        _publish()
        try:
            yield folder
        finally:
            del _held[key]
            _publish()
    finally:
        for fd in reversed(fds):
            os.close(fd)  # releases the locks


def _main_process() -> bool:
    """False in the other processes of one `accelerate launch` / torchrun (they share the invocation)."""
    return int(os.environ.get("RANK", "0")) == 0


def locks_folder(param: str):
    """Decorate a stage function so that it holds its ``param`` folder (when given) while it runs."""
    import functools
    import inspect

    def wrap(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            folder = sig.bind(*args, **kwargs).arguments.get(param)
            if folder is None:
                return fn(*args, **kwargs)
            with folder_lock(folder, enabled=_main_process()):
                return fn(*args, **kwargs)

        return inner

    return wrap
