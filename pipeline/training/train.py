"""Stage two: train heads on a feature cache, one run per combination of settings.

Features are read once per call, into memory when they fit and streamed from the
HDF5 file when they do not, and every run shares them. Heads learn class names as
labels, so a run's ``classes_`` are the cache's class names.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from classifiers import Head, SettingError, get_head
from features_cache.reader import FeatureCache
from pipeline.errors import PipelineError
from pipeline.progress import bar
from pipeline.training import runs
from pipeline.training import splits as split_rules
from pipeline.training.metrics import evaluate
from pipeline.training.splits import DEFAULT_FRACTIONS, SplitPlan
from pipeline.versions import library_versions

LOAD_MODES = ("auto", "memory", "stream")
CLASS_WEIGHTS = ("none", "balanced")
EVAL_ROWS = 1024
JSON_TYPES = (str, int, float, bool, type(None), list, dict)


@dataclasses.dataclass
class TrainOptions:
    cache: str
    head: str
    settings: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    name: str | None = None
    runs_dir: str = "runs"
    seed: int = 0
    fractions: Sequence[float] = DEFAULT_FRACTIONS
    class_weight: str = "none"
    load: str = "auto"


@dataclasses.dataclass
class RunResult:
    name: str
    folder: Path
    entry: dict


def class_labels(cache: FeatureCache, rows: np.ndarray) -> np.ndarray:
    """The class names of cache rows ``rows``: what heads learn and predict."""
    return np.asarray(cache.class_names, dtype=object)[cache.labels[rows]].astype(str)


class CacheRows:
    """The rows ``indices`` of a cache as a :class:`classifiers.RowSource`, read on demand."""

    def __init__(self, cache: FeatureCache, indices: np.ndarray) -> None:
        self.cache, self.indices = cache, indices
        self.labels = class_labels(cache, indices)
        self.input_shape = cache.feature_shape

    def read(self, rows: np.ndarray) -> np.ndarray:
        return self.cache.features(self.indices[rows])


def parse_settings(items: Sequence[str]) -> dict[str, list[str]]:
    """``["C=0.1,1", "pooling=avg"]`` -> ``{"C": ["0.1", "1"], "pooling": ["avg"]}``."""
    settings: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip()
        parts = [v.strip() for v in values.split(",")]
        if not sep or not name or not all(parts):
            raise SettingError(f"--set {item!r} is not name=value[,value...]; e.g. --set C=0.1,1,10")
        if name in settings:
            raise SettingError(f"--set {name} is given twice; list all its values once, e.g. --set {name}=a,b")
        settings[name] = parts
    return settings


def coerce(head_cls: type[Head], name: str, text: str) -> Any:
    """A ``--set`` value converted to the type of the setting's default."""
    defaults = head_cls.defaults()
    if name not in defaults:
        raise SettingError(f"head {head_cls.name!r} has no setting {name!r}; its settings are {', '.join(defaults)}")
    default = defaults[name]
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if text.lower() == "none":
            return None
        if text.lstrip("-").isdigit():
            return int(text)
    except ValueError:
        kind = "true or false" if isinstance(default, bool) else f"a number like {default!r}"
        raise SettingError(f"--set {name}={text}: not {kind}") from None
    return text


def expand(head_cls: type[Head], settings: dict[str, list[str]], seed: int) -> list[dict[str, Any]]:
    """One full, checked parameter dict per combination of the listed values."""
    names = list(settings)
    grid = []
    for values in itertools.product(*(settings[n] for n in names)):
        params = head_cls.defaults()
        if "seed" in params:
            params["seed"] = seed
        params.update({n: coerce(head_cls, n, v) for n, v in zip(names, values)})
        head_cls(**params).check_params()
        grid.append(params)
    return grid


def available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def plan_cache_splits(
    cache: FeatureCache, fractions: Sequence[float] = DEFAULT_FRACTIONS, check_leakage: bool = False
) -> SplitPlan:
    """Every row's split (see :mod:`pipeline.training.splits`), remembered beside the cache; checked for training.

    Training needs images of every class and a val split; a missing test split is allowed.
    ``check_leakage`` adds a warning note per held-out split with near-duplicates in train
    (it reads every feature once more).
    """
    if len(cache.class_names) < 2:
        raise PipelineError(
            f"{cache.path}: only {len(cache.class_names)} class ({', '.join(cache.class_names)}); "
            "a classifier needs at least 2 class folders; add another class and run extract again"
        )
    memory = split_rules.memory_path(cache.path)
    plan, decisions = split_rules.plan_splits(
        cache.paths, cache.labels, cache.splits, fractions, split_rules.read_memory(memory, fractions)
    )
    if decisions:
        warning = split_rules.write_memory(memory, fractions, decisions)
        plan.notes.append(warning or f"decided splits remembered in {memory}")
    if check_leakage:
        from pipeline.analysis.health.leakage import leakage_notes

        plan.notes.extend(leakage_notes(cache, plan.splits))
    for split in ("train", "val"):
        if len(plan.rows(split)) == 0:
            raise PipelineError(
                f"{cache.path}: the {split} split has no images ({len(cache)} in total, "
                f"{'; '.join(plan.notes)}); add images to the classes"
            )
    missing = sorted(set(range(len(cache.class_names))) - set(cache.labels[plan.rows("train")].tolist()))
    if missing:
        names = ", ".join(cache.class_names[m] for m in missing)
        raise PipelineError(f"{cache.path}: class {names} has no training images; add images to it or remove the class")
    return plan


def load_features(cache: FeatureCache, indices: np.ndarray, what: str) -> np.ndarray:
    with bar(f"loading {what} features", len(indices)) as advance:
        return cache.features(indices, on_block=advance)


def run_name(options: TrainOptions, params: dict, varying: list[str], stamp: str) -> str:
    base = options.name or f"{options.head}-{stamp}"
    return "-".join([base, *(f"{key}={params[key]}" for key in varying)])


def run_train(options: TrainOptions, on_plan=None) -> Iterator[RunResult]:
    """Train one run per settings combination, yielding each as it is written.

    ``on_plan(plan)`` is called once the splits are decided, before any training.
    """
    head_cls = get_head(options.head)
    if options.load not in LOAD_MODES or options.class_weight not in CLASS_WEIGHTS:
        raise PipelineError(f"--load must be one of {', '.join(LOAD_MODES)} and --class-weight one of {', '.join(CLASS_WEIGHTS)}")
    settings = dict(options.settings)
    if options.class_weight == "balanced":
        if "class_weight" not in head_cls.defaults():
            raise PipelineError(f"head {options.head!r} has no class weights; drop --class-weight")
        settings.setdefault("class_weight", ["balanced"])
    grid = expand(head_cls, settings, options.seed)
    varying = [name for name, values in settings.items() if len(values) > 1]
    runs_dir = Path(options.runs_dir)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise PipelineError(f"--runs-dir {runs_dir}: not a folder; pass a folder for the runs, e.g. --runs-dir runs") from None
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")

    with FeatureCache(options.cache) as cache:
        plan = plan_cache_splits(cache, options.fractions, check_leakage=True)
        if on_plan is not None:
            on_plan(plan)
        used = ("train", *plan.held_out)
        indices = {split: plan.rows(split) for split in used}
        in_memory = options.load == "memory" or (
            options.load == "auto" and 3 * len(cache) * int(np.prod(cache.feature_shape)) * 4 < available_memory()
        )
        data = {split: load_features(cache, rows, split) for split, rows in indices.items()} if in_memory else None
        labels = {split: class_labels(cache, rows) for split, rows in indices.items()}
        for params in grid:
            name, folder = runs.new_run_folder(runs_dir, run_name(options, params, varying, stamp), options.name is not None)
            started = time.perf_counter()
            head = head_cls(**params)
            if data is not None:
                head.fit(data["train"], labels["train"], X_val=data["val"], y_val=labels["val"])
            else:
                head.fit_stream(CacheRows(cache, indices["train"]), val=CacheRows(cache, indices["val"]))
            fit_seconds = time.perf_counter() - started
            probas = {
                split: predict(head, cache, indices[split], None if data is None else data[split]) for split in plan.held_out
            }
            metrics = {split: evaluate(cache.labels[indices[split]], probas[split], cache.class_names) for split in probas}
            config = run_config(options, cache, head, name, in_memory, plan, fit_seconds)
            yield RunResult(name, folder, write_run(runs_dir, folder, head, config, metrics, cache, indices, probas))


def predict(head: Head, cache: FeatureCache, rows: np.ndarray, loaded: np.ndarray | None) -> np.ndarray:
    """Probabilities for cache rows ``rows`` in the cache's class order: from ``loaded`` features, else read in blocks."""
    blocks = [loaded] if loaded is not None else cache.iter_features(rows, batch_size=EVAL_ROWS)
    return np.concatenate([head.class_probabilities(block, cache.class_names) for block in blocks])


def run_config(
    options: TrainOptions,
    cache: FeatureCache,
    head: Head,
    name: str,
    in_memory: bool,
    plan: SplitPlan,
    fit_seconds: float,
) -> dict:
    params = {key: value if isinstance(value, JSON_TYPES) else repr(value) for key, value in head.get_params().items()}
    return {
        "name": name,
        "head": head.name,
        "params": params,
        "seed": params.get("seed", options.seed),
        "class_names": cache.class_names,
        "class_weight": params.get("class_weight") or "none",
        "split": {
            "fractions": list(options.fractions),
            "stored": bool(any(cache.splits)),
            "held_out": list(plan.held_out),
            "counts": {split: int(len(plan.rows(split))) for split in ("train", "val", "test")},
            "notes": plan.notes,
        },
        "load": "memory" if in_memory else "stream",
        "cache": {
            "path": str(Path(cache.path).resolve()),
            "identity": cache.identity,
            "recipe": dataclasses.asdict(cache.recipe),
            "data_root": str(cache.data_root),
            "feature_shape": list(cache.feature_shape),
            "n_images": len(cache),
        },
        "fit_seconds": round(fit_seconds, 3),
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
    }


def write_run(
    runs_dir: Path,
    folder: Path,
    head: Head,
    config: dict,
    metrics: dict,
    cache: FeatureCache,
    indices: dict[str, np.ndarray],
    probas: dict[str, np.ndarray],
) -> dict:
    """Write every file into a staging folder, move it into place, then index it; returns the index entry."""
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=runs_dir))
    head.save(staging)
    runs.write_json(staging / runs.CONFIG_FILE, config)
    runs.write_json(staging / runs.METRICS_FILE, metrics)
    held_out = list(probas)
    rows = np.concatenate([indices[split] for split in held_out])
    runs.write_predictions(
        staging / runs.PREDICTIONS_FILE,
        [cache.paths[r] for r in rows],
        [split for split in held_out for _ in indices[split]],
        cache.labels[rows],
        np.concatenate([probas[split] for split in held_out]),
        cache.class_names,
    )
    runs.publish(staging, folder)
    summary = ("accuracy", "macro_f1", "log_loss")
    entry = {
        "name": config["name"],
        "head": config["head"],
        "params": config["params"],
        "seed": config["seed"],
        "cache_identity": config["cache"]["identity"],
        "cache_path": config["cache"]["path"],
        "created_at": config["created_at"],
        "fit_seconds": config["fit_seconds"],
        **{split: {key: metrics[split][key] for key in summary} if split in metrics else None for split in ("val", "test")},
    }
    runs.append_index(runs_dir, entry)
    return entry
