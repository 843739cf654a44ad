"""Outputs that say what really happened: metrics equal scikit-learn's, every visible file is read,
and a cache's identity is what its features are, not where its weights file lies."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from image_factory import photo, save
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from classifiers import EstimatorHead, load_head
from features_cache import schema
from features_cache.reader import FeatureCache
from features_cache.shards import open_shard
from pipeline.analysis.html_page import per_class_metrics
from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.extraction.extract import ExtractOptions, run_extract
from pipeline.extraction.options import request_fingerprint
from pipeline.training.datasets import load_split, save_run
from pipeline.training.metrics import evaluate
from pipeline.training.runs import check_same_cache, load_run_config

NUMBERED = [str(i) for i in range(11)]  # sorted as names: 0, 1, 10, 2, ... so positions are not values


def coloured(seed: int, hue: int) -> Image.Image:
    """A photo-like image pushed hard towards one of a few colours, so random-weight features separate classes."""
    pixels = np.asarray(photo(40, 40, seed=seed)).astype(np.int16) // 3
    pixels[..., hue % 3] += 80 + 40 * (hue // 3)
    pixels[: 10 * (1 + hue % 4)] += 40  # a band whose height varies by class too
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def numbered_classes(root: Path, per_class: int = 8) -> Path:
    """``root/0/ ... root/10/``: class folders named by numbers, each its own colour."""
    for hue, name in enumerate(NUMBERED):
        for i in range(per_class):
            save(coloured(100 * hue + i, hue), root / name / f"img_{i}.png", "PNG")
    return root


def extract_options(data: Path, cache: Path, weights: str | Path = "none") -> ExtractOptions:
    return ExtractOptions(data=str(data), cache=str(cache), weights=str(weights), image_size=32, batch_size=16)


def extract_report(data: Path, cache: Path, weights: str | Path = "none"):
    return run_extract(extract_options(data, cache, weights))


def extract(data: Path, cache: Path, weights: str | Path = "none") -> Path:
    extract_report(data, cache, weights)
    return cache


@pytest.fixture(scope="module")
def numbered_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("numbered")
    return extract(numbered_classes(root / "photos"), root / "numbered.h5")


# 1. save_run with integer labels --------------------------------------------------------------


def test_save_run_with_integer_labels_records_sklearns_own_accuracy(numbered_cache, tmp_path):
    with FeatureCache(numbered_cache) as cache:
        assert cache.class_names[:3] == ["0", "1", "10"]
        X_train, y_train = load_split(cache, "train", pooling="avg")
        X_test, y_test = load_split(cache, "test", pooling="avg")
        clf = LogisticRegression(max_iter=2000).fit(X_train, y_train.astype(int))
        run = save_run(clf, cache, pooling="avg", runs_dir=tmp_path / "runs", name="ints")
    predicted = clf.predict(X_test)
    expected = accuracy_score(y_test.astype(int), predicted)
    assert expected > 0.3  # far above the 1/11 of chance: a mix-up of columns shows
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert metrics["accuracy"] == pytest.approx(expected)
    order = [int(name) for name in cache.class_names]
    assert metrics["confusion_matrix"] == confusion_matrix(y_test.astype(int), predicted, labels=order).tolist()

    loaded = load_head(run)  # evaluate and predict read the saved head: its 0..10 are labels there too
    columns = np.argmax(loaded.class_probabilities(X_test, cache.class_names), axis=1)
    assert [int(cache.class_names[c]) for c in columns] == predicted.tolist()


def test_a_head_saved_before_labels_were_recorded_keeps_its_indices(numbered_cache, tmp_path):
    with FeatureCache(numbered_cache) as cache:
        X, y = load_split(cache, "train", pooling="avg")
        names = cache.class_names
    head = EstimatorHead(estimator=LogisticRegression(max_iter=500), pooling="avg").fit(X, np.array([names.index(v) for v in y]))
    head.save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "head.json").read_text())
    del meta["classes_are"]  # as written before: int classes were positions in the run's class names
    (tmp_path / "old" / "head.json").write_text(json.dumps(meta))
    proba = load_head(tmp_path / "old").class_probabilities(X, names)
    np.testing.assert_allclose(proba, head.predict_proba(X))


def test_save_run_refuses_an_integer_class_the_cache_does_not_hold(numbered_cache, tmp_path):
    with FeatureCache(numbered_cache) as cache:
        X_train, y_train = load_split(cache, "train", pooling="avg")
        clf = LogisticRegression(max_iter=200).fit(X_train, y_train.astype(int) + 1)  # 1..11: no class 11
        with pytest.raises(PipelineError, match=r"^LogisticRegression of .*classes 11 are not among") as error:
            save_run(clf, cache, pooling="avg", runs_dir=tmp_path / "runs")
    assert "\n" not in str(error.value)


# 2. Macro F1 -------------------------------------------------------------------------------------


def test_macro_f1_counts_a_class_predicted_but_absent_as_sklearn_does():
    names = ["cat", "dog", "fox", "owl"]
    y_true = np.array([0, 0, 1, 1])
    proba = np.eye(4)[[0, 0, 1, 2]]  # one dog called a fox; there is no fox; no owl at all
    metrics = evaluate(y_true, proba, names)
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, [0, 0, 1, 2], average="macro"))
    assert round(metrics["macro_f1"], 3) == 0.556
    shown = per_class_metrics(np.array(metrics["confusion_matrix"]), names)  # the report page's table
    assert [(r.precision, r.recall, r.f1, r.support) for r in shown] == [
        pytest.approx(tuple(metrics["per_class"][name].values())) for name in names
    ]


def test_a_runs_recorded_macro_f1_is_sklearns(numbered_cache, tmp_path):
    with FeatureCache(numbered_cache) as cache:
        X_train, y_train = load_split(cache, "train", pooling="avg")
        X_test, y_test = load_split(cache, "test", pooling="avg")
        clf = LogisticRegression(C=0.01, max_iter=200).fit(X_train, y_train)  # weak: some classes never predicted
        run = save_run(clf, cache, pooling="avg", runs_dir=tmp_path / "runs", name="weak")
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_test, clf.predict(X_test), average="macro"))


# 3. Names that start with __ --------------------------------------------------------------------


def test_names_starting_with_double_underscores_are_data_and_only_dot_names_are_hidden(tmp_path):
    root = tmp_path / "photos"
    for name in ("cat/img_0.png", "cat/__init__.png", "__background__/img_0.png", "__background__/img_1.png"):
        save(coloured(len(name), len(name) % 5), root / name, "PNG")
    save(coloured(1, 1), root / "cat" / ".thumb.png", "PNG")  # dot-files and dot-folders stay hidden
    save(coloured(2, 2), root / ".trash" / "old.png", "PNG")
    cache_path = extract(root, tmp_path / "c.h5")
    with FeatureCache(cache_path) as cache:
        assert cache.class_names == ["__background__", "cat"]
        assert cache.paths == ["__background__/img_0.png", "__background__/img_1.png", "cat/__init__.png", "cat/img_0.png"]
        assert cache.skipped() == []


# 4. Recipe identity keyed on the weights' values, not their path ------------------------------


def seeded_weights(path: Path, seed: int) -> Path:
    keras.utils.set_random_seed(seed)
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(path)
    return path


def two_classes(root: Path) -> Path:
    for i in range(6):
        save(coloured(i, i % 2), root / ("ab"[i % 2]) / f"img_{i}.png", "PNG")
    return root


def old_identity(recipe: schema.Recipe) -> str:
    """The identity as written while the weights' path was part of it."""
    fields = dataclasses.asdict(recipe)
    if fields["decoder"] == schema.PILLOW:
        del fields["decoder"]
    if fields["layer"] == schema.OUTPUT_LAYER and not fields["view"]:  # fields that came after the path left
        del fields["layer"], fields["view"]
    payload = json.dumps({"schema_version": schema.SCHEMA_VERSION, **fields}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def written_before(cache_path: Path) -> str:
    """Make the index carry the identity the path-keyed code gave it (its shards' sizes are in the index)."""
    with FeatureCache(cache_path) as cache:
        identity = old_identity(cache.recipe)
    with h5py.File(cache_path, "r+") as f:
        f.attrs["identity"] = identity
    return identity


def test_a_copy_of_the_weights_at_another_path_is_the_same_recipe(tmp_path, weights_file, capsys):
    data = two_classes(tmp_path / "photos")
    copy = tmp_path / "elsewhere" / weights_file.name
    copy.parent.mkdir()
    shutil.copyfile(weights_file, copy)
    cache_path = extract(data, tmp_path / "c.h5", str(weights_file))
    assert extract_report(data, cache_path, copy).extracted == 0
    with FeatureCache(cache_path) as cache, FeatureCache(extract(data, tmp_path / "fresh.h5", str(copy))) as fresh:
        assert fresh.identity == cache.identity and fresh.recipe == cache.recipe
        assert fresh.recipe.weights == str(copy.resolve()) != cache.recipe.weights  # recorded, never compared
    assert request_fingerprint(extract_options(data, cache_path, weights_file)) == request_fingerprint(
        extract_options(data, cache_path, copy)
    )
    save(coloured(99, 0), data / "a" / "new.png", "PNG")
    assert extract_report(data, cache_path, copy).extracted == 1
    assert main(["info", str(cache_path)]) == 0
    assert str(copy.resolve()) in capsys.readouterr().out
    other = seeded_weights(tmp_path / "other.weights.h5", 99)
    with pytest.raises(PipelineError, match=r"made with other settings \(weights: .*\(sha256 \w{12}\) != .*other\.weights\.h5"):
        extract_report(data, cache_path, other)


def test_a_cache_whose_identity_held_the_weights_path_keeps_working(tmp_path, weights_file):
    data = two_classes(tmp_path / "photos")
    cache_path = extract(data, tmp_path / "c.h5", str(weights_file))
    identity = written_before(cache_path)
    with FeatureCache(cache_path) as cache:
        X, y = load_split(cache, "all", pooling="avg")
        run = save_run(LogisticRegression().fit(X, y), cache, pooling="avg", runs_dir=tmp_path / "runs", name="old")
    assert load_run_config(run)["cache"]["identity"] == identity

    copy = tmp_path / "moved.weights.h5"
    shutil.copyfile(weights_file, copy)
    save(coloured(99, 0), data / "a" / "new.png", "PNG")
    assert extract_report(data, cache_path, copy).extracted == 1
    with FeatureCache(cache_path) as cache:
        assert cache.identity != identity  # rewritten under the new identity...
        check_same_cache(load_run_config(run), cache)  # ...and the run trained on it still scores it
    with pytest.raises(PipelineError, match="made with other settings"):
        extract_report(data, cache_path, seeded_weights(tmp_path / "other.weights.h5", 99))


def test_a_shard_whose_identity_held_the_weights_path_is_still_adopted(tmp_path, weights_file):
    cache_path = extract(two_classes(tmp_path / "photos"), tmp_path / "c.h5", str(weights_file))
    with FeatureCache(cache_path) as cache:
        recipe = cache.recipe
    shard = tmp_path / "old-shard.h5"
    shutil.copyfile(next(schema.shards_dir(cache_path).glob("shard-*.h5")), shard)
    with h5py.File(shard, "r+") as f:
        f.attrs["identity"] = old_identity(recipe)
    moved = dataclasses.replace(recipe, weights="/elsewhere/vgg16_notop.weights.h5")
    assert len(open_shard(shard, moved, read_features=True).records) > 0
    with pytest.raises(ValueError, match="made with other settings"):
        open_shard(shard, dataclasses.replace(moved, weights_sha256="0" * 64), read_features=False)
