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
        handle = open(lock_path, "a+")  # noqa: SIM115 - closed by the with below
    except OSError as error:
        raise no_space(lock_path.parent, 4096, error) from None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise CacheError(
                f"{cache_path}: another extraction ({holder}) is writing this cache; "
                "wait for it to finish or stop it, then run again"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
