"""``pipeline evaluate``: a run scored on another cache, and caches made another way refused."""

from __future__ import annotations

import csv
import shutil

import pytest

from pipeline.cli import main
from pipeline.demo_data import write_digits
from pipeline.extraction.extract import ExtractOptions, run_extract


@pytest.fixture(scope="module")
def run_dir(digits_cache, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    assert main(["train", str(digits_cache), "--head", "logreg", "--name", "lr", "--runs-dir", str(runs)]) == 0
    return runs / "lr"


def extract(data, cache, size: int = 32):
    run_extract(ExtractOptions(data=str(data), cache=str(cache), weights="none", image_size=size))
    return cache


def test_new_photos_of_some_classes_are_scored(run_dir, tmp_path, capsys):
    digits = write_digits(tmp_path / "all", per_class=60)
    new = tmp_path / "new"
    for name in ("one", "seven"):  # images 41..60 of each: never seen in training
        for path in sorted((digits / name).iterdir())[40:]:
            (new / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, new / name / path.name)
    cache = extract(new, tmp_path / "new.h5")
    out = tmp_path / "scores.csv"
    assert main(["evaluate", str(run_dir), str(cache), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    accuracy = float(printed.split("accuracy ")[1].split(",")[0])
    # Later digits come from other writers: well above the 10-class chance of 0.1, below the run's own test score.
    assert "40 images" in printed and accuracy > 0.5
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 40 and {row["true"] for row in rows} == {"one", "seven"}
    assert sum(row["true"] == row["predicted"] for row in rows) == round(accuracy * 40)


def test_a_cache_made_another_way_is_refused(run_dir, digits_dir, tmp_path, capsys):
    cache = extract(digits_dir, tmp_path / "other.h5", size=40)
    assert main(["evaluate", str(run_dir), str(cache)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "image_size: 40 != 32" in err, err


def test_a_class_the_head_does_not_know_is_refused(run_dir, tmp_path, capsys):
    digits = write_digits(tmp_path / "d", per_class=3)
    shutil.move(digits / "nine", digits / "eleven")
    cache = extract(digits, tmp_path / "eleven.h5")
    assert main(["evaluate", str(run_dir), str(cache)]) == 2
    assert "classes eleven are not among the run's" in capsys.readouterr().err
