"""Splits: stratified per class, stored splits first, a val carved where the data has none, and no image ever moves."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from features_cache.reader import FeatureCache
from pipeline.demo_data import write_digits
from pipeline.errors import PipelineError
from pipeline.extraction.extract import ExtractOptions, run_extract
from pipeline.training.split_memory import shared_memory_path
from pipeline.training.splits import plan_cache_splits, plan_splits


def splits_of(cache_path: Path) -> dict[str, str]:
    with FeatureCache(cache_path) as cache:
        return dict(zip(cache.paths, plan_cache_splits(cache).splits))


def extract(data: Path, cache: Path) -> None:
    run_extract(ExtractOptions(data=str(data), cache=str(cache), weights="none", image_size=32))


def test_adding_images_or_moving_the_folder_moves_no_old_image(tmp_path):
    write_digits(tmp_path / "a", per_class=8)
    extract(tmp_path / "a", tmp_path / "a.h5")
    before = splits_of(tmp_path / "a.h5")
    assert shared_memory_path(tmp_path / "a").is_file()

    for per_class in (9, 13, 24):  # new photos arrive in the same folder, a few at a time
        write_digits(tmp_path / "a", per_class=per_class)
        extract(tmp_path / "a", tmp_path / "a.h5")
        after = splits_of(tmp_path / "a.h5")
        assert {path: after[path] for path in before} == before
        before = after
    assert len(after) == 240

    shutil.move(tmp_path / "a", tmp_path / "moved")  # paths are relative to the data root
    extract(tmp_path / "moved", tmp_path / "a.h5")
    assert splits_of(tmp_path / "a.h5") == after


def test_without_the_memory_file_the_same_images_get_the_same_splits(tmp_path):
    write_digits(tmp_path / "a", per_class=12)
    extract(tmp_path / "a", tmp_path / "a.h5")
    first = splits_of(tmp_path / "a.h5")
    shared_memory_path(tmp_path / "a").unlink()
    assert splits_of(tmp_path / "a.h5") == first


def shares(splits: np.ndarray) -> dict[str, int]:
    return {split: int(np.sum(splits == split)) for split in ("train", "val", "test")}


def test_every_class_is_split_in_its_shares_tiny_and_unbalanced_ones_included():
    sizes = {"big": 2000, "mid": 40, "twelve": 12, "five": 5, "four": 4}
    paths = [f"{name}/img_{i:05d}.jpg" for name, n in sizes.items() for i in range(n)]
    labels = np.array([k for k, n in enumerate(sizes.values()) for _ in range(n)])
    plan, decisions = plan_splits(paths, labels, [""] * len(paths), fractions=(0.6, 0.2, 0.2))
    assert len(decisions) == len(paths)
    for k, (name, n) in enumerate(sizes.items()):
        counts = shares(plan.splits[labels == k])
        assert counts["val"] >= 1 and counts["test"] >= 1, (name, counts)
        for split, share in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
            assert abs(counts[split] - share * n) <= 1.0, (name, counts)  # exact to one image, not just in expectation


def test_growing_one_image_at_a_time_never_moves_one_and_stays_stratified():
    paths = [f"c/{i:03d}.png" for i in range(60)]
    remembered: dict[str, str] = {}
    for n in range(1, 61):
        plan, decisions = plan_splits(paths[:n], np.zeros(n, dtype=int), [""] * n, remembered=remembered)
        assert {p: decisions[p] for p in remembered} == remembered
        remembered = decisions
        counts = shares(plan.splits)
        if n >= 4:
            assert counts["val"] >= 1 and counts["test"] >= 1
        assert abs(counts["train"] - 0.7 * n) <= 2.0


def layout_plan(stored: list[str], fractions=(0.7, 0.15, 0.15)):
    paths = [f"{split or 'x'}/c{i % 2}/{i}.png" for i, split in enumerate(stored)]
    labels = np.array([i % 2 for i in range(len(stored))])
    plan, _ = plan_splits(paths, labels, stored, fractions)
    return plan


def test_train_and_validation_folders_mean_no_test_split():
    plan = layout_plan(["train"] * 40 + ["val"] * 10)
    assert shares(plan.splits) == {"train": 40, "val": 10, "test": 0}
    assert plan.held_out == ("val",)
    assert any("no test split" in note for note in plan.notes)


def test_train_and_test_folders_get_a_val_carved_out_of_train():
    plan = layout_plan(["train"] * 40 + ["test"] * 10)
    counts = shares(plan.splits)
    assert counts["test"] == 10 and abs(counts["val"] - 40 * 0.15 / 0.85) <= 2 and counts["train"] == 40 - counts["val"]
    assert plan.held_out == ("val", "test")
    assert list(plan.splits[40:]) == ["test"] * 10  # stored splits win


def test_a_train_folder_alone_gets_a_val_and_no_test():
    plan = layout_plan(["train"] * 40)
    counts = shares(plan.splits)
    assert counts["val"] >= 2 and counts["test"] == 0 and counts["train"] + counts["val"] == 40


@pytest.mark.parametrize("fractions", [(0.5, 0.2), (0.7, 0.2, 0.2), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1), (float("nan"), 0.5, 0.5)])
def test_bad_fractions_are_refused(fractions):
    with pytest.raises(PipelineError, match="--split"):
        plan_splits(["a.png"], np.array([0]), [""], fractions)
