"""JPEG decoding on the device (``--decoder gpu``), exercised on the CPU with Pillow standing in for nvJPEG.

The whole path runs: file reads and hashes on threads, batched decoding into torch tensors,
the antialiased bilinear resize on the tensors, per-file fallbacks to the CPU loader, the
recipe's decoder field. Runs are processes on the torch backend, like a GPU host's.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from image_factory import cmyk_jpeg, exif_rotated_jpeg, photo, save, truncated_jpeg

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed; `make setup-backends` adds it")


def extract(data: Path, cache: Path, weights: Path, decoder: str, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "pipeline", "extract", str(data), "--cache", str(cache), "--weights", str(weights),
        "--image-size", "64", "--batch-size", "4", "--precision", "float32", "--storage", "float32",
        "--decoder", decoder, *extra,
    ]
    env = {**os.environ, "KERAS_BACKEND": "torch", "PIPELINE_DEVICE_DECODE": "pillow-cpu"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Photo JPEGs (decoded on the device) and, between them, every kind the CPU must take or refuse."""
    root = tmp_path_factory.mktemp("device") / "photos"
    for i in range(7):
        save(photo(160 + 8 * i, 120, seed=i), root / "a" / f"photo_{i}.jpg", quality=90)
        save(photo(120, 160 - 8 * i, seed=20 + i), root / "b" / f"photo_{i}.jpg", quality=90)
    save(photo(90, 70, seed=40).convert("L"), root / "a" / "grey.jpg", quality=90)
    save(photo(90, 70, seed=41), root / "a" / "lossless.png")
    cmyk_jpeg(root / "b" / "cmyk.jpg")
    exif_rotated_jpeg(root / "b" / "rotated.jpg")
    truncated_jpeg(root / "a" / "truncated.jpg")
    (root / "b" / "notes.jpg").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def caches(data, weights_file, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("device-caches")
    made = {}
    for decoder in ("gpu", "threads"):
        made[decoder] = folder / f"{decoder}.h5"
        result = extract(data, made[decoder], weights_file, decoder)
        assert result.returncode == 0, result.stderr
    return made


def read(cache: Path) -> dict:
    with h5py.File(cache) as f:
        skipped = dict(zip(f["skipped/paths"].asstr()[()], f["skipped/reasons"].asstr()[()]))
        return {"paths": list(f["paths"].asstr()[()]), "features": f["features"][()].reshape(len(f["paths"]), -1),
                "skipped": skipped, "decoder": str(f.attrs["recipe.decoder"])}


@needs_torch
def test_device_features_are_within_cosine_099_of_pillow(caches):
    device, pillow = read(caches["gpu"]), read(caches["threads"])
    assert device["paths"] == pillow["paths"] and len(device["paths"]) == 18
    cosine = (device["features"] * pillow["features"]).sum(1) / (
        np.linalg.norm(device["features"], axis=1) * np.linalg.norm(pillow["features"], axis=1)
    )
    assert cosine.min() >= 0.99, dict(zip(device["paths"], cosine.round(4)))
    by_path = dict(zip(device["paths"], cosine))
    for fallback in ("a/lossless.png", "b/cmyk.jpg", "b/rotated.jpg"):  # the CPU loader's exact pixels
        assert by_path[fallback] == pytest.approx(1.0, abs=1e-6)
    assert by_path["a/photo_0.jpg"] < 1.0 - 1e-6, "photos were decoded on the device path, not by the CPU loader"


@needs_torch
def test_files_the_device_cannot_take_are_skipped_as_on_the_cpu(caches):
    device, pillow = read(caches["gpu"]), read(caches["threads"])
    assert device["skipped"] == pillow["skipped"]
    assert set(device["skipped"]) == {"a/truncated.jpg", "b/notes.jpg"}


@needs_torch
def test_the_recipe_names_the_decoder_and_refuses_mixing(caches, data, weights_file):
    assert read(caches["gpu"])["decoder"] == "pillow-cpu"
    assert read(caches["threads"])["decoder"] == "pillow"
    mixed = extract(data, caches["threads"], weights_file, "gpu")
    assert mixed.returncode != 0 and "decoder: pillow != pillow-cpu" in mixed.stderr, mixed.stderr
    assert "Traceback" not in mixed.stderr


def test_gpu_decoding_off_the_torch_backend_is_one_line(data, tmp_path, capsys):
    assert main(["extract", str(data), "--cache", str(tmp_path / "c.h5"), "--weights", "none", "--decoder", "gpu"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --decoder gpu: it needs the torch Keras backend (this is tensorflow; set KERAS_BACKEND=torch); or use --decoder auto"]
