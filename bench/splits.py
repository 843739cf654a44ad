"""Splits, leakage and quota figures on small generated sets (32-48 px, ``--weights none``): leakage counts,
split quotas with near-duplicate groups, the splits of three caches of one set of images, and
``predict`` of a frozen-top run against the run's own probabilities.

    PYTHONPATH=<checkout> python -m bench.splits --out /tmp/splits

Runs on any checkout (main before the fix, or after), in-process, in about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from image_factory import make_class_folders, photo  # noqa: E402

from features_cache.reader import FeatureCache  # noqa: E402
from pipeline.cli import main  # noqa: E402
from pipeline.demo_data import write_digits  # noqa: E402
from pipeline.training.splits import SPLITS, plan_cache_splits, plan_splits  # noqa: E402


def quiet(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(list(argv))
    assert code == 0, (argv, out.getvalue())
    return out.getvalue()


def rows_of(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def leakage(root: Path) -> None:
    """Photo-like images in train/ and test/; 6 test images also in train as a re-encoded and a resized copy."""
    source = make_class_folders(root / "source", {"warm": 12, "cool": 12, "green": 12}, size=(96, 72))
    data, tested = root / "data", []
    for k, path in enumerate(sorted(source.rglob("*.jpg"))):
        split = "test" if k % 4 == 0 else "train"
        target = data / split / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        if split == "test":
            tested.append(target)
    for target in tested[:6]:
        image, twin = Image.open(target).convert("RGB"), data / "train" / target.parent.name
        image.save(twin / f"{target.stem}_q60.jpg", "JPEG", quality=60)
        image.resize((72, 54)).save(twin / f"{target.stem}_small.jpg", "JPEG", quality=65)
    cache = root / "leaky.h5"
    quiet("extract", str(data), "--cache", str(cache), "--weights", "none", "--image-size", "32")
    trained = quiet("train", str(cache), "--head", "logreg", "--runs-dir", str(root / "runs"), "--name", "lr")
    audited = quiet("audit", str(cache), "--out", str(root / "audit"))
    warned = {s: sum(int(n) for n in re.findall(rf"warning: (\d+) {s} images? ha", trained)) for s in ("val", "test")}
    summary = next(line for line in audited.splitlines() if "near-duplicate groups" in line).split(", ")[0]
    pairs, leaks = rows_of(root / "audit" / "duplicates.csv"), rows_of(root / "audit" / "leakage.csv")
    groups_across = len({r["group"] for r in pairs if r["split_a"] != r["split_b"]})
    print("## leakage (36 photo-like images in train/ and test/, 6 test images copied into train twice)")
    print(f"train warns: {warned['val']} val, {warned['test']} test images with a near-duplicate in train")
    print(f"audit prints: {summary}")
    print(
        f"duplicates.csv: {len(pairs)} pairs, {sum(r['split_a'] != r['split_b'] for r in pairs)} across splits in "
        f"{groups_across} groups; pairs whose two images carry different groups: "
        f"{sum(1 for r in pairs if not r['group'])}; leakage.csv: {len(leaks) if leaks or (root / 'audit' / 'leakage.csv').exists() else 'absent'}"
    )


def quotas() -> None:
    """plan_splits on random classes with random near-duplicate groups, and on one group of 6 among 12."""
    rng_cases, bound, empty = 400, 0, 0
    for seed in range(rng_cases):
        rng = np.random.default_rng(seed)
        fractions = [(0.7, 0.15, 0.15), (0.5, 0.25, 0.25), (0.8, 0.2, 0.0), (0.6, 0.2, 0.2)][seed % 4]
        keys, labels, twins = [], [], []
        for label in range(int(rng.integers(1, 4))):
            size, made = int(rng.integers(1, 41)), 0
            while made < size:
                group = [
                    f"s{seed}-c{label}-k{made + i}"
                    for i in range(min(size - made, int(rng.choice([1] * 8 + [2, 3, 4, 6, 12]))))
                ]
                keys, labels, made = keys + group, labels + [label] * len(group), made + len(group)
                twins += [group] if len(group) > 1 else []
        labels = np.array(labels)
        plan, _ = plan_splits(keys, labels, [""] * len(keys), fractions, twins=twins)
        for label in np.unique(labels):
            mine, groups = labels == label, [len(g) for g in twins if labels[keys.index(g[0])] == label]
            size, largest = int(mine.sum()), max(groups, default=1)
            units = size - sum(groups) + len(groups)
            for split, share in zip(SPLITS, fractions):
                count = int(np.sum(plan.splits[mine] == split))
                bound += abs(count - share * size) > largest
                empty += split != "train" and share > 0 and size >= 4 and units >= 3 and count == 0
    six = {}
    for seed in range(20):
        keys = [f"{seed}-{i}" for i in range(12)]
        plan, _ = plan_splits(keys, np.zeros(12, dtype=int), [""] * 12, twins=[keys[:6]])
        counts = "/".join(str(int(np.sum(plan.splits == s))) for s in SPLITS)
        six[counts] = six.get(counts, 0) + 1
    print("## quotas (plan_splits, 400 random cases: 1-3 classes of 1-40 images, groups of 1-12)")
    print(f"class splits off their share by more than the class's largest group: {bound}")
    print(f"held-out splits left empty in classes of 4+ images in 3+ groups: {empty}")
    print(f"one group of 6 among 12 images, 20 seeds, train/val/test: {six}")


def three_caches(root: Path) -> None:
    """One set of photo-like images (4 re-encoded copies) as three caches; then more images, a fourth."""
    data = make_class_folders(root / "data", {"warm": 12, "cool": 12, "green": 12}, size=(96, 72))
    for path in sorted(data.rglob("*.jpg"))[::9]:
        Image.open(path).convert("RGB").save(path.with_name(path.stem + "_again.jpg"), "JPEG", quality=60)
    caches = {
        "32 px output": ("32", "output"),
        "48 px block4_pool": ("48", "block4_pool"),
        "64 px output": ("64", "output"),
    }
    first = None
    print("## splits of caches of one set of images (train/val/test; images whose split differs from the first cache)")
    for label, (size, layer) in [*caches.items(), ("40 px, 18 more images later", ("40", "output"))]:
        if label.startswith("40"):
            for name in ("warm", "cool", "green"):
                for k in range(6):
                    photo(96, 72, seed=700 + k + 10 * len(name)).save(data / name / f"later_{k}.jpg")
        cache = root / f"{size}-{layer}.h5"
        quiet("extract", str(data), "--cache", str(cache), "--weights", "none", "--image-size", size, "--layer", layer)
        with FeatureCache(cache) as opened:
            splits = dict(zip(opened.paths, plan_cache_splits(opened).splits.tolist()))
        first = first or splits
        counts = "/".join(str(sum(s == split for s in splits.values())) for split in SPLITS)
        moved = sum(splits[p] != s for p, s in first.items())
        print(f"{label}: {counts}; {moved} of the first cache's {len(first)} images in another split")


def frozen_top(root: Path) -> None:
    data = write_digits(root / "digits", per_class=10)
    cache = root / "block4.h5"
    quiet(
        "extract", str(data), "--cache", str(cache), "--weights", "none", "--image-size", "32", "--layer", "block4_pool"
    )
    print("## predict of a frozen-top run (block4_pool cache) against the run's own val/test probabilities")
    for head, settings in {"logreg": [], "dense": ["--set", "epochs=2", "--set", "units=16"]}.items():
        quiet("train", str(cache), "--head", head, *settings, "--name", head, "--runs-dir", str(root / "runs"))
        config = json.loads((root / "runs" / head / "config.json").read_text())
        expected = rows_of(root / "runs" / head / "predictions.csv")
        files = [str(Path(config["cache"]["data_root"]) / row["path"]) for row in expected]
        out = root / f"{head}.csv"
        quiet("predict", head, *files, "--runs-dir", str(root / "runs"), "--out", str(out))
        names = config["class_names"]
        want = np.array([[float(r[f"p_{n}"]) for n in names] for r in expected])
        got = np.array([[float(r[f"p_{n}"]) for n in names] for r in rows_of(out)])
        flips = int(np.sum(want.argmax(1) != got.argmax(1)))
        print(f"{head}: largest difference {np.abs(want - got).max():.2e}, {flips} predicted classes differ")


def main_(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-out/splits")
    out = Path(parser.parse_args(argv).out)
    shutil.rmtree(out, ignore_errors=True)
    leakage(out / "leakage")
    quotas()
    three_caches(out / "caches")
    frozen_top(out / "frozen")


if __name__ == "__main__":
    main_()
