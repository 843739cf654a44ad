"""Per-file records stored beside the features: what lets a re-run trust or redo a row."""

from __future__ import annotations

import dataclasses
import hashlib
import os


@dataclasses.dataclass(frozen=True)
class FileStamp:
    """The cheap fingerprint of a file: if size and mtime match, its bytes are trusted."""

    file_size: int
    file_mtime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike) -> FileStamp:
        stat = os.stat(path)
        return cls(stat.st_size, stat.st_mtime_ns)


@dataclasses.dataclass(frozen=True)
class FileRecord:
    """One image whose features are stored: its relative path and both fingerprints."""

    path: str
    content_hash: str
    stamp: FileStamp


@dataclasses.dataclass(frozen=True)
class SkippedFile:
    """A file that could not be turned into features, and why."""

    path: str
    reason: str
    stamp: FileStamp


def content_hash(data: bytes) -> str:
    """BLAKE2b-128 of a file's bytes: fast, and collisions are not a practical concern."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()
