"""An interrupted run's journal, with gaps or damaged segments, never makes a cache that reads as complete and is wrong."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from features_cache import schema
from features_cache.journal import Journal
from features_cache.reader import FeatureCache
from pipeline.demo_data import write_digits
from pipeline.extract import ExtractOptions, run_extract

BATCH = 10


def options(data: Path, cache: Path, **extra) -> ExtractOptions:
    return ExtractOptions(data=str(data), cache=str(cache), weights="none", image_size=32, **extra)


def features_by_path(cache: Path) -> dict[str, np.ndarray]:
    with FeatureCache(cache) as opened:
        return dict(zip(opened.paths, opened.features()))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("journal")
    data = write_digits(root / "digits", per_class=5)
    run_extract(options(data, root / "reference.h5"))
    return data, root / "reference.h5"


def killed_run(reference: tuple[Path, Path], cache: Path) -> list[Path]:
    """The journal a run killed after its last batch leaves for ``cache``: segments of BATCH rows, no cache file."""
    _, source = reference
    journal = Journal(cache)
    with FeatureCache(source) as opened:
        journal.start(opened.recipe)
        records, features = opened.records(), opened.features(dtype=np.float16)
    for start in range(0, len(records), BATCH):
        journal.append(features[start : start + BATCH], records[start : start + BATCH], [])
    return journal.segments()


def assert_equal_to_reference(cache: Path, reference: tuple[Path, Path]) -> None:
    got, expected = features_by_path(cache), features_by_path(reference[1])
    assert got.keys() == expected.keys()
    for path, row in expected.items():
        np.testing.assert_array_equal(got[path], row, err_msg=path)


def test_a_missing_middle_segment_is_extracted_again_and_nothing_is_overwritten(reference, tmp_path):
    cache = tmp_path / "c.h5"
    segments = killed_run(reference, cache)
    segments[2].unlink()  # a gap: new segments must not take the names of surviving ones
    report = run_extract(options(reference[0], cache))
    assert report.extracted == BATCH and report.kept == 50 - BATCH
    assert_equal_to_reference(cache, reference)


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),  # truncated
        lambda path: path.write_bytes(b""),  # zero bytes
        lambda path: path.write_text("not an HDF5 file"),  # text
        lambda path: path.write_bytes(b"\0" * path.stat().st_size),  # zeroed
    ],
    ids=["truncated", "empty", "text", "zeroed"],
)
def test_a_damaged_segment_is_dropped_said_and_its_images_extracted_again(reference, tmp_path, damage):
    cache = tmp_path / "c.h5"
    segments = killed_run(reference, cache)
    damage(segments[1])
    report = run_extract(options(reference[0], cache))
    assert report.extracted == BATCH
    assert any("damaged journal segment" in note for note in report.notes)
    assert_equal_to_reference(cache, reference)
    assert not schema.journal_dir(cache).exists()


def test_force_discards_a_journal_made_with_the_same_settings(reference, tmp_path):
    cache = tmp_path / "c.h5"
    killed_run(reference, cache)
    report = run_extract(options(reference[0], cache, force=True))
    assert report.extracted == 50
    assert_equal_to_reference(cache, reference)


def test_temporary_files_of_killed_writers_are_removed(reference, tmp_path):
    cache = tmp_path / "c.h5"
    run_extract(options(reference[0], cache))
    stale = tmp_path / f".{cache.name}.tmp-999999"
    stale.write_bytes(b"\0" * 4096)  # what a writer killed during the final write leaves
    run_extract(options(reference[0], cache))
    assert not stale.exists()


def test_the_cache_is_readable_by_old_hdf5_tools_settings(reference):
    """No libver='latest' superblock and no numpy-bool attributes: HDF5 1.8/1.10 tools read the cache."""
    import h5py

    with h5py.File(reference[1]) as f:
        assert f.libver[0] == "earliest"
        assert not [key for key, value in f.attrs.items() if isinstance(value, (bool, np.bool_))]
    with open(reference[1], "rb") as handle:
        assert handle.read(9)[8] in (0, 1)  # superblock version 0 or 1, not the 1.10+ version 2/3
    assert os.path.getsize(reference[1]) > 0
