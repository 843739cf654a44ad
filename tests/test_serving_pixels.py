"""The exported model fed stage one's own pixels (``serving_image`` at the recipe's size, or
``predict_encoded`` on a file's bytes) gives ``predict``'s probabilities for every kind of file:
large JPEGs (draft-decoded), tiny images scaled up, palette, 16-bit, transparent, EXIF-rotated."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import keras
import numpy as np
import pytest
from image_factory import make_class_folders, palette_with_transparency, photo, rgba_png, save, sixteen_bit_png
from PIL import Image

from pipeline.cli import main
from pipeline.demo_data import write_digits
from pipeline.errors import PipelineError
from pipeline.extraction.images import ResizeSpec, read_image
from pipeline.serving.export import predict_encoded, serving_image, serving_spec

# float32 features; a batch of another size only reorders float sums (measured below 1e-6)
ATOL = 1e-4
RECIPES = {"stretch-bilinear": ("stretch", "bilinear"), "crop-bicubic": ("crop", "bicubic")}


def new_images(folder: Path) -> Path:
    """Every kind of file users bring, none of them at the recipe's size."""
    for i, (width, height) in enumerate([(1600, 1200), (1200, 2000), (900, 600)]):
        pixels = np.asarray(photo(width, height, seed=900 + i)).astype(np.int16)
        pixels[..., i % 3] += 60
        save(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), folder / f"large_{i}.jpg", "JPEG", quality=92)
    exif = Image.Exif()
    exif[0x0112] = 6
    save(photo(1200, 800, seed=950), folder / "rotated.jpg", "JPEG", quality=90, exif=exif.tobytes())
    for path in sorted(write_digits(folder.parent / "digits", per_class=1).rglob("*.png"))[:4]:
        (folder / f"digit_{path.parent.name}.png").write_bytes(path.read_bytes())  # 8x8 grey, scaled up
    photo(300, 200, seed=960).quantize(32).save(folder / "palette.png")
    save(photo(120, 90, seed=961).convert("L"), folder / "grey.jpg", "JPEG", quality=90)
    palette_with_transparency(folder / "palette_transparent.png")
    sixteen_bit_png(folder / "sixteen.png")
    rgba_png(folder / "rgba.png")
    return folder


@pytest.fixture(scope="module", params=list(RECIPES))
def served(request, tmp_path_factory) -> dict:
    resize, interpolation = RECIPES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    data = make_class_folders(root / "data", {"warm": 8, "cool": 8, "green": 8}, size=(80, 60))
    cache = root / "c.h5"
    assert main(["extract", str(data), "--cache", str(cache), "--weights", "none", "--image-size", "32",
                 "--precision", "float32", "--resize", resize, "--interpolation", interpolation]) == 0
    assert main(["train", str(cache), "--head", "logreg", "--name", "lr", "--runs-dir", str(root / "runs")]) == 0
    images = new_images(root / "new")
    out = root / "p.csv"
    assert main(["predict", "lr", str(images), "--runs-dir", str(root / "runs"), "--out", str(out)]) == 0
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns = [key for key in rows[0] if key.startswith("p_")]
    assert main(["export", "lr", str(root / "lr.keras"), "--runs-dir", str(root / "runs")]) == 0
    return {
        "spec": ResizeSpec(32, resize, interpolation),
        "paths": [row["path"] for row in rows],
        "expected": np.array([[float(row[c]) for c in columns] for row in rows]),
        "model": keras.saving.load_model(root / "lr.keras"),
    }


def test_every_kind_of_file_was_predicted(served):
    names = {Path(path).stem for path in served["paths"]}
    assert {"large_0", "rotated", "palette", "palette_transparent", "sixteen", "rgba", "grey"} <= names
    assert sum(name.startswith("digit_") for name in names) == 4


def test_serving_image_at_the_recipe_size_is_stage_ones_pixels(served):
    spec = served["spec"]
    for path in served["paths"]:
        got = serving_image(path, spec.size, spec.resize, spec.interpolation)
        assert np.array_equal(got, read_image(path, spec)[0]), path


def test_the_graph_passes_pixels_at_the_recipe_size_unchanged(served):
    model, spec = served["model"], served["spec"]
    pixels = np.stack([read_image(path, spec)[0] for path in served["paths"]])
    rounded = keras.Model(model.inputs, model.get_layer("round_pixels").output)
    assert np.array_equal(keras.ops.convert_to_numpy(rounded.predict(pixels, verbose=0)), pixels.astype(np.float32))


def test_exported_model_on_stage_one_pixels_matches_predict(served):
    spec = served["spec"]
    pixels = np.stack([serving_image(path, spec.size, spec.resize, spec.interpolation) for path in served["paths"]])
    got = keras.ops.convert_to_numpy(served["model"].predict(pixels, verbose=0))
    np.testing.assert_allclose(got, served["expected"], atol=ATOL)
    assert (got.argmax(axis=1) == served["expected"].argmax(axis=1)).all()


def test_predict_encoded_matches_predict(served):
    blobs = [Path(path).read_bytes() for path in served["paths"]]
    got = predict_encoded(served["model"], blobs, batch_size=5)
    np.testing.assert_allclose(got, served["expected"], atol=ATOL)
    assert (got.argmax(axis=1) == served["expected"].argmax(axis=1)).all()


def test_the_model_records_stage_ones_recipe(served):
    assert serving_spec(served["model"]) == served["spec"]


def test_helpers_refuse_bad_input_in_one_line(served, tmp_path):
    with pytest.raises(PipelineError, match="not an image") as raised:
        predict_encoded(served["model"], [b"not an image"])
    assert "\n" not in str(raised.value)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    plain = keras.Sequential([keras.Input((None, None, 3)), keras.layers.GlobalAveragePooling2D()])
    with pytest.raises(PipelineError, match="export the run again"):
        predict_encoded(plain, [buffer.getvalue()])
    with pytest.raises(PipelineError, match="not an image"):
        serving_image(save_bytes(tmp_path / "bad.png", b"nope"), 32)


def save_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
