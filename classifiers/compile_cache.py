"""XLA programs kept on disk between processes, so a Keras head's second run skips compiling them.

A dense head's first epoch spends about 1.5 s of CPU compiling its train, test and predict
steps with XLA; the programs depend only on the model, the shapes and the batch sizes, so a
new run of the same head on the same kind of cache compiles the same ones. TensorFlow keeps
them under ``--tf_xla_persistent_cache_directory``, read at the first XLA compilation of
the process and loaded byte for byte (the same code, so the same results).

The folder is ``$KERAS_HOME/xla-cache`` (``~/.keras`` without it, where Keras keeps its
weights), one subfolder per TensorFlow version and CPU model and flags (programs are compiled
for the host's instruction set, so a home folder shared between machines never hands one CPU
another's programs; where the CPU cannot be named, nothing is kept), a few hundred KB a
program. ``PIPELINE_XLA_CACHE`` names another folder, or ``off``; a ``TF_XLA_FLAGS`` that
already names one is left as it is.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

FLAG = "--tf_xla_persistent_cache_directory"
SETTING = "PIPELINE_XLA_CACHE"


def cpu_key(cpuinfo: str | None = None) -> str | None:
    """A short name for the host's instruction set, from ``/proc/cpuinfo``'s model and feature flags.

    None where they cannot be read (not Linux, a container hiding them): the machine type alone
    (``x86_64``) would let one folder serve CPUs of other instruction sets, and a program
    compiled for AVX-512 dies of SIGILL on a CPU without it.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    wanted = ("flags", "Features", "model name", "CPU implementer", "CPU part")
    lines = sorted(
        {
            line.split(":", 1)[0].strip() + ":" + line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if ":" in line and line.split(":", 1)[0].strip() in wanted
        }
    )
    if not any(line.startswith(("flags:", "Features:")) for line in lines):
        return None
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]


def cache_folder(tf_version: str, cpuinfo: str | None = None) -> Path | None:
    """Where this TensorFlow on this CPU keeps its programs; None when ``PIPELINE_XLA_CACHE=off`` or the CPU
    cannot be named (then every run compiles, as without the cache)."""
    setting = os.environ.get(SETTING, "")
    key = cpu_key(cpuinfo)
    if setting.lower() == "off" or key is None:
        return None
    root = Path(setting) if setting else Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "xla-cache"
    return root / f"tf-{tf_version}-{key}"


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
