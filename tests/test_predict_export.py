"""``pipeline predict`` and ``pipeline export`` agree with what ``train`` computed from the cache."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

import pipeline.serving.export  # noqa: F401 - registers the exported model's custom layers
from pipeline.cli import main
from pipeline.demo_data import write_digits
from pipeline.extraction.extract import ExtractOptions, run_extract
from pipeline.extraction.images import ResizeSpec, read_image

HEADS = {"logreg": [], "gap": ["--set", "epochs=3"], "dense": ["--set", "epochs=2", "--set", "units=32"]}
# Features pass through float16 storage, and a batch of another size rounds about 0.1% of them
# (measured) to the neighbouring float16 value, which moves a probability by up to about 1e-4.
ATOL = 1e-4


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One run per head on 15 digits per class; the cache stores float16 as by default."""
    root = tmp_path_factory.mktemp("predict")
    data = write_digits(root / "digits", per_class=15)
    cache = root / "digits.h5"
    run_extract(ExtractOptions(data=str(data), cache=str(cache), weights="none", image_size=32, seed=3))
    for head, settings in HEADS.items():
        assert main(["train", str(cache), "--head", head, *settings, "--name", head, "--runs-dir", str(root / "runs")]) == 0
    return root / "runs"


def run_predictions(run_dir: Path) -> tuple[list[str], list[str], np.ndarray, Path, dict]:
    """Paths, classes, probabilities of the run's val and test images; data root; recipe."""
    config = json.loads((run_dir / "config.json").read_text())
    with open(run_dir / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    classes = config["class_names"]
    probabilities = np.array([[float(row[f"p_{name}"]) for name in classes] for row in rows])
    return [row["path"] for row in rows], classes, probabilities, Path(config["cache"]["data_root"]), config["cache"]["recipe"]


@pytest.mark.parametrize("head", HEADS)
def test_exported_model_matches_run_predictions(runs, head, tmp_path, capsys):
    out = tmp_path / f"{head}.keras"
    assert main(["export", head, str(out), "--runs-dir", str(runs)]) == 0
    assert str(out) in capsys.readouterr().out
    model = keras.saving.load_model(out)
    paths, _, expected, data_root, recipe = run_predictions(runs / head)
    spec = ResizeSpec(recipe["image_size"], recipe["resize"], recipe["interpolation"])
    images = np.stack([read_image(str(data_root / path), spec)[0] for path in paths])
    got = keras.ops.convert_to_numpy(model.predict(images, verbose=0))
    np.testing.assert_allclose(got, expected, atol=ATOL)
    other_size = np.repeat(np.repeat(images[:2], 2, axis=1), 3, axis=2)
    probabilities = keras.ops.convert_to_numpy(model.predict(other_size, verbose=0))
    assert probabilities.shape == (2, expected.shape[1])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_predict_matches_run_predictions_and_skips_bad_files(runs, tmp_path, capsys):
    paths, classes, expected, data_root, _ = run_predictions(runs / "gap")
    folder = tmp_path / "new"
    (folder / "sub").mkdir(parents=True)
    for i, path in enumerate(paths[:6]):
        shutil.copy(data_root / path, folder / "sub" / f"{i:02d}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    single = data_root / paths[6]
    out = tmp_path / "out.csv"
    assert main(["predict", "gap", str(folder), str(single), "--runs-dir", str(runs), "--out", str(out), "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "7 images predicted, 1 skipped" in printed and "broken.png: not an image" in printed
    with open(out, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["path", "predicted", "confidence", *(f"p_{name}" for name in classes)]
    assert [row["path"] for row in rows] == [str(folder / "sub" / f"{i:02d}.png") for i in range(6)] + [str(single)]
    got = np.array([[float(row[f"p_{name}"]) for name in classes] for row in rows])
    np.testing.assert_allclose(got, expected[:7], atol=ATOL)
    assert [row["predicted"] for row in rows] == [classes[k] for k in expected[:7].argmax(axis=1)]


def test_predict_and_export_refuse_bad_input(runs, tmp_path, capsys):
    image = tmp_path / "one.png"
    paths, _, _, data_root, _ = run_predictions(runs / "logreg")
    shutil.copy(data_root / paths[0], image)
    assert main(["predict", "nope", str(image), "--runs-dir", str(runs)]) == 2
    assert "error: no run 'nope'" in capsys.readouterr().err
    assert main(["predict", "logreg", str(tmp_path / "missing.png"), "--runs-dir", str(runs)]) == 2
    assert "missing.png: no such file or folder" in capsys.readouterr().err
    assert main(["export", "logreg", str(tmp_path / "m.keras"), "--runs-dir", str(runs), "--weights", "random(seed=4)"]) == 2
    err = capsys.readouterr().err
    assert "made with other weights" in err and "pass --weights" in err and len(err.strip().splitlines()) == 1
    moved = tmp_path / "bigger"
    shutil.copytree(runs / "logreg", moved)
    config = json.loads((moved / "config.json").read_text())
    config["cache"]["recipe"]["image_size"] = 64
    (moved / "config.json").write_text(json.dumps(config))
    assert main(["predict", str(moved), str(image), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "the head takes features of shape (1, 1, 512)" in err and "(2, 2, 512)" in err


def test_predict_says_in_one_line_when_the_runs_gpu_decoder_cannot_run_here(runs, tmp_path, capsys):
    paths, _, _, data_root, _ = run_predictions(runs / "logreg")
    moved = tmp_path / "gpu-decoded"
    shutil.copytree(runs / "logreg", moved)
    config = json.loads((moved / "config.json").read_text())
    config["cache"]["recipe"]["decoder"] = "torchvision-0.21.0-cuda"
    (moved / "config.json").write_text(json.dumps(config))
    out = tmp_path / "p.csv"
    assert main(["predict", str(moved), str(data_root / paths[0]), "--out", str(out)]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "torchvision-0.21.0-cuda" in notes[0] and "cannot run here" in notes[0], notes
    assert main(["export", str(moved), str(tmp_path / "m.keras")]) == 0
    assert "decode with Pillow" in capsys.readouterr().out
