"""Real photos for the health benchmark, assembled offline from what ships in wheels.

scikit-image's wheel carries its sample photos (``skimage/data``: a cat, coffee, a retina,
the Hubble deep field, brick, grass and gravel textures, ...) and scikit-learn carries two
(``china.jpg``, ``flower.jpg``). The wheel is fetched with pip once (not installed) and the
photos are read straight out of it. Each class is made of tiles of one or a few photos: a
grid, plus a grid offset by half a tile (each tile overlaps its neighbours by a quarter at
most), so a class holds many look-alikes (textures, a star field, a retina) or, for ``misc``,
photos of anything that vary a lot, the two cases where dataset-health rules used to fail.
Documents, graphics, patterns and blank frames are kept out of every class: they are the
foreign files a photo data set picks up by accident (bench/health.py plants them).
"""

from __future__ import annotations

import glob
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

SKIMAGE = "scikit-image==0.26.0"
# class -> (photos, tile side as a fraction of the photo's shorter side, crop box of the photo or None)
CLASSES: dict[str, tuple[tuple[str, ...], float, tuple[float, float, float, float] | None]] = {
    "brick": (("brick.png",), 1 / 4, None),
    "gravel": (("gravel.png",), 1 / 4, None),
    "retina": (("retina.jpg",), 1 / 5, (0.15, 0.15, 0.85, 0.85)),
    "space": (("hubble_deep_field.jpg",), 1 / 4, None),
    "cat": (("chelsea.png",), 1 / 3.3, None),
    "coffee": (("coffee.png",), 1 / 4, None),
    # photos of anything: a class whose images vary a lot (documents, graphics and blank frames stay foreign)
    "misc": (
        ("astronaut.png", "rocket.jpg", "ihc.png", "china.jpg", "flower.jpg", "camera.png", "coins.png",
         "motorcycle_left.png", "grass.png"),
        1 / 2, None,
    ),
}
MISC_TILES_PER_PHOTO = 5


def _wheel(work: Path) -> zipfile.ZipFile:
    found = glob.glob(str(work / "scikit_image-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(work),
                        SKIMAGE], check=True)
        found = glob.glob(str(work / "scikit_image-*.whl"))
    return zipfile.ZipFile(found[0])


def sample_photos(work: Path | None = None) -> dict[str, Image.Image]:
    """Every sample photo by file name, as RGB (grey ones replicated, transparency on white)."""
    work = Path(work or os.environ.get("BENCH_PHOTOS_CACHE", Path(tempfile.gettempdir()) / "bench-photos"))
    work.mkdir(parents=True, exist_ok=True)
    photos: dict[str, Image.Image] = {}
    with _wheel(work) as wheel:
        for name in wheel.namelist():
            if name.startswith("skimage/data/") and name.rsplit(".", 1)[-1] in ("png", "jpg"):
                photos[name.rsplit("/", 1)[-1]] = Image.open(io.BytesIO(wheel.read(name)))
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "images"
    for name in ("china.jpg", "flower.jpg"):
        photos[name] = Image.open(folder / name)
    return {name: _rgb(image) for name, image in photos.items()}


def _rgb(image: Image.Image) -> Image.Image:
    image.load()
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB")
    return image.convert("RGB")


def tiles(image: Image.Image, fraction: float, box: tuple[float, float, float, float] | None) -> list[Image.Image]:
    """Square tiles of side ``fraction`` of the shorter side: a grid, then the grid shifted by half a tile."""
    if box:
        w, h = image.size
        image = image.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)))
    w, h = image.size
    side = int(min(w, h) * fraction)
    found = []
    for offset in (0, side // 2):
        for top in range(offset, h - side + 1, side):
            for left in range(offset, w - side + 1, side):
                found.append(image.crop((left, top, left + side, top + side)))
    return found


def build_classes(root: Path, seed: int = 0) -> dict[str, list[Path]]:
    """``root/<class>/<photo>-<i>.jpg`` for every class, 192-320 px JPEGs at quality 90."""
    rng = np.random.default_rng(seed)
    photos = sample_photos()
    made: dict[str, list[Path]] = {}
    for label, (names, fraction, box) in CLASSES.items():
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        made[label] = []
        for name in names:
            found = tiles(photos[name], fraction, box)
            if label == "misc":
                found = [found[i] for i in rng.choice(len(found), min(MISC_TILES_PER_PHOTO, len(found)), replace=False)]
            for i, tile in enumerate(found):
                side = int(rng.integers(192, 321))
                path = folder / f"{Path(name).stem}-{i:02d}.jpg"
                tile.resize((side, side), Image.Resampling.BICUBIC).save(path, "JPEG", quality=90)
                made[label].append(path)
    return made
