"""``make bench``: where the time goes between image files and a finished feature cache.

One run, on one generated set of photo-like JPEGs, measures the two ceilings (the bare
model on in-memory tensors, and decoding alone), ``pipeline extract`` end to end, the
route a Keras user writes by hand, an unchanged re-run, training the heads, and peak
memory at N and 4N images. Every stage runs in its own process, so its timing and
peak RSS are its own; the machines are shared and noisy, so compare ratios from one run.

    python -m bench.throughput --n 96 --size 224 --precision auto --batch 32 --out bench-out
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from bench.photos import photo
from features_cache import atomic
from pipeline.quiet import quiet_start

CLASSES = ("beach", "city", "forest")
HEADS = ("dense", "gap", "logreg")
SKIPPABLE = frozenset({"heads", "memory"})
SYNTHETIC_N = 2000
SCALING_IMAGES = 1024  # per decoder and worker count: enough for a steady rate, short at one worker
SYNTHETIC_SHAPE = (7, 7, 512)
EXTRACT_TIMING = re.compile(r"\) in ([0-9.]+) s(?:, ([0-9.]+) img/s)?(?:; ([0-9.]+) s of it loading)?")


@dataclasses.dataclass(frozen=True)
class Settings:
    n: int
    size: int
    precision: str
    batch: int
    out: Path
    memory_size: int
    skip: frozenset[str] = frozenset()


@dataclasses.dataclass
class Stage:
    """One row of the table: ``seconds`` is the stage's own work, ``wall`` its whole process."""

    name: str
    images: int
    seconds: float
    wall: float
    peak_rss_mib: float
    comparable: bool = True
    note: str = ""
    details: dict = dataclasses.field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def _pool_path(out: Path, index: int) -> Path:
    return out / "images" / CLASSES[index % len(CLASSES)] / f"photo_{index:05d}.jpg"


def _generate(out: Path, index: int) -> None:
    source = _pool_path(out, index)
    source.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(source) as tmp:
        photo(index).save(tmp, format="JPEG", quality=90)


def dataset(out: Path, n: int) -> Path:
    """A folder of ``n`` images in class folders, hard links into a pool generated once (on every core)."""
    folder = out / f"data-{n}"
    missing = [index for index in range(n) if not _pool_path(out, index).exists()]
    if len(missing) > 64:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(len(os.sched_getaffinity(0))) as pool:
            list(pool.map(_generate, [out] * len(missing), missing, chunksize=16))
    else:
        for index in missing:
            _generate(out, index)
    for index in range(n):
        source = _pool_path(out, index)
        target = folder / source.parent.name / source.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, target)
    return folder


def _pixels(path: Path) -> int:
    with Image.open(path) as image:
        return math.prod(image.size)


def describe_data(folder: Path) -> dict:
    files = sorted(folder.glob("*/*.jpg"))
    sizes = [f.stat().st_size for f in files]
    large = sum(1 for f in files if _pixels(f) > 4_000_000)
    return {"files": len(files), "mean_kib": float(np.mean(sizes)) / 1024, "megapixel_images": large}


# ---------------------------------------------------------------- stages run in a child process


def _bare_model(settings: Settings, result: Path) -> None:
    """The ceiling: the backbone's compiled predict step on uint8 tensors already in memory."""
    from pipeline.extraction.backbones import build_backbone
    from pipeline.versions import library_versions

    started = time.perf_counter()
    backbone = build_backbone(weights="none", image_size=settings.size, precision=settings.precision)
    backbone.expect(settings.n)  # the step extract would use for this many images
    built = time.perf_counter()
    batch = backbone.to_device(np.random.default_rng(0).integers(0, 256, (settings.batch, settings.size, settings.size, 3), dtype=np.uint8))
    backbone.to_numpy(backbone.predict(batch))
    warm = time.perf_counter()
    # device-resident input; JAX and PyTorch on a GPU return unfinished results, awaited at the end
    outputs = [backbone.predict(batch) for _ in range(math.ceil(settings.n / settings.batch))]
    for output in outputs:
        backbone.to_numpy(output)
    done = time.perf_counter()
    _write_result(result, {
        "seconds": done - warm,
        "images": settings.n,
        "build_seconds": built - started,
        "first_batch_seconds": warm - built,
        "precision": backbone.precision,
        "step": backbone.step_name,
        "versions": library_versions(),
    })


def _decode_only(settings: Settings, data: Path, result: Path) -> None:
    """The other ceiling: the project's loader from files to uint8 batches, no model.

    First as ``extract`` runs it (``--decoder auto``, a worker per core), then threads and
    processes at 1, 2, ... workers, start-up included, so the per-worker rate can be projected.
    """
    from pipeline.extraction.images import ResizeSpec
    from pipeline.extraction.loader import LoadTask, default_workers, iter_batches, resolve_decoder
    from pipeline.extraction.sources import discover

    found = discover(data)
    tasks = [LoadTask(entry.path, found.absolute(entry)) for entry in found.entries]

    def timed(decoder: str, workers: int, files: list) -> dict:
        started = time.perf_counter()
        images = sum(b.count for b in iter_batches(files, ResizeSpec(settings.size), settings.batch, workers, decoder=decoder))
        return {"decoder": decoder, "workers": workers, "seconds": time.perf_counter() - started, "images": images}

    cores = default_workers()
    default = timed("auto", cores, tasks)
    sample = tasks[:SCALING_IMAGES]
    scaling = [timed(decoder, workers, sample) for decoder in ("threads", "processes") for workers in sorted({1, 2, cores // 2, cores} - {0})]
    device = _device_decode(tasks, settings)
    _write_result(result, {**default, "decoder": resolve_decoder("auto", cores), "scaling": scaling, "device": device})


def _device_decode(tasks: list, settings: Settings) -> dict | None:
    """JPEGs decoded and resized on the GPU (``--decoder gpu``), where torchvision and CUDA are there."""
    from pipeline.extraction.images import ResizeSpec

    spec = ResizeSpec(settings.size)
    try:
        from pipeline.extraction import device_decode
        if device_decode.unavailable(spec):
            return None
    except ImportError:
        return None
    device_decode.iter_device_batches(tasks[: settings.batch], spec, settings.batch).__next__()  # CUDA and nvJPEG start-up
    started = time.perf_counter()
    images = sum(batch.count for batch in device_decode.iter_device_batches(tasks, spec, settings.batch))
    return {"decoder": device_decode.decoder_label(), "seconds": time.perf_counter() - started, "images": images}


def _handwritten_batches(data: Path, size: int, batch: int) -> tuple[str, Iterator[tuple[np.ndarray, np.ndarray]]]:
    """What a Keras user writes: ``image_dataset_from_directory`` where TensorFlow exists, else ``load_img``."""
    import keras

    try:
        import tensorflow  # noqa: F401 - only whether tf.data is available
    except ImportError:
        return "load_img loop", _load_img_batches(data, size, batch)
    found = keras.utils.image_dataset_from_directory(data, image_size=(size, size), batch_size=batch, shuffle=False)
    # tf.data hands out read-only arrays; preprocess_input works in place, as on the user's own copy
    return "image_dataset_from_directory", ((np.array(x), y) for x, y in found.as_numpy_iterator())


def _load_img_batches(data: Path, size: int, batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    import keras

    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    files = [(path, label) for label, name in enumerate(classes) for path in sorted((data / name).iterdir())]
    for start in range(0, len(files), batch):
        chunk = files[start : start + batch]
        images = [keras.utils.img_to_array(keras.utils.load_img(path, target_size=(size, size))) for path, _ in chunk]
        yield np.stack(images), np.array([label for _, label in chunk])


def _handwritten(settings: Settings, data: Path, result: Path) -> None:
    """The usual recipe, float32: dataset, ``preprocess_input``, ``predict`` per batch, one h5py dataset."""
    import h5py
    import keras

    started = time.perf_counter()
    keras.config.set_dtype_policy("float32")
    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(settings.size, settings.size, 3))
    route, batches = _handwritten_batches(data, settings.size, settings.batch)
    features, labels = [], []
    for images, batch_labels in batches:
        features.append(model.predict(keras.applications.vgg16.preprocess_input(images), verbose=0))
        labels.append(batch_labels)
    with h5py.File(settings.out / "handwritten.h5", "w") as f:
        f.create_dataset("features", data=np.concatenate(features))
        f.create_dataset("labels", data=np.concatenate(labels))
    _write_result(result, {"seconds": time.perf_counter() - started, "images": settings.n, "route": route})


def _write_result(path: Path, values: dict) -> None:
    path.write_text(json.dumps(values))


CHILD_STAGES = ("bare", "decode", "handwritten")


def run_child_stage(name: str, settings: Settings, data: Path, result: Path) -> None:
    if name == "bare":
        _bare_model(settings, result)
    elif name == "decode":
        _decode_only(settings, data, result)
    else:
        _handwritten(settings, data, result)


# ---------------------------------------------------------------- the parent: processes, timing, memory


@dataclasses.dataclass
class Process:
    wall: float
    peak_rss_mib: float
    log: Path
    returncode: int
    cpu: float = 0.0  # user + system seconds of the child itself: what a loaded machine inflates least


def run_process(argv: list[str], log: Path, check: bool = True) -> Process:
    """Run one stage; ``wait4`` gives this child's own peak RSS, not the maximum over all children."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as handle:
        child = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if check and child.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise SystemExit(f"{' '.join(argv)} failed (exit {child.returncode}); last lines of {log}:\n{tail}")
    return Process(wall, usage.ru_maxrss / 1024, log, child.returncode, usage.ru_utime + usage.ru_stime)


def child_stage(name: str, settings: Settings, data: Path) -> tuple[dict, Process]:
    result = settings.out / "logs" / f"{name}.json"
    argv = [sys.executable, "-m", "bench.throughput", *_settings_args(settings), "--child", name, "--data", str(data), "--result", str(result)]
    process = run_process(argv, settings.out / "logs" / f"{name}.log")
    return json.loads(result.read_text()), process


def _settings_args(settings: Settings) -> list[str]:
    return [
        "--n", str(settings.n), "--size", str(settings.size), "--precision", settings.precision,
        "--batch", str(settings.batch), "--out", str(settings.out), "--memory-size", str(settings.memory_size),
    ]


def fresh(cache: Path) -> None:
    """Remove a cache and everything an earlier run left beside it, so extraction starts from nothing."""
    cache.unlink(missing_ok=True)
    cache.with_name(cache.name + ".lock").unlink(missing_ok=True)
    shutil.rmtree(cache.with_name(cache.name + ".shards"), ignore_errors=True)


def extract(settings: Settings, data: Path, cache: Path, size: int, log_name: str) -> tuple[Process, float, float | None, float]:
    """``pipeline extract``; returns the process, its reported seconds, its extraction-loop img/s
    and the seconds it took to load Keras and the model."""
    argv = [
        sys.executable, "-m", "pipeline", "extract", str(data), "--cache", str(cache), "--weights", "none",
        "--image-size", str(size), "--batch-size", str(settings.batch), "--precision", settings.precision,
    ]
    process = run_process(argv, settings.out / "logs" / f"{log_name}.log")
    match = EXTRACT_TIMING.search(process.log.read_text())
    if match is None:
        return process, process.wall, None, 0.0
    rate, loading = match.group(2), match.group(3)
    return process, float(match.group(1)), float(rate) if rate else None, float(loading) if loading else 0.0


def extract_phases(settings: Settings, data: Path, cache: Path) -> tuple[dict, Process]:
    """The same ``pipeline extract`` in a process that times each of its phases (``bench.extract_phases``)."""
    from bench.extract_phases import LAUNCHED

    result = settings.out / "logs" / "extract-phases.json"
    argv = [
        sys.executable, "-m", "bench.extract_phases", str(result), str(data), "--cache", str(cache), "--weights", "none",
        "--image-size", str(settings.size), "--batch-size", str(settings.batch), "--precision", settings.precision,
    ]
    os.environ[LAUNCHED] = repr(time.time())
    try:
        process = run_process(argv, settings.out / "logs" / "extract-phases.log")
    finally:
        del os.environ[LAUNCHED]
    timed = json.loads(result.read_text())
    timed["exit_and_teardown"] = max(0.0, time.time() - timed.pop("finished_at"))
    return timed, process


def phase_stages(settings: Settings, timed: dict, process: Process) -> list[Stage]:
    """One row per serial phase (they add up to the process wall), then the loop's overlapped work."""
    rows = []
    phases = {**timed["phases"], "interpreter exit": timed["exit_and_teardown"]}
    first = timed["first_call"]
    for phase, seconds in phases.items():
        note = f"{100 * seconds / process.wall:.0f}% of the process wall"
        if phase == "extraction loop":
            note += "; decode, model and shard writes overlap in it"
        rows.append(Stage(f"3b   {phase}", 0, seconds, process.wall, process.peak_rss_mib, comparable=False, note=note))
    for phase, seconds in timed["overlapped"].items():
        note = "busy seconds, summed over threads"
        if phase.startswith("model"):
            note = f"first batch (trace + compile) {first.get(phase, 0.0):.1f} s"
        rows.append(Stage(f"3c   {phase}", settings.n, seconds, process.wall, process.peak_rss_mib,
                          comparable=phase.startswith("model"), note=note))
    return rows


def train_available() -> bool:
    from pipeline.cli import COMMANDS

    return "train" in COMMANDS


def train(settings: Settings, cache: Path, head: str, name: str) -> Process:
    """One head; a failing head is reported in the table rather than ending the benchmark."""
    argv = [
        sys.executable, "-m", "pipeline", "train", str(cache), "--head", head,
        "--runs-dir", str(settings.out / "runs"), "--name", name,
    ]
    return run_process(argv, settings.out / "logs" / f"train-{name}.log", check=False)


def synthetic_cache(path: Path, n: int = SYNTHETIC_N, seed: int = 0, splits: dict[str, int] | None = None) -> Path:
    """A cache of ``n`` images at 7x7x512 float16 written without running VGG16.

    Features are non-negative like ReLU outputs, with a per-class mean so heads can learn;
    head timings at a realistic size then cost seconds instead of an hour of extraction.
    ``splits`` (e.g. ``{"train": 600, "val": 150}``, the seed recipe's folders) stores a split
    for the first rows in that order; without it no row has one and ``train`` draws them.
    """
    from features_cache import schema
    from features_cache.records import FileRecord, FileStamp
    from features_cache.writer import FeatureSource, Row, write_cache

    if path.exists():
        return path
    import h5py

    rng = np.random.default_rng(seed)
    width = math.prod(SYNTHETIC_SHAPE)
    base = rng.gamma(0.5, 1.0, width).astype(np.float32)
    offsets = rng.normal(0, 0.8, (len(CLASSES), width)).astype(np.float32)
    labels = np.arange(n) % len(CLASSES)
    source = path.with_name(path.name + ".source")
    with h5py.File(source, "w") as f:
        features = f.create_dataset(schema.FEATURES, (n, *SYNTHETIC_SHAPE), dtype=np.float16)
        for start in range(0, n, 250):
            block = labels[start : start + 250]
            values = base + offsets[block] + rng.normal(0, 1.5, (len(block), width)).astype(np.float32)
            features[start : start + len(block)] = np.maximum(values, 0).reshape(len(block), *SYNTHETIC_SHAPE)
    recipe = schema.Recipe(
        backbone="vgg16", weights="synthetic", weights_sha256="0" * 64, image_size=224, preprocessing="caffe",
        resize="stretch", interpolation="bilinear", background="rgb(255,255,255)", precision="float32",
        storage_dtype="float16",
    )
    stored = [split for split, count in (splits or {}).items() for _ in range(count)]
    stored += [""] * (n - len(stored))
    rows = [
        Row(FileRecord(f"{CLASSES[label]}/synthetic_{i:05d}.jpg", f"{i:032x}", FileStamp(0, 0)), int(label), stored[i],
            FeatureSource(str(source), i))
        for i, label in enumerate(labels)
    ]
    write_cache(
        path, recipe=recipe, feature_shape=SYNTHETIC_SHAPE, class_names=list(CLASSES), rows=rows, skipped=[],
        attrs={"data_root": "synthetic", "source_kind": "synthetic", "created_at": time.strftime("%Y-%m-%dT%H:%M:%S")},
    )
    source.unlink()
    return path


def device() -> dict:
    """The GPU where there is one, else the CPU model, its cores and whether it has AMX."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "unknown")
    gpu = ""
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        gpu = query.stdout.strip().splitlines()[0] if query.returncode == 0 and query.stdout.strip() else ""
    return {
        "name": gpu or cpu,
        "cpu": cpu,
        "gpu": gpu or None,
        "cores": len(os.sched_getaffinity(0)),
        "amx": "amx_bf16" in cpuinfo,
    }


# ---------------------------------------------------------------- the benchmark


def measure(settings: Settings) -> tuple[list[Stage], dict]:
    """Run every stage in order; returns the rows and the facts about the run."""
    data = dataset(settings.out, settings.n)
    facts: dict = {"data": describe_data(data)}
    stages: list[Stage] = []

    bare, process = child_stage("bare", settings, data)
    facts.update(precision=bare["precision"], versions=bare["versions"])
    stages.append(Stage("1 bare model (in-memory tensors)", bare["images"], bare["seconds"], process.wall,
                        process.peak_rss_mib, note=f"{bare['step']}, after {bare['build_seconds']:.1f} s build, "
                        f"{bare['first_batch_seconds']:.1f} s first batch", details=bare))

    decoded, process = child_stage("decode", settings, data)
    stages.append(Stage(f"2 decode only ({decoded['decoder']} x {decoded['workers']}, no model)", decoded["images"],
                        decoded["seconds"], process.wall, process.peak_rss_mib, details=decoded))
    if decoded.get("device"):
        row = decoded["device"]
        stages.append(Stage(f"2b   on the device ({row['decoder']})", row["images"], row["seconds"], process.wall,
                            process.peak_rss_mib, note="--decoder gpu: JPEGs decoded and resized there"))
    for row in decoded["scaling"]:
        rate = row["images"] / row["seconds"]
        stages.append(Stage(f"2a   {row['decoder']} x {row['workers']}", row["images"], row["seconds"], process.wall,
                            process.peak_rss_mib, note=f"{rate / row['workers']:.0f} img/s per worker, start-up included"))

    cache = settings.out / "cache.h5"
    fresh(cache)
    process, seconds, loop_rate, loading = extract(settings, data, cache, settings.size, "extract")
    end_to_end = Stage("3 pipeline extract, end to end", settings.n, seconds, process.wall, process.peak_rss_mib,
                       note=f"load + plan + extract + write; loading Keras and the model {loading:.1f} s")
    stages.append(end_to_end)
    if loop_rate:
        stages.append(Stage("3a   its extraction loop", settings.n, settings.n / loop_rate, process.wall,
                            process.peak_rss_mib, note="decode + model + shard writes only"))

    fresh(cache)
    timed, process = extract_phases(settings, data, cache)
    stages.extend(phase_stages(settings, timed, process))

    written, process = child_stage("handwritten", settings, data)
    stages.append(Stage(f"4 hand-written ({written['route']})", written["images"], written["seconds"], process.wall,
                        process.peak_rss_mib, note="float32, build + predict + h5py", details=written))

    process, seconds, *_ = extract(settings, data, cache, settings.size, "extract-again")
    stages.append(Stage("5 extract again, nothing changed", settings.n, seconds, process.wall, process.peak_rss_mib))

    facts["train_available"] = train_available()
    if facts["train_available"] and "heads" not in settings.skip:
        stages.extend(train_stages(settings, cache, end_to_end))
    if "memory" not in settings.skip:
        stages.extend(memory_stages(settings))
    return stages, facts


def train_stages(settings: Settings, cache: Path, extract_stage: Stage) -> list[Stage]:
    """Each head on the real cache, beside the cost of re-extracting it, then on a synthetic 2,000-image cache."""
    shutil.rmtree(settings.out / "runs", ignore_errors=True)
    rows = []
    for head in HEADS:
        process = train(settings, cache, head, f"bench-{head}")
        note = f"re-extracting: {extract_stage.wall:.0f} s ({extract_stage.wall / process.wall:.1f}x this)"
        rows.append(Stage(f"6 train {head}", settings.n, process.wall, process.wall, process.peak_rss_mib,
                          comparable=False, note=_failed(process) or note))
    synthetic = synthetic_cache(settings.out / f"synthetic-{SYNTHETIC_N}.h5")
    note = "synthetic features"
    if settings.size == 224:
        note += f"; extracting {SYNTHETIC_N} here: ~{extract_stage.seconds / extract_stage.images * SYNTHETIC_N / 60:.0f} min"
    for head in HEADS:
        process = train(settings, synthetic, head, f"bench-synthetic-{head}")
        rows.append(Stage(f"6b train {head}, {SYNTHETIC_N} x 7x7x512", SYNTHETIC_N, process.wall, process.wall,
                          process.peak_rss_mib, comparable=False, note=_failed(process) or note))
    return rows


def _failed(process: Process) -> str:
    return f"FAILED (exit {process.returncode}), see {process.log}" if process.returncode else ""


def memory_stages(settings: Settings) -> list[Stage]:
    """Peak RSS of ``pipeline extract`` at N and 4N images: it should stay flat."""
    rows = []
    for n in (settings.n, 4 * settings.n):
        data = dataset(settings.out, n)
        cache = settings.out / f"memory-{n}.h5"
        fresh(cache)
        process, seconds, *_ = extract(settings, data, cache, settings.memory_size, f"extract-memory-{n}")
        rows.append(Stage(f"7 extract peak memory, {n} images", n, seconds, process.wall, process.peak_rss_mib,
                          comparable=False, note=f"at {settings.memory_size} px"))
        cache.unlink()
    rows[1].note += f"; RSS {rows[1].peak_rss_mib / rows[0].peak_rss_mib:.2f}x of {settings.n} images"
    return rows


def _ratio(stage: Stage, ceiling: Stage | None) -> str:
    if not stage.comparable or ceiling is None or not ceiling.rate:
        return "-"
    return f"{stage.rate / ceiling.rate:.2f}x"


def report(stages: list[Stage], settings: Settings, facts: dict) -> dict:
    """Print the table and return the same as JSON-ready data."""
    from rich.console import Console
    from rich.table import Table

    by_number = {stage.name.split()[0]: stage for stage in stages}
    bare, decode, handwritten = by_number.get("1"), by_number.get("2"), by_number.get("4")
    title = (
        f"{facts['device']['name']} ({facts['device']['cores']} cores), keras {facts['versions'].get('version.keras')} "
        f"on {facts['versions'].get('keras_backend')}, {facts['precision']}, N={settings.n}, {settings.size} px, "
        f"batch {settings.batch}"
    )
    table = Table(title=title, show_edge=False)
    for column in ("stage", "images", "seconds", "img/s", "vs bare model", "vs decode", "vs hand-written",
                   "peak RSS MiB", "process wall s", "note"):
        table.add_column(column, justify="left" if column in ("stage", "note") else "right")
    for stage in stages:
        table.add_row(
            stage.name, str(stage.images or "-"), f"{stage.seconds:.1f}", f"{stage.rate:.1f}" if stage.images else "-", _ratio(stage, bare),
            _ratio(stage, decode), _ratio(stage, handwritten), f"{stage.peak_rss_mib:.0f}", f"{stage.wall:.1f}",
            stage.note,
        )
    Console(highlight=False, width=max(200, shutil.get_terminal_size().columns)).print(table)
    if not facts["train_available"]:
        print("step 6 skipped: this checkout has no `pipeline train` command yet")
    return {
        **facts,
        "backend": facts["versions"].get("keras_backend"),
        "requested_precision": settings.precision,
        "n": settings.n,
        "size": settings.size,
        "batch": settings.batch,
        "memory_size": settings.memory_size,
        "stages": [
            {**dataclasses.asdict(stage), "images_per_second": stage.rate,
             "vs_bare_model": stage.rate / bare.rate if stage.comparable and bare else None,
             "vs_decode": stage.rate / decode.rate if stage.comparable and decode else None,
             "vs_handwritten": stage.rate / handwritten.rate if stage.comparable and handwritten else None}
            for stage in stages
        ],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=96, help="images (default 96)")
    parser.add_argument("--size", type=int, default=224, help="input size (default 224)")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--out", default="bench-out", help="folder for data, caches, logs and bench.json")
    parser.add_argument("--memory-size", type=int, default=64, help="input size of the N vs 4N memory runs (default 64)")
    parser.add_argument(
        "--skip", default="", metavar="STAGES",
        help="comma-separated stages to leave out: heads, memory (e.g. on a GPU machine, where stage one is the question)",
    )
    parser.add_argument("--child", choices=CHILD_STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    quiet_start()
    args = parse_args(argv)
    out = Path(args.out).resolve()
    skip = frozenset(part.strip() for part in args.skip.split(",") if part.strip())
    if skip - SKIPPABLE:
        raise SystemExit(f"--skip {args.skip}: unknown stage; use any of {', '.join(sorted(SKIPPABLE))}")
    settings = Settings(args.n, args.size, args.precision, args.batch, out, args.memory_size, skip)
    if args.child:
        run_child_stage(args.child, settings, Path(args.data), Path(args.result))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    from bench import cache as cache_bench

    started = time.perf_counter()
    stages, facts = measure(settings)
    facts["cache"] = cache_bench.growth(out / "cache", cache_bench.DEFAULT_ROWS)
    print(json.dumps({"cache": facts["cache"]}, indent=2))
    facts.update(device=device(), total_seconds=time.perf_counter() - started)
    results = report(stages, settings, facts)
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{out / 'bench.json'} written; whole run {facts['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
