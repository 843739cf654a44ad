"""Heads trained on cached CNN codes; ``HEADS`` maps each ``--head`` name to its class.

Each head's module is imported when that head is first asked for (PEP 562), and so is the
shared interface (``Head``, which imports scikit-learn): the command line imports the errors
at start-up, and ``--help``, ``info`` or ``runs`` then pay for neither scikit-learn nor Keras.
The Keras heads import Keras only when they build, train or load a model, so a scikit-learn
head, ``get_head("dense").defaults()`` or a logreg run never import it.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from classifiers.errors import FeatureShapeError, HeadError, SettingError

if TYPE_CHECKING:
    from classifiers.base import Head

# ``--head`` name -> (module, class); the Keras heads stay unimported until used.
_HEAD_CLASSES = {
    "dense": ("classifiers.dense", "DenseHead"),
    "gap": ("classifiers.gap", "GapHead"),
    "logreg": ("classifiers.logreg", "LogRegHead"),
    "finetune": ("classifiers.finetune", "FinetuneHead"),
}
# Heads a run folder may hold besides those: any scikit-learn classifier saved from Python.
_SAVED_CLASSES = {**_HEAD_CLASSES, "sklearn": ("classifiers.external", "EstimatorHead")}
HEAD_NAMES = tuple(_HEAD_CLASSES)

__all__ = [
    "HEADS", "HEAD_NAMES", "DenseHead", "EstimatorHead", "FeatureShapeError", "FinetuneHead", "GapHead", "Head", "HeadError",
    "LogRegHead", "RowSource", "SettingError", "get_head", "load_head",
]


def _load(module: str, name: str) -> type[Head]:
    return getattr(importlib.import_module(module), name)


# Names of ``classifiers.base`` offered here, imported on first use.
_BASE_NAMES = ("HEAD_FILE", "Head", "RowSource")


def __getattr__(attribute: str):
    if attribute in _BASE_NAMES:
        return getattr(importlib.import_module("classifiers.base"), attribute)
    if attribute == "HEADS":
        return {name: _load(*where) for name, where in _HEAD_CLASSES.items()}
    for module, name in _SAVED_CLASSES.values():
        if attribute == name:
            return _load(module, name)
    raise AttributeError(f"module 'classifiers' has no attribute {attribute!r}")


def get_head(name: str) -> type[Head]:
    """The head class called ``name``, or a one-line error listing the known heads."""
    if name not in _HEAD_CLASSES:
        raise HeadError(f"unknown head {name!r}; use --head with one of {', '.join(HEAD_NAMES)}")
    return _load(*_HEAD_CLASSES[name])


def load_head(run_dir: Path) -> Head:
    """The fitted head saved in ``run_dir`` (a run folder, or any folder ``Head.save`` wrote)."""
    from classifiers.base import HEAD_FILE

    run_dir = Path(run_dir)
    meta_path = run_dir / HEAD_FILE
    if not meta_path.exists():
        raise HeadError(f"{run_dir}: no saved head ({HEAD_FILE} missing); train one with `python -m pipeline train`")
    try:
        kind = json.loads(meta_path.read_text(encoding="utf-8"))["head"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise HeadError(f"{meta_path}: damaged ({error}); train the run again") from None
    if kind not in _SAVED_CLASSES:
        raise HeadError(f"{meta_path}: unknown head {kind!r}; this version reads {', '.join(_SAVED_CLASSES)}")
    head_cls = _load(*_SAVED_CLASSES[kind])
    try:
        return head_cls.load(run_dir)
    except HeadError:
        raise
    except Exception as error:  # noqa: BLE001 - joblib, Keras and json raise many kinds on a damaged file
        what = "missing" if not (run_dir / head_cls.model_file).is_file() else f"damaged ({' '.join(str(error).split())[:160]})"
        raise HeadError(f"{run_dir}: the saved head is {what}: {head_cls.model_file}; train the run again") from None
