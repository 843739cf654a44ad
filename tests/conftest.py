"""Shared fixtures: a real feature cache made by stage one from the digits, once per test session."""

from __future__ import annotations

from pathlib import Path

import keras
import pytest

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
