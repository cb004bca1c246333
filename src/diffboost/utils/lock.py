"""One writer per folder: an advisory lock held for a whole invocation.

``with folder_lock(run_dir):`` takes an exclusive ``flock`` on ``.RUN_DIR.diffboost-lock`` beside the
folder (beside it, so that a stage that replaces its folder whole keeps the lock) and writes the holder
(host, pid, start time, command) into it. A second invocation on the same folder, such as
a requeued cluster job beside its survivor, is refused at once with a message naming the holder. The
lock is the kernel's, so it goes with the process, whatever killed it, and a stale lock file never
blocks anyone.

The lock is re-entrant within a process: ``run`` holds its folder and calls stages that lock their
own folders. It is advisory and reliable on local disks and NFSv4; on other network file systems,
give each job its own folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

_held: dict[str, int] = {}  # resolved folder -> depth, this process


class FolderBusy(RuntimeError):
    """Another invocation holds the folder."""


def lock_path(folder: str | Path) -> Path:
    """The lock file of ``folder``: beside it."""
    folder = Path(folder).absolute()
    return folder.parent / f".{folder.name}.diffboost-lock"


def holder_of(folder: str | Path) -> dict | None:
    """Who holds (or last held) ``folder``'s lock, as its lock file says; None without one."""
    path = lock_path(folder)
    try:
        return json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def folder_lock(folder: str | Path, enabled: bool = True) -> Iterator[Path]:
    """Hold ``folder`` for this process (it need not exist yet); FolderBusy when another process holds it.
    ``enabled=False`` (the non-main processes of one `accelerate launch`) takes nothing."""
    folder = Path(folder)
    if not enabled:
        yield folder
        return
    folder.absolute().parent.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _held:
        _held[key] += 1
        try:
            yield folder
        finally:
            _held[key] -= 1
        return
    fd = os.open(lock_path(folder), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            h = holder_of(folder) or {}
            raise FolderBusy(
                f"{folder}: in use by another diffboost process (host {h.get('host', '?')}, pid {h.get('pid', '?')}, "
                f"since {h.get('started', '?')}: {h.get('command', '?')}); wait for it to finish, or use another "
                "output folder") from None
        info = {"host": socket.gethostname(), "pid": os.getpid(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        _held[key] = 1
        try:
            yield folder
        finally:
            del _held[key]
    finally:
        os.close(fd)  # releases the lock


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
