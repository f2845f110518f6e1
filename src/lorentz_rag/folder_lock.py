"""One writer per output folder: an exclusive ``flock`` held for the life of a run or an index build.

A second process that wants the same folder fails at once with :class:`FolderInUseError`, naming the pid
that holds it. The lock is a kernel lock on an open file: it goes away with its process, also after
``kill -9``, so a crashed run never leaves a stale lock behind (the lock file itself stays, empty of
meaning). All ranks of one ``torchrun`` job are one run: only rank 0 takes the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from lorentz_rag.errors import user_error

__all__ = ["RUN_LOCK_NAME", "FolderInUseError", "exclusive_lock", "sibling_lock_path"]

#: The lock file inside a training output folder.
RUN_LOCK_NAME = ".lorentz_rag.lock"


@user_error
class FolderInUseError(RuntimeError):
    """Another process holds the folder's lock; the message names its pid and the lock file."""


def sibling_lock_path(folder: str | os.PathLike[str]) -> Path:
    """``parent/.NAME.lorentz_rag.lock``: the lock of a folder that is replaced as a whole (an index)."""
    folder = Path(folder).absolute()
    return folder.parent / f".{folder.name}.lorentz_rag.lock"


@contextlib.contextmanager
def exclusive_lock(lock_file: str | os.PathLike[str], what: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``lock_file`` (created if needed) while the block runs.

    ``what`` names the protected folder in the error, e.g. ``"output folder runs/a"``. The holder's pid is
    written into the file, so the error can name it.
    """
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise FolderInUseError(
            f"{what} is in use by another process (pid {holder}, lock {lock_file}); wait for it to finish "
            "or choose another folder"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield lock_file
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
