"""The error every cache problem raises: one line that names the file and the fix."""

import errno
import os


class CacheError(Exception):
    """A cache that cannot be used as asked; the message says why and what to do."""


class MissingShards(CacheError):
    """The index is there but its shards folder is not: re-extracting would redo every image."""


def no_space(folder: str | os.PathLike, needed_bytes: int, error: OSError) -> CacheError:
    """The one line for a failed write: how much to free where, when the disk is full."""
    if error.errno == errno.ENOSPC or "No space left" in str(error) or "file write failed" in str(error):
        megabytes = max(1, -(-needed_bytes // 1_000_000))
        return CacheError(f"no space left: free {megabytes} MB in {folder} and run the same command again")
    return CacheError(f"{folder}: cannot write ({str(error).splitlines()[0]}); fix that and run the same command again")


def shard_bytes(rows: int, row_bytes: int, path_bytes: int) -> int:
    """An upper bound on one shard's size on disk: the features, per-row metadata, HDF5's fixed part."""
    return (32 << 10) + rows * (row_bytes + 400) + 2 * path_bytes


def index_bytes(rows: int) -> int:
    """An upper bound on an index's size: about 200 bytes a row measured, and 1 MiB for the rest."""
    return (1 << 20) + 300 * rows
