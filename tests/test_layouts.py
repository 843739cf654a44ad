"""Stage two on every layout people bring, and the bottleneck-features recipe end to end through the Makefile.

The recipe keeps its photos as ``train/`` and ``validation/`` class folders (no ``test/``)
and ends with the number of misclassified validation images; here the classes are
tomato, pumpkin and watermelon in Korean, drawn with Pillow.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.cli import main
from pipeline.extraction.extract import ExtractOptions, run_extract
from pipeline.training.runs import load_run_config, read_index

REPO = Path(__file__).resolve().parent.parent
CLASSES = {"토마토": ((200, 30, 30), "circle"), "호박": ((230, 130, 20), "wide"), "수박": ((40, 150, 50), "stripes")}


def fruit(kind: str, colour: tuple[int, int, int], seed: int) -> Image.Image:
    """A fruit-like drawing: the class sets colour and shape, the seed position, size, background and noise."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (64, 48), tuple(int(v) for v in rng.integers(170, 255, 3)))
    draw = ImageDraw.Draw(image)
    cx, cy, r = rng.integers(22, 42), rng.integers(18, 30), rng.integers(10, 16)
    box = (cx - r * (1.5 if kind == "wide" else 1), cy - r, cx + r * (1.5 if kind == "wide" else 1), cy + r)
    jitter = rng.integers(-25, 25, 3)
    draw.ellipse(box, fill=tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colour, jitter)))
    if kind == "stripes":
        for offset in range(-r, r, 5):
            draw.line((cx + offset, cy - r + 2, cx + offset, cy + r - 2), fill=(20, 70, 20), width=2)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 8, (48, 64, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_layout(root: Path, counts: dict[str, int]) -> Path:
    """``counts`` maps a split folder ('' for none) to images per class."""
    seed = 0
    for split, per_class in counts.items():
        for name, (colour, kind) in CLASSES.items():
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                fruit(kind, colour, seed).save(folder / f"{name}_{i:03d}.jpg", quality=90)
                seed += 1
    return root


def extract(data: Path, cache: Path) -> Path:
    run_extract(ExtractOptions(data=str(data), cache=str(cache), weights="none", image_size=32))
    return cache


LAYOUTS = {
    "train+validation": ({"train": 20, "validation": 6}, {"train": 60, "val": 18, "test": 0}),
    "train+test": ({"train": 20, "test": 6}, {"val": 12, "test": 18}),
    "train only": ({"train": 20}, {"val": 12, "test": 0}),
    "no split folders": ({"": 20}, {"val": 9, "test": 9}),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_trains_and_reports(layout, tmp_path, capsys):
    counts, expected = LAYOUTS[layout]
    cache = extract(write_layout(tmp_path / "data", counts), tmp_path / "c.h5")
    runs = tmp_path / "runs"
    assert main(["train", str(cache), "--head", "logreg", "--runs-dir", str(runs), "--name", "lr"]) == 0
    out = capsys.readouterr().out
    split_counts = load_run_config(runs / "lr")["split"]["counts"]
    for split, n in expected.items():
        assert split_counts[split] == n, (split_counts, out)
    assert split_counts["train"] + split_counts["val"] + split_counts["test"] == sum(counts.values()) * 3
    if expected["test"] == 0:
        assert "no test split: metrics and the report use val" in out
        assert read_index(runs)[0]["test"] is None
    assert "next: make report RUN=lr" in out

    assert main(["report", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    held_out = "test" if expected["test"] else "val"
    assert "report of the latest run, lr" in out
    assert re.search(rf"errors: \d+/{expected[held_out]} \(", out), out
    assert main(["runs", "--runs-dir", str(runs)]) == 0


def make(*args: str) -> str:
    """A Makefile target run as a user would, in this project's environment; returns its output."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "-o", "setup", f"PY={sys.executable}", *args],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_recipe_end_to_end_through_the_makefile(tmp_path):
    """extract, train-head HEAD=dense and report on train/ + validation/: errors on the validation images."""
    data = write_layout(tmp_path / "photos", {"train": 20, "validation": 6})
    cache, runs = tmp_path / "cache" / "photos.h5", tmp_path / "runs"
    make("extract", f"DATA={data}", f"CACHE={cache}", "IMAGE_SIZE=32", "WEIGHTS=none")
    trained = make("train-head", f"CACHE={cache}", "HEAD=dense", "SET=epochs=4", f"RUNS_DIR={runs}")
    run = re.search(r"^run (\S+): ", trained, re.MULTILINE).group(1)
    assert "no test split" in trained and f"next: make report RUN={run}" in trained

    history = json.loads((runs / run / "history.json").read_text())
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history) and len(history["loss"]) == 4
    assert "Epoch 4/4" in trained and "val_accuracy" in trained  # Keras's own per-epoch lines

    reported = make("report", f"RUNS_DIR={runs}")  # no RUN: the latest run
    assert f"report of the latest run, {run}" in reported
    line = re.search(r"errors: (\d+)/18 \(", reported)
    assert line, reported
    config = load_run_config(runs / run)
    assert config["params"]["units"] == 256 and config["params"]["optimizer"] == "rmsprop"  # the recipe's head
    page = (runs / run / "report.html").read_text()
    assert "Learning curve" in page and 'class="curve-val"' in page
