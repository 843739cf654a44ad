"""What compute precision and storage dtype do to the features and the heads, on real photos.

    python -m bench.precision --weights /tmp/vgg16_real.weights.h5 [--size 224] [--out bench-out/precision]

The real photos of bench/real_photos.py are extracted three times with ``pipeline extract``
(float32 compute and storage, float32 compute with float16 storage, bfloat16 compute with
float16 storage), as whole processes, and each cache gets ``train --head logreg`` and
``--head gap`` on the same stable split. Features are compared row by row with the float32
cache's: relative error ``|a - b| / |b|`` and cosine. Random weights make activations of
another scale and sparsity than trained ones, so run it with real pretrained weights
(``../shared/weights/hed_vgg16.py``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from bench.health import run
from bench.real_photos import build_classes
from features_cache import FeatureCache

SETTINGS = (("float32", "float32"), ("float32", "float16"), ("bfloat16", "float16"))
HEADS = ("logreg", "gap")


def test_accuracy(runs: Path, name: str) -> float:
    return float(json.loads((runs / name / "metrics.json").read_text(encoding="utf-8"))["test"]["accuracy"])


def compare(reference: FeatureCache, other: FeatureCache) -> dict[str, float]:
    """Relative error and cosine of every row against the reference cache's, matched by path."""
    order = {path: i for i, path in enumerate(other.paths)}
    rows = np.array([order[path] for path in reference.paths])
    ours = reference.features().reshape(len(reference), -1).astype(np.float64)
    theirs = other.features(rows).reshape(len(reference), -1).astype(np.float64)
    error = np.linalg.norm(theirs - ours, axis=1) / np.maximum(np.linalg.norm(ours, axis=1), 1e-12)
    cosine = (theirs * ours).sum(axis=1) / np.maximum(np.linalg.norm(theirs, axis=1) * np.linalg.norm(ours, axis=1), 1e-12)
    return {"median_rel_error": float(np.median(error)), "max_rel_error": float(error.max()), "min_cosine": float(cosine.min())}


def read_seconds(cache: FeatureCache, repeats: int = 3) -> float:
    """The best of a few full reads into float32 through the reader."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        cache.features()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="backbone weights: a real pretrained .h5 file")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", default="bench-out/precision")
    args = parser.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    data = out / "data"
    images = sum(len(paths) for paths in build_classes(data).values())
    results = []
    for compute, storage in SETTINGS:
        cache, runs = out / f"{compute}-{storage}.h5", out / f"runs-{compute}-{storage}"
        seconds = run(["extract", str(data), "--cache", str(cache), "--weights", args.weights, "--image-size", str(args.size),
                       "--precision", compute, "--storage", storage])
        row: dict[str, object] = {"compute": compute, "storage": storage, "extract_img_s": round(images / seconds, 1)}
        for head in HEADS:
            run(["train", str(cache), "--head", head, "--name", head, "--runs-dir", str(runs)])
            row[f"{head}_test_acc"] = round(test_accuracy(runs, head), 3)
        with FeatureCache(cache) as opened, FeatureCache(out / "float32-float32.h5") as reference:
            row["cache_mb"] = round(opened.disk_bytes / 1e6, 1)
            row["read_s"] = round(read_seconds(opened), 3)
            row.update({key: round(value, 6) for key, value in compare(reference, opened).items()})
        results.append(row)
        print(json.dumps(row), flush=True)
    print(f"{images} real photos at {args.size} px, weights {args.weights}")
    print("| compute / storage | cache | extract | read (float32 out) | median / max rel. error | min cosine | logreg test acc | gap test acc |")
    print("|---|---|---|---|---|---|---|---|")
    for row in results:
        print(f"| {row['compute']} / {row['storage']} | {row['cache_mb']} MB | {row['extract_img_s']} img/s | {row['read_s']} s | "
              f"{100 * row['median_rel_error']:.2f}% / {100 * row['max_rel_error']:.2f}% | {row['min_cosine']:.5f} | "
              f"{row['logreg_test_acc']} | {row['gap_test_acc']} |")
    (out / "precision.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
