"""Which files in a cache's shards folder are its own: what a writer may adopt or delete, and what it leaves.

A cache has an identity: a random ``cache_id`` and a ``generation`` that each commit raises, both
attributes of the index; every shard and segment carries the id and generation it was written for.
A writer works only in the folder named after its own index (``CACHE.shards``), and there it never
adopts or deletes a file that another index beside it names (an index renamed alone, or copied
alone, still reads the folder of its old name, and so does every plain HDF5 reader of a copy until
its index records its own folder). Of the files no index names, a shard this cache wrote for a
generation it has already committed is garbage (a clean-up a kill interrupted); a shard no commit
vouches for yet is an orphan (a run a kill interrupted), for ``extract`` to verify and adopt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import uuid
from pathlib import Path

import h5py

from features_cache import schema

CACHE_ID = "cache_id"
GENERATION = "generation"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclasses.dataclass(frozen=True)
class Owner:
    """A cache's identity and the commit a file was written for."""

    cache_id: str
    generation: int

    @classmethod
    def new(cls) -> Owner:
        return cls(uuid.uuid4().hex, 1)

    @classmethod
    def after(cls, attrs) -> Owner:
        """The owner of the next commit of the index whose attributes are ``attrs`` (a new id for an
        index written before caches had one)."""
        found = of_attrs(attrs)
        return cls(found.cache_id, found.generation + 1) if found else cls.new()

    def stamp(self, attrs) -> None:
        attrs[CACHE_ID] = self.cache_id
        attrs[GENERATION] = self.generation


def of_attrs(attrs) -> Owner | None:
    """The owner recorded in a file's attributes; None where a writer before identities made it."""
    cache_id = str(attrs.get(CACHE_ID, ""))
    return Owner(cache_id, int(attrs.get(GENERATION, 0))) if cache_id else None


def of_file(path: Path) -> Owner | None:
    """The owner a shard or segment file carries (None: untagged or unreadable)."""
    try:
        with h5py.File(path, "r") as f:
            return of_attrs(f.attrs)
    except (OSError, KeyError, TypeError, ValueError):
        return None


@dataclasses.dataclass
class Survey:
    """The shards folder of one cache, sorted by what its writer may do with each file."""

    folder: Path
    foreign: dict[Path, str]  # file -> the other index that names it: never touched
    garbage: list[Path]  # named by no index and no longer needed: deleted by the next writer
    orphans: list[Path]  # shards named by no index that no commit vouches for: verified and adopted, or deleted

    def unreferenced(self) -> list[Path]:
        return [*self.garbage, *self.orphans]


def survey(cache_path: str | os.PathLike, listed: set[Path], owner: Owner | None) -> Survey:
    """Sort the files of ``CACHE.shards`` that ``listed`` (the index's files, resolved) does not hold.

    ``owner`` is the committed index's identity (None for an index without one, or none at all):
    its shards from a committed generation are garbage. Every segment no index names is garbage (a
    segment is written only by a commit, and one that lost is rewritten by the next)."""
    cache_path = Path(cache_path)
    folder = schema.shards_dir(cache_path)
    foreign = named_by_others(cache_path)
    result = Survey(folder, {}, [], [])
    for path in sorted(_named_files(folder)):
        resolved = path.resolve()
        if resolved in listed:
            continue
        if resolved in foreign:
            result.foreign[path] = foreign[resolved]
        elif (
            path.name.startswith("segment-")
            or owner is not None
            and (found := of_file(path))
            and found.cache_id == owner.cache_id
            and found.generation <= owner.generation
        ):
            result.garbage.append(path)
        else:
            result.orphans.append(path)
    return result


def _named_files(folder: Path) -> list[Path]:
    """The files of ``folder`` named like segments or shards (a folder so named is no file of a cache)."""
    if not folder.is_dir():
        return []
    return [path for pattern in ("segment-*.h5", "shard-*.h5") for path in folder.glob(pattern) if path.is_symlink() or path.is_file()]


def named_by_others(cache_path: Path) -> dict[Path, str]:
    """Files that other indexes beside ``cache_path`` name, resolved, each with the index naming it.

    An index names its files relative to its own folder, and that is where plain HDF5 readers look
    for them, so every index that can read a file of ``CACHE.shards`` sits in the same folder."""
    index = cache_path.resolve()
    named: dict[Path, str] = {}
    for other in index.parent.iterdir():
        if other == index or other.name.startswith(".") or not _is_hdf5(other):
            continue
        for name in _recorded_files(other):
            named.setdefault((index.parent / name).resolve(), str(cache_path.with_name(other.name)))
    return named


def _is_hdf5(path: Path) -> bool:
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as handle:
            return handle.read(8) == _HDF5_SIGNATURE
    except OSError:
        return False


def _recorded_files(index: Path) -> list[str]:
    """The shard and segment files an index's tables name (relative to its folder); none for other HDF5 files."""
    try:
        with h5py.File(index, "r") as f:
            return [
                str(name)
                for group in (schema.SHARDS, schema.SEGMENTS)
                if group in f
                for name in f[group][schema.SHARD_FILES].asstr()[()]
            ]
    except (OSError, KeyError, TypeError, ValueError):
        return []


def describe(survey: Survey) -> list[str]:
    """One line per kind of file in the folder that the cache does not read, with counts and bytes."""
    lines = []
    if survey.unreferenced():
        files = survey.unreferenced()
        lines.append(
            f"{survey.folder}: {len(files)} files ({_bytes(files)} bytes) no index names; "
            "the next `pipeline extract` or `pipeline compact` of this cache deletes them or adopts them"
        )
    by_owner: dict[str, list[Path]] = {}
    for path, other in survey.foreign.items():
        by_owner.setdefault(other, []).append(path)
    for other, files in sorted(by_owner.items()):
        lines.append(
            f"{survey.folder}: {len(files)} files ({_bytes(files)} bytes) that {other} reads; "
            "left alone (they go when it no longer names them)"
        )
    return lines


def _bytes(files: list[Path]) -> int:
    total = 0
    for path in files:
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total
