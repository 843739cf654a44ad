"""Decoding one image file into the exact RGB uint8 array the backbone sees.

Everything that changes pixels is explicit and lands in the cache's recipe: how the
image is resized (``stretch`` to the square like Keras's ``image_dataset_from_directory``,
or ``crop``: shorter side to the size, then the centre), the interpolation, and the
background that transparent pixels are composited on.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from features_cache.records import content_hash

RESIZE_MODES = ("stretch", "crop")
INTERPOLATIONS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
    "area": Image.Resampling.BOX,
}
BACKGROUND = (255, 255, 255)
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class ImageReadError(Exception):
    """The file could not become an image; the message is the reason shown to the user."""


@dataclasses.dataclass(frozen=True)
class ResizeSpec:
    """How a decoded image becomes a ``size`` x ``size`` array."""

    size: int
    resize: str = "stretch"
    interpolation: str = "bilinear"
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}. Received: resize={self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}. Received: interpolation={self.interpolation!r}"
            )


def decode(data: bytes, spec: ResizeSpec) -> np.ndarray:
    """Turn a file's bytes into a (size, size, 3) uint8 RGB array, or raise ImageReadError."""
    if not data:
        raise ImageReadError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": the pixels are still good
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > spec.max_pixels:
                raise ImageReadError(
                    f"{width}x{height} pixels is over the decompression-bomb limit of {spec.max_pixels:,}; "
                    "raise --max-pixels if the image is genuine"
                )
            if image.format == "JPEG" and spec.resize == "stretch":
                image.draft("RGB", (spec.size, spec.size))
            elif image.format == "JPEG":
                scale = spec.size / min(width, height)
                image.draft("RGB", (round(width * scale), round(height * scale)))
            image.load()
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError("not an image (no known image format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageReadError(f"decompression bomb: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageReadError(f"corrupt or truncated image ({error})") from None
    image = _apply_exif_orientation(image)
    return _resize(_to_rgb(image), spec)


def read_image(path: str, spec: ResizeSpec) -> tuple[np.ndarray, str]:
    """Read a file once: its decoded array and the hash of its bytes."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise ImageReadError(f"cannot read file ({error.strerror})") from None
    return decode(data, spec), content_hash(data)


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate as the camera said; a malformed EXIF block leaves the stored pixels as they are."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - any EXIF parsing failure means "no usable orientation"
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: 16-bit scaled (not clipped), alpha on a fixed background."""
    if image.mode in SIXTEEN_BIT_MODES:
        pixels = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(pixels / 257.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        scale = 255.0 if pixels.size and np.nanmax(pixels) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.nan_to_num(pixels) * scale + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if (image.mode == "P" and "transparency" in image.info) or image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def _resize(image: Image.Image, spec: ResizeSpec) -> np.ndarray:
    size = (spec.size, spec.size)
    method = INTERPOLATIONS[spec.interpolation]
    if spec.resize == "crop":
        image = ImageOps.fit(image, size, method=method)
    elif image.size != size:
        image = image.resize(size, method)
    return np.asarray(image, dtype=np.uint8)
