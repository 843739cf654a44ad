"""The HDF5 layout shared by the writers and the reader: one place owns every name.

A cache is an index file plus a folder of shards beside it (``shards_dir``). The index
(version 3) shows one row per image in these datasets (all of length N, in storage order):

- ``features``       (N, h, w, c) float16 or float32: a virtual dataset over the shards,
                     NaN where a shard cannot be found (any HDF5 reader sees a missing row)
- ``labels``         (N,) int32, index into ``class_names`` (-1 where a segment cannot be found)
- ``class_names``    (C,) UTF-8 strings, sorted
- ``paths``          (N,) UTF-8 paths relative to the data root
- ``split``          (N,) "train", "val", "test" or "" where the data had no split
- ``content_hash``   (N,) BLAKE2b-128 hex digest of the file's bytes
- ``file_size``      (N,) int64 bytes, ``file_mtime_ns``, ``file_inode`` and
                     ``file_ctime_ns`` (N,) int64: the stat fingerprint that lets a re-run
                     skip hashing unchanged files (caches without the last two still read:
                     their files are hashed again once)

All but ``features`` are virtual datasets over the segments (``segments.py``): immutable
files in the shards folder holding those columns (fixed-width, gzip) and each row's shard and
row, so a commit writes only new segments and this small file. :class:`FeatureCache` reads the
segments themselves and lists rows sorted by path. The index also has a ``shards`` group
(``files`` relative to the index's folder, ``rows``, ``file_size``, ``digest``, ``id``), a
``segments`` group of the same form, and a ``skipped`` group with ``paths``, ``reasons`` and
the same four stat fields for the files that could not be read. File attributes hold the
:class:`Recipe` (everything that decides what the features are), its fingerprint,
library versions and bookkeeping such as ``complete``. A shard holds ``features``
(fletcher32-checked chunks of whole images that tile its rows, gzip-compressed where its
``compression`` attribute says so), ``row_checksum`` per row, a random ``shard_id`` attribute,
the per-row fingerprints, its ``skipped`` group and the recipe. Version 2 kept every row's
metadata in the index itself (plus ``row_shard`` and ``row_index``), rewritten whole by each
commit; version 1 is one standalone file with the features inside, what ``compact --to``
writes (with the same checksums and id as a shard). Both are still read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 2  # of every identity and shard (a new one would change every cache's identity)
STANDALONE_VERSION = 1  # one file holding the features themselves
SHARDED_VERSION = 2  # an index holding every row's metadata itself, rewritten whole by each commit
INDEX_VERSION = 3  # an index whose rows' metadata is in segments (segments.py): what commits write
SHARDED_VERSIONS = (SHARDED_VERSION, INDEX_VERSION)
READABLE_VERSIONS = (STANDALONE_VERSION, *SHARDED_VERSIONS)

FEATURES = "features"
LABELS = "labels"
CLASS_NAMES = "class_names"
PATHS = "paths"
SPLIT = "split"
CONTENT_HASH = "content_hash"
FILE_SIZE = "file_size"
FILE_MTIME = "file_mtime_ns"
FILE_INODE = "file_inode"
FILE_CTIME = "file_ctime_ns"
SKIPPED = "skipped"
REASONS = "reasons"
DEPENDS_ON = "depends_on"
SHARDS = "shards"
SHARD_FILES = "files"
SHARD_ROWS = "rows"
SHARD_SIZES = "file_size"
SHARD_DIGESTS = "digest"
SHARD_IDS = "id"  # each shard's random id, as the shard's own SHARD_ID attribute says
SHARD_ID = "shard_id"
ROW_CHECKSUM = "row_checksum"  # per row of a shard or standalone file: integrity.row_checksums
ROW_SHARD = "row_shard"
ROW_INDEX = "row_index"
SEGMENTS = "segments"  # the index's table of segments: ``files``, ``rows``, ``digest``, ``id`` as for shards

ROW_DATASETS = (PATHS, CONTENT_HASH, FILE_SIZE, FILE_MTIME)

SPLITS = ("train", "val", "test")
PILLOW = "pillow"
OUTPUT_LAYER = "output"  # the backbone's own output (``block5_pool`` for VGG16): what caches held before layers were named
CHUNK_TARGET_BYTES = 1 << 20
EXTRACT_SHARD_ROWS = 2048  # images per shard extract writes: about 490 files per million images
EXTRACT_SHARD_SECONDS = 30.0  # or this much work, whichever comes first: what a kill can lose at most


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that decides what a feature vector is; two caches mix only if equal.

    ``weights`` says where the weights came from (a file's path, ``imagenet``, a seed): it is
    recorded and shown, but ``weights_sha256``, the hash of the weight values, is what decides
    the features, so a byte-identical copy elsewhere makes an equal recipe.
    """

    backbone: str
    weights: str = dataclasses.field(compare=False)
    weights_sha256: str
    image_size: int
    preprocessing: str
    resize: str
    interpolation: str
    background: str
    precision: str
    storage_dtype: str
    decoder: str = PILLOW  # what turned files into pixels: Pillow, or a device decoder (other pixels)
    layer: str = OUTPUT_LAYER  # the backbone layer whose maps are cached (e.g. ``block4_pool``, to fine-tune the top block)
    view: str = ""  # an augmented view of every image (``flip(horizontal)``, a seeded crop), or the images as they are

    def identity_fields(self) -> dict[str, object]:
        """The fields that decide the features (every field but the information-only ``weights``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}

    def fingerprint(self) -> str:
        """A short hash of the recipe's identity fields and schema version, used as the cache's identity.

        The decoder enters it only when it is not Pillow, and the layer only when it is not the
        backbone's output, so caches made before either was recorded keep their identity.
        """
        return _fingerprint(_without_default_layer(self.identity_fields()), self.decoder)

    def legacy_fingerprint(self) -> str:
        """The identity caches and shards were given while the weights' path was part of it."""
        return _fingerprint(_without_default_layer(dataclasses.asdict(self)), self.decoder)

    def is_identity(self, identity: str) -> bool:
        """Whether ``identity`` was written for this recipe, now or before the weights' path left it."""
        return identity in (self.fingerprint(), self.legacy_fingerprint())

    def differences(self, other: Recipe) -> list[str]:
        """Human-readable ``field: theirs != ours`` for every identity field that differs.

        Weights are named by where they came from too, since a hash alone does not say which file to use.
        """
        ours, theirs = self.identity_fields(), other.identity_fields()
        return [
            f"weights: {other.weights} (sha256 {other.weights_sha256[:12]}) != {self.weights} (sha256 {self.weights_sha256[:12]})"
            if key == "weights_sha256" else f"{key}: {theirs[key]} != {ours[key]}"
            for key in ours
            if ours[key] != theirs[key]
        ]

    def to_attrs(self) -> dict[str, object]:
        return {f"recipe.{key}": value for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_attrs(cls, attrs) -> Recipe:
        values = {}
        for field in dataclasses.fields(cls):
            key = f"recipe.{field.name}"
            if key not in attrs and field.default is not dataclasses.MISSING:
                continue  # written before the field existed: its default is what was used
            value = attrs[key]
            values[field.name] = int(value) if field.type == "int" else str(value)
        return cls(**values)


def _without_default_layer(fields: dict[str, object]) -> dict[str, object]:
    return {
        key: value for key, value in fields.items()
        if not (key == "layer" and value == OUTPUT_LAYER) and not (key == "view" and not value)
    }


def _fingerprint(fields: dict[str, object], decoder: str) -> str:
    fields = dict(fields)
    if decoder == PILLOW:
        del fields["decoder"]
    payload = json.dumps({"schema_version": SCHEMA_VERSION, **fields}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def same_features(identity: str, recipe: Recipe, other_identity: str, other: Recipe) -> bool:
    """Whether two stored things (caches, shards, a run's cache) hold features made the same way.

    Equal identities say so; so do equal recipes whose identities are each their own recipe's,
    which is how a cache written before the weights' path left the identity still matches.
    """
    if identity == other_identity:
        return True
    return recipe == other and recipe.is_identity(identity) and other.is_identity(other_identity)


def chunk_rows(feature_shape: tuple[int, ...], itemsize: int) -> int:
    """Whole images per HDF5 chunk, so one chunk is close to (at most) 1 MiB."""
    per_image = itemsize
    for dim in feature_shape:
        per_image *= dim
    return max(1, CHUNK_TARGET_BYTES // per_image)


def tiling_chunk_rows(rows: int, feature_shape: tuple[int, ...], itemsize: int) -> int:
    """Whole images per chunk of a shard of ``rows`` rows: the largest divisor of ``rows`` that
    keeps a chunk within :data:`CHUNK_TARGET_BYTES`, so chunks tile the shard with no padding
    (HDF5 stores a partial last chunk at full size)."""
    limit = min(chunk_rows(feature_shape, itemsize), max(1, rows))
    return next(d for d in range(limit, 0, -1) if rows % d == 0) if rows else 1


COMPRESSIONS = ("none", "gzip")
COMPRESSION = "compression"  # a shard's attribute: how its features are stored (not part of the recipe)


def compression_filters(compression: str) -> dict[str, object]:
    """h5py dataset options for a shard's features: gzip is level 1 after byte shuffling, the
    filter every HDF5 build (and so every HDF5 reader) has."""
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 1, "shuffle": True}
    if compression == "none":
        return {}
    raise ValueError(f"unknown compression {compression!r}; use one of {', '.join(COMPRESSIONS)}")


def rows_digest(
    paths: list[str], content_hashes: list[str], labels: np.ndarray, splits: list[str],
    class_names: list[str], row_shard: np.ndarray, row_index: np.ndarray, shard_files: list[str],
) -> str:
    """BLAKE2b-128 over everything that says which features belong to which image.

    Stored in the index and checked on every open, so a damaged index is refused
    instead of pairing an image with another image's features or label.
    """
    digest = hashlib.blake2b(digest_size=16)
    for strings in (paths, content_hashes, splits, class_names, shard_files):
        digest.update("\x00".join(strings).encode() + b"\x01")
    for numbers in (labels, row_shard, row_index):
        digest.update(np.ascontiguousarray(numbers, dtype=np.int64).tobytes() + b"\x01")
    return digest.hexdigest()


def index_digest(class_names: list[str], shards: Sequence[Sequence[object]], segments: Sequence[Sequence[object]]) -> str:
    """BLAKE2b-128 over a version-3 index's own tables: its class names, shards and segments (each
    segment carries the digest of its rows), checked on every open like :func:`rows_digest`."""
    payload = json.dumps([class_names, [list(s) for s in shards], [list(s) for s in segments]], default=int)
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


def shards_dir(cache_path: str | Path) -> Path:
    """The folder of a cache's shards, named after the index so caches can share a folder."""
    cache_path = Path(cache_path)
    return cache_path.with_name(cache_path.name + ".shards")
