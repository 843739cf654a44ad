"""One split for the same images whatever the cache: the memory lives with the images (in the data
root), twins are found in pixels, and older memories beside a cache keep working or are reconciled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from image_factory import make_class_folders, photo
from PIL import Image

from features_cache.reader import FeatureCache
from pipeline.extraction.extract import ExtractOptions, run_extract
from pipeline.training.split_memory import memory_path, shared_memory_path
from pipeline.training.splits import plan_cache_splits

FLIP = {"train": "test", "val": "train", "test": "val"}


def extract(data: Path, cache: Path, **options) -> None:
    run_extract(ExtractOptions(data=str(data), cache=str(cache), weights="none", **{"image_size": 32, **options}))


def splits_of(cache: Path, remember: bool = True) -> tuple[dict[str, str], list[str]]:
    with FeatureCache(cache) as opened:
        plan = plan_cache_splits(opened, remember=remember)
        return dict(zip(opened.paths, plan.splits.tolist())), plan.notes


@pytest.fixture
def photos(tmp_path) -> Path:
    """3 classes of 10 photo-like images, 4 of them with a re-encoded copy (pixel twins)."""
    data = make_class_folders(tmp_path / "data", {"warm": 10, "cool": 10, "green": 10}, size=(96, 72))
    for path in sorted(data.rglob("*.jpg"))[::7]:
        Image.open(path).convert("RGB").save(path.with_name(path.stem + "_again.jpg"), "JPEG", quality=60)
    return data


def test_every_cache_of_the_same_images_splits_them_alike(photos, tmp_path):
    extract(photos, tmp_path / "small.h5")
    first, _ = splits_of(tmp_path / "small.h5")
    extract(photos, tmp_path / "pool4.h5", image_size=48, layer="block4_pool")
    assert splits_of(tmp_path / "pool4.h5")[0] == first
    twins = {p: p.replace("_again.jpg", ".jpg") for p in first if p.endswith("_again.jpg")}
    assert len(twins) == 5 and all(first[copy] == first[original] for copy, original in twins.items())
    for name in ("warm", "cool", "green"):  # later, more images, extracted into a new cache
        for k in range(6):
            photo(96, 72, seed=500 + k + 10 * len(name)).save(photos / name / f"later_{k}.jpg")
    extract(photos, tmp_path / "later.h5", image_size=40)
    later, _ = splits_of(tmp_path / "later.h5")
    assert {path: later[path] for path in first} == first
    assert shared_memory_path(photos).is_file() and not memory_path(tmp_path / "later.h5").exists()


def test_an_older_memory_beside_a_cache_keeps_working_and_a_disagreeing_one_is_reconciled(photos, tmp_path):
    extract(photos, tmp_path / "a.h5")
    replayed, _ = splits_of(tmp_path / "a.h5", remember=False)
    with FeatureCache(tmp_path / "a.h5") as cache:
        key_of = {path: record.content_hash for path, record in zip(cache.paths, cache.records())}

    def old_memory(cache: Path, splits: dict[str, str]) -> None:
        by_key = {key_of[path]: split for path, split in splits.items()}
        assignment = {"fractions": [0.7, 0.15, 0.15], "splits": by_key}
        memory_path(cache).write_text(json.dumps({"version": 2, "assignments": [assignment]}), encoding="utf-8")

    flipped = {path: FLIP[split] for path, split in replayed.items()}
    old_memory(tmp_path / "a.h5", flipped)  # trained before the memory moved: its splits are kept
    assert splits_of(tmp_path / "a.h5")[0] == flipped
    extract(photos, tmp_path / "b.h5", image_size=40)
    old_memory(tmp_path / "b.h5", replayed)  # another cache's older memory disagrees on every image
    splits, notes = splits_of(tmp_path / "b.h5")
    assert splits == flipped
    assert any(f"{len(flipped)} images have other splits in {memory_path(tmp_path / 'b.h5')}" in note for note in notes)
    assert not any("other splits" in note for note in splits_of(tmp_path / "b.h5")[1])  # said once
