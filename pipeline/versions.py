"""Library versions recorded with every cache and run, so results can be reproduced."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata

PACKAGES = ("keras", "tensorflow", "tensorflow-cpu", "jax", "torch", "numpy", "h5py", "pillow", "scikit-learn")
DEFAULT_BACKEND = "tensorflow"


def keras_backend() -> str:
    """The Keras backend, without importing Keras when nothing has yet.

    Importing Keras imports its backend (about 4 s for TensorFlow), which a scikit-learn run
    never needs. Keras decides its backend from ``KERAS_BACKEND``, else ``keras.json`` under
    ``KERAS_HOME`` (or ``~/.keras``, ``/tmp/.keras`` when home is not writable), else TensorFlow;
    this reads the same places. Once Keras is imported, Keras itself answers.
    """
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.path.expanduser("~")
    folder = os.environ.get("KERAS_HOME") or os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
    try:
        with open(os.path.join(folder, "keras.json"), encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return DEFAULT_BACKEND
    backend = config.get("backend") if isinstance(config, dict) else None
    return backend if isinstance(backend, str) and backend else DEFAULT_BACKEND


def library_versions() -> dict[str, str]:
    """``version.<package>`` for each installed package, plus the Keras backend and Python."""
    versions = {"version.python": platform.python_version(), "keras_backend": keras_backend()}
    for package in PACKAGES:
        try:
            versions[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions
