"""The README's notebook example runs as written, and its runs are ordinary runs for report and runs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from test_layouts import extract, write_layout

from features_cache import FeatureCache
from pipeline.cli import main
from pipeline.training.datasets import load_split, save_run

README = Path(__file__).resolve().parent.parent / "docs" / "how-to" / "notebook.md"


def readme_example() -> str:
    section = README.read_text(encoding="utf-8")
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_readme_notebook_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cache").mkdir()
    extract(write_layout(tmp_path / "photos", {"": 20}), Path("cache/photos.h5"))
    exec(compile(readme_example(), str(README), "exec"), {})
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    assert "notebook-logreg" in out and "notebook-dense" in out
    assert main(["report", "notebook-logreg"]) == 0
    assert re.search(r"errors: \d+/9 \(", capsys.readouterr().out)


def test_load_split_gives_the_splits_train_uses(tmp_path):
    cache_path = extract(write_layout(tmp_path / "photos", {"train": 10, "validation": 4}), tmp_path / "c.h5")
    with FeatureCache(cache_path) as cache:
        X, y, paths = load_split(cache, "val", pooling="max", return_paths=True)
        assert X.shape == (12, 512) and X.dtype == np.float32 and set(y) == set(cache.class_names)
        assert all(path.startswith("validation/") for path in paths)
        maps, _ = load_split(cache, "train")
        assert maps.shape == (30, 1, 1, 512)
        assert len(load_split(cache, "test")[0]) == 0  # train/ + validation/: no test split
        with pytest.raises(ValueError, match="not fitted"):
            save_run(LogisticRegression(), cache, runs_dir=tmp_path / "runs")
