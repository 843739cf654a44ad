"""The run folder layout and the runs index: what ``train`` leaves and what later commands read.

``runs/<name>/`` holds ``config.json``, ``metrics.json``, ``predictions.csv``,
``history.json``, ``head.json`` and ``model.keras`` or ``model.joblib``;
``runs/index.jsonl`` has one summary line per run.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from features_cache.reader import FeatureCache
from features_cache.schema import Recipe
from pipeline.errors import PipelineError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
INDEX_FILE = "index.jsonl"


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
    if trained["identity"] == cache.identity:
        return
    differences = Recipe(**trained["recipe"]).differences(cache.recipe)
    raise PipelineError(
        f"run {config['name']!r} was trained on cache {trained['identity']} ({trained['path']}) but {cache.path} "
        f"is {cache.identity}, made another way ({'; '.join(differences) or 'schema differs'}); "
        "extract with the run's recipe or train a head on this cache"
    )


def write_predictions(
    path: Path,
    paths: Sequence[str],
    splits: Sequence[str],
    y_true: np.ndarray,
    proba: np.ndarray,
    class_names: Sequence[str],
) -> None:
    """``path,split,true,predicted,confidence,p_<class>...``: one row per evaluated image."""
    predicted = np.argmax(proba, axis=1)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "split", "true", "predicted", "confidence", *(f"p_{name}" for name in class_names)])
        for row in range(len(paths)):
            writer.writerow(
                [
                    paths[row],
                    splits[row],
                    class_names[y_true[row]],
                    class_names[predicted[row]],
                    f"{proba[row, predicted[row]]:.6f}",
                    *(f"{p:.6f}" for p in proba[row]),
                ]
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


def publish(staging: Path, folder: Path) -> None:
    """Move a fully written run into place, so a run folder is never half written."""
    if folder.exists():
        shutil.rmtree(staging)
        raise PipelineError(f"run folder {folder} appeared while training; train again with another --name")
    staging.rename(folder)


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


def append_index(runs_dir: Path, entry: dict) -> None:
    with (runs_dir / INDEX_FILE).open("a") as handle:
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
