"""One writer per cache: an OS file lock that a killed process releases by itself."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from features_cache.errors import CacheError


@contextlib.contextmanager
def exclusive_writer(cache_path: str | os.PathLike) -> Iterator[None]:
    """Hold ``CACHE.lock`` for the duration; refuse at once if another process holds it."""
    cache_path = Path(cache_path)
    lock_path = cache_path.with_name(cache_path.name + ".lock")
    with open(lock_path, "a+") as handle:
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
        remove_dead_temporaries(cache_path)
        yield


def remove_dead_temporaries(cache_path: Path) -> list[Path]:
    """Delete temporary files that killed writers of this cache left (the lock proves they are dead)."""
    mine = f".tmp-{os.getpid()}"
    candidates = list(cache_path.parent.glob(f".{cache_path.name}.tmp-*"))
    journal = cache_path.with_name(cache_path.name + ".journal")
    if journal.is_dir():
        candidates += list(journal.glob(".*.tmp-*"))
    removed = [path for path in candidates if not path.name.endswith(mine)]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
