"""``train --cv K``: out-of-fold accuracy over K stratified folds of train + val grouped by content and
near-duplicates, recorded with the run and shown in the runs table."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from image_factory import make_class_folders
from PIL import Image

from features_cache.reader import FeatureCache
from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.health.pixels import Thumbnails
from pipeline.training.cv import fold_rows, twin_groups
from pipeline.training.runs import read_index


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """3 classes of 12 photo-like images; 4 with a byte copy and 4 with a re-encoded copy."""
    root = tmp_path_factory.mktemp("cv")
    data = make_class_folders(root / "data", {"warm": 12, "cool": 12, "green": 12}, size=(96, 72))
    for k, path in enumerate(sorted(data.rglob("img_*.jpg"))[::4][:8]):
        if k % 2:
            shutil.copyfile(path, path.with_name(f"copy_{k}.jpg"))
        else:
            Image.open(path).convert("RGB").save(path.with_name(f"again_{k}.jpg"), "JPEG", quality=60)
    found = root / "c.h5"
    assert main(["extract", str(data), "--cache", str(found), "--weights", "none", "--image-size", "32"]) == 0
    return found


def test_folds_keep_copies_and_near_duplicates_together(cache):
    with FeatureCache(cache) as opened:
        keys = [record.content_hash for record in opened.records()]
        groups = twin_groups(keys, Thumbnails(opened.data_root, opened.paths))
        labels = np.asarray(opened.class_names)[opened.labels]
        paths = opened.paths
    twins = [(i, j) for i in range(len(paths)) for j in range(len(paths)) if i < j and groups[i] == groups[j]]
    named = {(paths[i], paths[j]) for i, j in twins}
    assert len(twins) >= 8 and all(any(("copy_" in p or "again_" in p) for p in pair) for pair in named), named
    for train_rows, held_rows in fold_rows(labels, groups, 4, seed=0):
        assert not set(groups[train_rows]) & set(groups[held_rows])
        assert set(labels[held_rows]) == set(labels)  # stratified: every class in every fold
    with pytest.raises(PipelineError, match="--cv 20: class .* fewer than the folds; pass --cv"):
        fold_rows(labels, groups, 20, seed=0)


def test_train_cv_records_and_shows_out_of_fold_accuracy(cache, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", str(cache), "--head", "logreg", "--cv", "3", "--runs-dir", str(runs), "--name", "lr"]) == 0
    cv = json.loads((runs / "lr" / "config.json").read_text())["cv"]
    assert cv["folds"] == 3 and len(cv["accuracies"]) == 3
    assert cv["mean"] == pytest.approx(np.mean(cv["accuracies"]), abs=1e-6)
    assert cv["std"] == pytest.approx(np.std(cv["accuracies"]), abs=1e-6)
    assert read_index(runs)[0]["cv"] == cv
    capsys.readouterr()
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    assert f"{cv['mean']:.3f} ± {cv['std']:.3f} (3-fold)" in capsys.readouterr().out
