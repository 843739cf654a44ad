"""``extract --engine ray``: the same stage one on a Ray cluster, written as the same shards.

Ray Data runs it. The planner's list of new and changed images becomes a dataset;
decoding runs as CPU tasks with the loader's own per-file function; the backbone runs
in actors built by the same builder with the driver's weights and precision (an actor
whose weights hash differently refuses to run); each finished batch becomes one shard.
An actor that can see the cache's shard folder (it finds the random token the driver
left there) writes its shards itself and sends back only their names; an actor that
cannot sends the features back, and the driver writes them. The driver then commits one
index, as a single-machine run does; a killed run leaves shards the next run adopts.

A worker node that dies mid-run costs only its batches in flight: Ray Data restarts the
actors and retries the tasks it held on the nodes left (without limit), so the run finishes
there; a shard the dead node wrote but never reported is no part of the commit, whose
garbage collection deletes it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import h5py
import numpy as np

from features_cache import integrity, schema
from features_cache.faults import checkpoint
from features_cache.ownership import Owner
from features_cache.records import FileRecord, SkippedFile
from features_cache.shards import Shard, file_digest, new_shard_path, write_shard
from pipeline import progress
from pipeline.errors import PipelineError
from pipeline.extraction.images import ResizeSpec, default_budget
from pipeline.extraction.loader import LoadTask, load_file
from pipeline.extraction.options import ExtractOptions
from pipeline.extraction.shard_writer import ShardWriter, check_finite

if TYPE_CHECKING:
    from pipeline.extraction.backbones import Backbone

INSTALL_HINT = "--engine ray needs Ray: pip install 'cnn-codes-pipeline[distributed]' (or `make setup-distributed`)"
WRITE_SHARDS = ("auto", "workers", "driver")
CONNECT_SECONDS = 10
MAX_BLOCKS = 10_000  # beyond this, Ray's bookkeeping per block costs more than finer balancing gains
PROBE_PREFIX = ".ray-probe.tmp-"  # a name the next run's clean-up of temporaries removes if this run dies


def import_ray():
    """Ray, or one line saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise PipelineError(INSTALL_HINT) from None
    return ray


def check_ray_options(options: ExtractOptions) -> None:
    import_ray()
    if options.gpus_per_worker < 0:
        raise PipelineError(f"--gpus-per-worker must be 0 or more, got {options.gpus_per_worker}")
    if options.write_shards not in WRITE_SHARDS:
        raise PipelineError(f"unknown --write-shards {options.write_shards!r}; use one of {', '.join(WRITE_SHARDS)}")
    if options.address and options.address != "auto":
        _check_reachable(options.address)


# ---------------------------------------------------------------- on the workers


def decode_block(batch: dict[str, np.ndarray], spec: ResizeSpec) -> dict[str, np.ndarray]:
    """A Ray Data task: files to uint8 arrays with the single-machine loader's function.

    ``outcome`` holds each file's pickled :class:`FileRecord`, or :class:`SkippedFile` with
    the same reason a single machine would give.
    """
    budget = default_budget()
    paths, absolutes = batch["path"], batch["absolute"]
    pixels = np.zeros((len(paths), spec.size, spec.size, 3), dtype=np.uint8)
    outcomes = np.empty(len(paths), dtype=object)
    for i, (path, absolute) in enumerate(zip(paths, absolutes)):
        image, record = load_file(LoadTask(str(path), str(absolute)), spec, budget)
        if image is not None:
            pixels[i] = image
        outcomes[i] = pickle.dumps(record)
    return {"pixels": pixels, "outcome": outcomes}


class FeatureActor:
    """A Ray Data actor holding the backbone; one fixed-shape batch in, one shard (or its features) out."""

    def __init__(
        self, build: dict, recipe: dict, cache: str, batch_size: int, write_shards: str, token: str, compression: str = "none",
        owner: tuple[str, int] | None = None,
    ) -> None:
        from pipeline.extraction.backbones import build_backbone

        self.recipe = schema.Recipe.from_attrs(recipe)
        self.backbone = build_backbone(**build)
        if (self.backbone.weights_sha256, self.backbone.precision) != (self.recipe.weights_sha256, self.recipe.precision):
            raise PipelineError(
                f"worker {socket.gethostname()}: its {build['weights']} weights or precision differ from the driver's; "
                "give every machine the same weights file (or ~/.keras/models) and Keras backend"
            )
        self.cache = Path(cache)
        self.batch_size = batch_size
        self.writes = write_shards == "workers" or (write_shards == "auto" and _sees_token(self.cache, token))
        self.compression = compression
        self.owner = Owner(*owner) if owner else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outcomes = [pickle.loads(item) for item in batch["outcome"]]
        readable = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, FileRecord)]
        records = [outcomes[i] for i in readable]
        skipped = [outcome for outcome in outcomes if isinstance(outcome, SkippedFile)]
        features = self._features(batch["pixels"][readable], records)
        if self.writes:  # the shard's facts go with its name, so the driver need not read it back
            path = new_shard_path(self.cache)
            shard_id = write_shard(path, self.recipe, features, records, skipped, self.compression, self.owner)
            facts = ShardFacts(path.stat().st_size, file_digest(path), shard_id, len(records))
            shard, payload = str(path), pickle.dumps((facts, records, skipped))
        else:
            shard, payload = "", pickle.dumps((features, records, skipped))
        return {"shard": np.array([shard]), "payload": np.array([payload], dtype=object), "files": np.array([len(outcomes)])}

    def _features(self, images: np.ndarray, records: list[FileRecord]) -> np.ndarray:
        """Padded to the fixed batch shape, as on one machine, so the compiled step never retraces."""
        shape = self.backbone.feature_shape
        parts = [np.zeros((0, *shape), dtype=self.recipe.storage_dtype)]
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            padded = np.zeros((self.batch_size, *chunk.shape[1:]), dtype=np.uint8)
            padded[: len(chunk)] = chunk
            parts.append(self.backbone.features(padded)[: len(chunk)])
        features = np.concatenate(parts)
        if len(features):
            check_finite(features, records)
        return features


def _sees_token(cache: Path, token: str) -> bool:
    try:
        return (schema.shards_dir(cache) / f"{PROBE_PREFIX}{token}").read_text() == token
    except OSError:
        return False


# ---------------------------------------------------------------- on the driver


def extract_on_ray(
    backbone: Backbone, todo: list[LoadTask], spec: ResizeSpec, options: ExtractOptions, recipe: schema.Recipe,
    owner: Owner | None = None,
) -> tuple[list[Shard], float]:
    """Run ``todo`` through Ray Data into shards written for ``owner``; returns them (verified) and the seconds it took."""
    ray = import_ray()
    started = time.perf_counter()
    cache = Path(options.cache)
    folder = schema.shards_dir(cache)
    folder.mkdir(exist_ok=True)
    token = secrets.token_hex(16)
    probe = folder / f"{PROBE_PREFIX}{token}"
    probe.write_text(token)
    writer = ShardWriter(cache, recipe, backbone.feature_shape, np.asarray, owner=owner)
    adopted: list[Shard] = []
    try:
        with _cluster(ray, options):
            outputs = _dataset(ray, todo, spec, options, recipe, token, owner).iter_batches(batch_size=None, batch_format="numpy")
            with progress.bar("extracting on ray", total=len(todo)) as advance, _worker_errors(ray):
                for block in outputs:
                    for shard, payload, files in zip(block["shard"], block["payload"], block["files"]):
                        if shard:
                            adopted.append(_accepted(Path(str(shard)), *pickle.loads(payload)))
                            checkpoint("shard-written")
                        else:
                            features, records, skipped = pickle.loads(payload)
                            writer.put(features, len(records), records, skipped)
                        advance(int(files))
    finally:
        writer.close()
        probe.unlink(missing_ok=True)
    return adopted + writer.written, time.perf_counter() - started


def _dataset(ray, todo: list[LoadTask], spec: ResizeSpec, options: ExtractOptions, recipe: schema.Recipe, token: str,
             owner: Owner | None = None):
    items = [{"path": task.path, "absolute": task.absolute} for task in todo]
    workers = min(options.workers or 1, math.ceil(len(items) / options.batch_size))  # no idle actors on small jobs
    blocks = min(math.ceil(len(items) / options.batch_size), MAX_BLOCKS)  # a batch per block, to MAX_BLOCKS
    build = {
        "name": options.backbone, "weights": options.weights, "image_size": options.image_size,
        "precision": recipe.precision, "storage_dtype": options.storage_dtype, "seed": options.seed,
        "layer": options.layer,
    }
    actor = {
        "build": build, "recipe": recipe.to_attrs(), "cache": str(Path(options.cache).resolve()),
        "batch_size": options.batch_size, "write_shards": options.write_shards, "token": token,
        "compression": options.compression, "owner": (owner.cache_id, owner.generation) if owner else None,
    }
    return (
        ray.data.from_items(items, override_num_blocks=blocks)
        .map_batches(decode_block, batch_size=options.batch_size, batch_format="numpy", fn_kwargs={"spec": spec}, num_cpus=1)
        .map_batches(
            FeatureActor,
            fn_constructor_kwargs=actor,
            compute=ray.data.ActorPoolStrategy(size=workers),
            batch_size=options.batch_size,
            batch_format="numpy",
            num_gpus=options.gpus_per_worker or None,
            # the model's own threads use the node's cores; a GPU actor needs one core to feed it
            num_cpus=1 if options.gpus_per_worker else 0.25,
        )
    )


class ShardFacts(NamedTuple):
    """What a worker says of the shard it wrote: bytes, BLAKE2b digest, id and rows."""

    size: int
    digest: str
    shard_id: str
    rows: int


def _accepted(path: Path, facts: ShardFacts, records: list[FileRecord], skipped: list[SkippedFile]) -> Shard:
    """A worker's shard as the index will list it, checked in O(1): it is there at its size and is
    the file the worker wrote (its id and row count). The worker computed the digest and every
    row's checksum as it wrote; every later read checks those, and ``verify`` the digest."""
    try:
        if path.stat().st_size != facts.size:
            raise ValueError(f"{path.stat().st_size} bytes, the worker wrote {facts.size}")
        with h5py.File(path, "r") as f:
            if integrity.stored_id(f) != facts.shard_id or len(f[schema.FEATURES]) != facts.rows:
                raise ValueError("not the file the worker wrote")
    except (OSError, KeyError, ValueError) as error:
        raise PipelineError(f"{path}: a worker's shard failed its check ({error}); run again to redo it") from None
    return Shard(path, facts.size, facts.digest, records, skipped, facts.shard_id)


@contextlib.contextmanager
def _cluster(ray, options: ExtractOptions) -> Iterator[None]:
    """Join ``--address`` (``auto``: the cluster ``ray start`` made), or start a local one; quiet either way."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if ray.is_initialized():
        _check_resources(ray, options)
        yield
        return
    runtime_env = {"env_vars": {"KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")}}
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "runtime_env": runtime_env}
    try:
        if options.address:
            ray.init(address=options.address, **quiet)
        else:
            ray.init(include_dashboard=False, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = options.address or "a local cluster"
        raise PipelineError(f"cannot start Ray on {where} ({str(error).splitlines()[0]}); check --address") from None
    try:
        _check_resources(ray, options)
        yield
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """Ray retries an unreachable head for minutes, warning all the while; a plain connect answers in seconds."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise PipelineError(f"--address {address}: use auto, HOST:PORT (the head's GCS) or ray://HOST:PORT (Ray Client)")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        raise PipelineError(
            f"--address {address}: cannot reach it ({error.strerror or error}); start the cluster (`ray start --head`) "
            "or check the address and port"
        ) from None


def _check_resources(ray, options: ExtractOptions) -> None:
    """Refuse what the cluster cannot place: Ray would wait for the GPUs forever."""
    needed = (options.workers or 1) * options.gpus_per_worker
    present = ray.cluster_resources().get("GPU", 0)
    if needed > present:
        raise PipelineError(
            f"--workers {options.workers or 1} x --gpus-per-worker {options.gpus_per_worker:g} needs {needed:g} GPUs, "
            f"the Ray cluster has {present:g}; lower them, or add GPU nodes"
        )


@contextlib.contextmanager
def _worker_errors(ray) -> Iterator[None]:
    """A worker's PipelineError (or any failure) as one line on the driver, not Ray's traceback."""
    try:
        yield
    except ray.exceptions.RayError as error:
        cause = error
        while getattr(cause, "cause", None) is not None or cause.__cause__ is not None:
            cause = getattr(cause, "cause", None) or cause.__cause__
            if isinstance(cause, PipelineError):
                raise PipelineError(str(cause)) from None
        last = [line for line in str(error).splitlines() if line.strip()][-1:] or [type(error).__name__]
        raise PipelineError(f"a Ray worker failed: {last[0].strip()[:300]}") from None
