"""How much memory this process may still use: the one probe behind every memory-based choice
(``train --load auto``, the decoders' budget)."""

from __future__ import annotations

import os

FALLBACK_BYTES = 4 << 30


def available_memory() -> int:
    """Bytes the kernel could give without swapping: ``MemAvailable`` (free memory plus the page
    cache it can drop), not ``MemFree``, which on a busy machine is a fraction of it."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return FALLBACK_BYTES
