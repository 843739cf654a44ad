"""A Keras head's XLA programs are kept on disk, and a run that loads them trains the same model.

TensorFlow reads the cache folder at its first XLA compilation, once per process, so each
training runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from classifiers.compile_cache import SETTING, cache_folder

REPO = Path(__file__).resolve().parent.parent
FIT = (
    "import json, numpy as np\n"
    "from classifiers import get_head\n"
    "rng = np.random.default_rng(0)\n"
    "X = rng.gamma(0.5, 1.0, (48, 2, 2, 8)).astype('float32'); y = np.array(['a', 'b'] * 24)\n"
    "X[y == 'b'] += 0.5\n"
    "head = get_head('dense')(units=16, epochs=3, batch_size=8, verbose=0).fit(X[:40], y[:40], X_val=X[40:], y_val=y[40:])\n"
    "print(json.dumps({'proba': head.predict_proba(X[40:]).tolist(), 'history': head.history_}))\n"
)


def fit_in_a_new_process(setting: str, home: Path) -> dict:
    """A head fitted from Python in a fresh interpreter, as in a notebook: it prints nothing of TensorFlow's own
    (the run that loads kept programs is where TensorFlow logged spurious errors)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TF_", "PIPELINE_"))}
    env.update(PYTHONPATH=str(REPO), KERAS_HOME=str(home), **{SETTING: setting})
    run = subprocess.run([sys.executable, "-c", FIT], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr == "" and len(run.stdout.splitlines()) == 1, run.stderr[-2000:] + run.stdout[-2000:]
    return json.loads(run.stdout)


def programs(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob("*.pb"))


def test_a_second_run_loads_the_programs_the_first_compiled_and_trains_the_same_model(tmp_path):
    cold = fit_in_a_new_process("", tmp_path)
    kept = programs(tmp_path / "xla-cache")
    assert len(kept) >= 2  # at least the train and the test step
    warm = fit_in_a_new_process("", tmp_path)
    assert programs(tmp_path / "xla-cache") == kept  # nothing compiled again
    assert warm == cold


def test_off_keeps_nothing_and_another_folder_is_used_as_named(tmp_path, monkeypatch):
    fit_in_a_new_process("off", tmp_path)
    assert not (tmp_path / "xla-cache").exists()
    monkeypatch.setenv(SETTING, str(tmp_path / "elsewhere"))
    assert cache_folder("2.21.0").parent == tmp_path / "elsewhere"
    assert cache_folder("2.21.0").name.startswith("tf-2.21.0-")
    monkeypatch.setenv(SETTING, "OFF")
    assert cache_folder("2.21.0") is None


def test_the_keras_heads_module_and_the_cache_setting_import_no_keras():
    probe = "import sys, classifiers.keras_head, classifiers.compile_cache; print(sorted({'keras', 'tensorflow'} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.stdout.strip() == "[]", run.stderr[-2000:]
