"""The cache at scale, in miniature: commits that never open old shards, shards that gather
many batches without chunk padding, gzip shards mixed with plain ones, and float16 read exactly."""

from __future__ import annotations

import shutil
import subprocess

import h5py
import numpy as np
import pytest
from image_factory import make_class_folders
from test_extract import assert_same_cache, options, plain_snapshot, snapshot

from features_cache import halves, schema
from features_cache.reader import FeatureCache
from features_cache.records import FileRecord, FileStamp
from features_cache.shards import Shard, file_digest, new_shard_path, write_shard
from pipeline.cli import main
from pipeline.extraction.commit import commit
from pipeline.extraction.extract import run_extract
from pipeline.extraction.shard_writer import ShardWriter
from pipeline.extraction.sources import discover

SHAPE = (7, 7, 512)
RECIPE = schema.Recipe(
    backbone="vgg16", weights="synthetic", weights_sha256="0" * 64, image_size=224, preprocessing="caffe",
    resize="stretch", interpolation="bilinear", background="rgb(255,255,255)", precision="float32",
    storage_dtype="float16",
)


@pytest.mark.parametrize("rows", [2048, 1000, 37, 1])
def test_chunks_tile_a_shard_with_no_padding(rows, tmp_path):
    features = np.random.default_rng(rows).random((rows, *SHAPE), dtype=np.float32).astype(np.float16)
    path = tmp_path / "shard.h5"
    write_shard(path, RECIPE, features, [FileRecord(f"{i}.jpg", "0" * 32, FileStamp(0, 0)) for i in range(rows)], [])
    with h5py.File(path, "r") as f:
        stored = f[schema.FEATURES]
        assert rows % stored.chunks[0] == 0 and stored.chunks[0] * features[0].nbytes <= schema.CHUNK_TARGET_BYTES
        chunks = rows // stored.chunks[0]
        assert stored.id.get_storage_size() == features.nbytes + 4 * chunks  # the rows and a fletcher32 a chunk: no padding
        np.testing.assert_array_equal(stored[()], features)


def test_batches_gather_into_shards_of_the_asked_rows_or_seconds(tmp_path):
    cache = tmp_path / "features.h5"
    schema.shards_dir(cache).mkdir()

    def run(shard_rows: int, shard_seconds: float) -> list[int]:
        writer = ShardWriter(cache, RECIPE, (1, 1, 8), np.asarray, shard_rows=shard_rows, shard_seconds=shard_seconds)
        for batch in range(5):
            records = [FileRecord(f"{batch}-{i}.jpg", "0" * 32, FileStamp(0, 0)) for i in range(4)]
            writer.put(np.full((4, 1, 1, 8), batch, dtype=np.float32), 4, records, [])
        writer.close()
        return [len(shard.records) for shard in writer.written]

    assert run(8, 3600) == [8, 8, 4]  # the rest is written when the run ends
    assert run(2048, 3600) == [20]
    assert run(2048, 0) == [4] * 5  # time's up after every batch: a kill loses at most that much work


def test_extract_writes_one_shard_for_a_small_run_by_default(data, reference, weights_file, tmp_path):  # noqa: F811
    cache = tmp_path / "features.h5"
    run_extract(options(data, cache, weights_file, shard_rows=schema.EXTRACT_SHARD_ROWS))
    assert len(list(schema.shards_dir(cache).glob("shard-*.h5"))) == 1
    assert_same_cache(snapshot(cache), reference)


def test_a_commit_never_opens_the_old_shards(tmp_path):
    """The old index already says each shard's rows, size, digest and id: deleting every old
    shard file (a reader that holds them keeps reading) must not stop a commit."""
    folder = make_class_folders(tmp_path / "data", {"a": 1, "b": 1})
    cache = tmp_path / "features.h5"
    schema.shards_dir(cache).mkdir()
    rng = np.random.default_rng(0)

    def new_shard(names: list[str]) -> Shard:
        records = [FileRecord(name, f"{i:032x}", FileStamp(1, 1, 1, 1)) for i, name in enumerate(names)]
        path = new_shard_path(cache)
        shard_id = write_shard(path, RECIPE, rng.random((len(names), 1, 1, 8)).astype(np.float16), records, [])
        return Shard(path, path.stat().st_size, file_digest(path), records, [], shard_id)

    dataset = discover(str(folder))
    old_shards = [new_shard([f"a/{i}.jpg" for i in range(4)]), new_shard([f"b/{i}.jpg" for i in range(4)])]
    rows = _rows(old_shards)
    commit(cache, RECIPE, (1, 1, 8), dataset, ["a", "b"], rows, [], None, old_shards, {}, {})
    with FeatureCache(cache) as old:
        for shard in old_shards:
            shard.path.unlink()
        added = new_shard(["b/new.jpg"])
        commit(cache, RECIPE, (1, 1, 8), dataset, ["a", "b"], [*_rows([*old_shards, added])], [], old, [added], {}, {})
    with h5py.File(cache, "r") as f:
        table = f[schema.SHARDS]
        assert list(table[schema.SHARD_ROWS][()]) == [4, 4, 1]
        assert [str(i) for i in table[schema.SHARD_IDS].asstr()[()]] == [s.shard_id for s in [*old_shards, added]]
        assert list(table[schema.SHARD_SIZES][()]) == [s.size for s in [*old_shards, added]]
        np.testing.assert_array_equal(np.isnan(f[schema.FEATURES][:8]).all(axis=(1, 2, 3)), [True] * 8)  # deleted: NaN
        with h5py.File(added.path, "r") as new:
            np.testing.assert_array_equal(f[schema.FEATURES][8:], new[schema.FEATURES][()])


def _rows(shards: list[Shard]):
    from features_cache.writer import FeatureSource, Row

    return [Row(record, 0 if record.path.startswith("a/") else 1, "", FeatureSource(str(shard.path), i))
            for shard in shards for i, record in enumerate(shard.records)]


def test_gzip_and_plain_shards_mix_in_one_cache_with_one_identity(data, reference, weights_file, tmp_path, capsys):  # noqa: F811
    source = tmp_path / "photos"
    shutil.copytree(data, source)
    held = tmp_path / "held.jpg"
    shutil.move(source / "b" / "img_003.jpg", held)
    plain, mixed = tmp_path / "plain.h5", tmp_path / "mixed.h5"
    run_extract(options(source, plain, weights_file))
    run_extract(options(source, mixed, weights_file, compression="gzip"))
    shutil.move(held, source / "b" / "img_003.jpg")
    run_extract(options(source, mixed, weights_file))  # the new image in a plain shard
    with FeatureCache(mixed) as cache, FeatureCache(plain) as other:
        assert cache.identity == other.identity  # compression is no part of the recipe
        kinds = cache.shard_compression
        assert "gzip" in kinds and "none" in kinds
        for file, kind in zip(cache.shard_files, kinds):
            with h5py.File(file, "r") as f:
                assert (f[schema.FEATURES].compression, f[schema.FEATURES].shuffle) == (("gzip", True) if kind == "gzip" else (None, False))
    assert_same_cache(snapshot(mixed), reference)
    plain = plain_snapshot(mixed)
    assert plain["paths"] == snapshot(mixed)["paths"]
    np.testing.assert_array_equal(plain["features"], snapshot(mixed)["features"])
    if shutil.which("h5dump"):
        done = subprocess.run(["h5dump", "-d", "features", "-c", "1,1,1,4", str(mixed)], capture_output=True, text=True)
        assert done.returncode == 0 and "nan" not in done.stdout.lower(), done.stderr
    capsys.readouterr()
    assert main(["info", str(mixed)]) == 0 and " gzip" in capsys.readouterr().out
    assert main(["compact", str(mixed), "--compression", "gzip"]) == 0
    with FeatureCache(mixed) as cache:
        assert set(cache.shard_compression) == {"gzip"}
    assert_same_cache(snapshot(mixed), reference)


def test_float16_widens_exactly_and_names_non_finite_values():
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    finite = every[np.isfinite(every)]
    out = np.empty(finite.shape, dtype=np.float32)
    assert halves.widen(finite, out)
    np.testing.assert_array_equal(out.view(np.uint32), finite.astype(np.float32).view(np.uint32))  # -0.0 and subnormals too
    assert not halves.widen(every, np.empty(every.shape, dtype=np.float32))
    assert halves.finite_halves(finite) and not halves.finite_halves(every)


def test_info_suggests_gzip_for_large_caches_until_every_shard_has_it(data, weights_file, tmp_path, monkeypatch, capsys):  # noqa: F811
    from pipeline.commands import tables

    cache = tmp_path / "features.h5"
    run_extract(options(data, cache, weights_file))
    capsys.readouterr()
    assert main(["info", str(cache)]) == 0
    assert "tip:" not in capsys.readouterr().out  # a small cache: no suggestion
    with FeatureCache(cache) as opened:
        monkeypatch.setattr(tables, "LARGE_CACHE_BYTES", opened.disk_bytes - 1)  # this cache, as if it were large
    assert main(["info", str(cache)]) == 0
    assert "tip: `extract --compression gzip`" in capsys.readouterr().out
    assert main(["compact", str(cache), "--compression", "gzip"]) == 0
    capsys.readouterr()
    with FeatureCache(cache) as opened:
        monkeypatch.setattr(tables, "LARGE_CACHE_BYTES", opened.disk_bytes - 1)
    assert main(["info", str(cache)]) == 0
    assert "tip:" not in capsys.readouterr().out
