"""Calibrate and measure the dataset-health checks on photo-like images with planted problems.

    python -m bench.health [--n 150] [--size 224] [--out bench-out/health]

Writes N distinct photo-like JPEGs in three classes, then plants copies of some of them into
other splits (exact copy, JPEG re-encoded at quality 50, resized to half, a 90% centre crop,
a horizontal flip), images of a foreign class (flat noise fields), and flipped labels;
extracts them with ``pipeline extract`` and runs ``pipeline audit``. Prints the cosine
similarities of planted copies against the closest distinct pairs (the duplicate threshold
sits between them), and precision and recall of each section.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from bench.photos import photo

VARIANTS = {
    "copy": lambda image: image,
    "reencoded": lambda image: image,  # saved at quality 50 below
    "half": lambda image: image.resize((image.width // 2, image.height // 2), Image.Resampling.BILINEAR),
    "crop90": lambda image: ImageOps.crop(image, border=(image.width // 20, image.height // 20)),
    "flip": ImageOps.mirror,
}


def build(root: Path, n: int) -> dict[str, set[str]]:
    classes = ("beach", "city", "forest")
    planted: dict[str, set[str]] = {"duplicates": set(), "outliers": set(), "labels": set()}
    rng = np.random.default_rng(0)
    for i in range(n):
        label = classes[i % 3]
        split = "train" if i % 5 else "test"
        image = photo(i * 7 + 3)
        image = image.resize((500, 375)) if image.size[0] > 1000 else image
        pixels = np.asarray(image).astype(np.int16)
        pixels[..., classes.index(label)] += 70  # each class leans to one colour, so labels can be learned
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        if i < 18 and i % 3 == 0:  # flipped labels: stored under the next class
            label = classes[(i // 3 + 1) % 3]
            planted["labels"].add(f"{split}/{label}/p{i:04d}.jpg")
        target = root / split / label / f"p{i:04d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, quality=90)
        if i % 10 == 1 and i < 10 * len(VARIANTS) + 1:  # one variant kind per chosen photo, into the other split
            kind = list(VARIANTS)[(i // 10) % len(VARIANTS)]
            other = "test" if split == "train" else "train"
            copy = root / other / label / f"p{i:04d}-{kind}.jpg"
            copy.parent.mkdir(parents=True, exist_ok=True)
            if kind == "copy":
                shutil.copy(target, copy)
            else:
                VARIANTS[kind](image).save(copy, quality=50 if kind == "reencoded" else 90)
            planted["duplicates"].add(f"{other}/{label}/{copy.name}")
    for j in range(4):  # files of no class: noise, stripes, a checkerboard, a blank frame, each its own kind
        y, x = np.mgrid[0:375, 0:500]
        pattern = [
            rng.integers(0, 256, (375, 500, 3)),
            np.stack([(x // 6 % 2) * 255] * 3, axis=-1),
            np.stack([((x // 40 + y // 40) % 2) * 230 + 10, (x // 40 % 2) * 100, (y // 40 % 2) * 200], axis=-1),
            np.full((375, 500, 3), 12),
        ][j]
        path = root / "train" / classes[j % 3] / f"foreign{j}.png"
        Image.fromarray(pattern.astype(np.uint8)).save(path)
        planted["outliers"].add(f"train/{classes[j % 3]}/{path.name}")
    return planted


def precision_recall(found: set[str], planted: set[str]) -> str:
    hits = len(found & planted)
    precision = hits / len(found) if found else 1.0
    return f"precision {precision:.2f} ({hits}/{len(found)}), recall {hits / len(planted):.2f} ({hits}/{len(planted)})"


def time_synthetic(n: int, classes: int = 10, channels: int = 512) -> None:
    """Seconds of each section on ``n`` synthetic pooled codes (clustered by class), as audit runs them."""
    from classifiers import LogRegHead
    from pipeline.health import duplicates, labels, outliers
    from pipeline.health.embeddings import unit_rows

    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n)
    X = np.maximum(rng.normal(0, 1, (classes, channels))[y] + rng.normal(0, 1.5, (n, channels)), 0).astype(np.float32)
    timings = {}
    started = time.perf_counter()
    unit = unit_rows(X)
    duplicates.similar_pairs(unit, duplicates.DEFAULT_THRESHOLD)
    timings["near-duplicates"] = time.perf_counter() - started
    started = time.perf_counter()
    outliers.class_knn_distance(outliers.raw_unit_rows(X), y)
    timings["outliers"] = time.perf_counter() - started
    started = time.perf_counter()
    labels.label_issues(labels.out_of_fold_probabilities(X, y, LogRegHead(), 5, 0), y)
    timings["label issues (5-fold logreg)"] = time.perf_counter() - started
    print(f"{n} synthetic codes: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=150)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", default="bench-out/health")
    parser.add_argument("--synthetic", type=int, default=0, help="only time the sections on this many synthetic codes")
    args = parser.parse_args()
    if args.synthetic:
        time_synthetic(args.synthetic)
        return 0
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    planted = build(out / "data", args.n)
    cache = out / "cache.h5"
    common = ["--cache", str(cache), "--weights", "none", "--image-size", str(args.size)]
    subprocess.run([sys.executable, "-m", "pipeline", "extract", str(out / "data"), *common], check=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", "audit", str(cache), "--threshold", "0.5", "--out", str(out / "audit")],
                   check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    with open(out / "audit" / "duplicates.csv", newline="") as handle:
        pairs = list(csv.DictReader(handle))
    planted_pairs = [p for p in pairs if p["path_a"] in planted["duplicates"] or p["path_b"] in planted["duplicates"]]
    by_copy: dict[str, float] = {}
    for p in planted_pairs:
        copy = p["path_a"] if p["path_a"] in planted["duplicates"] else p["path_b"]
        by_copy[copy] = max(by_copy.get(copy, 0.0), float(p["similarity"]))
    distinct = sorted((float(p["similarity"]) for p in pairs if p not in planted_pairs), reverse=True)
    print("planted copies, best similarity:", {Path(k).stem: round(v, 3) for k, v in sorted(by_copy.items())})
    print("closest distinct pairs:", [round(s, 3) for s in distinct[:5]])
    subprocess.run([sys.executable, "-m", "pipeline", "audit", str(cache), "--out", str(out / "audit")], check=True,
                   stdout=subprocess.DEVNULL)
    with open(out / "audit" / "duplicates.csv", newline="") as handle:
        found = {row[key] for row in csv.DictReader(handle) for key in ("path_a", "path_b")}
    flagged_copies = {path for path in found if "-" in Path(path).stem}
    with open(out / "audit" / "outliers.csv", newline="") as handle:
        outliers = {row["path"] for row in csv.DictReader(handle)}
    with open(out / "audit" / "label_issues.csv", newline="") as handle:
        issues = {row["path"] for row in csv.DictReader(handle) if row["flagged"] == "1"}
    print(f"{sum(1 for _ in (out / 'data').rglob('*.*'))} images, audit {seconds:.1f} s (whole process)")
    print("near-duplicates (copies found):", precision_recall(flagged_copies, planted["duplicates"]))
    print("outliers:", precision_recall(outliers, planted["outliers"]))
    print("label issues:", precision_recall(issues, planted["labels"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
