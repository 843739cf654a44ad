"""``predict`` and ``export`` of a run on a ``block4_pool`` cache apply the top block as training did:
the backbone to block4_pool in the recipe's precision and storage dtype, then block5 in float32."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest

import pipeline.serving.export  # noqa: F401 - registers the exported model's custom layers
from pipeline.cli import main
from pipeline.demo_data import write_digits
from pipeline.extraction.images import ResizeSpec, read_image

HEADS = {"logreg": [], "dense": ["--set", "epochs=2", "--set", "units=16"]}
ATOL = 1e-4  # as tests/test_predict_export.py: float16 storage rounds a few features by a batch's size


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A logreg and a dense run on a block4_pool cache of 10 digits per class (float16 storage, default precision)."""
    root = tmp_path_factory.mktemp("frozen")
    data = write_digits(root / "digits", per_class=10)
    cache = root / "block4.h5"
    extract = ["extract", str(data), "--cache", str(cache), "--weights", "none", "--image-size", "32"]
    assert main([*extract, "--layer", "block4_pool"]) == 0
    for head, settings in HEADS.items():
        assert (
            main(["train", str(cache), "--head", head, *settings, "--name", head, "--runs-dir", str(root / "runs")])
            == 0
        )
        config = json.loads((root / "runs" / head / "config.json").read_text())
        assert config["top_block"] == {"layer": "block4_pool", "block": "frozen"}
    return root / "runs"


def run_predictions(run_dir: Path) -> tuple[list[Path], list[str], np.ndarray, dict]:
    """The files of the run's val and test images, the classes, the run's probabilities, the recipe."""
    config = json.loads((run_dir / "config.json").read_text())
    with open(run_dir / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    classes = config["class_names"]
    probabilities = np.array([[float(row[f"p_{name}"]) for name in classes] for row in rows])
    root = Path(config["cache"]["data_root"])
    return [root / row["path"] for row in rows], classes, probabilities, config["cache"]["recipe"]


@pytest.mark.parametrize("head", HEADS)
def test_predict_gives_the_runs_own_probabilities(runs, head, tmp_path, capsys):
    files, classes, expected, _ = run_predictions(runs / head)
    out = tmp_path / "out.csv"
    assert main(["predict", head, *map(str, files), "--runs-dir", str(runs), "--out", str(out)]) == 0
    with open(out, newline="", encoding="utf-8") as handle:
        got = np.array([[float(row[f"p_{name}"]) for name in classes] for row in csv.DictReader(handle)])
    np.testing.assert_allclose(got, expected, atol=ATOL)


@pytest.mark.parametrize("head", HEADS)
def test_export_gives_the_runs_own_probabilities(runs, head, tmp_path):
    out = tmp_path / f"{head}.keras"
    assert main(["export", head, str(out), "--runs-dir", str(runs)]) == 0
    files, _, expected, recipe = run_predictions(runs / head)
    spec = ResizeSpec(recipe["image_size"], recipe["resize"], recipe["interpolation"])
    images = np.stack([read_image(str(path), spec)[0] for path in files])
    got = keras.ops.convert_to_numpy(keras.saving.load_model(out).predict(images, verbose=0))
    np.testing.assert_allclose(got, expected, atol=ATOL)
