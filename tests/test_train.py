"""``pipeline train`` and ``pipeline runs`` end to end on a real digits cache."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from classifiers import load_head
from features_cache.reader import FeatureCache
from pipeline.cli import main
from pipeline.demo_data import write_digits
from pipeline.errors import PipelineError
from pipeline.extraction.extract import ExtractOptions, run_extract
from pipeline.training.runs import check_same_cache, load_run_config, read_index, resolve_run


def train(cache: Path, runs_dir: Path, *args: str) -> int:
    return main(["train", str(cache), "--runs-dir", str(runs_dir), *args])


def test_a_run_leaves_model_config_metrics_predictions_history(digits_cache, tmp_path):
    assert train(digits_cache, tmp_path, "--head", "logreg", "--name", "lr") == 0
    run_dir = resolve_run("lr", tmp_path)
    config = load_run_config(run_dir)
    with FeatureCache(digits_cache) as cache:
        assert config["cache"]["identity"] == cache.identity
        assert config["cache"]["recipe"]["image_size"] == 32
        assert config["class_names"] == cache.class_names
    assert {"name", "head", "params", "seed", "class_names", "cache", "created_at", "versions"} <= set(config)
    assert config["params"]["C"] == 1.0

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for split in ("val", "test"):
        assert metrics[split]["accuracy"] > 0.7
        assert {"macro_f1", "log_loss", "per_class", "confusion_matrix"} <= set(metrics[split])
        assert np.sum(metrics[split]["confusion_matrix"]) == metrics[split]["n"]
        assert set(metrics[split]["per_class"]["seven"]) >= {"precision", "recall"}

    with (run_dir / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:5] == ["path", "split", "true", "predicted", "confidence"]
    assert list(rows[0])[5:] == [f"p_{name}" for name in config["class_names"]]
    assert len(rows) == metrics["val"]["n"] + metrics["test"]["n"]
    assert json.loads((run_dir / "history.json").read_text())["n_iter"]

    head = load_head(run_dir)
    with FeatureCache(digits_cache) as cache:
        index = {path: i for i, path in enumerate(cache.paths)}
        X = cache.features(np.array([index[row["path"]] for row in rows[:20]]))
    expected = np.array([[float(row[f"p_{name}"]) for name in config["class_names"]] for row in rows[:20]])
    np.testing.assert_allclose(head.predict_proba(X), expected, atol=1e-5)
    assert [entry["name"] for entry in read_index(tmp_path)] == ["lr"]


def test_same_command_twice_gives_same_metrics(digits_cache, tmp_path):
    for name in ("first", "second"):
        assert train(digits_cache, tmp_path, "--head", "gap", "--set", "epochs=5", "--seed", "3", "--name", name) == 0
    first, second = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("first", "second"))
    assert first == second


def test_several_values_make_one_run_each_and_runs_lists_best_first(digits_cache, tmp_path, capsys):
    assert train(digits_cache, tmp_path, "--head", "logreg", "--set", "C=0.0001,1", "--name", "sweep") == 0
    names = {entry["name"]: entry for entry in read_index(tmp_path)}
    assert set(names) == {"sweep-C=0.0001", "sweep-C=1.0"}
    assert names["sweep-C=1.0"]["val"]["accuracy"] > names["sweep-C=0.0001"]["val"]["accuracy"]
    capsys.readouterr()
    assert main(["runs", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.index("sweep-C=1.0") < out.index("sweep-C=0.0001")


def test_streaming_from_the_cache_trains_too(digits_cache, tmp_path):
    assert train(digits_cache, tmp_path, "--head", "dense", "--set", "epochs=8", "--load", "stream",
                 "--class-weight", "balanced", "--name", "s") == 0
    config = load_run_config(tmp_path / "s")
    assert config["load"] == "stream" and config["class_weight"] == "balanced"
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["test"]["accuracy"] > 0.7


def test_a_cache_made_another_way_is_refused(digits_cache, tmp_path):
    assert train(digits_cache, tmp_path, "--head", "logreg", "--name", "r") == 0
    write_digits(tmp_path / "few", per_class=3)
    other = tmp_path / "other.h5"
    run_extract(ExtractOptions(data=str(tmp_path / "few"), cache=str(other), weights="none", image_size=40))
    with FeatureCache(other) as cache, pytest.raises(PipelineError, match="image_size: 40 != 32"):
        check_same_cache(load_run_config(tmp_path / "r"), cache)
    with FeatureCache(digits_cache) as cache:
        check_same_cache(load_run_config(tmp_path / "r"), cache)


def one_line_error(capsys, code: int, *fragments: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_bad_input_gives_one_line_errors(digits_cache, digits_dir, tmp_path, capsys):
    capsys.readouterr()
    one_line_error(capsys, train(tmp_path / "missing.h5", tmp_path, "--head", "gap"), "no such cache", "pipeline extract")
    one_line_error(capsys, train(digits_cache, tmp_path, "--head", "svm"), "unknown head 'svm'", "dense, gap, logreg")
    one_line_error(capsys, train(digits_cache, tmp_path, "--head", "gap", "--set", "units=3"), "no setting 'units'")
    one_line_error(capsys, train(digits_cache, tmp_path, "--head", "gap", "--set", "epochs=many"), "epochs=many")
    one_line_error(capsys, train(digits_cache, tmp_path, "--head", "logreg", "--set", "C"), "name=value")
    one_line_error(capsys, train(digits_cache, tmp_path, "--head", "logreg", "--split", "1,0,0"), "val split has no images")

    # Stored splits where class "one" has no training images (stage one itself refuses one-class data).
    pngs = {name: sorted((digits_dir / name).glob("*.png")) for name in ("zero", "one")}
    for split, classes in (("train", ["zero"]), ("val", ["zero", "one"]), ("test", ["zero", "one"])):
        for name in classes:
            (tmp_path / "stored" / split / name).mkdir(parents=True)
            for png in pngs[name][:4] if split != "test" else pngs[name][4:8]:
                shutil.copy(png, tmp_path / "stored" / split / name / png.name)
    stored = tmp_path / "stored.h5"
    run_extract(ExtractOptions(data=str(tmp_path / "stored"), cache=str(stored), weights="none", image_size=32))
    one_line_error(capsys, train(stored, tmp_path, "--head", "logreg"), "class one has no training images")
    with pytest.raises(PipelineError, match="no run 'nope'"):
        resolve_run("nope", tmp_path)
    assert not read_index(tmp_path)
