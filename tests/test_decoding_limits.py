"""Decoding limits and pixel ranges: --max-pixels both ways, skips retried when their cause changed,
32-bit and float images scaled, colour-key transparency honoured, decode memory bounded as a whole."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from image_factory import make_class_folders, save
from PIL import Image

from features_cache.reader import FeatureCache
from pipeline.cli import main
from pipeline.extraction.images import DecodeBudget, ResizeSpec, decode, read_image

ARGS = ["--weights", "none", "--image-size", "32"]


def big_png(path: Path, width: int, height: int) -> Path:
    """A real PNG of width x height pixels (compresses to a few KB: one colour, mode 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("1", (width, height), 1).save(path, format="PNG")
    return path


def test_max_pixels_can_be_raised_above_pillows_own_limit_and_skips_are_retried(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", {"a": 2, "b": 2})
    big_png(data / "a" / "huge.png", 14_000, 14_000)  # 196 MP: over Pillow's 2x89 MP hard limit
    cache = tmp_path / "c.h5"
    assert main(["extract", str(data), "--cache", str(cache), *ARGS]) == 0
    out = capsys.readouterr().out
    assert "skipped a/huge.png:" in out and "raise --max-pixels" in out
    assert main(["extract", str(data), "--cache", str(cache), *ARGS, "--max-pixels", "200000000"]) == 0
    out = capsys.readouterr().out
    assert "1 extracted" in out and "0 skipped" in out, out  # the skip depended on the limit: tried again
    with FeatureCache(cache) as opened:
        assert "a/huge.png" in opened.paths
    assert main(["extract", str(data), "--cache", str(cache), *ARGS, "--max-pixels", "0"]) == 2
    err = capsys.readouterr().err
    assert "--max-pixels must be a positive number" in err


def test_a_skip_under_the_same_conditions_is_not_retried(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", {"a": 2, "b": 2})
    (data / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cache = tmp_path / "c.h5"
    assert main(["extract", str(data), "--cache", str(cache), *ARGS]) == 0
    assert "skipped a/broken.jpg" in capsys.readouterr().out
    assert main(["extract", str(data), "--cache", str(cache), *ARGS, "--max-pixels", "1000000"]) == 0
    assert "1 skipped" in capsys.readouterr().out  # retried (the limit changed), still broken, still reported
    with FeatureCache(cache) as opened:
        (item,) = opened.skipped()
        assert "max_pixels=1000000" in item.depends_on and "pillow=" in item.depends_on


def grey(path: Path, pixels: np.ndarray, mode: str) -> Path:
    save(Image.fromarray(pixels, mode), path, "TIFF")
    return path


@pytest.mark.parametrize(
    "values, mode, expected",
    [
        (np.array([[0, 2**31 - 1]], dtype=np.int32), "I", [0, 255]),  # full 32-bit range
        (np.array([[0, 65535]], dtype=np.int32), "I", [0, 255]),  # 16-bit data held as 32-bit
        (np.array([[0.0, 1.0]], dtype=np.float32), "F", [0, 255]),  # floats in [0, 1]
        (np.array([[0.0, 1000.0]], dtype=np.float32), "F", [0, 255]),  # floats past 255: scaled, not clipped
    ],
)
def test_wide_grey_images_are_scaled_not_clipped(tmp_path, values, mode, expected):
    pixels = np.repeat(np.repeat(values, 8, axis=0), 8, axis=1)
    path = grey(tmp_path / "g.tif", pixels, mode)
    assert Image.open(path).mode == mode
    out, _ = read_image(str(path), ResizeSpec(16, interpolation="nearest"))
    assert [int(out[0, 0, 0]), int(out[0, -1, 0])] == expected


@pytest.mark.parametrize("mode, key", [("RGB", (10, 20, 30)), ("L", 7)])
def test_png_colour_key_transparency_is_composited_on_white(tmp_path, mode, key):
    pixels = np.zeros((8, 8, 3) if mode == "RGB" else (8, 8), dtype=np.uint8)
    pixels[:4] = key
    path = save(Image.fromarray(pixels, mode), tmp_path / "key.png", "PNG", transparency=key)
    out, _ = read_image(str(path), ResizeSpec(8, interpolation="nearest"))
    assert (out[:4] == 255).all() and (out[4:] == 0).all()


def test_decodes_share_one_memory_budget(tmp_path):
    """Eight threads, images of ~72 MB working memory each, a 100 MB budget: never two at once."""
    paths = [big_png(tmp_path / f"{i}.png", 3000, 2000) for i in range(8)]
    budget = DecodeBudget(100 << 20)
    spec = ResizeSpec(32)
    seen = []
    lock = threading.Lock()

    def work(path: Path) -> np.ndarray:
        array = decode(path.read_bytes(), spec, budget)
        with lock:
            seen.append(budget.in_use)
        return array

    with ThreadPoolExecutor(8) as pool:
        arrays = list(pool.map(work, paths))
    assert len(arrays) == 8 and all(a.shape == (32, 32, 3) for a in arrays)
    assert budget.peak <= budget.capacity and budget.in_use == 0
    assert 3000 * 2000 * 4 * 3 <= budget.peak < 2 * 3000 * 2000 * 4 * 3  # one image at a time fits, two do not
    giant = DecodeBudget(1 << 20)  # smaller than one image: it still decodes, alone
    assert decode(paths[0].read_bytes(), spec, giant).shape == (32, 32, 3)
