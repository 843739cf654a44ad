"""Per-file records stored beside the features: what lets a re-run trust or redo a row."""

from __future__ import annotations

import dataclasses
import hashlib
import os

UNKNOWN = -1  # a stamp field a record does not have (caches written before it existed): never matches


@dataclasses.dataclass(frozen=True)
class FileStamp:
    """The cheap fingerprint of a file, as git's index keeps it: size, mtime, inode and ctime.

    Size and mtime alone miss two files of equal size and mtime swapped by renames: the
    inode at each path changes (and so does ctime, which a rename updates on Linux).
    Stamps read from older caches have ``UNKNOWN`` inode and ctime, so they never match.
    """

    file_size: int
    file_mtime_ns: int
    inode: int = UNKNOWN
    ctime_ns: int = UNKNOWN

    @classmethod
    def of(cls, path: str | os.PathLike) -> FileStamp:
        stat = os.stat(path)
        return cls(stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)


@dataclasses.dataclass(frozen=True)
class FileRecord:
    """One image whose features are stored: its relative path and both fingerprints."""

    path: str
    content_hash: str
    stamp: FileStamp


@dataclasses.dataclass(frozen=True)
class SkippedFile:
    """A file that could not be turned into features, why, and what that depended on.

    ``depends_on`` is ``transient`` (retry on every run: a read or memory failure), or
    space-separated ``name=value`` settings (``max_pixels=...``, ``pillow=...``): the file
    is tried again when any of them differs. Empty (records of older caches) means retry.
    """

    path: str
    reason: str
    stamp: FileStamp
    depends_on: str = ""

    def worth_retrying(self, conditions: str) -> bool:
        """Whether the skip may not hold under ``conditions`` (same form as ``depends_on``)."""
        if not self.depends_on or self.depends_on == TRANSIENT:
            return True
        now = dict(item.split("=", 1) for item in conditions.split() if "=" in item)
        return any(now.get(key) != value for key, value in (item.split("=", 1) for item in self.depends_on.split() if "=" in item))


TRANSIENT = "transient"


def content_hash(data: bytes) -> str:
    """BLAKE2b-128 of a file's bytes: fast, and collisions are not a practical concern."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_content_hash(path: str | os.PathLike) -> str:
    """:func:`content_hash` of the file at ``path``, read in blocks so memory stays small."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
