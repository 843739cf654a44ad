"""Shards: immutable HDF5 files of finished rows, the unit of growth and of resume.

Every batch ``extract`` finishes becomes one shard in ``CACHE.h5.shards/``, written
under a temporary name, fsynced and renamed. Names are random UUIDs, so no two runs,
gaps or crashes can ever make one shard overwrite another. A shard is never changed
after it appears; the index decides which of its rows are live.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from features_cache import integrity, ownership, schema
from features_cache.errors import CacheError
from features_cache.faults import checkpoint
from features_cache.reader import read_records, read_skipped
from features_cache.records import FileRecord, SkippedFile
from features_cache.segments import segment_files
from features_cache.writer import atomic_h5, write_records, write_skipped

_TEMP = re.compile(r"^\..*\.tmp-\d+(\.reserve)?$")


@dataclasses.dataclass(frozen=True)
class Shard:
    """A verified shard: its file, size, digest and what it holds."""

    path: Path
    size: int
    digest: str
    records: list[FileRecord]
    skipped: list[SkippedFile]
    shard_id: str = ""  # "" for shards written before ids existed


def new_shard_path(cache_path: str | Path) -> Path:
    return schema.shards_dir(cache_path) / f"shard-{uuid.uuid4().hex}.h5"


def file_digest(path: str | Path) -> str:
    """BLAKE2b-128 of the whole file: what the index records to detect any later change."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_shard(
    path: Path, recipe: schema.Recipe, features: np.ndarray, records: Sequence[FileRecord], skipped: Sequence[SkippedFile],
    compression: str = "none", owner: ownership.Owner | None = None,
) -> str:
    """Write one shard atomically and return its new random id; features carry a fletcher32
    checksum per chunk and a checksum per row (which chunk is which row).

    Chunks hold whole images and tile the rows exactly (no padding). ``compression`` (``none``
    or ``gzip``) is recorded in the shard: shards of both kinds mix freely in one cache. ``owner``
    is the cache and commit it is written for (see :mod:`features_cache.ownership`).
    """
    stored = np.asarray(features, dtype=np.dtype(recipe.storage_dtype))
    shard_id = integrity.new_id()
    with atomic_h5(path) as f:
        f.create_dataset(schema.ROW_CHECKSUM, data=integrity.row_checksums(stored))
        f.attrs[schema.SHARD_ID] = shard_id
        f.attrs[schema.COMPRESSION] = compression
        if owner is not None:
            owner.stamp(f.attrs)
        write_rows(f, schema.FEATURES, stored, compression)
        write_records(f, records)
        write_skipped(f, skipped)
        f.attrs.update(recipe.to_attrs())
        f.attrs["identity"] = recipe.fingerprint()
        f.attrs["schema_version"] = schema.SCHEMA_VERSION
    return shard_id


def write_rows(f: h5py.File, name: str, rows: np.ndarray, compression: str = "none") -> h5py.Dataset:
    """One per-row dataset of a shard (``features``, or another of whole images per row): chunks of
    whole rows that tile it, each with a fletcher32 checksum, filtered as ``compression`` says."""
    shape = tuple(rows.shape[1:])
    per_chunk = schema.tiling_chunk_rows(len(rows), shape, rows.dtype.itemsize)
    return f.create_dataset(
        name, data=rows, chunks=(per_chunk, *shape), maxshape=(None, *shape), fletcher32=True,
        **schema.compression_filters(compression),
    )


def open_shard(path: Path, recipe: schema.Recipe, *, read_features: bool) -> Shard:
    """Check a shard and return it; raise ``ValueError`` saying what is wrong.

    ``read_features`` reads every chunk, so HDF5 verifies its fletcher32 checksum, and
    compares every row with its checksum.
    """
    try:
        size = path.stat().st_size
        with h5py.File(path, "r") as f:
            if not _made_with(f.attrs, recipe):
                raise ValueError("made with other settings")
            features = f[schema.FEATURES]
            records, skipped = read_records(f), read_skipped(f)
            if features.shape[0] != len(records):
                raise ValueError("row count does not match its paths")
            if read_features:
                sums = integrity.stored_checksums(f)
                for start in range(0, len(features), 4096):
                    integrity.check_rows(path, path, features[start : start + 4096], sums, start)
            shard_id = integrity.stored_id(f)
        return Shard(path, size, file_digest(path), records, skipped, shard_id)
    except CacheError:
        raise ValueError("a row does not hold the features written there (row checksum mismatch)") from None
    except (OSError, KeyError, TypeError, RuntimeError) as error:
        raise ValueError(f"unreadable ({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None


def _made_with(attrs, recipe: schema.Recipe) -> bool:
    """Whether a shard's attributes say ``recipe`` made it (by identity, or by an equal recipe for older shards)."""
    identity = str(attrs.get("identity", ""))
    if identity == recipe.fingerprint():
        return True
    try:
        stored = schema.Recipe.from_attrs(attrs)
    except (KeyError, ValueError):
        return False
    return schema.same_features(identity, stored, recipe.fingerprint(), recipe)


def remove_temporaries(folder: Path, prefix: str = ".") -> None:
    """Delete temporary files named ``prefix...tmp-PID``: under the writer lock they are all dead."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.name.startswith(prefix) and _TEMP.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)


def shard_files(cache_path: str | Path) -> list[Path]:
    """The files in the shards folder named like shards (a folder of that name is no shard: see :func:`strays`)."""
    folder = schema.shards_dir(cache_path)
    if not folder.is_dir():
        return []
    return [path for path in folder.glob("shard-*.h5") if path.is_symlink() or path.is_file()]


def strays(cache_path: str | Path) -> list[Path]:
    """Entries of the shards folder that are neither shard, segment nor temporary files: listed, never touched."""
    folder = schema.shards_dir(cache_path)
    if not folder.is_dir():
        return []
    files = {*shard_files(cache_path), *segment_files(cache_path)}
    return sorted(p for p in folder.iterdir() if p not in files and not (_TEMP.match(p.name) and p.is_file()))


def collect_garbage(cache_path: str | Path, live: set[Path]) -> None:
    """Delete the shards and segments of ``CACHE.shards`` that the committed index no longer lists
    (``live``, resolved), except those another index beside it names; run only after the index is durable."""
    for path in ownership.survey(cache_path, live, None).unreferenced():
        path.unlink(missing_ok=True)
        checkpoint("collecting")


def _table(group: h5py.Group, *, with_size: bool) -> list[tuple]:
    """A shard or segment table as the index digest covers it: (file, rows, [bytes,] digest, id) per entry."""
    columns = [group[schema.SHARD_FILES].asstr()[()], group[schema.SHARD_ROWS][()]]
    if with_size:
        columns.append(group[schema.SHARD_SIZES][()])
    columns += [group[schema.SHARD_DIGESTS].asstr()[()], group[schema.SHARD_IDS].asstr()[()]]
    return [(str(row[0]), int(row[1]), *(int(v) if isinstance(v, (int, np.integer)) else str(v) for v in row[2:]))
            for row in zip(*columns)]


def finish_clean_up(cache_path: str | Path) -> None:
    """Delete what a kill left for garbage collection (the index already reads what replaced it), so
    that the next commit cannot mistake it for rows to adopt; nothing when the index cannot be read.
    Only the index's tables are read (the files it lists are opened and checked by the run itself)."""
    from features_cache.reader import locate_shards

    cache_path = Path(cache_path)
    try:
        with h5py.File(cache_path, "r") as f:
            owner = ownership.of_attrs(f.attrs)
            if owner is None or int(f.attrs.get("schema_version", 0)) != schema.INDEX_VERSION or not f.attrs.get("complete", False):
                return  # an index without an identity marks no shard as committed: nothing is surely garbage
            shards, segments = (_table(f[schema.SHARDS], with_size=True), _table(f[schema.SEGMENTS], with_size=False))
            class_names = [str(name) for name in f[schema.CLASS_NAMES].asstr()[()]]
            if str(f.attrs.get("index_digest", "")) != schema.index_digest(class_names, shards, segments):
                return  # a damaged index: its tables cannot say what is garbage
    except (OSError, KeyError, TypeError, ValueError):
        return
    listed = {file.resolve() for file in locate_shards(cache_path, [row[0] for row in [*shards, *segments]])[0]}
    for path in ownership.survey(cache_path, listed, owner).garbage:
        path.unlink(missing_ok=True)
        checkpoint("collecting")
