"""Decoding one image file into the exact RGB uint8 array the backbone sees.

Everything that changes pixels is explicit and lands in the cache's recipe: how the
image is resized (``stretch`` to the square like Keras's ``image_dataset_from_directory``,
or ``crop``: shorter side to the size, then the centre), the interpolation, and the
background that transparent pixels are composited on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np
import PIL
from PIL import Image, ImageOps, UnidentifiedImageError

from features_cache.records import TRANSIENT, content_hash
from pipeline.extraction.views import apply_view
from pipeline.memory import available_memory

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
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}
# Working memory of one decode, as a multiple of the decoded image's bytes (the decode itself,
# a mode conversion and a composite or resize); what a decode reserves from the budget.
WORKING_COPIES = 3
_PILLOW_LIMIT = threading.Lock()
T = TypeVar("T")


class DecodeBudget:
    """Bytes that decodes in flight may hold together, whatever the number of threads.

    A decode reserves its estimated working memory before the pixels are read and gives it
    back when the array is made; an image larger than the whole budget waits until it can
    run alone. So N threads never hold N huge images at once.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, int(capacity))
        self.in_use = 0
        self.peak = 0
        self._condition = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        wanted = min(max(0, int(nbytes)), self.capacity)
        with self._condition:
            self._condition.wait_for(lambda: self.in_use + wanted <= self.capacity)
            self.in_use += wanted
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._condition:
                self.in_use -= wanted
                self._condition.notify_all()


def default_budget() -> DecodeBudget:
    """A quarter of the memory available now, between 256 MiB and 4 GiB."""
    return DecodeBudget(min(4 << 30, max(256 << 20, available_memory() // 4)))


def decoded_bytes(image: Image.Image) -> int:
    """Bytes of the decoded pixels at the size Pillow will decode (after ``draft``)."""
    width, height = image.size
    per_pixel = {"1": 1, "L": 1, "P": 1, "RGB": 3, "RGBA": 4, "CMYK": 4, "I": 4, "F": 4, "LA": 2}.get(image.mode, 4)
    return width * height * max(per_pixel, 4) * WORKING_COPIES


def skip_conditions(spec: ResizeSpec) -> str:
    """What a decode failure depends on: a skip recorded under other conditions is tried again."""
    return f"max_pixels={spec.max_pixels} pillow={PIL.__version__}"


def allow_pixels(max_pixels: int) -> None:
    """Raise Pillow's own bomb limit to ``max_pixels`` (never lower it): this module checks the size itself."""
    with _PILLOW_LIMIT:
        if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
            Image.MAX_IMAGE_PIXELS = max_pixels


class ImageReadError(Exception):
    """The file could not become an image; the message is the reason shown to the user.

    ``transient`` failures (reading the file, memory) may pass on the next run.
    """

    def __init__(self, reason: str, transient: bool = False) -> None:
        super().__init__(reason)
        self.transient = transient


@dataclasses.dataclass(frozen=True)
class ResizeSpec:
    """How a decoded image becomes a ``size`` x ``size`` array."""

    size: int
    resize: str = "stretch"
    interpolation: str = "bilinear"
    max_pixels: int = DEFAULT_MAX_PIXELS
    view: str = ""  # an augmented view applied to the pixels (pipeline.extraction.views), or none

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1. Received: max_pixels={self.max_pixels}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}. Received: resize={self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}. Received: interpolation={self.interpolation!r}"
            )


def decode(data: bytes, spec: ResizeSpec, budget: DecodeBudget | None = None) -> np.ndarray:
    """Turn a file's bytes into a (size, size, 3) uint8 RGB array, or raise ImageReadError.

    The pixels are decoded only once ``budget`` (if any) has room for their working memory.
    """
    pixels = decoded(data, spec, lambda image: _resize(image, spec), budget)
    if spec.view:
        return apply_view(pixels, spec.view, data, INTERPOLATIONS[spec.interpolation])
    return pixels


def decoded(
    data: bytes, spec: ResizeSpec, finish: Callable[[Image.Image], T], budget: DecodeBudget | None = None
) -> T:
    """``finish`` applied to the file's upright RGB image, decoded as features are (draft scale for
    ``spec``, EXIF orientation, modes, 16-bit, CMYK, transparency): what pages' thumbnails share."""
    if not data:
        raise ImageReadError("empty file")
    allow_pixels(spec.max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": the pixels are still good
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > spec.max_pixels:
                raise ImageReadError(bomb_reason(f"{width}x{height} ({width * height:,}) pixels", spec.max_pixels))
            reduce_jpeg(image, spec.size, spec.resize)
            with budget.reserve(decoded_bytes(image)) if budget else contextlib.nullcontext():
                image.load()
                image = apply_exif_orientation(image)
                return finish(to_rgb(image))
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError("not an image (no known image format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow's own limit (its 2x hard limit, or one lowered elsewhere) speaks first: name one limit, ours
        size = re.search(r"\((\d+) pixels\)", str(error))
        raise ImageReadError(bomb_reason(f"{int(size.group(1)):,} pixels" if size else "the image", spec.max_pixels)) from None
    except MemoryError:
        raise ImageReadError("out of memory while decoding; lower --max-pixels or use fewer --workers", transient=True) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageReadError(f"corrupt or truncated image ({error})") from None


def bomb_reason(size: str, max_pixels: int) -> str:
    """The one skip line of an image over the pixel limit, whoever noticed it first."""
    return f"{size} is over the decompression-bomb limit of {max_pixels:,}; raise --max-pixels if the image is genuine"


def reduce_jpeg(image: Image.Image, size: int, resize: str) -> None:
    """Let a JPEG decode at a reduced scale (Pillow's ``draft``: the DCT's own downscaling), never below
    what the resize to ``size`` needs; other formats are left alone."""
    if image.format != "JPEG":
        return
    width, height = image.size
    if resize == "stretch":
        image.draft("RGB", (size, size))
    else:
        scale = size / min(width, height)
        image.draft("RGB", (round(width * scale), round(height * scale)))


def read_image(path: str, spec: ResizeSpec, budget: DecodeBudget | None = None) -> tuple[np.ndarray, str]:
    """Read a file once: its decoded array and the hash of its bytes."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise ImageReadError(f"cannot read file ({error.strerror})", transient=True) from None
    return decode(data, spec, budget), content_hash(data)


def failure_depends_on(error: ImageReadError, spec: ResizeSpec) -> str:
    """The ``depends_on`` of a skip caused by ``error``: retried when it may pass now."""
    return TRANSIENT if error.transient else skip_conditions(spec)


def apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate as the camera said; a malformed EXIF block leaves the stored pixels as they are."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - any EXIF parsing failure means "no usable orientation"
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: 16-bit scaled (not clipped), alpha on a fixed background."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        return _grey_to_rgb(np.asarray(image, dtype=np.float64), image.mode)
    colour_key = image.mode in ("P", "L", "RGB") and "transparency" in image.info
    if colour_key or image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def _grey_to_rgb(pixels: np.ndarray, mode: str) -> Image.Image:
    """16-bit, 32-bit and float grey scaled to 8 bits by their range, not clipped.

    16-bit data (also when Pillow reads it as 32-bit ``I``) is divided by 257; wider
    integers by their type's range; floats in [0, 1] by 1/255, floats beyond 255 by
    their maximum.
    """
    pixels = np.nan_to_num(pixels, nan=0.0, posinf=0.0, neginf=0.0)
    top = float(pixels.max()) if pixels.size else 0.0
    if mode == "F":
        scale = 255.0 if top <= 1.0 else (1.0 if top <= 255.0 else 255.0 / top)
    elif mode == "I" and top > 65535:
        scale = 255.0 / (2**31 - 1)
    else:
        scale = 1 / 257.0
    return Image.fromarray(np.clip(pixels * scale + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")


def _resize(image: Image.Image, spec: ResizeSpec) -> np.ndarray:
    size = (spec.size, spec.size)
    method = INTERPOLATIONS[spec.interpolation]
    if spec.resize == "crop":
        image = ImageOps.fit(image, size, method=method)
    elif image.size != size:
        image = image.resize(size, method)
    return np.asarray(image, dtype=np.uint8)
