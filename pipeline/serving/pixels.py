"""The exported model's input made exactly as stage one makes it: the way served probabilities equal ``predict``'s.

The graph's own resize is close to Pillow's but not equal to it: Pillow resamples in fixed point
with 8-bit rounding between its two passes (in an order that depends on the sizes), and stage one
decodes large JPEGs at a reduced DCT scale first. A pixel off by one level is enough to move a
probability by a few hundredths with real weights, so the served pixels must come from stage
one's own decoding (:func:`pipeline.extraction.images.decode`: draft scale, EXIF orientation,
palette, 16-bit, transparency, the recipe's resize and interpolation). At the recipe's size the
graph's resize and rounding leave them unchanged. The exported model carries the recipe's
:class:`ResizeSpec` in a :class:`StageOneSpec` layer, so these helpers need only the model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import keras
import numpy as np

from pipeline.errors import PipelineError
from pipeline.extraction.images import DEFAULT_MAX_PIXELS, ImageReadError, ResizeSpec, decode, read_image

SPEC_LAYER = "stage_one_spec"


@keras.saving.register_keras_serializable(package="pipeline")
class StageOneSpec(keras.layers.Layer):
    """Passes images through unchanged; records how stage one made the training pixels (and who decoded them)."""

    def __init__(self, image_size: int, resize: str, interpolation: str, decoder: str = "pillow", **kwargs) -> None:
        super().__init__(**kwargs)
        self.image_size, self.resize, self.interpolation, self.decoder = int(image_size), resize, interpolation, decoder

    def call(self, images):
        return images

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "image_size": self.image_size, "resize": self.resize,
                "interpolation": self.interpolation, "decoder": self.decoder}


def serving_spec(model: keras.Model, max_pixels: int = DEFAULT_MAX_PIXELS) -> ResizeSpec:
    """The recipe's resize spec stored in an exported model."""
    try:
        layer = model.get_layer(SPEC_LAYER)
    except ValueError:
        raise PipelineError(
            f"model {model.name!r} does not record stage one's recipe; export the run again with `python -m pipeline export`"
        ) from None
    return ResizeSpec(layer.image_size, layer.resize, layer.interpolation, max_pixels)


def serving_image(
    path: str | os.PathLike,
    image_size: int | None = None,
    resize: str = "stretch",
    interpolation: str = "bilinear",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """A file as the exported model takes it. With the recipe's ``image_size`` (and its resize and
    interpolation): exactly the (size, size, 3) pixels stage one gave the backbone, so the model
    says what ``predict`` says. Without: the upright full-size RGB image, which the graph resizes
    close to, but not exactly as, training did."""
    if image_size is None:
        return _full_size(path)
    try:
        return read_image(os.fspath(path), ResizeSpec(image_size, resize, interpolation, max_pixels))[0]
    except ImageReadError as error:
        raise PipelineError(f"{path}: {error}") from None


def _full_size(path: str | os.PathLike) -> np.ndarray:
    """Upright RGB at full size, modes and transparency as stage one converts them (no draft, no resize)."""
    from PIL import Image

    from pipeline.extraction.images import apply_exif_orientation, to_rgb

    with Image.open(path) as image:
        image.load()
        return np.asarray(to_rgb(apply_exif_orientation(image)), dtype=np.uint8)


def serving_pixels(data: bytes, spec: ResizeSpec) -> np.ndarray:
    """Encoded bytes (JPEG, PNG, any format stage one reads) to the pixels stage one would make of them."""
    try:
        return decode(data, spec)
    except ImageReadError as error:
        raise PipelineError(f"image of {len(data)} bytes: {error}") from None


def predict_encoded(model: keras.Model, images: Sequence[bytes], batch_size: int = 32,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Class probabilities for encoded images, decoded as stage one decodes them: ``predict``'s numbers."""
    spec = serving_spec(model, max_pixels)
    parts = []
    for start in range(0, len(images), batch_size):
        pixels = np.stack([serving_pixels(data, spec) for data in images[start : start + batch_size]])
        parts.append(keras.ops.convert_to_numpy(model.predict(pixels, verbose=0)))
    return np.concatenate(parts) if parts else np.zeros((0, model.output_shape[-1]), dtype=np.float32)
