"""Replacing a file so that a reader sees the old file or the new one, never half of either.

Every file this project replaces goes through here: written under a temporary name in the
same folder (``.NAME.tmp-PID``, which the next writer's clean-up recognises if this process
dies), flushed to disk, renamed over the real name, and the folder synced so the rename
survives a power cut.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import h5py
import numpy as np

from features_cache.faults import checkpoint


def temporary_path(path: Path, suffix: str = "") -> Path:
    """Where ``path`` is written before it is renamed into place (``suffix`` for writers that insist on one)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, suffix: str = "", kind: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block has written it, sync it and rename it over ``path``.

    If the block raises, the temporary file is removed and ``path`` is left as it was.
    ``kind`` names the fault-injection point just before the rename (``<kind>-before-rename``).
    """
    path = Path(path)
    tmp = temporary_path(path, suffix)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        if kind:
            checkpoint(f"{kind}-before-rename")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _sync_folder(path.parent)


@contextlib.contextmanager
def open_replacing(path: str | os.PathLike, mode: str = "w", **open_args) -> Iterator[IO]:
    """``open(path, mode)`` whose content replaces ``path`` atomically when the block ends without error.

    Text modes default to UTF-8, whatever the locale says."""
    if "b" not in mode:
        open_args.setdefault("encoding", "utf-8")
    with replacing(path) as tmp, open(tmp, mode, **open_args) as handle:
        yield handle


def write_text(path: str | os.PathLike, text: str, **open_args) -> None:
    """``path`` holds ``text`` (UTF-8 unless told otherwise), replaced atomically."""
    with open_replacing(path, "w", **open_args) as handle:
        handle.write(text)


def _sync_folder(folder: Path) -> None:
    try:
        directory = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # a folder that cannot be opened for reading cannot be synced either; the rename stands
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


STRING = h5py.string_dtype("utf-8")


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike, kind: str = "shard", in_memory: bool = True) -> Iterator[h5py.File]:
    """Yield an HDF5 file that appears at ``path`` only once it was closed and synced.

    Small files (shards, the index) are built in memory and written with one plain
    ``write``: a full disk is then one clean ``OSError``, never HDF5 failing mid-flush.
    """
    with replacing(path, kind=kind) as tmp:
        if in_memory:
            image = io.BytesIO()
            with h5py.File(image, "w") as f:
                yield f
            with open(tmp, "wb") as handle:
                handle.write(image.getbuffer())
        else:
            with h5py.File(tmp, "w") as f:
                yield f


def write_strings(group: h5py.Group, name: str, values: Sequence[str]) -> None:
    group.create_dataset(name, data=np.array(list(values), dtype=object), dtype=STRING)
