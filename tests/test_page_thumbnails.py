"""Every image with a row in the cache has a thumbnail on the pages, decoded as its features were."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from image_factory import (
    cmyk_jpeg,
    exif_rotated_jpeg,
    palette_with_transparency,
    photo,
    rgba_png,
    save,
    sixteen_bit_png,
    two_frame_gif,
)
from PIL import Image

from features_cache.reader import FeatureCache
from pipeline.analysis import html_page
from pipeline.extraction.extract import ExtractOptions, run_extract
from pipeline.extraction.images import ResizeSpec, read_image


def large_sixteen_bit_png(path: Path) -> Path:
    """A 16-bit gradient large enough that a thumbnail must shrink it (Pillow cannot ``reduce`` I;16)."""
    pixels = (np.linspace(0, 65535, 1024)[None, :] * np.ones((768, 1))).astype(np.uint16)
    return save(Image.fromarray(pixels), path, "PNG")


MAKERS = {
    "sixteen.png": sixteen_bit_png,
    "sixteen-large.png": large_sixteen_bit_png,
    "palette.png": palette_with_transparency,
    "rgba.png": rgba_png,
    "cmyk.jpg": cmyk_jpeg,
    "rotated.jpg": exif_rotated_jpeg,
    "frames.gif": two_frame_gif,
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("modes") / "data"
    for name, make in MAKERS.items():
        make(data / "odd" / name)
    save(photo(40, 30, seed=1), data / "odd" / "plain.jpg", "JPEG")
    for i in range(3):
        save(photo(48, 36, seed=10 + i), data / "plain" / f"{i}.jpg", "JPEG")
    path = tmp_path_factory.mktemp("cache") / "modes.h5"
    run_extract(ExtractOptions(data=str(data), cache=str(path), weights="none", image_size=32))
    return path


def rows(cache: Path) -> list[Path]:
    with FeatureCache(cache) as opened:
        assert not opened.skipped()
        return [Path(opened.data_root) / path for path in opened.paths]


def test_every_cached_image_has_a_thumbnail_on_the_page(cache):
    paths = rows(cache)
    assert len(paths) == len(MAKERS) + 4
    for path in paths:
        card = html_page.card_html(html_page.Card(path.name, path, ("true: odd",)))
        assert "<img src=\"data:image/jpeg;base64," in card and "cannot read image" not in card, path.name


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_thumbnail_shows_what_the_features_saw(cache, name):
    path = next(p for p in rows(cache) if p.name == name)
    uri = html_page.thumbnail_uri(path)
    assert uri is not None
    thumbnail = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")
    seen = read_image(str(path), ResizeSpec(8, interpolation="area"))[0].astype(int)
    shown = np.asarray(thumbnail.resize((8, 8), Image.Resampling.BOX)).astype(int)
    assert np.abs(shown - seen).max() <= 24, (name, shown[0, :, 0], seen[0, :, 0])
