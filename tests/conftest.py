"""Shared fixtures, made once per test session (per worker under pytest-xdist): the digits and their cache,
a weights file, and the small photo set whose cache the fault and integrity tests copy and break."""

from __future__ import annotations

from pathlib import Path

import keras
import pytest
from image_factory import make_class_folders
from test_extract import options, snapshot

from pipeline.demo_data import write_digits
from pipeline.extraction.extract import ExtractOptions, run_extract


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 digit PNGs, 40 per class, as class folders."""
    return write_digits(tmp_path_factory.mktemp("digits") / "digits", per_class=40)


@pytest.fixture(scope="session")
def digits_cache(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache of the digits at 32x32 with seeded random VGG16 weights: features (1, 1, 512)."""
    cache = tmp_path_factory.mktemp("cache") / "digits32.h5"
    run_extract(ExtractOptions(data=str(digits_dir), cache=str(cache), weights="none", image_size=32))
    return cache


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """VGG16 conv weights saved by the tests themselves (seeded), as a user's local .h5 would be."""
    keras.utils.set_random_seed(1234)
    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path_factory.mktemp("weights") / "vgg16_notop.weights.h5"
    model.save_weights(path)
    return path


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """18 photos in two class folders, ``a`` and ``b``. A test that adds a file removes it again."""
    return make_class_folders(tmp_path_factory.mktemp("data") / "photos", {"a": 9, "b": 9})


@pytest.fixture(scope="session")
def built(data: Path, weights_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run's cache of ``data``, alone in its folder: a test starts from a copy (``copy_cache``)."""
    cache = tmp_path_factory.mktemp("reference") / "features.h5"
    run_extract(options(data, cache, weights_file))
    return cache


@pytest.fixture(scope="session")
def reference(built: Path) -> dict:
    """What an uninterrupted run of ``data`` gives."""
    return snapshot(built)
