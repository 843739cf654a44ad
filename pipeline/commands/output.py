"""The console every command prints through: full rows on a terminal and in a log alike."""

from __future__ import annotations

import sys

from rich.console import Console

# Wide enough that no path of a table is cut short ("validation/coffee/cof...") when stdout is a
# pipe, a log or CI, where rich would otherwise assume 80 columns.
LOG_WIDTH = 100_000


def make_console() -> Console:
    """A terminal's own width on a terminal; elsewhere, every cell printed in full."""
    width = None if sys.stdout.isatty() else LOG_WIDTH
    return Console(highlight=False, soft_wrap=True, width=width)
