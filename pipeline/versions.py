"""Library versions recorded with every cache and run, so results can be reproduced."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("keras", "tensorflow", "tensorflow-cpu", "jax", "torch", "numpy", "h5py", "pillow", "scikit-learn")


def library_versions() -> dict[str, str]:
    """``version.<package>`` for each installed package, plus the Keras backend and Python."""
    import keras

    versions = {"version.python": platform.python_version(), "keras_backend": keras.backend.backend()}
    for package in PACKAGES:
        try:
            versions[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions
