"""Fine-tuning the top block from the cache against fine-tuning it from images, on real photos.

    python -m bench.finetune --weights /tmp/vgg16_real.weights.h5 [--size 128] [--seeds 0 1 2] [--out bench-out]

Classes are tiles of four look-alike textures among the sample photos (bench/real_photos.py:
brick, gravel, grass and the moon's surface), where the bottleneck head is not perfect. One
``extract --layer block4_pool --views flip,crop1`` makes the cache and its two views; then,
per seed, on the same remembered split: ``train --head dense`` (without and with the views),
``train --head finetune`` (without and with the views), and the same fine-tuning from images
in plain Keras: VGG16 frozen to block4, block5 and the same head (Normalization fitted on the
training images' block5 output, Flatten, Dense(256), Dropout(0.5), softmax), phase one with
RMSprop, phase two with SGD(1e-4, momentum 0.9) on block5 and the head, the same epochs and
the same augmentation (each epoch one of original, flip, crop1 per image: the very pixels the
views were extracted from). Every route computes in float32. Times are wall seconds on this
machine, in one process, side by side; the cache route's time counts its extraction once.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.real_photos import sample_photos, tiles

CLASSES = {"brick": "brick.png", "gravel": "gravel.png", "grass": "grass.png", "moon": "moon.png"}
TILE = 1 / 6
VIEWS = ("flip", "crop1")
HEAD_EPOCHS, EPOCHS, BATCH = 10, 5, 20


def build_photos(root: Path, seed: int = 0) -> Path:
    """``root/<class>/<i>.jpg``: tiles of each texture as 160-240 px JPEGs at quality 90."""
    rng = np.random.default_rng(seed)
    photos = sample_photos()
    for label, name in CLASSES.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i, tile in enumerate(tiles(photos[name], TILE, None)):
            side = int(rng.integers(160, 241))
            tile.resize((side, side), Image.Resampling.BICUBIC).save(root / label / f"{i:03d}.jpg", "JPEG", quality=90)
    return root


def extract(data: Path, cache: Path, weights: str, size: int) -> float:
    from pipeline.cli import main

    started = time.perf_counter()
    code = main(["extract", str(data), "--cache", str(cache), "--weights", weights, "--image-size", str(size),
                 "--precision", "float32", "--layer", "block4_pool", "--views", ",".join(VIEWS)])
    assert code == 0
    return time.perf_counter() - started


def cache_route(cache: Path, runs: Path, head: str, seed: int, views: bool) -> dict:
    from pipeline.training.train import TrainOptions, run_train

    settings = {"verbose": ["0"]}
    if head == "dense":
        settings["epochs"] = [str(HEAD_EPOCHS + EPOCHS)]
    else:
        settings.update(head_epochs=[str(HEAD_EPOCHS)], epochs=[str(EPOCHS)])
    started = time.perf_counter()
    options = TrainOptions(cache=str(cache), head=head, settings=settings, runs_dir=str(runs), seed=seed,
                           name=f"{head}{'-views' if views else ''}-seed{seed}", views=VIEWS if views else ())
    (result,) = list(run_train(options))
    seconds = time.perf_counter() - started
    metrics = json.loads((result.folder / "metrics.json").read_text())
    return {"test_accuracy": metrics["test"]["accuracy"], "seconds": seconds}


def split_pixels(cache_path: Path, size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stage one's own pixels of each split (the one ``train`` remembered), with label columns; train also has its views."""
    from features_cache.reader import FeatureCache
    from pipeline.extraction.images import ResizeSpec, read_image
    from pipeline.training.splits import plan_cache_splits

    with FeatureCache(cache_path) as cache:
        plan = plan_cache_splits(cache, (0.7, 0.15, 0.15), remember=False)
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

    from classifiers.keras_head import channel_stats
    from classifiers.keras_views import ViewBatches
    from pipeline.extraction.backbones import Preprocess

    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    base = keras.applications.VGG16(include_top=False, weights=weights, input_shape=(size, size, 3))
    base.trainable = False
    (X, y), val = pixels["train"], pixels["val"]
    inputs = keras.Input((size, size, 3))
    maps = base(Preprocess("caffe")(inputs), training=False)
    extractor = keras.Model(inputs, maps)
    mean, variance = channel_stats([np.asarray(extractor.predict(X, batch_size=32, verbose=0))])
    x = keras.layers.Normalization(axis=-1, mean=mean, variance=variance)(maps)
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
    return {"test_accuracy": accuracy, "seconds": time.perf_counter() - started}


ROUTES = ("dense", "dense + views", "finetune", "finetune + views", "from images + views")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="VGG16 conv weights (.h5), e.g. HED's from ../shared/weights/hed_vgg16.py")
    parser.add_argument("--size", type=int, default=128, help="input size (default 128: block4_pool 8x8x512)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="bench-out")
    args = parser.parse_args(argv)
    out = Path(args.out) / "finetune"
    out.mkdir(parents=True, exist_ok=True)
    data = build_photos(out / "photos")
    cache = out / "textures.h5"
    extract_seconds = extract(data, cache, args.weights, args.size)
    pixels = split_pixels(cache, args.size)
    results: dict[str, list[dict]] = {route: [] for route in ROUTES}
    for seed in args.seeds:
        for head in ("dense", "finetune"):
            results[head].append(cache_route(cache, out / "runs", head, seed, views=False))
            results[f"{head} + views"].append(cache_route(cache, out / "runs", head, seed, views=True))
        results["from images + views"].append(images_route(pixels, args.weights, args.size, seed))
        print(json.dumps({route: runs[-1] for route, runs in results.items()}), flush=True)
    counts = {split: int(len(pixels[split][1])) for split in ("train", "val", "test")}
    report = {"size": args.size, "seeds": args.seeds, "counts": counts, "extract_seconds": extract_seconds,
              "head_epochs": HEAD_EPOCHS, "epochs": EPOCHS, "views": VIEWS, "results": results}
    (out / "finetune.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{sum(counts.values())} photos in {len(CLASSES)} classes at {args.size} px ({counts}); "
          f"extract (original + {len(VIEWS)} views, block4_pool): {extract_seconds:.0f} s")
    print("| route | test accuracy (mean, min-max over seeds) | wall s per run (median) |")
    print("|---|---|---|")
    for route, runs in results.items():
        accuracy = [r["test_accuracy"] for r in runs]
        print(f"| {route} | {np.mean(accuracy):.3f} ({min(accuracy):.3f}-{max(accuracy):.3f}) | "
              f"{np.median([r['seconds'] for r in runs]):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
