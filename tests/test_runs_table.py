"""The runs table compares like with like: one table per set of scored images, the cache's size,
backbone and layer as columns, only non-default settings, a Wilson 95% interval, the ties order stated."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from features_cache.reader import FeatureCache
from pipeline.cli import main
from pipeline.commands.runs import ORDER, settings_text, wilson
from pipeline.demo_data import write_digits
from pipeline.training.datasets import load_split, save_run
from pipeline.training.runs import read_index


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Logreg runs on two caches of the same digits (32 and 40 px), one on other digits, and a save_run."""
    root = tmp_path_factory.mktemp("runs_table")
    same, other = write_digits(root / "same", per_class=8), write_digits(root / "other", per_class=6)
    found = {"runs": root / "runs", "small": root / "small.h5", "large": root / "large.h5", "other": root / "other.h5"}
    for data, cache, size in ((same, "small", 32), (same, "large", 40), (other, "other", 32)):
        extract = ["extract", str(data), "--cache", str(found[cache]), "--weights", "none", "--image-size", str(size)]
        assert main(extract) == 0
        train = ["train", str(found[cache]), "--head", "logreg", "--runs-dir", str(found["runs"]), "--name", cache]
        assert main(train) == 0
    with FeatureCache(found["small"]) as cache:
        X, y = load_split(cache, "train", pooling="avg")
        fitted = LogisticRegression(C=0.5, max_iter=200).fit(X, y)
        save_run(fitted, cache, pooling="avg", runs_dir=found["runs"], name="sk")
    return found


def tables(text: str) -> dict[str, str]:
    """Each printed table's title line -> its body."""
    found, title = {}, None
    for line in text.splitlines():
        if " scored " in line and ORDER in line:
            title = line.strip()
            found[title] = ""
        elif title:
            found[title] += line + "\n"
    return found


def test_runs_are_grouped_by_the_images_they_were_scored_on(runs, capsys):
    capsys.readouterr()
    assert main(["runs", "--runs-dir", str(runs["runs"])]) == 0
    printed = tables(capsys.readouterr().out)
    assert len(printed) == 2, printed  # the same digits at 32 and 40 px share their test images
    (same_title, same), (other_title, other) = sorted(printed.items(), key=lambda item: -len(item[1]))
    assert same_title.startswith("3 runs scored on the same") and other_title.startswith("1 run scored on the same")
    assert all(name in same for name in ("small", "large", "sk")) and "other" in other and "small" not in other
    assert "size" in same and "backbone" in same and "layer" in same and "vgg16" in same and " 40 " in same
    assert "[95% CI]" in same and "n=" in same


def test_cache_keeps_the_runs_scored_on_its_held_out_images(runs, capsys):
    capsys.readouterr()
    assert main(["runs", "--runs-dir", str(runs["runs"]), "--cache", str(runs["other"])]) == 0
    printed = tables(capsys.readouterr().out)
    assert len(printed) == 1 and "other" in next(iter(printed.values()))


def test_settings_show_only_what_differs_from_the_defaults(runs):
    entries = {entry["name"]: entry for entry in read_index(runs["runs"])}
    assert settings_text(entries["small"]) == "defaults"
    text = settings_text(entries["sk"])
    assert "C=0.5" in text and "estimator__" not in text and len(text) <= 80


def test_wilson_interval_makes_one_image_in_55_a_tie():
    low_one_wrong, high_one_wrong = wilson(54 / 55, 55)
    low_all, high_all = wilson(1.0, 55)
    assert math.isclose(low_all, 55 / (55 + 1.959963984540054**2), rel_tol=1e-12) and high_all == 1.0
    assert low_all < 54 / 55 < high_one_wrong  # the intervals overlap: a tie
    assert np.round([low_one_wrong, high_one_wrong], 3).tolist() == [0.904, 0.997]
