"""One ``.keras`` file for serving: raw uint8 images in, class probabilities out.

The exported graph is resize -> round to 8-bit pixels -> the backbone's own
preprocessing and frozen layers -> the cache's storage dtype -> (for a run that applied the
top block frozen to a cache of an earlier layer, that block in float32) -> the run's head, so it
computes what ``extract`` then the head computed. Pixels at the recipe's size pass the
resize unchanged: fed stage one's own pixels (:func:`serving_image` with the recipe's size,
or :func:`predict_encoded` on a file's bytes) the model gives ``predict``'s probabilities for
every kind of file. Other sizes are resized in the graph with the recipe's interpolation,
centre crop and Pillow-like antialiasing, which is close to stage one but not equal (no JPEG
draft scale, float instead of Pillow's fixed-point passes): measured in ``bench/serving_parity.py``.
Load it with ``import pipeline.serving.export`` first: that registers the custom layers
(``keras.saving.load_model(path)``).
"""

from __future__ import annotations

from pathlib import Path

import keras

from features_cache import atomic
from pipeline.errors import PipelineError, check_output_file
from pipeline.extraction.backbones import CastTo
from pipeline.serving.pixels import (
    SPEC_LAYER,
    StageOneSpec,
    predict_encoded,
    serving_image,
    serving_pixels,
    serving_spec,
)
from pipeline.serving.predict import RunModel

__all__ = ["build_serving_model", "export", "predict_encoded", "serving_image", "serving_pixels", "serving_spec"]

# Pillow's filters by the names keras.layers.Resizing knows.
KERAS_INTERPOLATION = {"bilinear": "bilinear", "bicubic": "bicubic", "lanczos": "lanczos3", "nearest": "nearest", "area": "area"}


@keras.saving.register_keras_serializable(package="pipeline")
class RoundPixels(keras.layers.Layer):
    """Round and clip resized pixels to 0..255, as decoding to uint8 does."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, images):
        return keras.ops.clip(keras.ops.round(keras.ops.cast(images, "float32")), 0.0, 255.0)


def build_serving_model(model: RunModel) -> keras.Model:
    """Backbone and head as one model from uint8 (batch, H, W, 3) images to probabilities."""
    if len(model.head.classes_) != len(model.class_names):
        raise PipelineError(
            f"{model.run_dir}: the head was trained on {len(model.head.classes_)} of the {len(model.class_names)} classes; "
            "train it on a cache with images of every class before exporting"
        )
    recipe = model.recipe
    size = recipe.image_size
    inputs = keras.Input((None, None, 3), dtype="uint8", name="images")
    spec = StageOneSpec(size, recipe.resize, recipe.interpolation, recipe.decoder, name=SPEC_LAYER)(inputs)
    resized = keras.layers.Resizing(
        size,
        size,
        interpolation=KERAS_INTERPOLATION[recipe.interpolation],
        crop_to_aspect_ratio=recipe.resize == "crop",
        antialias=recipe.interpolation != "nearest",
        dtype="float32",
        name="resize",
    )(keras.ops.cast(spec, "float32"))
    pixels = RoundPixels(name="round_pixels")(resized)
    extractor = model.backbone.model
    x = pixels
    for layer in extractor.layers[1:]:
        x = layer(x)
    features = CastTo("float32", name="features_float32")(x)
    if model.top is not None:  # the top block the run applied frozen to its cache's maps, in float32
        features = model.top.model(features)
    head = model.head.to_keras()
    probabilities = head(features)
    return keras.Model(inputs, probabilities, name=f"{recipe.backbone}_{type(model.head).__name__.lower()}")


def export(model: RunModel, out: str | Path) -> Path:
    """Write the serving model to ``out`` (a ``.keras`` file)."""
    out = Path(out)
    if out.suffix != ".keras":
        raise PipelineError(f"{out}: the exported file must end in .keras; pass e.g. {out.with_suffix('.keras')}")
    check_output_file(out, "OUT")
    serving = build_serving_model(model)
    with atomic.replacing(out, suffix=".keras") as tmp:
        serving.save(tmp)
    return out
