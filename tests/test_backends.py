"""Every installed Keras backend gives the same features, predictions and exported model for the same weights file.

TensorFlow is the reference; JAX and PyTorch run where ``make setup-backends`` installed
them (CI does). Random weights differ between backends (each
has its own random generator), so all of them load one weights file saved here.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.demo_data import write_digits

IMAGE_SIZE = 32
OTHER_BACKENDS = ("jax", "torch")


def backend_installed(backend: str) -> bool:
    return importlib.util.find_spec(backend) is not None


def run_under(backend: str, *args: str, cwd: Path) -> str:
    """``python -m pipeline ARGS`` (or ``python -c`` with ``-c``) in a fresh process on ``backend``."""
    command = [sys.executable, *args] if args[0] == "-c" else [sys.executable, "-m", "pipeline", *args]
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=600, env={**os.environ, "KERAS_BACKEND": backend}
    )
    assert result.returncode == 0, f"{backend}: {result.stdout}\n{result.stderr}"
    return result.stdout


def read_probabilities(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns = [key for key in rows[0] if key.startswith("p_")]
    return {row["path"]: np.array([float(row[c]) for c in columns]) for row in rows}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """Digits, a VGG16 weights file, the TensorFlow cache, a logreg run and TensorFlow's predictions."""
    root = tmp_path_factory.mktemp("backends")
    write_digits(root / "digits", per_class=6)
    keras.utils.set_random_seed(7)
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    base.save_weights(root / "vgg16.weights.h5")
    common = ["--weights", str(root / "vgg16.weights.h5"), "--image-size", str(IMAGE_SIZE), "--precision", "float32"]
    assert main(["extract", str(root / "digits"), "--cache", str(root / "tensorflow.h5"), *common]) == 0
    assert main(["train", str(root / "tensorflow.h5"), "--head", "logreg", "--name", "lr", "--runs-dir", str(root / "runs")]) == 0
    run_under("tensorflow", "predict", "runs/lr", "digits", "--out", "tensorflow.csv", "--include-seen", cwd=root)
    (root / "common.txt").write_text("\n".join(common))
    return root


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_backend_matches_tensorflow(backend, reference):
    if not backend_installed(backend):
        pytest.skip(f"{backend} is not installed here; `make setup-backends` adds it")
    root, common = reference, (reference / "common.txt").read_text().splitlines()
    run_under(backend, "extract", "digits", "--cache", f"{backend}.h5", *common, cwd=root)
    with h5py.File(root / "tensorflow.h5") as tf_cache, h5py.File(root / f"{backend}.h5") as other:
        assert other.attrs["identity"] == tf_cache.attrs["identity"]  # same recipe, same weight values
        assert list(other["paths"].asstr()[()]) == list(tf_cache["paths"].asstr()[()])
        expected, got = tf_cache["features"][()].astype(np.float32), other["features"][()].astype(np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2 * float(np.abs(expected).max()))

    run_under(backend, "predict", "runs/lr", "digits", "--out", f"{backend}.csv", "--include-seen", cwd=root)
    tf_predictions, predictions = read_probabilities(root / "tensorflow.csv"), read_probabilities(root / f"{backend}.csv")
    assert predictions.keys() == tf_predictions.keys()
    for path, probabilities in predictions.items():
        np.testing.assert_allclose(probabilities, tf_predictions[path], atol=2e-3)

    run_under(backend, "export", "runs/lr", f"{backend}.keras", cwd=root)
    check = (
        "import sys, numpy as np, keras, pipeline.serving.export\n"
        "from PIL import Image\n"
        "model = keras.saving.load_model(sys.argv[1])\n"
        "images = np.stack([np.asarray(Image.open(p).convert('RGB').resize((32, 32), Image.BILINEAR)) for p in sys.argv[2:]])\n"
        "print(keras.ops.convert_to_numpy(model.predict(images, verbose=0)).argmax(axis=1).tolist())\n"
    )
    paths = sorted(tf_predictions)[:10]
    out = run_under(backend, "-c", check, f"{backend}.keras", *(str(root / p) for p in paths), cwd=root)
    assert eval(out.strip().splitlines()[-1]) == [int(tf_predictions[p].argmax()) for p in paths]  # noqa: S307 - our own list


def test_compiled_torch_step_matches_eager(reference):
    """Jobs of TORCH_COMPILE_FROM_IMAGES images or more run through torch.compile: same features."""
    if not backend_installed("torch"):
        pytest.skip("torch is not installed here; `make setup-backends` adds it")
    check = (
        "import sys, numpy as np\n"
        "from pipeline.extraction.backbones import TORCH_COMPILE_FROM_IMAGES, build_backbone\n"
        "backbone = build_backbone(weights=sys.argv[1], image_size=32, precision='float32')\n"
        "images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)\n"
        "eager = backbone.features(images)\n"
        "backbone.expect(TORCH_COMPILE_FROM_IMAGES)\n"
        "compiled = backbone.features(images)\n"
        "assert backbone.step_name == 'torch.compile', backbone.step_name\n"
        "np.testing.assert_allclose(compiled, eager, rtol=1e-3, atol=1e-3 * float(np.abs(eager).max()))\n"
        "print('ok')\n"
    )
    assert run_under("torch", "-c", check, str(reference / "vgg16.weights.h5"), cwd=reference).strip().endswith("ok")
