"""Caches of a named layer and the ``finetune`` head: VGG16's block5 trained on cached block4_pool maps."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest

import pipeline.serving.export  # noqa: F401 - registers the exported model's custom layers
from classifiers import FinetuneHead, load_head
from classifiers.keras_head import floored
from features_cache.reader import FeatureCache
from pipeline.cli import main
from pipeline.demo_data import write_digits
from pipeline.errors import PipelineError
from pipeline.extraction.backbones import build_top
from pipeline.extraction.extract import ExtractOptions, run_extract
from pipeline.extraction.images import ResizeSpec, read_image
from pipeline.training.top import FrozenTop

SIZE = 64  # block4_pool maps 4x4x512, block5_pool 2x2x512
FINETUNE = ["--set", "head_epochs=3", "--set", "epochs=2", "--set", "units=16", "--set", "batch_size=16"]


def extract(data: Path, cache: Path, weights: Path, **overrides) -> None:
    settings = {"image_size": SIZE, "batch_size": 16, "precision": "float32", "weights": str(weights)}
    run_extract(ExtractOptions(data=str(data), cache=str(cache), **{**settings, **overrides}))


@pytest.fixture(scope="module")
def caches(tmp_path_factory, weights_file) -> dict[str, Path]:
    """The same 80 digits as block4_pool maps and as the backbone's output, with self-saved weights."""
    root = tmp_path_factory.mktemp("finetune")
    data = write_digits(root / "digits", per_class=8)
    found = {"data": data, "block4": root / "block4.h5", "output": root / "output.h5", "runs": root / "runs"}
    extract(data, found["block4"], weights_file, layer="block4_pool")
    extract(data, found["output"], weights_file)
    return found


def test_a_layer_cache_records_its_layer_and_keeps_old_identities(caches, capsys):
    with FeatureCache(caches["block4"]) as block4, FeatureCache(caches["output"]) as output:
        assert block4.feature_shape == (4, 4, 512) and output.feature_shape == (2, 2, 512)
        assert block4.recipe.layer == "block4_pool" and output.recipe.layer == "output"
        assert block4.identity != output.identity
        assert block4.recipe.weights_sha256 == output.recipe.weights_sha256  # the whole backbone's weights
        # an output cache's identity is what it was before layers were recorded: the field left out
        assert output.recipe.fingerprint() == output.identity
    assert main(["info", str(caches["block4"])]) == 0
    assert "layer block4_pool" in capsys.readouterr().out


def test_a_cache_of_one_layer_is_never_extended_with_another(caches, weights_file, capsys):
    before = caches["block4"].read_bytes()
    code = main(["extract", str(caches["data"]), "--cache", str(caches["block4"]), "--weights", str(weights_file),
                 "--image-size", str(SIZE), "--precision", "float32", "--layer", "block3_pool"])
    err = capsys.readouterr().err
    assert code == 2 and "layer: block4_pool != block3_pool" in err and len(err.strip().splitlines()) == 1
    assert caches["block4"].read_bytes() == before
    code = main(["extract", str(caches["data"]), "--cache", str(caches["block4"]) + ".x.h5", "--weights", str(weights_file),
                 "--image-size", str(SIZE), "--layer", "block9_pool"])
    err = capsys.readouterr().err
    assert code == 2 and "block9_pool: vgg16 has no such layer" in err and "block4_pool" in err


def test_the_frozen_top_block_on_block4_maps_gives_the_output_cache(caches):
    with FeatureCache(caches["block4"]) as block4, FeatureCache(caches["output"]) as output:
        through = FrozenTop(block4.recipe)(block4.features())
        np.testing.assert_allclose(through, output.features(), rtol=2e-2, atol=2e-2 * float(np.abs(through).max()))


def test_the_top_block_is_refused_with_other_weights(caches):
    with FeatureCache(caches["block4"]) as cache:
        recipe = cache.recipe
    with pytest.raises(PipelineError, match="not the ones the cache was made with"):
        build_top("vgg16", weights="none", image_size=SIZE, layer="block4_pool", expected_sha256=recipe.weights_sha256)


def test_finetune_trains_in_two_phases_and_moves_only_in_the_second(caches, tmp_path):
    with FeatureCache(caches["block4"]) as cache:
        X, y = cache.features().astype(np.float32), np.asarray(cache.class_names)[cache.labels]
        recipe = cache.recipe
    top_path = tmp_path / "top.keras"
    build_top("vgg16", weights=recipe.weights, image_size=SIZE, layer="block4_pool",
              expected_sha256=recipe.weights_sha256).save(top_path)
    initial = [np.asarray(w) for w in keras.saving.load_model(top_path).get_weights()]

    def block5(head: FinetuneHead) -> list[np.ndarray]:
        return [np.asarray(w) for w in head.model_.layers[1].get_weights()]

    frozen = FinetuneHead(top=str(top_path), head_epochs=3, epochs=0, units=16, verbose=0).fit(X, y)
    assert frozen.history_["phase"] == ["head"] * 3
    assert all(np.array_equal(a, b) for a, b in zip(block5(frozen), initial))
    train, val = np.arange(len(X)) % 4 != 0, np.arange(len(X)) % 4 == 0  # every class in both
    tuned = FinetuneHead(top=str(top_path), head_epochs=3, epochs=2, units=16, verbose=0).fit(
        X[train], y[train], X_val=X[val], y_val=y[val])
    assert tuned.history_["phase"] == ["head"] * 3 + ["finetune"] * 2 and len(tuned.history_["val_loss"]) == 5
    assert any(not np.allclose(a, b) for a, b in zip(block5(tuned), initial))
    proba = tuned.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-6)
    tuned.save(tmp_path / "saved")
    np.testing.assert_allclose(load_head(tmp_path / "saved").predict_proba(X), proba, atol=1e-6)
    with pytest.raises(ValueError, match="takes maps of shape"):
        FinetuneHead(top=str(top_path), verbose=0).fit(X[:, :2, :2], y)


def test_nearly_silent_channels_of_the_moving_block_are_not_scaled_up_a_thousandfold():
    variance = np.array([1e-9, 1e-6, 4.0, 5.0, 6.0], dtype=np.float32)
    np.testing.assert_allclose(floored(variance), [0.04, 0.04, 4.0, 5.0, 6.0])  # a hundredth of the median (4) at least
    assert floored(variance).dtype == np.float32


def test_a_diverging_phase_is_one_line_naming_the_setting_to_lower(caches, capsys):
    code = main(["train", str(caches["block4"]), "--head", "finetune", *FINETUNE, "--set", "finetune_learning_rate=1e9",
                 "--runs-dir", str(caches["runs"]), "--name", "diverged"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "the finetune phase diverged" in err and "--set finetune_learning_rate=1e+08" in err
    assert not (caches["runs"] / "diverged").exists()


def test_finetune_on_an_output_cache_is_refused_in_one_line(caches, capsys):
    code = main(["train", str(caches["output"]), "--head", "finetune", "--runs-dir", str(caches["runs"])])
    err = capsys.readouterr().err
    assert code == 2 and "--layer block4_pool" in err and len(err.strip().splitlines()) == 1


def run_probabilities(run_dir: Path) -> tuple[list[str], np.ndarray]:
    config = json.loads((run_dir / "config.json").read_text())
    with open(run_dir / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [row["path"] for row in rows], np.array([[float(row[f"p_{c}"]) for c in config["class_names"]] for row in rows])


@pytest.mark.parametrize("head, settings", [("finetune", FINETUNE), ("dense", ["--set", "epochs=2", "--set", "units=16"])])
def test_predict_and_export_agree_with_the_run(caches, head, settings, tmp_path, capsys):
    """The exported model (backbone to block4_pool, block5 fine-tuned or frozen, head) and ``predict``
    give the run's own probabilities for its val and test images."""
    runs = caches["runs"]
    assert main(["train", str(caches["block4"]), "--head", head, *settings, "--name", head, "--runs-dir", str(runs)]) == 0
    config = json.loads((runs / head / "config.json").read_text())
    assert config["top_block"] == {"layer": "block4_pool", "block": "fine-tuned" if head == "finetune" else "frozen"}
    paths, expected = run_probabilities(runs / head)
    files = [str(caches["data"] / path) for path in paths]
    out = tmp_path / "p.csv"
    assert main(["predict", head, *files, "--runs-dir", str(runs), "--out", str(out)]) == 0
    with open(out, newline="", encoding="utf-8") as handle:
        predicted = np.array([[float(row[k]) for k in row if k.startswith("p_")] for row in csv.DictReader(handle)])
    np.testing.assert_allclose(predicted, expected, atol=1e-3)
    exported = tmp_path / f"{head}.keras"
    assert main(["export", head, str(exported), "--runs-dir", str(runs)]) == 0
    capsys.readouterr()
    model = keras.saving.load_model(exported)
    images = np.stack([read_image(file, ResizeSpec(SIZE, "stretch", "bilinear"))[0] for file in files])
    got = keras.ops.convert_to_numpy(model.predict(images, verbose=0))
    assert np.abs(got - predicted).max() <= 0.01
    assert np.array_equal(got.argmax(axis=1), predicted.argmax(axis=1))
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    assert "top=" not in capsys.readouterr().out  # the top block's file is train's, not a setting the table should show
