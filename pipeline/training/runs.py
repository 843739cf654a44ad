"""The run folder layout and the runs index: what ``train`` leaves and what later commands read.

``runs/<name>/`` holds ``config.json``, ``metrics.json``, ``predictions.csv``,
``history.json``, ``head.json`` and ``model.keras`` or ``model.joblib``;
``runs/index.jsonl`` has one summary line per run.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from features_cache import atomic
from features_cache.reader import FeatureCache
from features_cache.schema import Recipe, same_features
from pipeline.errors import PipelineError
from pipeline.versions import library_versions

if TYPE_CHECKING:
    from classifiers import Head
    from pipeline.training.splits import SplitPlan

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
INDEX_FILE = "index.jsonl"
JSON_TYPES = (str, int, float, bool, type(None), list, dict)
# The training rows' content, as the first 16 hex digits of each content hash: 8 bytes of identity
# per image is enough to find a training image under any name, in any cache, at any scale.
TRAIN_CONTENT = "train_content"
CONTENT_KEY_DIGITS = 16


RECIPE_COLUMNS = ("image_size", "backbone", "layer", "view")  # what the runs table shows of each run's cache
CV_KEY = "cv"  # ``train --cv K``: {"folds": K, "mean": ..., "std": ...} of out-of-fold accuracy


def scored_key(keys: Sequence[str]) -> str:
    """A short name for the set of images a run was scored on (its test images, its val images without a
    test split): runs with one key were scored on the same images, whatever cache they read them from."""
    digest = hashlib.blake2b("\n".join(sorted(keys)).encode("ascii"), digest_size=6).hexdigest()
    return f"{len(keys)}:{digest}"


def content_keys(cache: FeatureCache, rows: np.ndarray) -> list[str]:
    """The sorted, distinct content keys of cache rows ``rows`` (what ``config.json`` records of training)."""
    records = cache.records()
    return sorted({records[int(r)].content_hash[:CONTENT_KEY_DIGITS] for r in rows})


def resolve_run(run: str, runs_dir: str | Path = "runs") -> Path:
    """``run`` as a run folder path, or as a run name under ``runs_dir``."""
    for candidate in (Path(run), Path(runs_dir) / run):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    known = ", ".join(entry["name"] for entry in read_index(runs_dir)[-5:]) or "none yet"
    raise PipelineError(
        f"no run {run!r} (neither a run folder nor a name under {runs_dir}/; recent runs: {known}); "
        "list them with `python -m pipeline runs`"
    )


def load_run_config(run_dir: str | Path) -> dict:
    path = Path(run_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PipelineError(f"{path}: unreadable run config ({error}); train the run again") from None
    if not isinstance(config, dict) or not isinstance(config.get("class_names"), list) or not isinstance(config.get("cache"), dict):
        raise PipelineError(f"{path}: not a run config (class_names or cache missing); train the run again")
    return config


def check_same_cache(config: dict, cache: FeatureCache) -> None:
    """Refuse to use a run's head on features made another way than the ones it was trained on."""
    trained = config["cache"]
    recipe = Recipe(**trained["recipe"])
    if same_features(trained["identity"], recipe, cache.identity, cache.recipe):
        return
    differences = recipe.differences(cache.recipe)
    raise PipelineError(
        f"run {config['name']!r} was trained on cache {trained['identity']} ({trained['path']}) but {cache.path} "
        f"is {cache.identity}, made another way ({'; '.join(differences) or 'schema differs'}); "
        "extract with the run's recipe or train a head on this cache"
    )


def write_predictions(
    path: Path,
    paths: Sequence[str],
    proba: np.ndarray,
    class_names: Sequence[str],
    *,
    splits: Sequence[str] | None = None,
    y_true: np.ndarray | None = None,
    seen: Sequence[bool] | None = None,
) -> None:
    """``path[,split,true],predicted,confidence,p_<class>...[,seen_in_training]``: one row per image, replaced atomically.

    Runs and ``evaluate`` know each image's split and true class; ``predict`` on new images knows
    neither, and marks the run's own training images when asked to score them (``seen``).
    """
    known = splits is not None and y_true is not None
    predicted = np.argmax(proba, axis=1) if len(proba) else np.zeros(0, dtype=int)
    with atomic.open_replacing(path, newline="") as handle:
        writer = csv.writer(handle)
        marks = ["seen_in_training"] if seen is not None else []
        writer.writerow(
            ["path", *(["split", "true"] if known else []), "predicted", "confidence", *(f"p_{n}" for n in class_names), *marks]
        )
        for row, best in enumerate(predicted):
            truth = [splits[row], class_names[y_true[row]]] if known else []
            mark = [str(bool(seen[row])).lower()] if seen is not None else []
            writer.writerow(
                [paths[row], *truth, class_names[best], f"{proba[row, best]:.6f}", *(f"{p:.6f}" for p in proba[row]), *mark]
            )


def new_run_folder(runs_dir: Path, name: str, explicit: bool) -> tuple[str, Path]:
    """A free name and its not-yet-existing folder; default names get ``-2``, ``-3``... when taken."""
    if not name or "/" in name or name.startswith("."):
        raise PipelineError(f"run name {name!r} is not a plain folder name; pass e.g. --name dense-baseline")
    candidate, number = name, 1
    while (runs_dir / candidate).exists():
        if explicit:
            raise PipelineError(f"run {candidate!r} already exists in {runs_dir}/; pick another --name or delete that folder")
        number += 1
        candidate = f"{name}-{number}"
    return candidate, runs_dir / candidate


def _as_json(value: object) -> object:
    """A setting as config.json can hold it: itself, or its repr (a scikit-learn Pipeline's steps hold estimators)."""
    if not isinstance(value, JSON_TYPES):
        return repr(value)
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def set_aside(runs_dir: Path, name: str) -> Path:
    """Move run ``name`` out of the way of its replacement; it comes back if writing the new one fails."""
    aside = Path(tempfile.mkdtemp(prefix=f".{name}.replaced-", dir=runs_dir))
    aside.rmdir()
    (runs_dir / name).rename(aside)
    return aside


def forget_replaced(runs_dir: Path, name: str, aside: Path) -> None:
    """Drop a replaced run: its folder, and its line in the index (the new run's line is the last one of that name)."""
    shutil.rmtree(aside, ignore_errors=True)
    path = runs_dir / INDEX_FILE
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    named = [i for i, line in enumerate(lines) if _entry_name(line) == name]
    keep = [line for i, line in enumerate(lines) if i not in named[:-1]]
    atomic.write_text(path, "".join(f"{line}\n" for line in keep))


def _entry_name(line: str) -> str | None:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        return None
    return entry.get("name") if isinstance(entry, dict) else None


def publish(staging: Path, folder: Path) -> None:
    """Move a fully written run into place, so a run folder is never half written."""
    if folder.exists():
        shutil.rmtree(staging)
        raise PipelineError(f"run folder {folder} appeared while training; train again with another --name")
    staging.rename(folder)


def write_json(path: Path, payload: dict) -> None:
    atomic.write_text(path, json.dumps(payload, indent=2) + "\n")


def append_index(runs_dir: Path, entry: dict) -> None:
    with (runs_dir / INDEX_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")


def read_index(runs_dir: str | Path) -> list[dict]:
    """Every indexed run whose folder still exists, oldest first; damaged lines are skipped."""
    runs_dir = Path(runs_dir)
    if runs_dir.exists() and not runs_dir.is_dir():
        raise PipelineError(f"--runs-dir {runs_dir}: is a file, not a folder; pass the folder `train` wrote runs into")
    path = runs_dir / INDEX_FILE
    if not path.exists():
        return []
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not isinstance(entry.get("val"), dict):
            if line.strip():
                print(f"warning: {path}:{number}: not a run entry; skipped", file=sys.stderr)
            continue
        if entry["name"] and (runs_dir / entry["name"]).is_dir():
            entries.append(entry)
    return entries


def ranked(entries: list[dict]) -> list[dict]:
    """Best first: highest validation accuracy, then lowest validation log loss (the test set stays for reporting)."""
    return sorted(entries, key=lambda e: (-e["val"]["accuracy"], e["val"]["log_loss"], e["name"]))


def run_config(
    cache: FeatureCache,
    head: Head,
    name: str,
    in_memory: bool,
    plan: SplitPlan,
    fit_seconds: float,
    *,
    seed: int,
    fractions: Sequence[float],
) -> dict:
    """What ``config.json`` records: the head and its settings, the splits, the cache and the versions."""
    params = {key: _as_json(value) for key, value in head.get_params().items()}
    return {
        "name": name,
        "head": head.name,
        "params": params,
        "seed": params.get("seed", seed),
        "class_names": cache.class_names,
        "class_weight": params.get("class_weight") or "none",
        "split": {
            "fractions": [float(f) for f in fractions],
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
    train_content: list[str] | None = None,
    scored_on: str | None = None,
) -> dict:
    """Write every file into a staging folder, move it into place, then index it; returns the index entry.

    ``train_content`` is :func:`content_keys` of the train rows and ``scored_on`` the :func:`scored_key`
    of the scored rows when the caller has them (a sweep's runs share them), else they are read from the cache.
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=runs_dir))
    if train_content is None:
        train_content = content_keys(cache, indices["train"])
    config = {**config, TRAIN_CONTENT: train_content}
    head.save(staging)
    write_json(staging / CONFIG_FILE, config)
    write_json(staging / METRICS_FILE, metrics)
    held_out = list(probas)
    rows = np.concatenate([indices[split] for split in held_out])
    write_predictions(
        staging / PREDICTIONS_FILE,
        [cache.paths[r] for r in rows],
        np.concatenate([probas[split] for split in held_out]),
        cache.class_names,
        splits=[split for split in held_out for _ in indices[split]],
        y_true=cache.labels[rows],
    )
    publish(staging, folder)
    summary = ("accuracy", "macro_f1", "log_loss")
    recipe = config["cache"]["recipe"]
    scored = "test" if "test" in metrics else "val"
    entry = {
        "name": config["name"],
        "head": config["head"],
        "params": config["params"],
        "seed": config["seed"],
        "cache_identity": config["cache"]["identity"],
        "cache_path": config["cache"]["path"],
        "created_at": config["created_at"],
        "fit_seconds": config["fit_seconds"],
        **{
            split: {**{key: metrics[split][key] for key in summary}, "n": int(len(indices[split]))} if split in metrics else None
            for split in ("val", "test")
        },
        **{key: recipe.get(key) for key in RECIPE_COLUMNS},
        "fractions": config["split"]["fractions"],
        "scored_on": scored_on or scored_key(content_keys(cache, indices[scored])),
    }
    if config.get(CV_KEY):
        entry[CV_KEY] = config[CV_KEY]
    append_index(runs_dir, entry)
    return entry
