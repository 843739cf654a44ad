"""Does the exported model say what ``predict`` says? Max |p_export - p_predict| and class flips per image set.

    python -m bench.serving_parity --weights /tmp/vgg16_real.weights.h5 [--image-size 224] [--work DIR]

Two logreg runs per call (one on small photos, one on the 8x8 digits), then three sets of new images:
large JPEGs (3000x2000 camera-sized photos, decoded at a reduced scale by stage one), the digits
scaled up from 8x8, and other formats (palette, 16-bit, RGBA PNG, greyscale JPEG, GIF, WebP). Each is
fed to the exported model three ways: ``raw`` (the file's upright full-size pixels, the graph
resizes), ``helper`` (``serving_image(path, size, resize)``) and, where it exists, ``bytes``
(``predict_encoded``: the file's bytes decoded as stage one decodes them).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench.photos import LARGE_EVERY, photo

SETS = ("large_jpeg", "digits_up", "other_formats")


def class_photos(root: Path, per_class: int) -> Path:
    """Three classes of small photos, each leaning to one colour channel."""
    for class_index, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            index = 1 + class_index * per_class + i  # never a multiple of LARGE_EVERY below 33
            pixels = np.asarray(photo(index).resize((160, 120))).astype(np.int16)
            pixels[..., class_index] += 60
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name / f"{i:02d}.jpg", quality=90)
    return root


def large_jpegs(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo(i * LARGE_EVERY).save(folder / f"{i:02d}.jpg", quality=92)
    return folder


def other_formats(folder: Path) -> Path:
    """Palette, 16-bit grey, RGBA and greyscale files of other photos (sizes 60..400 px)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        image = photo(200 + i).resize((300 - 60 * i, 200 + 20 * i))
        image.quantize(64).save(folder / f"palette_{i}.png")
        grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257 + np.uint16(i * 3)
        Image.fromarray(grey).save(folder / f"grey16_{i}.png")
        rgba = image.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(image.size))
        rgba.save(folder / f"rgba_{i}.png")
        image.convert("L").save(folder / f"grey_{i}.jpg", quality=90)
        image.resize((60 + 20 * i, 50 + 10 * i)).save(folder / f"small_{i}.gif")
        image.save(folder / f"photo_{i}.webp", quality=90)
    return folder


def run_once(work: Path, weights: str, size: int) -> list[tuple[str, str, float, int, int]]:
    import keras

    from pipeline.cli import main
    from pipeline.demo_data import write_digits
    from pipeline.serving import export as serving
    from pipeline.serving.predict import load_run_model, run_predict

    runs = work / "runs"
    digits_all = write_digits(work / "digits_all", per_class=6)
    train_digits = work / "digits_train"
    new_digits = work / "digits_new"
    for path in sorted(digits_all.rglob("*.png")):
        index = int(path.stem.split("_")[1])
        target = (train_digits if len(list((train_digits / path.parent.name).glob("*.png"))) < 3 else new_digits)
        (target / path.parent.name).mkdir(parents=True, exist_ok=True)
        (target / path.parent.name / f"digit_{index:04d}.png").write_bytes(path.read_bytes())
    sets = {
        "large_jpeg": ("photos", large_jpegs(work / "large", 24)),
        "digits_up": ("digits", new_digits),
        "other_formats": ("photos", other_formats(work / "other")),
    }
    for name, data in (("photos", class_photos(work / "photos", 8)), ("digits", train_digits)):
        cache = work / f"{name}.h5"
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["extract", str(data), "--cache", str(cache), "--weights", weights, "--image-size", str(size),
                         "--precision", "float32", "--seed", "0"]) == 0
            assert main(["train", str(cache), "--head", "logreg", "--name", name, "--runs-dir", str(runs)]) == 0
    rows = []
    for set_name, (run, folder) in sets.items():
        model = load_run_model(run, runs)
        out = work / f"{set_name}.csv"
        result = run_predict(model, [str(folder)], out)
        with open(out, newline="", encoding="utf-8") as handle:
            paths = [row["path"] for row in csv.DictReader(handle)]
        expected = result.probabilities
        exported = work / f"{run}.keras"
        if not exported.exists():
            serving.export(model, exported)
        served = keras.saving.load_model(exported)
        recipe = model.recipe
        for variant, size in (("raw", None), ("helper", recipe.image_size)):
            arrays = [serving.serving_image(p, size, recipe.resize)[None] for p in paths]
            got = np.concatenate([keras.ops.convert_to_numpy(served.predict(a, verbose=0)) for a in arrays])
            rows.append(_row(set_name, variant, got, expected))
        if hasattr(serving, "predict_encoded"):
            got = serving.predict_encoded(served, [Path(p).read_bytes() for p in paths])
            rows.append(_row(set_name, "bytes", got, expected))
    return rows


def _row(set_name: str, variant: str, got: np.ndarray, expected: np.ndarray) -> tuple[str, str, float, int, int]:
    flips = int((got.argmax(axis=1) != expected.argmax(axis=1)).sum())
    return set_name, variant, float(np.abs(got - expected).max()), flips, len(expected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="none", help="a .h5 file of VGG16 weights, or none (random, seed 0)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--work", default=None, help="folder for the images, caches and runs (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        rows = run_once(Path(args.work or scratch), args.weights, args.image_size)
    print(f"weights={args.weights} image_size={args.image_size}")
    print(f"{'set':<14} {'input':<7} {'max|dp|':>8} {'flips':>7}")
    for set_name, variant, difference, flips, count in rows:
        print(f"{set_name:<14} {variant:<7} {difference:8.4f} {flips:>3}/{count}")


if __name__ == "__main__":
    main()
