"""Keras for a head at work, without TensorFlow's native log lines on the user's terminal or notebook.

Importing TensorFlow writes its start-up notices straight to file descriptor 2, and loading
kept XLA programs logs errors that are not (``Error parsing text-format
tensorflow.XlaSerializedCacheEntry``, a "machine type ... doesn't match" line about tuning
flags such as ``+prefer-no-scatter`` on the very CPU that compiled them). The command line hides
them at start-up (``pipeline.quiet``); a notebook calling ``DenseHead().fit`` never passes there,
so the heads import Keras through :func:`import_keras` the first time one is used. Nothing
happens at import of this package, and a process that already imported TensorFlow, or
``PIPELINE_VERBOSE=1``, keeps its own log settings.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from types import ModuleType


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block (Python's own ``sys.stderr`` is flushed first)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_keras() -> ModuleType:
    """``import keras``; the first time in a process, with TensorFlow's C++ logs at fatal only and its import silenced."""
    if "keras" not in sys.modules and "tensorflow" not in sys.modules and os.environ.get("PIPELINE_VERBOSE") != "1":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with native_stderr_silenced():
            import keras
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    import keras

    return keras
