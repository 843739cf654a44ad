"""Cache growth, commit cost at scale, read speed and compression: what the shard layout costs and saves.

Three parts, each printed beside what it is meant to reach:

- ``growth``: a sharded cache of ``--n`` rows of 4x4x512 float16 (shards of 2,048 rows, as
  ``extract`` writes them) gains 1% and 2% new rows the way ``extract`` commits them (new
  shards, then :func:`~pipeline.extraction.commit.commit` with the old index open); the bytes
  of files created or changed are counted; full reads through ``FeatureCache`` of float16 and
  float32 storage of the same rows, with and without the per-row checks.
- ``commit_at_scale``: the same 1% commit at 100,000 and 1,000,000 rows (``--scale``) of tiny
  features, where the row metadata is all a commit costs beyond the new shards: its time, the
  bytes it writes (new shards, new segments, the index), the segments it kept, opening the
  cache, and beside it what opening every old shard (as commits once did) would cost, and
  files per million images.
- ``real``: shards of real features (``--real CACHE``, e.g. VGG16 at 224 px) rewritten with and
  without gzip: size, write time an image, full read time an image.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

import h5py
import numpy as np

from features_cache import schema
from features_cache.compact import compact
from features_cache.reader import FeatureCache
from features_cache.records import FileRecord, FileStamp
from features_cache.segments import SEGMENT_ROWS, segment_files
from features_cache.shards import Shard, collect_garbage, file_digest, new_shard_path, write_shard
from features_cache.writer import FeatureSource, Row
from pipeline.extraction.commit import _facts_of, commit
from pipeline.extraction.sources import Dataset

SHAPE = (4, 4, 512)
SHARD = schema.EXTRACT_SHARD_ROWS
DEFAULT_ROWS = 20_000
RECIPE = schema.Recipe(
    backbone="vgg16", weights="synthetic", weights_sha256="0" * 64, image_size=224, preprocessing="caffe",
    resize="stretch", interpolation="bilinear", background="rgb(255,255,255)", precision="float32",
    storage_dtype="float16",
)
TARGETS = {
    "old_shards_opened_per_commit": 0,
    "files_per_million_images": "244 to 977 (shards of 1,024 to 4,096 rows)",
    "bytes_written_per_commit": "the new shards, their rows' segment and an index of the tables: about the 1% added",
}


def _features(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    """Non-negative, about half zeros, like ReLU outputs."""
    return np.maximum(rng.normal(0, 1, (n, *shape)), 0).astype(np.float16)


class _Growing:
    """A synthetic cache grown commit by commit as ``extract`` grows one."""

    def __init__(self, cache: Path, recipe: schema.Recipe, shape: tuple[int, ...]) -> None:
        self.cache, self.recipe, self.shape = cache, recipe, shape
        self.rows: list[Row] = []
        self.rng = np.random.default_rng(0)
        schema.shards_dir(cache).mkdir(parents=True, exist_ok=True)
        self.dataset = Dataset(cache.parent, "folder", [])

    def shards(self, n: int) -> list[Shard]:
        """``n`` new rows in new shards of up to :data:`SHARD` rows."""
        made = []
        first = len(self.rows)
        for start in range(0, n, SHARD):
            count = min(SHARD, n - start)
            records = [_record(first + start + i) for i in range(count)]
            path = new_shard_path(self.cache)
            shard_id = write_shard(path, self.recipe, _features(self.rng, count, self.shape), records, [])
            made.append(Shard(path, path.stat().st_size, file_digest(path), records, [], shard_id))
            self.rows += [Row(r, 0, "", FeatureSource(str(path), i)) for i, r in enumerate(records)]
        return made

    def commit(self, new: list[Shard]) -> None:
        old = FeatureCache(self.cache) if self.cache.exists() else None
        try:
            live = commit(self.cache, self.recipe, self.shape, self.dataset, ["c"], self.rows, [], old, new, {}, {})
        finally:
            if old is not None:
                old.close()
        collect_garbage(self.cache, live)


def _record(i: int) -> FileRecord:
    """The ``i``-th synthetic image as a photo folder would give it: a content hash, a size, and
    mtime, inode and ctime that differ from file to file (so row metadata compresses as real metadata does)."""
    digest = hashlib.blake2b(str(i).encode(), digest_size=16)
    words = np.frombuffer(hashlib.blake2b(digest.digest(), digest_size=16).digest(), dtype=np.uint32)
    mtime = 1_700_000_000_000_000_000 + int(words[0]) * 1_000_003
    stamp = FileStamp(20_000 + int(words[1]) % 400_000, mtime, 1_000_000 + int(words[2]) % 50_000_000, mtime + int(words[3]) % 10**9)
    return FileRecord(f"c/img_{i:08d}.jpg", digest.hexdigest(), stamp)


def _files(cache: Path) -> dict[Path, tuple[int, int]]:
    """Size and mtime of the index and every shard: the files that make up the cache."""
    files = [cache, *schema.shards_dir(cache).iterdir()]
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


def _grow(cache: _Growing, n: int) -> dict:
    """Add ``n`` rows as one ``extract`` run: new shards, then the commit (old index open, as extract has it)."""
    before = _files(cache.cache)
    started = time.perf_counter()
    new = cache.shards(n)
    shards_seconds = time.perf_counter() - started
    old = FeatureCache(cache.cache)
    started = time.perf_counter()
    try:
        live = commit(cache.cache, cache.recipe, cache.shape, cache.dataset, ["c"], cache.rows, [], old, new, {}, {})
    finally:
        old.close()
    commit_seconds = time.perf_counter() - started
    collect_garbage(cache.cache, live)
    after = _files(cache.cache)
    written = sum(size for p, (size, mtime) in after.items() if before.get(p) != (size, mtime))
    total = sum(size for size, _ in after.values())
    return {"added_rows": n, "new_shards_seconds": round(shards_seconds, 3), "commit_seconds": round(commit_seconds, 3),
            "bytes_written": written, "new_shard_bytes": sum(s.size for s in new), "index_bytes": cache.cache.stat().st_size,
            "cache_bytes": total, "written_fraction": round(written / total, 4)}


def _read_seconds(path: Path, repeats: int = 3, checked: bool = True, dtype=np.float32) -> float:
    """Best of ``repeats`` full reads: the first pays for page faults and a cold page cache.

    ``checked=False`` skips the per-row checksums (fletcher32 still runs): the read as it was
    before rows carried checksums, to measure what the check costs."""
    best = float("inf")
    with FeatureCache(path) as cache:
        if not checked:
            cache._checksums = [None] * len(cache._checksums)
        for _ in range(repeats):
            started = time.perf_counter()
            cache.features(dtype=dtype)
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


def growth(folder: Path, n: int) -> dict:
    """Growth by 1% and 2%, reads of float16 and float32 storage, compaction."""
    grown = _Growing(folder / "sharded.h5", RECIPE, SHAPE)
    started = time.perf_counter()
    grown.commit(grown.shards(n))
    build = time.perf_counter() - started
    results = {"rows": n, "feature_shape": list(SHAPE), "rows_per_shard": SHARD, "build_seconds": round(build, 2),
               "grow_1pct": _grow(grown, n // 100), "grow_2pct": _grow(grown, n // 50)}
    wide = _Growing(folder / "float32.h5", dataclasses.replace(RECIPE, storage_dtype="float32"), SHAPE)
    wide.commit(wide.shards(len(grown.rows)))
    cache = grown.cache
    results["read_all_seconds"] = {
        "float16_storage_as_float32": _read_seconds(cache),
        "float32_storage_as_float32": _read_seconds(wide.cache),
        "float16_storage_as_float16": _read_seconds(cache, dtype=None),
        "float16_without_row_checksums": _read_seconds(cache, checked=False),
        "open": _open_seconds(cache),
    }
    compact(cache)
    results["read_all_seconds"]["float16_after_compact"] = _read_seconds(cache)
    results["target"] = "float16 reads at least as fast as float32"
    return results


def commit_at_scale(folder: Path, n: int, shape: tuple[int, ...] = (1, 1, 8)) -> dict:
    """A 1% commit onto ``n`` rows: its time and bytes, and what opening every old shard would add."""
    shutil.rmtree(folder, ignore_errors=True)
    grown = _Growing(folder / "index.h5", RECIPE, shape)
    started = time.perf_counter()
    grown.commit(grown.shards(n))
    build = time.perf_counter() - started
    started = time.perf_counter()
    FeatureCache(grown.cache).close()
    opened = time.perf_counter() - started
    result = _grow(grown, n // 100)
    sample = sorted(schema.shards_dir(grown.cache).glob("shard-*.h5"))[:50]
    started = time.perf_counter()
    for path in sample:
        _facts_of(path)
    per_shard = (time.perf_counter() - started) / len(sample)
    shards = -(-n // SHARD)
    row_bytes_224 = 7 * 7 * 512 * 2
    segments = segment_files(grown.cache)
    return {
        "rows": n, "build_seconds": round(build, 1), "open_index_seconds": round(opened, 2), **result,
        "index_bytes_per_row": round(grown.cache.stat().st_size / len(grown.rows), 2),
        "segments": len(segments),
        "row_metadata_bytes_per_row": round((grown.cache.stat().st_size + sum(p.stat().st_size for p in segments)) / len(grown.rows), 1),
        "old_shards_opened": 0,
        "opening_every_old_shard_would_add_seconds": round(per_shard * shards, 2),
        "same_at_32_rows_a_shard_seconds": round(per_shard * -(-n // 32), 1),
        "new_shard_bytes_at_224px_float16": (n // 100) * row_bytes_224,
        "files_per_million_images": -(-1_000_000 // SHARD) + -(-1_000_000 // SEGMENT_ROWS) + 1,
    }


def real(cache_path: Path, folder: Path) -> dict:
    """Real features rewritten as shards of 2,048 rows without and with gzip: size, write, full read."""
    with FeatureCache(cache_path) as cache:
        features, records, recipe = cache.features(dtype=None), cache.records(), cache.recipe
    result = {"images": len(features), "feature_shape": list(features.shape[1:]), "storage": str(features.dtype),
              "zeros_fraction": round(float((features == 0).mean()), 3)}
    for kind in ("none", "gzip"):
        grown = _Growing(folder / f"real-{kind}.h5", recipe, tuple(features.shape[1:]))
        started = time.perf_counter()
        paths, ids = [], []
        for start in range(0, len(features), SHARD):
            path = new_shard_path(grown.cache)
            ids.append(write_shard(path, recipe, features[start : start + SHARD], records[start : start + SHARD], [], kind))
            paths.append(path)
        wrote = time.perf_counter() - started
        grown.rows = [Row(r, 0, "", FeatureSource(str(paths[i // SHARD]), i % SHARD)) for i, r in enumerate(records)]
        grown.commit([Shard(p, p.stat().st_size, file_digest(p), records[i * SHARD : (i + 1) * SHARD], [], ids[i])
                      for i, p in enumerate(paths)])
        size = sum(p.stat().st_size for p in paths)
        read = _read_seconds(grown.cache)
        with h5py.File(grown.cache, "r") as f:
            plain = f[schema.FEATURES][()]
        assert np.array_equal(plain, features), "an HDF5 reader of the index must read the same features"
        result[kind] = {"bytes": size, "of_plain": None, "write_ms_per_image": round(1000 * wrote / len(features), 3),
                        "read_ms_per_image": round(1000 * read / len(features), 3)}
    result["gzip"]["of_plain"] = round(result["gzip"]["bytes"] / result["none"]["bytes"], 3)
    result["none"]["of_plain"] = 1.0
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cache", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=DEFAULT_ROWS, help="rows of the growth and read part (default 20,000)")
    parser.add_argument("--scale", type=int, nargs="*", default=[100_000, 1_000_000],
                        help="rows of the commit-at-scale part (default 100,000 and 1,000,000; none to skip)")
    parser.add_argument("--real", default=None, help="a cache of real features to measure gzip on (e.g. VGG16 at 224 px)")
    parser.add_argument("--out", default="bench-out/cache", help="scratch folder (deleted first)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    results: dict = {"targets": TARGETS}
    if args.n:
        results["growth"] = growth(out / "growth", args.n)
        print(json.dumps({"growth": results["growth"]}, indent=2), flush=True)
    for n in args.scale:
        results[f"commit_at_{n}"] = commit_at_scale(out / f"scale-{n}", n)
        print(json.dumps({f"commit_at_{n}": results[f"commit_at_{n}"]}, indent=2), flush=True)
        shutil.rmtree(out / f"scale-{n}", ignore_errors=True)
    if args.real:
        results["real"] = real(Path(args.real), out / "real")
        print(json.dumps({"real": results["real"]}, indent=2), flush=True)
    print(json.dumps({"targets": TARGETS}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
