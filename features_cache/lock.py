"""One writer per cache: an OS file lock that a killed process releases by itself."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from features_cache.errors import CacheError, no_space


@contextlib.contextmanager
def exclusive_writer(cache_path: str | os.PathLike) -> Iterator[None]:
    """Hold ``CACHE.lock`` for the duration; refuse at once if another process holds it."""
    cache_path = Path(cache_path)
    lock_path = cache_path.with_name(cache_path.name + ".lock")
    try:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise no_space(lock_path.parent, 4096, error) from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 100, 0).decode(errors="replace").strip() or "another process"
            raise CacheError(
                f"{cache_path}: another extraction ({holder}) is writing this cache; "
                "wait for it to finish or stop it, then run again"
            ) from None
        with contextlib.suppress(OSError):  # naming the holder is a courtesy a full disk may refuse
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(descriptor)
