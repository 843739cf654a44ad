"""Commands that never need Keras never import it: importing TensorFlow is about 4 s of a run's
start-up, which a scikit-learn head, the run list or a cache's summary would pay for nothing.

The commands run one after another in a fresh interpreter (the test process has Keras already)
through ``pipeline.cli.main``, which reports after each whether ``keras`` or ``tensorflow`` were imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.demo_data import write_digits
from pipeline.extraction.extract import ExtractOptions, run_extract

REPO = Path(__file__).resolve().parent.parent
# Runs each command of a JSON list in turn in one fresh interpreter, and after each says what it has imported:
# the first command to import Keras is named, and every other one is shown free of it.
PROBE = (
    "import json, sys\n"
    "from pipeline.cli import main\n"
    "for name, argv in json.loads(sys.argv[1]):\n"
    "    code = main(argv)\n"
    "    print(name, 'IMPORTED', [m for m in ('keras', 'tensorflow') if m in sys.modules], 'EXIT', code, flush=True)\n"
)


@pytest.fixture(scope="module")
def work(digits_cache, tmp_path_factory) -> dict[str, Path]:
    """A logreg run and a dense run in one runs folder, and a cache of digits neither has seen."""
    root = tmp_path_factory.mktemp("keras-free")
    runs = root / "runs"
    assert main(["train", str(digits_cache), "--head", "logreg", "--name", "lr", "--runs-dir", str(runs)]) == 0
    dense = ["train", str(digits_cache), "--head", "dense", "--name", "dn", "--runs-dir", str(runs)]
    assert main([*dense, "--set", "epochs=1", "--set", "verbose=0"]) == 0
    digits = write_digits(root / "all", per_class=45)
    new = root / "new"
    for name in ("one", "seven"):  # images 41..45 of each: never seen in training
        for path in sorted((digits / name).iterdir())[40:]:
            (new / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, new / name / path.name)
    run_extract(ExtractOptions(data=str(new), cache=str(root / "new.h5"), weights="none", image_size=32))
    return {"root": root, "runs": runs, "cache": digits_cache, "new": root / "new.h5"}


COMMANDS = {
    "train logreg": lambda w: ["train", str(w["cache"]), "--head", "logreg", "--runs-dir", str(w["root"] / "more")],
    "train logreg sweep": lambda w: [
        "train", str(w["cache"]), "--head", "logreg", "--set", "C=0.1,1", "--runs-dir", str(w["root"] / "sweep"),
    ],
    "info": lambda w: ["info", str(w["cache"])],
    "runs (a dense run among them)": lambda w: ["runs", "--runs-dir", str(w["runs"])],
    "report of a logreg run": lambda w: ["report", "lr", "--runs-dir", str(w["runs"])],
    "evaluate a logreg run": lambda w: [
        "evaluate", "lr", str(w["new"]), "--runs-dir", str(w["runs"]), "--out", str(w["root"] / "scores.csv"),
    ],
    "audit with logreg": lambda w: ["audit", str(w["cache"]), "--out", str(w["root"] / "health"), "--folds", "3"],
}


def test_no_command_that_needs_no_keras_imports_it(work):
    commands = [(name, argv(work)) for name, argv in COMMANDS.items()]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(commands)], cwd=work["root"], env=env, capture_output=True, text=True,
        timeout=300,
    )
    said = [line for line in run.stdout.splitlines() if " IMPORTED " in line]
    assert said == [f"{name} IMPORTED [] EXIT 0" for name in COMMANDS], f"{said}\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
