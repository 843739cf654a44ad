"""The segmented index: commits write the new rows' metadata and a small index, never the old rows'.

Synthetic shards make the commits (as ``extract`` makes them, through ``commit``); real
extracts check that what users do (add, move between classes, damage, delete) reads the same
as a cache extracted in one go.
"""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from test_extract import assert_only_listed_files, assert_same_cache, options, plain_snapshot, snapshot

from features_cache import schema, segments
from features_cache.errors import CacheError
from features_cache.reader import FeatureCache
from features_cache.records import FileRecord, FileStamp
from features_cache.segments import SEGMENT_ROWS, plan_segments
from features_cache.shards import Shard, file_digest, new_shard_path, write_shard
from features_cache.writer import FeatureSource, Row
from pipeline.cli import main
from pipeline.extraction.commit import commit
from pipeline.extraction.extract import run_extract
from pipeline.extraction.sources import Dataset

RECIPE = schema.Recipe(
    backbone="vgg16", weights="synthetic", weights_sha256="0" * 64, image_size=224, preprocessing="caffe",
    resize="stretch", interpolation="bilinear", background="rgb(255,255,255)", precision="float32",
    storage_dtype="float16",
)


class Growing:
    """A synthetic cache grown commit by commit, one class, paths numbered in order of arrival."""

    def __init__(self, cache) -> None:
        self.cache, self.rows, self.made = cache, [], 0
        self.rng = np.random.default_rng(0)
        schema.shards_dir(cache).mkdir(parents=True, exist_ok=True)

    def add(self, n: int, prefix: str = "c/img") -> None:
        records = [FileRecord(f"{prefix}_{self.made + i:06d}.jpg", f"{self.made + i:032x}", FileStamp(1, 1, 1, 1)) for i in range(n)]
        self.made += n
        path = new_shard_path(self.cache)
        shard_id = write_shard(path, RECIPE, self.rng.random((n, 1, 1, 8)).astype(np.float16), records, [])
        shard = Shard(path, path.stat().st_size, file_digest(path), records, [], shard_id)
        self.rows = sorted([*self.rows, *(Row(r, 0, "", FeatureSource(str(path), i)) for i, r in enumerate(records))],
                           key=lambda row: row.record.path)
        self.commit([shard])

    def commit(self, new: list[Shard]) -> None:
        old = FeatureCache(self.cache) if self.cache.exists() else None
        try:
            live = commit(self.cache, RECIPE, (1, 1, 8), Dataset(self.cache.parent, "folder", []), ["c"], self.rows, [], old, new, {}, {})
        finally:
            if old is not None:
                old.close()
        from features_cache.shards import collect_garbage

        collect_garbage(self.cache, live)


def _segments(cache) -> dict:
    """Each segment file's (inode, mtime): what a commit that kept it did not touch."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in segments.segment_files(cache)}


def test_a_small_commit_writes_a_new_segment_and_keeps_every_old_one(tmp_path):
    grown = Growing(tmp_path / "index.h5")
    grown.add(3000)
    before = _segments(grown.cache)
    grown.add(30)  # 1%
    after = _segments(grown.cache)
    assert set(before) < set(after) and all(after[name] == before[name] for name in before)
    (new,) = set(after) - set(before)
    with h5py.File(schema.shards_dir(grown.cache) / new, "r") as f:
        assert len(f[schema.PATHS]) == 30  # only the new rows' metadata was written
    assert grown.cache.stat().st_size < 64 << 10  # and an index without per-row data
    with FeatureCache(grown.cache) as cache:
        assert cache.paths == [row.record.path for row in grown.rows]
        assert cache.records() == [row.record for row in grown.rows]
        np.testing.assert_array_equal(cache.features()[-30:].reshape(30, -1), cache.features(np.arange(3000, 3030)).reshape(30, -1))


def test_rows_read_in_path_order_whatever_order_the_commits_wrote_them(tmp_path):
    grown = Growing(tmp_path / "index.h5")
    grown.add(200, "c/m")
    grown.add(50, "c/a")  # sorts before every row of the first segment, and is too small to merge with it
    with FeatureCache(grown.cache) as cache:
        assert cache.paths == sorted(cache.paths) and len(cache) == 250 and len(cache.segment_files) == 2
        by_path = dict(zip(cache.paths, cache.features().reshape(250, -1)))
    plain = plain_snapshot(grown.cache)  # an HDF5 reader sees storage order, each row whole
    for path, features in zip(plain["paths"], plain["features"].reshape(250, -1)):
        np.testing.assert_array_equal(features, by_path[path])
    with h5py.File(grown.cache, "r") as f:
        assert list(f[schema.PATHS].asstr()[:2]) == ["c/m_000000.jpg", "c/m_000001.jpg"]


def test_segments_stay_few_over_many_commits():
    plan: list = []
    total = 0
    for _ in range(200):
        fresh = np.arange(total, total + 100)
        plan = plan_segments([(ref or object(), rows) for ref, rows in plan], fresh)
        total += 100
        assert sum(len(rows) for _, rows in plan) == total
    assert len(plan) <= total // SEGMENT_ROWS + int(np.log2(total)) + 2
    assert all(len(rows) <= SEGMENT_ROWS for _, rows in plan)


def test_a_changed_label_rewrites_only_its_segment(tmp_path, monkeypatch):
    monkeypatch.setattr(segments, "SEGMENT_ROWS", 40)
    grown = Growing(tmp_path / "index.h5")
    grown.add(120)
    before = _segments(grown.cache)
    assert len(before) == 3
    grown.rows[50] = Row(grown.rows[50].record, 0, "test", grown.rows[50].source)  # one row's split changes
    grown.commit([])
    after = _segments(grown.cache)
    assert len(set(before) & set(after)) == 2  # the other two segments were kept as they are
    with FeatureCache(grown.cache) as cache:
        assert list(cache.splits).count("test") == 1 and cache.splits[50] == "test"


def test_extract_after_users_edits_equals_one_extract_with_many_segments(data, reference, weights_file, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(segments, "SEGMENT_ROWS", 4)
    source = tmp_path / "photos"
    shutil.copytree(data, source)
    held = tmp_path / "held"
    held.mkdir()
    for name in ("img_001.jpg", "img_005.jpg"):
        shutil.move(source / "a" / name, held / name)
    shutil.move(source / "b" / "img_002.jpg", source / "a" / "img_002b.jpg")  # filed under the wrong class
    cache = tmp_path / "features.h5"
    run_extract(options(source, cache, weights_file))
    for name in ("img_001.jpg", "img_005.jpg"):
        shutil.move(held / name, source / "a" / name)  # added later, in the middle of the path order
    shutil.move(source / "a" / "img_002b.jpg", source / "b" / "img_002.jpg")  # moved back to its class
    run_extract(options(source, cache, weights_file))
    with FeatureCache(cache) as opened:
        assert len(opened.segment_files) > 1
    assert_same_cache(snapshot(cache), reference)
    plain = plain_snapshot(cache)
    assert plain["paths"] == reference["paths"] and plain["labels"] == reference["labels"]
    np.testing.assert_allclose(plain["features"], reference["features"], rtol=1e-4, atol=1e-5)
    assert_only_listed_files(cache)


@pytest.mark.parametrize("damage", ["deleted", "truncated", "swapped"])
def test_a_damaged_segment_is_one_line_and_extract_rebuilds_the_index(damage, data, reference, weights_file, tmp_path, capsys):  # noqa: F811
    cache = tmp_path / "features.h5"
    run_extract(options(data, cache, weights_file))
    (segment,) = segments.segment_files(cache)
    if damage == "deleted":
        segment.unlink()
        with h5py.File(cache, "r") as f:  # a plain reader sees labels no class has, never class 0
            assert (f[schema.LABELS][()] == -1).all()
    elif damage == "truncated":
        segment.write_bytes(segment.read_bytes()[:200])
    else:
        other = tmp_path / "other.h5"
        run_extract(options(data, other, weights_file))
        shutil.copyfile(segments.segment_files(other)[0], segment)  # the same rows, another cache's segment
    with pytest.raises(CacheError, match=f"{segment.name}: segment of .*run `pipeline extract` again"):
        FeatureCache(cache)
    capsys.readouterr()
    assert main(["info", str(cache)]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and segment.name in err and len(err.strip().splitlines()) == 1
    run_extract(options(data, cache, weights_file))
    assert_same_cache(snapshot(cache), reference)
    assert_only_listed_files(cache)


def test_a_reader_keeps_its_rows_while_a_commit_replaces_segments(tmp_path, monkeypatch):
    monkeypatch.setattr(segments, "SEGMENT_ROWS", 40)
    grown = Growing(tmp_path / "index.h5")
    grown.add(80)
    with FeatureCache(grown.cache) as reader:
        expected = reader.features()
        grown.rows = [Row(r.record, 0, "train", r.source) for r in grown.rows]  # every segment rewritten
        grown.commit([])
        assert not any(p.exists() for p in reader.segment_files)  # collected
        np.testing.assert_array_equal(reader.features(), expected)
        assert list(reader.splits) == [""] * 80


def test_the_driver_accepts_a_workers_shard_by_its_facts_and_refuses_another_file(tmp_path):
    from pipeline.errors import PipelineError
    from pipeline.extraction.ray_engine import ShardFacts, _accepted

    cache = tmp_path / "index.h5"
    schema.shards_dir(cache).mkdir()
    records = [FileRecord(f"c/{i}.jpg", f"{i:032x}", FileStamp(1, 1, 1, 1)) for i in range(4)]
    written = []
    for seed in (0, 1):
        path = new_shard_path(cache)
        shard_id = write_shard(path, RECIPE, np.random.default_rng(seed).random((4, 1, 1, 8)).astype(np.float16), records, [])
        written.append((path, ShardFacts(path.stat().st_size, file_digest(path), shard_id, 4)))
    (first, facts), (second, other) = written
    shard = _accepted(first, facts, records, [])
    assert (shard.size, shard.digest, shard.shard_id, shard.records) == (facts.size, file_digest(first), facts.shard_id, records)
    shutil.copyfile(second, first)  # another shard of the same size in its place
    with pytest.raises(PipelineError, match="a worker's shard failed its check .*not the file the worker wrote"):
        _accepted(first, facts, records, [])
    first.write_bytes(first.read_bytes()[:100])  # cut short
    with pytest.raises(PipelineError, match="bytes, the worker wrote"):
        _accepted(first, facts, records, [])
    first.unlink()
    with pytest.raises(PipelineError, match="failed its check"):
        _accepted(first, facts, records, [])
