"""Every command, fed bad arguments and damaged files, ends in one line naming the problem, never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.cli import COMMANDS, main
from pipeline.demo_data import write_digits


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A digits cache, a logreg and a dense run, and damaged copies of each kind of file."""
    root = tmp_path_factory.mktemp("cli-errors")
    data = write_digits(root / "digits", per_class=6)
    cache = root / "digits.h5"
    assert main(["extract", str(data), "--cache", str(cache), "--weights", "none", "--image-size", "32"]) == 0
    runs = root / "runs"
    assert main(["train", str(cache), "--head", "logreg", "--name", "lr", "--runs-dir", str(runs)]) == 0
    assert main(["train", str(cache), "--head", "dense", "--set", "epochs=1", "--name", "dense", "--runs-dir", str(runs)]) == 0
    damaged = {}
    for name, source, damage in [
        ("no-model", "lr", lambda run: (run / "model.joblib").unlink()),
        ("bad-head-json", "lr", lambda run: (run / "head.json").write_text("{not json")),
        ("truncated-keras", "dense", lambda run: (run / "model.keras").write_bytes((run / "model.keras").read_bytes()[:200])),
        ("no-predictions", "lr", lambda run: (run / "predictions.csv").unlink()),
        ("bad-config", "lr", lambda run: (run / "config.json").write_text("[1, 2]")),
    ]:
        shutil.copytree(runs / source, runs / name)
        damage(runs / name)
        damaged[name] = runs / name
    foreign = root / "foreign.h5"
    with h5py.File(foreign, "w") as f:  # says it is a complete cache of our schema, holds something else
        with h5py.File(cache) as real:
            for key, value in real.attrs.items():
                f.attrs[key] = value
        f["features"] = np.zeros((3, 2))
    text = root / "notes.h5"
    text.write_text("just text")
    a_file = root / "a-file"
    a_file.write_text("x")
    index = runs / "index.jsonl"
    index.write_text(index.read_text() + "[1, 2, 3]\n\"a string\"\n{\"name\": 5}\n")
    return {"root": root, "data": data, "cache": cache, "runs": runs, "foreign": foreign, "text": text, "file": a_file, **damaged}


def cases(w: dict[str, Path]) -> list[tuple[list[str], str]]:
    """(argv, a fragment the one-line error must hold) for every command."""
    cache, runs, data = str(w["cache"]), str(w["runs"]), str(w["data"])
    image = str(next(w["data"].glob("*/*.png")))
    return [
        (["extract", data, "--cache", cache, "--backbone", "foo"], "unknown backbone 'foo'"),
        (["extract", data, "--cache", str(w["root"])], "is a folder"),
        (["extract", data, "--cache", str(w["root"]), "--force"], "is a folder"),
        (["extract", data, "--cache", str(w["foreign"]), "--weights", "none", "--image-size", "32"], "foreign.h5"),
        (["extract", data, "--cache", cache, "--image-size", "0"], "--image-size"),
        (["extract", image, "--cache", cache], "is an image file"),
        (["extract", str(w["root"] / "missing"), "--cache", cache], "no such folder"),
        (["extract", data, "--cache", cache, "--views-of", "train"], "add --views"),
        (["extract", data, "--cache", cache, "--views", "flip", "--split", "0.5,0.5,0"], "add --views-of train"),
        (["info", str(w["foreign"])], "foreign.h5"),
        (["info", str(w["text"])], "not a readable HDF5"),
        (["train", str(w["foreign"]), "--runs-dir", runs], "foreign.h5"),
        (["train", cache, "--head", "logreg", "--set", "C=nan", "--runs-dir", runs], "The 'C' parameter of LogRegHead"),
        (["train", cache, "--head", "dense", "--set", "units=0", "--runs-dir", runs], "The 'units' parameter of DenseHead"),
        (["train", cache, "--head", "gap", "--set", "epochs=abc", "--runs-dir", runs], "epochs=abc"),
        (["train", cache, "--head", "logreg", "--runs-dir", str(w["file"])], "not a folder"),
        (["train", cache, "--head", "logreg", "--split", "a,b", "--runs-dir", runs], "not three numbers"),
        (["train", cache, "--head", "logreg", "--split", "0.5,0.6,0.2", "--runs-dir", runs], "summing to 1"),
        (["runs", "--runs-dir", str(w["file"])], "is a file"),
        (["evaluate", "lr", str(w["foreign"]), "--runs-dir", runs], "foreign.h5"),
        (["evaluate", "bad-config", cache, "--runs-dir", runs], "not a run config"),
        (["evaluate", "lr", cache, "--runs-dir", runs], "would score its training images"),
        (["report", "no-predictions", "--runs-dir", runs], "no predictions"),
        (["report", "--runs-dir", str(w["file"])], "is a file"),
        (["audit", str(w["foreign"])], "foreign.h5"),
        (["audit", cache, "--out", str(w["root"] / "missing" / "a.csv")], "does not exist"),
        (["predict", "lr", data, "--runs-dir", runs, "--out", str(w["root"] / "missing" / "p.csv")], "does not exist"),
        (["predict", "no-model", data, "--runs-dir", runs, "--out", str(w["root"] / "p.csv")], "missing: model.joblib"),
        (["predict", "bad-head-json", data, "--runs-dir", runs, "--out", str(w["root"] / "p.csv")], "head.json: damaged"),
        (["predict", "truncated-keras", data, "--runs-dir", runs, "--out", str(w["root"] / "p.csv")], "damaged"),
        (["export", "truncated-keras", str(w["root"] / "m.keras"), "--runs-dir", runs], "model.keras"),
        (["export", "lr", str(w["root"] / "missing" / "m.keras"), "--runs-dir", runs], "does not exist"),
        (["verify", str(w["foreign"])], "foreign.h5"),
        (["compact", str(w["foreign"])], "foreign.h5"),
    ]


def test_every_command_is_walked(world):
    assert {argv[0] for argv, _ in cases(world)} == set(COMMANDS)


def test_bad_arguments_and_damaged_files_give_one_line(world, capsys):
    capsys.readouterr()
    for argv, fragment in cases(world):
        code = main(argv)
        err = capsys.readouterr().err.strip()
        lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
        assert code == 2, (argv, code, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
        assert fragment in lines[0] and "internal error" not in lines[0], (argv, fragment, err)


def test_runs_skips_index_lines_that_are_not_runs_with_a_warning(world, capsys):
    capsys.readouterr()
    assert main(["runs", "--runs-dir", str(world["runs"])]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("not a run entry; skipped") == 3
    assert "lr" in captured.out


def test_a_real_process_shows_no_traceback_and_no_tensorflow_chatter(world):
    env = {key: value for key, value in os.environ.items() if key not in ("TF_CPP_MIN_LOG_LEVEL", "PIPELINE_VERBOSE")}
    run = subprocess.run(
        [sys.executable, "-m", "pipeline", "predict", "truncated-keras", str(world["data"]), "--runs-dir", str(world["runs"])],
        capture_output=True, text=True, env=env, cwd=world["root"], timeout=300,
    )
    assert run.returncode == 2
    assert run.stderr.strip().startswith("error: ") and len(run.stderr.strip().splitlines()) == 1, run.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "pipeline", "extract", str(world["data"]), "--cache", str(world["root"] / "quiet.h5"),
         "--weights", "none", "--image-size", "32"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    for chatter in ("absl::InitializeLog", "oneDNN", "cpu_feature_guard", "Traceback"):
        assert chatter not in ok.stderr + ok.stdout
    loud = subprocess.run(
        [sys.executable, "-m", "pipeline", "train", str(world["root"] / "quiet.h5"), "--head", "gap", "--set", "epochs=1",
         "--runs-dir", str(world["root"] / "loud-runs"), "--verbose"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert loud.returncode == 0 and "oneDNN" in loud.stderr  # --verbose shows TensorFlow's own lines again


def test_weights_of_another_backbone_give_one_line_not_keras_warnings(world, tmp_path):
    """Keras warns once per layer it cannot fill (about a hundred lines for ResNet50) and may leave them random."""
    import keras

    weights = tmp_path / "vgg16.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)
    run = subprocess.run(
        [sys.executable, "-m", "pipeline", "extract", str(world["data"]), "--cache", str(tmp_path / "r.h5"),
         "--backbone", "resnet50", "--weights", str(weights), "--image-size", "32"],
        capture_output=True, text=True, timeout=300,
    )
    lines = (run.stdout + run.stderr).strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, lines[:5]
    assert lines[0].startswith("error: --weights") and "ResNet50(include_top=False)" in lines[0], lines[0]
    assert not (tmp_path / "r.h5").exists()
