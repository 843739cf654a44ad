"""The error every cache problem raises: one line that names the file and the fix."""

import errno
import os


class CacheError(Exception):
    """A cache that cannot be used as asked; the message says why and what to do."""


def no_space(folder: str | os.PathLike, needed_bytes: int, error: OSError) -> CacheError:
    """The one line for a failed write: how much to free where, when the disk is full."""
    if error.errno == errno.ENOSPC or "No space left" in str(error) or "file write failed" in str(error):
        megabytes = max(1, -(-needed_bytes // 1_000_000))
        return CacheError(f"no space left: free {megabytes} MB in {folder} and run the same command again")
    return CacheError(f"{folder}: cannot write ({str(error).splitlines()[0]}); fix that and run the same command again")
