"""Measure the dataset-health checks on real photos with planted problems, as a user meets them.

    python -m bench.health --weights /tmp/vgg16_real.weights.h5 [--weights none] [--size 224] [--seed 0] [--out bench-out/health]

Classes are tiles of real sample photos (bench/real_photos.py): textures, a retina, a star
field, a cat, coffee, where every image has look-alikes, and ``misc``, where images vary a
lot. Planted: copies of some images under new names (exact, JPEG re-encoded at quality
50-70, resized to 0.5-0.8, 90% crops; of look-alike images and of ``misc``'s, scored
apart), foreign files (noise, a flat frame, a chessboard, a logo, a text page), and flipped
labels (an image moved into another class's folder). Each set is extracted with ``pipeline
extract`` and checked with ``pipeline audit``, as whole processes, and each detector is
scored with precision and recall; a clean set (nothing planted) gives the false-alarm rate
of outliers. Each figure is printed beside its target. Run it once per ``--weights``:
ImageNet-like weights (``../shared/weights/hed_vgg16.py``) are what users see; ``none``
(random) is the contrast. The caches stay in ``--out``, so a second run extracts only what changed.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from bench.real_photos import build_classes, sample_photos

COPY_KINDS = ("exact", "reencoded", "resized", "crop90")
VARIED = "misc"  # the class whose images vary a lot; every other class is made of look-alikes
COPIES_PER_KIND = {"look-alike": 6, "varied": 4}
FLIPS = 20
# The targets each figure is printed beside (with the real-weights file).
TARGET_EXACT, TARGET_COPIES, TARGET_PAIR_PRECISION = 1.0, 0.95, 0.9
TARGET_CLEAN_FLAGGED, TARGET_LABEL_RECALL, TARGET_LABEL_PRECISION = 0.02, 0.9, 0.7


def plant(root: Path, made: dict[str, list[Path]], seed: int = 0) -> dict[str, object]:
    """Copies (of look-alike and of varied images), foreign files and flipped labels in ``root``; returns what was planted where."""
    rng = np.random.default_rng(seed)
    pools = {
        "look-alike": [path for label, paths in made.items() if label != VARIED for path in paths],
        "varied": list(made[VARIED]),
    }
    sources: list[tuple[str, str, Path]] = []
    for data, pool in pools.items():
        picked = rng.choice(len(pool), len(COPY_KINDS) * COPIES_PER_KIND[data], replace=False)
        sources += [(COPY_KINDS[n // COPIES_PER_KIND[data]], data, pool[i]) for n, i in enumerate(picked)]
    copies: list[tuple[str, str, str, str]] = []
    for kind, data, source in sources:
        target = source.with_name(f"{source.stem}-copy-{kind}.jpg")
        image = Image.open(source).convert("RGB")
        if kind == "exact":
            shutil.copyfile(source, target)
        elif kind == "reencoded":
            image.save(target, "JPEG", quality=int(rng.integers(50, 71)))
        elif kind == "resized":
            factor = float(rng.uniform(0.5, 0.8))
            image.resize((int(image.width * factor), int(image.height * factor)), Image.Resampling.BILINEAR).save(target, "JPEG", quality=90)
        else:
            ImageOps.crop(image, border=(image.width // 20, image.height // 20)).save(target, "JPEG", quality=90)
        copies.append((kind, data, _rel(root, source), _rel(root, target)))
    copied = {source for _, _, source in sources}
    everything = [path for paths in made.values() for path in paths if path not in copied]
    flips = []
    labels = list(made)
    for index in rng.choice(len(everything), FLIPS, replace=False):
        source = everything[index]
        other = labels[(labels.index(source.parent.name) + 1 + int(rng.integers(0, len(labels) - 1))) % len(labels)]
        target = root / other / source.name
        source.rename(target)
        flips.append(_rel(root, target))
    photos = sample_photos()
    foreign = {
        "noise.png": Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)),
        "flat.png": Image.new("RGB", (256, 256), (128, 128, 128)),
        "chessboard.png": photos["chessboard_RGB.png"].resize((256, 256), Image.Resampling.NEAREST),
        "logo.png": photos["logo.png"],
        "page.png": photos["page.png"],
    }
    planted_foreign = []
    for number, (name, image) in enumerate(foreign.items()):
        target = root / labels[number % len(labels)] / f"foreign-{name}"
        image.save(target)
        planted_foreign.append(_rel(root, target))
    return {"copies": copies, "flips": flips, "foreign": planted_foreign}


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def run(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", *command], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def score_duplicates(audit: Path, copies: list[tuple[str, str, str, str]]) -> dict[str, object]:
    """Recall per data (look-alike, varied) and copy kind (the copy is grouped with its source), and pair
    precision over every reported pair."""
    rows = read_csv(audit / "duplicates.csv")
    group_of = {row[key]: row["group"] for row in rows for key in ("path_a", "path_b")}
    planted_pairs = {frozenset((source, copy)) for _, _, source, copy in copies}
    found_pairs = {frozenset((row["path_a"], row["path_b"])) for row in rows}
    recall: dict[str, dict[str, float]] = {}
    for data in COPIES_PER_KIND:
        recall[data] = {}
        for kind in COPY_KINDS:
            mine = [(s, c) for k, d, s, c in copies if k == kind and d == data]
            hits = sum(1 for s, c in mine if s in group_of and group_of.get(s) == group_of.get(c))
            recall[data][kind] = round(hits / len(mine), 2)
    true_pairs = len(found_pairs & planted_pairs)
    return {
        "recall": recall,
        "pairs_reported": len(found_pairs),
        "precision": round(true_pairs / len(found_pairs), 2) if found_pairs else 1.0,
    }


def score_outliers(audit: Path, foreign: list[str]) -> dict[str, object]:
    flagged = [row["path"] for row in read_csv(audit / "outliers.csv")]
    hits = [path for path in flagged if path in foreign]
    ranks = sorted(flagged.index(path) + 1 for path in hits)
    return {
        "flagged": len(flagged),
        "planted_found": f"{len(hits)}/{len(foreign)}",
        "recall": round(len(hits) / len(foreign), 2) if foreign else None,
        "precision": round(len(hits) / len(flagged), 2) if flagged and foreign else None,
        "ranks_of_planted": ranks,
    }


def score_labels(audit: Path, flips: list[str], foreign: list[str]) -> dict[str, object]:
    """Recall of flipped labels; precision over flips, and over flips and foreign files (whose label is wrong too)."""
    rows = read_csv(audit / "label_issues.csv")
    flagged = [row["path"] for row in rows if row["flagged"] == "1"]
    hits, wrong = set(flagged) & set(flips), set(flagged) & {*flips, *foreign}
    ranks = sorted(int(row["rank"]) for row in rows if row["path"] in set(flips))
    return {
        "flagged": len(flagged),
        "recall": round(len(hits) / len(flips), 2),
        "precision": round(len(hits) / len(flagged), 2) if flagged else 1.0,
        "precision_with_foreign": round(len(wrong) / len(flagged), 2) if flagged else 1.0,
        "ranks_of_flips": ranks,
    }


def measure(out: Path, weights: str, size: int, planted: bool, seed: int = 0) -> dict[str, object]:
    """Build, plant, extract and audit in ``out``. The cache stays between runs: extraction skips images
    whose bytes it already holds, so only changed or new images are extracted again."""
    data = out / "data"
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(out / "audit", ignore_errors=True)
    made = build_classes(data)
    truth = plant(data, made, seed) if planted else {"copies": [], "flips": [], "foreign": []}
    (out / "planted.json").write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    cache = out / "cache.h5"
    extract_seconds = run(["extract", str(data), "--cache", str(cache), "--weights", weights, "--image-size", str(size)])
    audit_seconds = run(["audit", str(cache), "--out", str(out / "audit")])
    result: dict[str, object] = {
        "images": sum(1 for _ in data.rglob("*.*")), "extract_s": round(extract_seconds, 1), "audit_s": round(audit_seconds, 1),
        "outliers": score_outliers(out / "audit", truth["foreign"]),  # type: ignore[arg-type]
    }
    if planted:
        result["duplicates"] = score_duplicates(out / "audit", truth["copies"])  # type: ignore[arg-type]
        result["labels"] = score_labels(out / "audit", truth["flips"], truth["foreign"])  # type: ignore[arg-type]
    return result


def _mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def against_targets(planted: dict, clean: dict) -> list[str]:
    """Each figure beside its target, one line per detector (and per kind of data for copies)."""
    lines = []
    duplicates = planted["duplicates"]
    for data, recall in duplicates["recall"].items():
        rest = [recall[kind] for kind in COPY_KINDS[1:]]
        ok = recall["exact"] >= TARGET_EXACT and min(rest) >= TARGET_COPIES
        lines.append(
            f"near-duplicates, {data} data: recall exact {recall['exact']:.2f} (target {TARGET_EXACT:.2f}), "
            f"re-encoded / resized / 90% crop {' / '.join(f'{r:.2f}' for r in rest)} (target >= {TARGET_COPIES:.2f}): {_mark(ok)}"
        )
    lines.append(
        f"near-duplicates: precision {duplicates['precision']:.2f} over {duplicates['pairs_reported']} pairs "
        f"(target >= {TARGET_PAIR_PRECISION:.2f}): {_mark(duplicates['precision'] >= TARGET_PAIR_PRECISION)}"
    )
    found = planted["outliers"]
    ranks = found["ranks_of_planted"]
    lines.append(
        f"outliers: {found['planted_found']} foreign files flagged, at ranks {' '.join(map(str, ranks)) or '-'} "
        f"of {found['flagged']} flagged (target: all, in the top ranks): {_mark(found['recall'] == 1.0)}"
    )
    share = clean["outliers"]["flagged"] / clean["images"]
    lines.append(
        f"outliers on the clean set: {clean['outliers']['flagged']} of {clean['images']} flagged, {share:.1%} "
        f"(target <= {TARGET_CLEAN_FLAGGED:.0%}): {_mark(share <= TARGET_CLEAN_FLAGGED)}"
    )
    issues = planted["labels"]
    ok = issues["recall"] >= TARGET_LABEL_RECALL and issues["precision"] >= TARGET_LABEL_PRECISION
    lines.append(
        f"label issues: recall {issues['recall']:.2f} (target >= {TARGET_LABEL_RECALL:.2f}), precision "
        f"{issues['precision']:.2f} (target >= {TARGET_LABEL_PRECISION:.2f}; {issues['precision_with_foreign']:.2f} "
        f"counting flagged foreign files) over {issues['flagged']} flagged: {_mark(ok)}"
    )
    return lines


def time_synthetic(n: int, classes: int = 10, channels: int = 512) -> None:
    """Wall and CPU seconds of each section on ``n`` synthetic pooled codes (clustered by class), as audit runs
    them (no pixels). CPU seconds are this process's, BLAS threads included: on a shared machine they move less than wall."""
    from pipeline.health import duplicates, labels, outliers
    from pipeline.health.embeddings import unit_rows

    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n)
    X = np.maximum(rng.normal(0, 1, (classes, channels))[y] + rng.normal(0, 1.5, (n, channels)), 0).astype(np.float32)
    hashes = [f"{i:032x}" for i in range(n)]
    timings = {}
    clock = (time.perf_counter(), time.process_time())
    pairs = duplicates.near_duplicates(unit_rows(X), hashes, None)
    timings["near-duplicates (candidates)"], clock = _since(clock), (time.perf_counter(), time.process_time())
    groups = duplicates.fold_groups(hashes, duplicates.groups(pairs, n))
    outliers.class_relative_z(outliers.class_knn_distance(outliers.raw_unit_rows(X), y, groups=groups), y)
    timings["outliers"], clock = _since(clock), (time.perf_counter(), time.process_time())
    probabilities = labels.out_of_fold_probabilities(X, y, labels.unit_row_estimator(), 5, 0, groups)
    labels.lowest_flagged(probabilities, y, labels.ranking_scores(probabilities, y, "self_confidence"))
    timings["label issues (5-fold logreg)"] = _since(clock)
    print(f"{n} synthetic codes: " + ", ".join(f"{name} {wall:.1f} s (CPU {cpu:.1f} s)" for name, (wall, cpu) in timings.items()))


def _since(clock: tuple[float, float]) -> tuple[float, float]:
    return time.perf_counter() - clock[0], time.process_time() - clock[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.health", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", action="append", help="backbone weights (repeat for several; default none)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", default="bench-out/health")
    parser.add_argument("--seed", type=int, default=0, help="which images are copied, flipped and where foreign files go (default 0)")
    parser.add_argument("--synthetic", type=int, default=0, help="only time the sections on this many synthetic codes")
    args = parser.parse_args(argv)
    if args.synthetic:
        time_synthetic(args.synthetic)
        return 0
    results = {}
    for weights in args.weights or ["none"]:
        name = "random" if weights == "none" else Path(weights).name
        for planted in (True, False):
            key = f"{name} {'planted' if planted else 'clean'}"
            results[key] = measure(Path(args.out) / key.replace(" ", "-"), weights, args.size, planted, args.seed)
            print(key, json.dumps(results[key]), flush=True)
        print(f"{name} weights against the targets (met with the real-weights file):")
        for line in against_targets(results[f"{name} planted"], results[f"{name} clean"]):
            print("  " + line, flush=True)
    (Path(args.out) / "health.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
