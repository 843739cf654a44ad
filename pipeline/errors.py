"""The error for bad input and bad settings: one line, naming the path or value and the fix."""

from __future__ import annotations

import os
from pathlib import Path


class PipelineError(Exception):
    """Shown to the user as ``error: <message>`` with no traceback."""


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """``path`` if a file can be written there: its folder exists and it is not itself a folder."""
    path = Path(path)
    if path.is_dir():
        raise PipelineError(f"{flag} {path}: is a folder; pass a file path inside it")
    if not path.resolve().parent.is_dir():
        raise PipelineError(f"{flag} {path}: folder {path.resolve().parent} does not exist; create it first")
    return path
