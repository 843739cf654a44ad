"""An image is its content, not its path and stat: swaps, racy edits, renames and orphans.

Real BMPs of equal dimensions (so of equal size) with mtimes set equal by ``os.utime``,
real runs of stage one, real kills. After each change the cache must hold, per path,
the features a fresh extraction of that file gives, and extract only new content.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from image_factory import photo, save
from legacy_index import rewrite_as_version_2
from test_extract import options, snapshot

from features_cache import schema
from features_cache.reader import FeatureCache
from pipeline.extraction.extract import run_extract

REPO = Path(__file__).resolve().parents[1]
PAST_NS = 1_600_000_000 * 10**9  # 2020: safely older than any commit these tests make


def bmp_folders(root: Path, classes: dict[str, int], mtime_ns: int | None = PAST_NS) -> Path:
    """``root/<class>/img_<i>.bmp``: 24x24 BMPs (all the same byte size), distinct pixels, equal mtimes."""
    seed = 0
    for name, count in classes.items():
        for i in range(count):
            path = save(photo(24, 24, seed=seed), root / name / f"img_{i:03d}.bmp", "BMP")
            if mtime_ns is not None:
                os.utime(path, ns=(mtime_ns, mtime_ns))
            seed += 1
    return root


def features_by_path(cache_path: Path) -> dict[str, np.ndarray]:
    with FeatureCache(cache_path) as cache:
        return dict(zip(cache.paths, cache.features()))


def wrong_rows(cache_path: Path, data: Path, weights: Path, tmp_path: Path) -> list[str]:
    """Paths whose features differ from a fresh extraction of the same files (labels must match too)."""
    fresh = tmp_path / f"fresh-{len(list(tmp_path.glob('fresh-*')))}.h5"
    run_extract(options(data, fresh, weights))
    ours, theirs = snapshot(cache_path), snapshot(fresh)
    assert (ours["paths"], ours["labels"], ours["classes"]) == (theirs["paths"], theirs["labels"], theirs["classes"])
    a, b = features_by_path(cache_path), features_by_path(fresh)
    return [path for path in b if not np.allclose(a[path], b[path], rtol=1e-4, atol=1e-5)]


def swap(a: Path, b: Path) -> None:
    """Exchange two files by renames through a temporary name: sizes and mtimes stay put."""
    temporary = a.with_name(".swap")
    os.rename(a, temporary)
    os.rename(b, a)
    os.rename(temporary, b)


def test_swapped_files_of_equal_size_and_mtime_get_each_others_features(tmp_path, weights_file):
    data = bmp_folders(tmp_path / "bmps", {"a": 3, "b": 3})
    cache = tmp_path / "features.h5"
    run_extract(options(data, cache, weights_file))
    first, second = data / "a" / "img_000.bmp", data / "a" / "img_001.bmp"
    assert os.stat(first).st_size == os.stat(second).st_size
    swap(first, second)
    assert os.stat(first).st_mtime_ns == os.stat(second).st_mtime_ns == PAST_NS
    report = run_extract(options(data, cache, weights_file))
    assert report.written and report.extracted == 0  # both contents are in the cache: reused, not extracted
    assert wrong_rows(cache, data, weights_file, tmp_path) == []


def test_a_file_changed_in_the_commits_timestamp_granule_is_hashed_again(tmp_path, weights_file):
    """Git's racy case: a stamp taken moments before the commit cannot vouch for the bytes."""
    data = bmp_folders(tmp_path / "bmps", {"a": 3, "b": 3})
    cache = tmp_path / "features.h5"
    run_extract(options(data, cache, weights_file))
    edited = data / "b" / "img_002.bmp"
    save(photo(24, 24, seed=999), edited, "BMP")  # same size, same inode: rewritten in place
    os.utime(edited, ns=(PAST_NS, PAST_NS))
    with h5py.File(cache, "r+") as f:  # as if the stamp had been taken after this edit, in the same tick
        row = [str(p) for p in f[schema.PATHS].asstr()[()]].index("b/img_002.bmp")
        if "file_ctime_ns" in f:
            f["file_ctime_ns"][row] = os.stat(edited).st_ctime_ns
    os.utime(cache, ns=(PAST_NS + 10**6, PAST_NS + 10**6))  # and the index committed 1 ms later
    report = run_extract(options(data, cache, weights_file))
    assert report.extracted == 1
    assert wrong_rows(cache, data, weights_file, tmp_path) == []


def test_a_cache_without_inode_and_ctime_is_rehashed_once_not_extracted(tmp_path, weights_file):
    data = bmp_folders(tmp_path / "bmps", {"a": 3, "b": 3})
    cache = tmp_path / "features.h5"
    run_extract(options(data, cache, weights_file))
    rewrite_as_version_2(cache)
    with h5py.File(cache, "r+") as f:  # what caches written before these fields look like
        for group in (f, f[schema.SKIPPED]):
            for name in ("file_inode", "file_ctime_ns"):
                if name in group:
                    del group[name]
    os.utime(cache, ns=(PAST_NS + 10**12, PAST_NS + 10**12))
    upgraded = run_extract(options(data, cache, weights_file))
    assert (upgraded.extracted, upgraded.kept, upgraded.written) == (0, 6, True)
    with FeatureCache(cache) as opened:
        for record in opened.records():
            stat = os.stat(data / record.path)
            assert (record.stamp.inode, record.stamp.ctime_ns) == (stat.st_ino, stat.st_ctime_ns)
    again = run_extract(options(data, cache, weights_file))
    assert (again.extracted, again.written) == (0, False)


@pytest.mark.parametrize("move", ["rename", "relabel", "class-folder"])
def test_renamed_and_moved_files_reuse_their_features(move, tmp_path, weights_file):
    data = bmp_folders(tmp_path / "bmps", {"a": 2, "b": 6})
    cache = tmp_path / "features.h5"
    run_extract(options(data, cache, weights_file))
    if move == "rename":
        os.rename(data / "b" / "img_000.bmp", data / "b" / "renamed.bmp")
    elif move == "relabel":
        os.rename(data / "b" / "img_000.bmp", data / "a" / "img_000_from_b.bmp")
    else:  # 6 of the 8 paths disappear: the drop guard must see they only moved
        os.rename(data / "b", data / "c")
    save(photo(24, 24, seed=500), data / "a" / "new.bmp", "BMP")  # truly new content is still extracted
    report = run_extract(options(data, cache, weights_file))
    assert (report.extracted, report.removed, report.kept) == (1, 0, 8)
    assert wrong_rows(cache, data, weights_file, tmp_path) == []


def test_an_orphan_is_adopted_only_for_its_own_content(tmp_path, weights_file):
    data = bmp_folders(tmp_path / "bmps", {"a": 8, "b": 1})
    cache = tmp_path / "features.h5"
    command = [sys.executable, "-m", "pipeline", "extract", str(data), "--cache", str(cache), "--weights", str(weights_file),
               "--image-size", "32", "--batch-size", "4", "--shard-rows", "4", "--precision", "float32", "--storage", "float32",
               "--workers", "1"]
    killed = subprocess.run(command, cwd=REPO, env={**os.environ, "PIPELINE_KILL_AT": "shard-written:1"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (orphan,) = schema.shards_dir(cache).glob("shard-*.h5")
    with h5py.File(orphan, "r") as f:
        in_orphan = [str(p) for p in f[schema.PATHS].asstr()[()]]
    assert in_orphan == [f"a/img_{i:03d}.bmp" for i in range(4)]
    # a not-yet-extracted image, same size and mtime, takes the name of one the orphan holds
    os.replace(data / "a" / "img_005.bmp", data / "a" / "img_001.bmp")
    report = run_extract(options(data, cache, weights_file))
    assert report.extracted == 5  # a/img_001 (now img_005's bytes), a/img_004, 006, 007, b/img_000; 3 adopted
    assert wrong_rows(cache, data, weights_file, tmp_path) == []
