"""Heads trained on cached CNN codes; ``HEADS`` maps each ``--head`` name to its class."""

from __future__ import annotations

import json
from pathlib import Path

from classifiers.base import HEAD_FILE, Head, RowSource
from classifiers.dense import DenseHead
from classifiers.errors import FeatureShapeError, HeadError, SettingError
from classifiers.external import EstimatorHead
from classifiers.gap import GapHead
from classifiers.logreg import LogRegHead

HEADS: dict[str, type[Head]] = {head.name: head for head in (DenseHead, GapHead, LogRegHead)}
# Heads a run folder may hold besides HEADS: any scikit-learn classifier saved from Python.
SAVED_HEADS: dict[str, type[Head]] = {**HEADS, EstimatorHead.name: EstimatorHead}

__all__ = [
    "HEADS", "DenseHead", "EstimatorHead", "FeatureShapeError", "GapHead", "Head", "HeadError", "LogRegHead", "RowSource",
    "SettingError",
    "get_head", "load_head",
]


def get_head(name: str) -> type[Head]:
    """The head class called ``name``, or a one-line error listing the known heads."""
    try:
        return HEADS[name]
    except KeyError:
        raise HeadError(f"unknown head {name!r}; use --head with one of {', '.join(HEADS)}") from None


def load_head(run_dir: Path) -> Head:
    """The fitted head saved in ``run_dir`` (a run folder, or any folder ``Head.save`` wrote)."""
    run_dir = Path(run_dir)
    meta_path = run_dir / HEAD_FILE
    if not meta_path.exists():
        raise HeadError(f"{run_dir}: no saved head ({HEAD_FILE} missing); train one with `python -m pipeline train`")
    try:
        kind = json.loads(meta_path.read_text(encoding="utf-8"))["head"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise HeadError(f"{meta_path}: damaged ({error}); train the run again") from None
    if kind not in SAVED_HEADS:
        raise HeadError(f"{meta_path}: unknown head {kind!r}; this version reads {', '.join(SAVED_HEADS)}")
    head_cls = SAVED_HEADS[kind]
    try:
        return head_cls.load(run_dir)
    except HeadError:
        raise
    except Exception as error:  # noqa: BLE001 - joblib, Keras and json raise many kinds on a damaged file
        what = "missing" if not (run_dir / head_cls.model_file).is_file() else f"damaged ({' '.join(str(error).split())[:160]})"
        raise HeadError(f"{run_dir}: the saved head is {what}: {head_cls.model_file}; train the run again") from None
