"""Augmented views extracted once: caches beside the original whose rows are the original's images."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from image_factory import make_class_folders, photo, save
from PIL import Image

from classifiers import DenseHead
from features_cache.reader import FeatureCache
from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.extraction.extract import ExtractOptions, run_extract
from pipeline.extraction.images import ResizeSpec, read_image
from pipeline.extraction.views import apply_view, parse_views, view_cache
from pipeline.training.splits import plan_cache_splits
from pipeline.training.views import load_views

REPO = Path(__file__).resolve().parents[1]
SIZE = 32


def extract_args(data: Path, cache: Path, weights: Path, *extra: str) -> list[str]:
    return ["extract", str(data), "--cache", str(cache), "--weights", str(weights), "--image-size", str(SIZE),
            "--batch-size", "4", "--shard-rows", "4", "--precision", "float32", *extra]


def extracted(capsys) -> list[int]:
    """The number extracted in each cache line ``extract`` printed (the original, then each view)."""
    out = capsys.readouterr().out
    return [int(line.split("(")[1].split(" extracted")[0]) for line in out.splitlines() if " extracted," in line]


@pytest.fixture
def photos(tmp_path) -> Path:
    return make_class_folders(tmp_path / "photos", {"cat": 10, "dog": 10})


def test_view_pixels_are_the_flip_and_seeded_crops():
    pixels = np.asarray(photo(SIZE, SIZE, seed=3).convert("RGB"))
    assert np.array_equal(apply_view(pixels, "flip", b"a", Image.Resampling.BILINEAR), pixels[:, ::-1])
    crop = apply_view(pixels, "crop1", b"a", Image.Resampling.BILINEAR)
    assert crop.shape == pixels.shape and crop.dtype == np.uint8 and not np.array_equal(crop, pixels)
    assert np.array_equal(crop, apply_view(pixels, "crop1", b"a", Image.Resampling.BILINEAR))  # seeded by the bytes: the same every run
    assert not np.array_equal(crop, apply_view(pixels, "crop2", b"a", Image.Resampling.BILINEAR))
    assert parse_views("flip,crop2") == ("flip", "crop2")
    with pytest.raises(PipelineError, match="crop1..crop9"):
        parse_views("flip,rotate")


def test_views_stay_with_their_image_in_every_split_and_only_training_reads_them(photos, tmp_path, weights_file, capsys):
    cache_path = tmp_path / "pets.h5"
    assert main(extract_args(photos, cache_path, weights_file, "--views", "flip,crop1")) == 0
    assert extracted(capsys) == [20, 20, 20]
    assert main(["info", str(cache_path)]) == 0
    assert "views: crop1, flip" in capsys.readouterr().out
    with FeatureCache(cache_path) as cache, FeatureCache(view_cache(cache_path, "flip")) as flip:
        assert flip.paths == cache.paths and flip.recipe.view == "flip(horizontal)" and flip.identity != cache.identity
        assert [r.content_hash for r in flip.records()] == [r.content_hash for r in cache.records()]
        plan = plan_cache_splits(cache, (0.6, 0.2, 0.2))
        train = plan.rows("train")
        views = load_views(cache, train, ("flip", "crop1"))
        assert views.shape == (len(train), 2, *cache.feature_shape)
        # the flip view of each training image is the backbone's features of that image's flipped pixels
        np.testing.assert_allclose(views[:, 0], flip.features(train), atol=1e-6)
        assert not np.allclose(views[:, 0], cache.features(train))
    spec = ResizeSpec(SIZE, view="flip")
    flipped = read_image(str(photos / cache.paths[train[0]]), spec)[0]
    assert np.array_equal(flipped, read_image(str(photos / cache.paths[train[0]]), ResizeSpec(SIZE))[0][:, ::-1])

    runs = tmp_path / "runs"
    assert main(["train", str(cache_path), "--head", "dense", "--set", "epochs=2", "--set", "units=8", "--views", "flip,crop1",
                 "--split", "0.6,0.2,0.2", "--name", "viewed", "--runs-dir", str(runs)]) == 0
    config = json.loads((runs / "viewed" / "config.json").read_text())
    assert config["views"] == ["flip", "crop1"] and config["split"]["counts"]["train"] == len(train)
    with open(runs / "viewed" / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    # one row per held-out image, each the original: no view is ever scored
    assert len(rows) == 20 - len(train) and len({row["path"] for row in rows}) == len(rows)
    assert {row["path"] for row in rows}.isdisjoint(cache.paths[r] for r in train)


def test_views_are_incremental_and_a_stale_view_is_refused(photos, tmp_path, weights_file, capsys):
    cache_path = tmp_path / "pets.h5"
    assert main(extract_args(photos, cache_path, weights_file, "--views", "flip")) == 0
    capsys.readouterr()
    save(photo(40, 30, seed=901), photos / "cat" / "new-1.png")
    save(photo(40, 30, seed=902), photos / "dog" / "new-2.png")
    assert main(extract_args(photos, cache_path, weights_file)) == 0  # the original only: the view is stale now
    capsys.readouterr()
    runs = tmp_path / "runs"
    train = ["train", str(cache_path), "--head", "dense", "--set", "epochs=1", "--views", "flip", "--runs-dir", str(runs)]
    assert main(train) == 2
    err = capsys.readouterr().err
    assert "have no view flip of their content" in err and "--views flip" in err and len(err.strip().splitlines()) == 1
    assert main(extract_args(photos, cache_path, weights_file, "--views", "flip")) == 0
    assert extracted(capsys) == [0, 2]  # only the new images, in the view too
    assert main(train) == 0
    capsys.readouterr()
    assert main(["train", str(cache_path), "--head", "logreg", "--views", "flip", "--runs-dir", str(runs)]) == 2
    assert "trains without views" in capsys.readouterr().err


def test_views_of_train_cover_exactly_the_images_train_reads(photos, tmp_path, weights_file, capsys):
    cache_path, runs = tmp_path / "pets.h5", tmp_path / "runs"
    views_of_train = ("--views", "flip", "--views-of", "train", "--split", "0.6,0.2,0.2")
    assert main(extract_args(photos, cache_path, weights_file, *views_of_train)) == 0
    out = capsys.readouterr().out
    with FeatureCache(cache_path) as cache, FeatureCache(view_cache(cache_path, "flip")) as flip:
        train = plan_cache_splits(cache, (0.6, 0.2, 0.2), remember=False).rows("train")
        assert sorted(flip.paths) == sorted(cache.paths[r] for r in train) and len(train) < len(cache)
        assert f"views of the {len(train)} training images of 20" in out
    assert [int(line.split("(")[1].split(" extracted")[0]) for line in out.splitlines() if " extracted," in line] == [20, len(train)]
    train_args = ["train", str(cache_path), "--head", "dense", "--set", "epochs=1", "--set", "units=8", "--views", "flip",
                  "--split", "0.6,0.2,0.2", "--runs-dir", str(runs)]
    assert main(train_args) == 0  # the split extract decided is the one train reads: every training image has its view
    capsys.readouterr()
    for seed in (911, 912, 913, 914, 915):  # new images join the split they are given and, in train, get views
        save(photo(40, 30, seed=seed), photos / "cat" / f"new-{seed}.png")
    assert main(extract_args(photos, cache_path, weights_file, *views_of_train)) == 0
    capsys.readouterr()
    with FeatureCache(cache_path) as cache, FeatureCache(view_cache(cache_path, "flip")) as flip:
        train = plan_cache_splits(cache, (0.6, 0.2, 0.2), remember=False).rows("train")
        assert sorted(flip.paths) == sorted(cache.paths[r] for r in train)
    assert main(train_args) == 0
    capsys.readouterr()
    # another split's training images have no views yet: refused with the line that makes them
    assert main([*train_args[:-2], "--split", "0.5,0.25,0.25", "--runs-dir", str(runs)]) == 2
    assert "have no view flip" in capsys.readouterr().err
    assert main(extract_args(photos, cache_path, weights_file, "--split", "0.6,0.2,0.2")) == 2
    assert "--views-of train" in capsys.readouterr().err


def test_a_view_run_killed_mid_write_resumes_to_the_same_view(photos, tmp_path, weights_file):
    cache_path = tmp_path / "pets.h5"
    environment = {**os.environ, "PIPELINE_KILL_AT": "shard-written:7"}  # 5 shards of the original, then 2 of the view
    killed = subprocess.run([sys.executable, "-m", "pipeline", *extract_args(photos, cache_path, weights_file, "--views", "flip")],
                            cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    with FeatureCache(cache_path) as cache:
        assert len(cache) == 20
    assert not view_cache(cache_path, "flip").exists()  # never committed: readers see no half view
    resumed = subprocess.run([sys.executable, "-m", "pipeline", *extract_args(photos, cache_path, weights_file, "--views", "flip")],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    view_line = resumed.stdout.strip().splitlines()[-1]
    assert "20 images" in view_line and "(12 extracted" in view_line, resumed.stdout  # the 2 shards written: adopted
    straight = tmp_path / "straight.h5"
    run_extract(ExtractOptions(data=str(photos), cache=str(straight), weights=str(weights_file), image_size=SIZE, batch_size=4,
                               precision="float32", view="flip"))
    with FeatureCache(view_cache(cache_path, "flip")) as resumed_view, FeatureCache(straight) as fresh:
        assert resumed_view.paths == fresh.paths
        np.testing.assert_allclose(resumed_view.features(), fresh.features(), atol=1e-6)


def test_dense_head_draws_one_view_per_image_each_epoch():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 1, 1, 8)).astype(np.float32)
    y = np.where(X[:, 0, 0, 0] > 0, "a", "b")
    views = np.stack([X * 1.01, X * 0.99], axis=1)
    head = DenseHead(epochs=3, units=8, verbose=0, batch_size=8).fit(X, y, views=views)
    assert len(head.history_["loss"]) == 3
    with pytest.raises(ValueError, match="views"):
        DenseHead(epochs=1, early_stopping=2, verbose=0).fit(X, y, views=views)


def test_verify_and_compact_cover_the_views(photos, tmp_path, weights_file, capsys):
    cache_path = tmp_path / "pets.h5"
    assert main(extract_args(photos, cache_path, weights_file, "--views", "flip")) == 0
    with FeatureCache(view_cache(cache_path, "flip")) as flip:
        before = flip.features()
    assert main(["compact", str(cache_path)]) == 0
    assert str(view_cache(cache_path, "flip")) in capsys.readouterr().out
    with FeatureCache(view_cache(cache_path, "flip")) as flip:
        np.testing.assert_array_equal(flip.features(), before)
        shard = flip.shard_files[0]
    assert main(["verify", str(cache_path)]) == 0
    assert "and its views flip" in capsys.readouterr().out
    damaged = bytearray(shard.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    shard.write_bytes(bytes(damaged))
    assert main(["verify", str(cache_path)]) == 1
    assert shard.name in capsys.readouterr().err
