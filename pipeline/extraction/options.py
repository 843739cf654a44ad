"""What a stage-one run was asked for: the options, their checks, and the policies that turn
them into a recipe (precision, pixel decoder) or a cheap fingerprint of the request."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
from importlib import metadata
from pathlib import Path

import h5py

from features_cache import schema
from features_cache.errors import CacheError
from features_cache.reader import FeatureCache
from features_cache.shards import file_digest
from pipeline.errors import PipelineError
from pipeline.extraction.backbone_specs import check_backbone, cpu_flags, weights_path
from pipeline.extraction.images import ResizeSpec
from pipeline.extraction.loader import resolve_decoder

STORAGE_DTYPES = ("float16", "float32")
ENGINES = ("local", "ray")


@dataclasses.dataclass(frozen=True)
class ExtractOptions:
    data: str
    cache: str
    backbone: str = "vgg16"
    weights: str = "imagenet"
    image_size: int = 224
    batch_size: int = 32
    precision: str = "auto"
    storage_dtype: str = "float16"
    resize: str = "stretch"
    interpolation: str = "bilinear"
    max_pixels: int | None = None
    workers: int | None = None
    decoder: str = "auto"
    engine: str = "local"
    address: str | None = None
    gpus_per_worker: float = 0.0
    write_shards: str = "auto"
    seed: int = 0
    force: bool = False
    prune: bool = False
    keep_orphans: bool = False
    compression: str = "none"
    shard_rows: int = schema.EXTRACT_SHARD_ROWS
    layer: str = schema.OUTPUT_LAYER
    view: str = ""  # this run makes the cache of one augmented view (pipeline.extraction.views)
    only: frozenset[str] | None = None  # the data's paths to cache (a view of the training images); None: all


def check_options(options: ExtractOptions) -> None:
    """One line for the first option that cannot work, before any file is read (Ray's own checks
    are the Ray engine's: :func:`pipeline.extraction.ray_engine.check_ray_options`)."""
    if options.storage_dtype not in STORAGE_DTYPES:
        raise PipelineError(f"unknown storage dtype {options.storage_dtype!r}; use float16 or float32")
    if options.batch_size < 1:
        raise PipelineError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.max_pixels is not None and options.max_pixels < 1:
        raise PipelineError(f"--max-pixels must be a positive number of pixels, got {options.max_pixels}")
    if options.image_size < 1:
        raise PipelineError(f"--image-size must be a positive number of pixels, got {options.image_size}")
    check_backbone(options.backbone)
    if options.compression not in schema.COMPRESSIONS:
        raise PipelineError(f"unknown --compression {options.compression!r}; use one of {', '.join(schema.COMPRESSIONS)}")
    if options.shard_rows < 1:
        raise PipelineError(f"--shard-rows must be at least 1, got {options.shard_rows}")
    if options.decoder != "gpu":
        resolve_decoder(options.decoder, options.workers or 1)
    if options.decoder == "gpu" and options.engine == "ray":
        raise PipelineError("--decoder gpu runs with the local engine; on Ray, workers decode on their CPUs")
    if options.view and options.decoder == "gpu":
        raise PipelineError("--views: views are made from Pillow's pixels; use --decoder auto, threads or processes")
    if options.engine not in ENGINES:
        raise PipelineError(f"unknown engine {options.engine!r}; use one of {', '.join(ENGINES)}")
    if options.engine == "local" and options.gpus_per_worker:
        raise PipelineError(
            f"--gpus-per-worker {options.gpus_per_worker:g} applies to --engine ray only; the local engine runs on the "
            "devices Keras sees (choose them with CUDA_VISIBLE_DEVICES), so drop the flag or add --engine ray"
        )
    cache = Path(options.cache)
    if cache.is_dir() and (not options.force or any(cache.iterdir())):
        raise PipelineError(f"--cache {cache}: is a folder, not a cache file; pass a file path, e.g. {cache / 'features.h5'}")
    parent = cache.resolve().parent
    if not parent.is_dir():
        raise PipelineError(f"{options.cache}: folder {parent} does not exist; create it or choose another --cache path")
    if not os.access(parent, os.W_OK):
        raise PipelineError(f"{options.cache}: folder {parent} is not writable; choose another --cache path")


def request_fingerprint(options: ExtractOptions) -> str:
    """What was asked for, on which machine and libraries: a cheap stand-in for the recipe.

    When it equals the one stored by the run that wrote the cache, and no file changed,
    the run is a no-op decided without importing Keras or building the model. Anything
    else takes the full path, which checks the real recipe. A weights file enters by its
    bytes, not its path, so a copy elsewhere asks for the same thing and a file rewritten
    in place does not.
    """
    payload = {
        **{
            key: value for key, value in dataclasses.asdict(options).items()
            if key not in _NOT_IN_REQUEST and not (key == "layer" and value == schema.OUTPUT_LAYER) and not (key == "view" and not value)
        },
        "weights": options.weights if options.weights in ("imagenet", "none") else "file",
        "weights_digest": _weights_digest(options),
        "gpu_decoding": options.decoder == "gpu",  # threads or processes make the same pixels; the GPU does not
        "host": socket.gethostname(),
        "keras_backend": os.environ.get("KERAS_BACKEND", ""),
        "keras": _installed_version("keras"),
        "cpu_bfloat16": sorted(cpu_flags() & {"amx_bf16", "avx512_bf16"}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _weights_digest(options: ExtractOptions) -> str | None:
    """BLAKE2b of the weights file ``--weights`` loads (None for random weights or a file not there yet)."""
    weights_file = weights_path(options.backbone, options.weights, options.image_size)
    if weights_file is None or not weights_file.is_file():
        return None
    try:
        return file_digest(weights_file)
    except OSError:
        return None


_NOT_IN_REQUEST = (
    "data", "only", "cache", "workers", "decoder", "force", "prune", "keep_orphans", "batch_size", "engine", "address", "gpus_per_worker", "write_shards",
    "compression", "shard_rows",  # how shards store features, not what the features are
)


def _installed_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def pixel_decoder(options: ExtractOptions, spec: ResizeSpec) -> str:
    """What makes the pixels, for the recipe: Pillow, or the GPU decoder (``--decoder gpu``, or
    ``auto`` on a CUDA machine where it runs, unless an existing cache was made with Pillow)."""
    if options.decoder not in ("gpu", "auto") or options.engine != "local" or options.view:
        return schema.PILLOW
    from pipeline.extraction import device_decode

    reason = device_decode.unavailable(spec)
    if options.decoder == "gpu":
        if reason:
            raise PipelineError(f"--decoder gpu: {reason}; or use --decoder auto")
        return device_decode.decoder_label()
    if reason or device_decode.device_name() != "cuda":
        return schema.PILLOW
    try:
        with FeatureCache(options.cache) as cache:
            if cache.recipe.decoder == schema.PILLOW and not options.force:
                return schema.PILLOW  # a cache is never split between decoders by auto
    except CacheError:
        pass
    return device_decode.decoder_label()


def default_weights(cache_path: str | os.PathLike, force: bool) -> tuple[str, str | None]:
    """What a missing ``--weights`` means: on an existing cache made from a weights file, that file.

    The index records the file's resolved path (read from its attributes alone, so a cache whose
    shards need rebuilding still says what made it); the recipe check after the backbone is
    built refuses the file if its values no longer hash to the recorded ``weights_sha256``. Elsewhere (no
    cache, ``--force``, a cache of ImageNet's or random weights) it is ``imagenet``. Returns the
    weights and the note that says which were taken, or None when nothing needs saying.
    """
    if force or not Path(cache_path).is_file():
        return "imagenet", None
    try:  # the index's own attributes: a cache whose shards need repair still says what made it
        with h5py.File(cache_path, "r") as index:
            recipe = schema.Recipe.from_attrs(index.attrs)
    except (OSError, KeyError, ValueError, TypeError):
        return "imagenet", None
    recorded, sha256 = recipe.weights, recipe.weights_sha256
    if recorded == "imagenet" or recorded.startswith("random(") or not recorded:
        return "imagenet", None
    if not Path(recorded).is_file():
        raise PipelineError(
            f"{cache_path} was made with --weights {recorded} (sha256 {sha256[:12]}), which is no longer there; "
            "pass --weights with that file, or --force with other weights to start the cache over"
        )
    return recorded, f"weights: {recorded}, the file {cache_path} was made with (no --weights given)"


def auto_precision(options: ExtractOptions) -> tuple[str, list[str]]:
    """``auto`` on an existing cache keeps the cache's precision, so the machine never splits a cache.

    Every precision runs on every machine (bfloat16 is emulated on CPUs without AMX, only
    slower); choosing by machine would refuse a bfloat16 cache on a float32 laptop.
    """
    if options.precision != "auto" or options.force:
        return options.precision, []
    try:
        with FeatureCache(options.cache) as cache:
            precision = cache.recipe.precision
    except CacheError:
        return options.precision, []
    return precision, [f"precision auto: {precision}, the precision {options.cache} was made with"]
