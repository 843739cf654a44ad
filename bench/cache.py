"""Cache growth and read speed on synthetic features: what the shard layout costs and saves.

Builds a sharded cache of ``n`` rows (shards of 32 rows, as ``extract`` writes them), adds
1% and 2% new rows the way ``extract`` commits them (new shards, then a new index), and
counts the bytes of files created or changed; then reads all features from it (with and
without the per-row checksums, and the open that checks every shard's id) and from
the same rows in one standalone file, and writes shards with gzip+shuffle to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np

from features_cache import schema
from features_cache.compact import compact
from features_cache.reader import FeatureCache
from features_cache.records import FileRecord, FileStamp
from features_cache.shards import file_digest, new_shard_path, write_shard
from features_cache.writer import FeatureSource, Row, write_cache, write_index

SHAPE = (4, 4, 512)
BATCH = 32
DEFAULT_ROWS = 20_000
RECIPE = schema.Recipe(
    backbone="vgg16", weights="synthetic", weights_sha256="0" * 64, image_size=224, preprocessing="caffe",
    resize="stretch", interpolation="bilinear", background="rgb(255,255,255)", precision="float32",
    storage_dtype="float16",
)


def _features(rng: np.random.Generator, n: int) -> np.ndarray:
    """Non-negative, about half zeros, like ReLU outputs."""
    return np.maximum(rng.normal(0, 1, (n, *SHAPE)), 0).astype(np.float16)


def _add(cache: Path, rows: list[Row], table: list, rng: np.random.Generator, n: int) -> None:
    """Commit ``n`` new rows as ``extract`` does: shards of ``BATCH``, then one new index."""
    folder = cache.parent.resolve()
    first = len(rows)
    for start in range(0, n, BATCH):
        count = min(BATCH, n - start)
        records = [FileRecord(f"c/img_{first + start + i:07d}.jpg", "0" * 32, FileStamp(0, 0)) for i in range(count)]
        shard = new_shard_path(cache)
        shard_id = write_shard(shard, RECIPE, _features(rng, count), records, [])
        table.append((os.path.relpath(shard.resolve(), folder), count, shard.stat().st_size, file_digest(shard), shard_id))
        rows += [Row(r, 0, "", FeatureSource(str(shard), i)) for i, r in enumerate(records)]
    write_index(cache, recipe=RECIPE, feature_shape=SHAPE, class_names=["c"], rows=rows, skipped=[], attrs={}, shards=table)


def _files(cache: Path) -> dict[Path, tuple[int, int]]:
    """Size and mtime of the index and every shard: the files that make up the cache."""
    files = [cache, *schema.shards_dir(cache).iterdir()]
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


def _grow(cache: Path, rows: list[Row], table: list, rng: np.random.Generator, n: int) -> dict:
    before = _files(cache)
    started = time.perf_counter()
    _add(cache, rows, table, rng, n)
    seconds = time.perf_counter() - started
    after = _files(cache)
    written = sum(size for p, (size, mtime) in after.items() if before.get(p) != (size, mtime))
    total = sum(size for size, _ in after.values())
    return {"added_rows": n, "seconds": round(seconds, 3), "bytes_written": written, "cache_bytes": total,
            "written_fraction": round(written / total, 4)}


def _read_seconds(path: Path, repeats: int = 3, checked: bool = True) -> float:
    """Best of ``repeats`` full reads: the first pays for page faults and a cold page cache.

    ``checked=False`` skips the per-row checksums (fletcher32 still runs): the read as it was
    before rows carried checksums, to measure what the check costs."""
    best = float("inf")
    with FeatureCache(path) as cache:
        if not checked:
            cache._checksums = [None] * len(cache._checksums)
        for _ in range(repeats):
            started = time.perf_counter()
            cache.features()
            best = min(best, time.perf_counter() - started)
    return round(best, 3)


def _open_seconds(path: Path, repeats: int = 3) -> float:
    """Best of ``repeats`` opens: the index, and every shard opened and its id checked."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        FeatureCache(path).close()
        best = min(best, time.perf_counter() - started)
    return round(best, 3)


def _compression(folder: Path, rng: np.random.Generator, n: int) -> dict:
    """Disk, write and read time of the same shards with no filter and with gzip+shuffle."""
    features = _features(rng, n)
    result = {"zeros_fraction": round(float((features == 0).mean()), 3)}
    for name, options in {"none": {}, "gzip+shuffle": {"compression": "gzip", "shuffle": True}}.items():
        path = folder / f"{name}.h5"
        started = time.perf_counter()
        with h5py.File(path, "w") as f:
            f.create_dataset(schema.FEATURES, data=features, chunks=(BATCH, *SHAPE), fletcher32=True, **options)
        wrote = time.perf_counter() - started
        started = time.perf_counter()
        with h5py.File(path, "r") as f:
            f[schema.FEATURES][()]
        result[name] = {"bytes": path.stat().st_size, "write_seconds": round(wrote, 3),
                        "read_seconds": round(time.perf_counter() - started, 3)}
    return result


def measure(folder: Path, n: int) -> dict:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    cache = folder / "sharded.h5"
    schema.shards_dir(cache).mkdir()
    rows: list[Row] = []
    table: list = []
    started = time.perf_counter()
    _add(cache, rows, table, rng, n)
    build = time.perf_counter() - started
    (folder / "other").mkdir()
    single = folder / "other" / "single.h5"
    write_cache(single, recipe=RECIPE, feature_shape=SHAPE, class_names=["c"], rows=list(rows), skipped=[], attrs={})
    results = {
        "rows": n, "feature_shape": list(SHAPE), "build_seconds": round(build, 2),
        "grow_1pct": _grow(cache, rows, table, rng, n // 100),
        "grow_2pct": _grow(cache, rows, table, rng, n // 50),
    }
    reads = {"sharded": _read_seconds(cache), "sharded_without_row_checksums": _read_seconds(cache, checked=False),
             "open_sharded": _open_seconds(cache), "single_file": _read_seconds(single)}
    compact(cache)
    reads["sharded_after_compact"] = _read_seconds(cache)
    results["read_all_seconds"] = reads
    results["compression"] = _compression(folder / "other", rng, n)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cache", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=DEFAULT_ROWS, help="rows (default 20,000)")
    parser.add_argument("--out", default="bench-out/cache", help="scratch folder (deleted first)")
    args = parser.parse_args(argv)
    print(json.dumps(measure(Path(args.out), args.n), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
