"""XLA programs kept on disk between processes, so a Keras head's second run skips compiling them.

A dense head's first epoch spends about 1.5 s of CPU compiling its train, test and predict
steps with XLA; the programs depend only on the model, the shapes and the batch sizes, so a
new run of the same head on the same kind of cache compiles the same ones. TensorFlow keeps
them under ``--tf_xla_persistent_cache_directory``, read at the first XLA compilation of
the process and loaded byte for byte (the same code, so the same results).

The folder is ``$KERAS_HOME/xla-cache`` (``~/.keras``, where Keras keeps its weights), one
subfolder per TensorFlow version and CPU (programs are compiled for the host's instruction
set), a few hundred KB a program. ``PIPELINE_XLA_CACHE`` names another folder, or ``off``;
a ``TF_XLA_FLAGS`` that already names one is left as it is.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

FLAG = "--tf_xla_persistent_cache_directory"
SETTING = "PIPELINE_XLA_CACHE"


def cpu_key() -> str:
    """A short name for the host's instruction set: its CPU flags on Linux, else the machine type."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "") if cpuinfo.exists() else ""
    return hashlib.sha256((flags or platform.machine()).encode()).hexdigest()[:12]


def cache_folder(tf_version: str) -> Path | None:
    """Where this TensorFlow on this CPU keeps its programs, or None when ``PIPELINE_XLA_CACHE=off``."""
    setting = os.environ.get(SETTING, "")
    if setting.lower() == "off":
        return None
    root = Path(setting) if setting else Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "xla-cache"
    return root / f"tf-{tf_version}-{cpu_key()}"


def use_compile_cache() -> None:
    """Point TensorFlow's XLA at the on-disk cache; effective when no XLA program was compiled yet in this process."""
    import keras

    if keras.backend.backend() != "tensorflow" or FLAG in os.environ.get("TF_XLA_FLAGS", ""):
        return
    import tensorflow as tf

    folder = cache_folder(tf.__version__)
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: compile every time, as without the cache
        return
    os.environ["TF_XLA_FLAGS"] = f"{os.environ.get('TF_XLA_FLAGS', '')} {FLAG}={folder}".strip()
