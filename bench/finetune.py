"""Fine-tuning the top block from the cache against fine-tuning it from images, on real photos.

    python -m bench.finetune --weights /tmp/vgg16_real.weights.h5 [--size 160] [--seeds 0 1 2] [--out bench-out]

Classes are small tiles (an eighth of the shorter side) of twelve sample photos (bench/real_photos.py:
brick, gravel, grass, the moon, cells, coins, a retina, a stained tissue section, the Hubble deep
field, a cat, coffee, the cameraman), 20 a class, split 10 / 2 / 8 a class for training, validation
and test: little to learn from and many look-alikes (a patch of fur, of sky, of a coat), where the
bottleneck head is well below perfect. One ``extract --layer block4_pool --views flip,crop1
--views-of train`` makes the cache and the two views of its training images (the split is decided
and remembered there); then, per seed, on that split: ``train --head dense``
(without and with the views), ``train --head finetune`` (without and with the views), and the same
fine-tuning from images in plain Keras: VGG16 frozen to block4, block5 and the same head
(Normalization fitted on the training images' block5 output, Flatten, Dense(256), Dropout(0.5),
softmax), phase one with RMSprop, phase two with SGD(1e-4, momentum 0.9) on block5 and the head,
the same epochs and the same augmentation (each epoch one of original, flip, crop1 per image: the
very pixels the views were extracted from). Every route computes in float32. Times are wall and
CPU seconds of this process, route by route, side by side; the cache route's time counts its
extraction once. ``finetune.json`` is rewritten after every seed, so a cut run keeps its seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from bench.real_photos import sample_photos, tiles

# class -> (photo, crop box of the photo or None)
CLASSES: dict[str, tuple[str, tuple[float, float, float, float] | None]] = {
    "brick": ("brick.png", None), "gravel": ("gravel.png", None), "grass": ("grass.png", None),
    "moon": ("moon.png", None), "cell": ("cell.png", None), "coins": ("coins.png", None),
    "retina": ("retina.jpg", (0.15, 0.15, 0.85, 0.85)), "ihc": ("ihc.png", None),
    "space": ("hubble_deep_field.jpg", None), "cat": ("chelsea.png", None), "coffee": ("coffee.png", None),
    "camera": ("camera.png", None),
}
TILE = 1 / 8
PER_CLASS = 20
FRACTIONS = (0.5, 0.1, 0.4)  # few training images a class, and a test split large enough to tell routes apart
VIEWS = ("flip", "crop1")
HEAD_EPOCHS, EPOCHS, BATCH = 10, 5, 20


def build_photos(root: Path, seed: int = 0) -> Path:
    """``root/<class>/<i>.jpg``: ``PER_CLASS`` tiles of each photo, drawn at random, as 160-240 px JPEGs at quality 90."""
    rng = np.random.default_rng(seed)
    photos = sample_photos()
    for label, (name, box) in CLASSES.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        found = tiles(photos[name], TILE, box)
        for i, index in enumerate(rng.choice(len(found), PER_CLASS, replace=False)):
            tile = found[index]
            side = int(rng.integers(160, 241))
            tile.resize((side, side), Image.Resampling.BICUBIC).save(root / label / f"{i:03d}.jpg", "JPEG", quality=90)
    return root


def timed(work: Callable[..., dict], *args) -> dict:
    """``work(*args)``'s result with its wall and CPU seconds (this process, all threads) and the load average around it."""
    load, wall, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
    result = work(*args)
    return {**result, "seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
            "load": [round(load, 1), round(os.getloadavg()[0], 1)]}


def extract(data: Path, cache: Path, weights: str, size: int) -> dict:
    from pipeline.cli import main

    code = main(["extract", str(data), "--cache", str(cache), "--weights", weights, "--image-size", str(size),
                 "--precision", "float32", "--layer", "block4_pool", "--views", ",".join(VIEWS),
                 "--views-of", "train", "--split", ",".join(map(str, FRACTIONS))])
    assert code == 0
    return {}


def cache_route(cache: Path, runs: Path, head: str, seed: int, views: bool) -> dict:
    from pipeline.training.train import TrainOptions, run_train

    settings = {"verbose": ["0"]}
    if head == "dense":
        settings["epochs"] = [str(HEAD_EPOCHS + EPOCHS)]
    else:
        settings.update(head_epochs=[str(HEAD_EPOCHS)], epochs=[str(EPOCHS)])
    options = TrainOptions(cache=str(cache), head=head, settings=settings, runs_dir=str(runs), seed=seed,
                           fractions=FRACTIONS, name=f"{head}{'-views' if views else ''}-seed{seed}",
                           views=VIEWS if views else ())
    (result,) = list(run_train(options))
    metrics = json.loads((result.folder / "metrics.json").read_text())
    return {"test_accuracy": metrics["test"]["accuracy"]}


def split_pixels(cache_path: Path, size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stage one's own pixels of each split (the one ``train`` remembered), with label columns; train also has its views."""
    from features_cache.reader import FeatureCache
    from pipeline.extraction.images import ResizeSpec, read_image
    from pipeline.training.splits import plan_cache_splits

    with FeatureCache(cache_path) as cache:
        plan = plan_cache_splits(cache, FRACTIONS, remember=False)
        root = Path(cache.data_root)
        out = {}
        for split in ("train", "val", "test"):
            rows = plan.rows(split)
            files = [str(root / cache.paths[r]) for r in rows]
            images = np.stack([read_image(f, ResizeSpec(size))[0] for f in files])
            out[split] = (images, cache.labels[rows].astype(np.int64))
            if split == "train":
                out["views"] = np.stack(
                    [np.stack([read_image(f, ResizeSpec(size, view=view))[0] for f in files]) for view in VIEWS], axis=1)
        out["n_classes"] = len(cache.class_names)
    return out


def images_route(pixels: dict, weights: str, size: int, seed: int) -> dict:
    """The usual way: every epoch runs the frozen VGG16 blocks 1-4 over the (augmented) images."""
    import keras

    from classifiers.keras_head import channel_stats, floored
    from classifiers.keras_views import ViewBatches
    from pipeline.extraction.backbones import Preprocess

    keras.utils.set_random_seed(seed)
    base = keras.applications.VGG16(include_top=False, weights=weights, input_shape=(size, size, 3))
    base.trainable = False
    (X, y), val = pixels["train"], pixels["val"]
    inputs = keras.Input((size, size, 3))
    maps = base(Preprocess("caffe")(inputs), training=False)
    extractor = keras.Model(inputs, maps)
    mean, variance = channel_stats([np.asarray(extractor.predict(X, batch_size=32, verbose=0))])
    x = keras.layers.Normalization(axis=-1, mean=mean, variance=floored(variance))(maps)  # as the finetune head does
    x = keras.layers.Dense(256, activation="relu")(keras.layers.Flatten()(x))
    x = keras.layers.Dropout(0.5, seed=seed)(x)
    model = keras.Model(inputs, keras.layers.Dense(pixels["n_classes"], activation="softmax")(x))
    batches = ViewBatches(X, pixels["views"], y, BATCH, seed, "one")
    model.compile(optimizer=keras.optimizers.RMSprop(2e-4), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(batches, epochs=HEAD_EPOCHS, validation_data=val, verbose=0)
    base.trainable = True
    for layer in base.layers:
        layer.trainable = layer.name.startswith("block5")
    model.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(batches, epochs=EPOCHS, validation_data=val, verbose=0)
    test_x, test_y = pixels["test"]
    accuracy = float(np.mean(np.argmax(model.predict(test_x, batch_size=32, verbose=0), axis=1) == test_y))
    return {"test_accuracy": accuracy}


ROUTES = ("dense", "dense + views", "finetune", "finetune + views", "from images + views")


def ratios(report: dict) -> dict:
    """The cache route's time (``finetune + views``) over the from-images route's: per seed, and over all seeds
    with the extraction counted once; wall and CPU seconds."""
    runs, images = report["results"]["finetune + views"], report["results"]["from images + views"]
    found = {}
    for clock in ("seconds", "cpu_seconds"):
        found[clock] = {
            "per_seed": [round(c[clock] / i[clock], 3) for c, i in zip(runs, images, strict=True)],
            "with_extraction": round((report["extract"][clock] + sum(c[clock] for c in runs)) / sum(i[clock] for i in images), 3),
        }
    return found


def print_table(report: dict) -> None:
    counts, extracted = report["counts"], report["extract"]
    print(f"{sum(counts.values())} photos in {len(CLASSES)} classes at {report['size']} px ({counts}); "
          f"extract (original + {len(VIEWS)} views of the training images, block4_pool): {extracted['seconds']:.0f} s wall, "
          f"{extracted['cpu_seconds']:.0f} s CPU, load {extracted['load']}")
    print("| route | test accuracy, mean (min-max) over seeds | wall s a run, median (per seed) | CPU s a run, median |")
    print("|---|---|---|---|")
    for route, runs in report["results"].items():
        accuracy = [r["test_accuracy"] for r in runs]
        walls = ", ".join(f"{r['seconds']:.0f}" for r in runs)
        print(f"| {route} | {np.mean(accuracy):.3f} ({min(accuracy):.3f}-{max(accuracy):.3f}) | "
              f"{np.median([r['seconds'] for r in runs]):.0f} ({walls}) | {np.median([r['cpu_seconds'] for r in runs]):.0f} |")
    print("cache route / from images:", json.dumps(report["ratios"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="VGG16 conv weights (.h5), e.g. HED's from ../shared/weights/hed_vgg16.py")
    parser.add_argument("--size", type=int, default=160, help="input size (default 160: block4_pool 10x10x512)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="bench-out")
    args = parser.parse_args(argv)
    out = Path(args.out) / "finetune"
    shutil.rmtree(out, ignore_errors=True)  # a cache left by an earlier run would make the extraction a no-op
    out.mkdir(parents=True)
    data = build_photos(out / "photos")
    cache = out / "photos.h5"
    extracted = timed(extract, data, cache, args.weights, args.size)
    pixels = split_pixels(cache, args.size)
    counts = {split: int(len(pixels[split][1])) for split in ("train", "val", "test")}
    report = {"size": args.size, "seeds": [], "counts": counts, "extract": extracted, "head_epochs": HEAD_EPOCHS,
              "epochs": EPOCHS, "views": VIEWS, "cpus": os.cpu_count(), "results": {route: [] for route in ROUTES}}
    results = report["results"]
    for seed in args.seeds:
        for head in ("dense", "finetune"):
            for views in (False, True):
                results[f"{head}{' + views' if views else ''}"].append(timed(cache_route, cache, out / "runs", head, seed, views))
        results["from images + views"].append(timed(images_route, pixels, args.weights, args.size, seed))
        report["seeds"].append(seed)
        report["ratios"] = ratios(report)
        (out / "finetune.json").write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps({route: runs[-1] for route, runs in results.items()}), flush=True)
    print_table(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
