"""One writer per cache: an OS file lock that a killed process releases by itself.

The lock file ``CACHE.lock`` exists only while a writer holds it (or after a writer was
killed, until the next one): the holder deletes it while it still holds the lock, and a
writer that gets the lock checks that the path still names the file it locked, starting
over otherwise. So two writers can never both hold one cache, even across that deletion.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from features_cache.errors import CacheError, no_space


def lock_path(cache_path: str | os.PathLike) -> Path:
    cache_path = Path(cache_path)
    return cache_path.with_name(cache_path.name + ".lock")


@contextlib.contextmanager
def exclusive_writer(cache_path: str | os.PathLike) -> Iterator[None]:
    """Hold ``CACHE.lock`` for the duration; refuse at once if another process holds it."""
    cache_path = Path(cache_path)
    path = lock_path(cache_path)
    descriptor = _acquire(cache_path, path)
    try:
        with contextlib.suppress(OSError):  # naming the holder is a courtesy a full disk may refuse
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # still holding the lock: a writer that locked this file now finds it gone and starts over
        os.close(descriptor)


def _acquire(cache_path: Path, path: Path) -> int:
    """A descriptor of the file at ``path``, locked, that ``path`` still names."""
    while True:
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise no_space(path.parent, 4096, error) from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 100, 0).decode(errors="replace").strip() or "another process"
            os.close(descriptor)
            raise CacheError(
                f"{cache_path}: another extraction ({holder}) is writing this cache; "
                "wait for it to finish or stop it, then run again"
            ) from None
        if _names(path, descriptor):
            return descriptor
        os.close(descriptor)  # the holder before us deleted it on its way out: lock the file now there


def _names(path: Path, descriptor: int) -> bool:
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(descriptor)
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)
