"""The stable split: decided per image by its relative path, so old images never move."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from features_cache.reader import FeatureCache
from pipeline.demo_data import write_digits
from pipeline.errors import PipelineError
from pipeline.extract import ExtractOptions, run_extract
from pipeline.splits import assign_splits


def splits_of(cache_path: Path) -> dict[str, str]:
    with FeatureCache(cache_path) as cache:
        return dict(zip(cache.paths, assign_splits(cache.paths, cache.splits)))


def extract(data: Path, cache: Path) -> None:
    run_extract(ExtractOptions(data=str(data), cache=str(cache), weights="none", image_size=32))


def test_adding_images_or_moving_the_folder_moves_no_old_image(tmp_path):
    write_digits(tmp_path / "a", per_class=8)
    extract(tmp_path / "a", tmp_path / "a.h5")
    before = splits_of(tmp_path / "a.h5")

    write_digits(tmp_path / "a", per_class=16)  # new photos arrive in the same folder
    extract(tmp_path / "a", tmp_path / "a.h5")
    after = splits_of(tmp_path / "a.h5")
    assert len(after) == 2 * len(before)
    assert {path: after[path] for path in before} == before

    shutil.move(tmp_path / "a", tmp_path / "moved")
    extract(tmp_path / "moved", tmp_path / "moved.h5")
    assert splits_of(tmp_path / "moved.h5") == after


def test_shares_are_close_to_the_fractions_in_every_class():
    paths = [f"class{c}/img_{i:05d}.jpg" for c in range(4) for i in range(2000)]
    labels = np.repeat(np.arange(4), 2000)
    splits = assign_splits(paths, np.array([""] * len(paths), dtype=object), fractions=(0.6, 0.2, 0.2))
    for c in range(4):
        mine = splits[labels == c]
        for split, share in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
            assert abs(np.mean(mine == split) - share) < 0.04


def test_stored_splits_are_kept_and_the_rest_is_deterministic():
    paths = [f"x/{i}.png" for i in range(50)]
    stored = np.array(["test"] * 10 + [""] * 40, dtype=object)
    first = assign_splits(paths, stored)
    assert list(first[:10]) == ["test"] * 10
    assert list(first) == list(assign_splits(paths, stored))
    salted = assign_splits(paths, stored, salt="other")
    assert list(salted[10:]) != list(first[10:])


@pytest.mark.parametrize("fractions", [(0.5, 0.2), (0.7, 0.2, 0.2), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1)])
def test_bad_fractions_are_refused(fractions):
    with pytest.raises(PipelineError, match="--split"):
        assign_splits(["a.png"], np.array([""], dtype=object), fractions)
