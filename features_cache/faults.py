"""Named points in a write where the crash tests stop the process, as a power cut would.

``PIPELINE_KILL_AT=NAME`` (or ``NAME:N`` for the N-th time) makes the process SIGKILL
itself there. Unset, each checkpoint is one dictionary lookup.
"""

from __future__ import annotations

import collections
import os
import signal

_seen: collections.Counter[str] = collections.Counter()


def checkpoint(name: str) -> None:
    """Die here if the environment asks for it; otherwise do nothing."""
    wanted = os.environ.get("PIPELINE_KILL_AT")
    if not wanted:
        return
    target, _, nth = wanted.partition(":")
    if target == name:
        _seen[name] += 1
        if _seen[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
