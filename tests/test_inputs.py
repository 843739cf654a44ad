"""Inputs that used to give wrong data with exit code 0, or crash: links, split-named classes, odd names, moved data."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import pytest
from image_factory import make_class_folders, photo, save

from features_cache.reader import FeatureCache
from pipeline.cli import main
from pipeline.extraction.backbone_specs import BACKBONES, weights_path
from pipeline.extraction.backbones import Device, auto_precision

ARGS = ["--weights", "none", "--image-size", "32"]


def extract(data: Path, cache: Path, *extra: str) -> int:
    return main(["extract", str(data), "--cache", str(cache), *ARGS, *extra])


def cached_paths(cache: Path) -> list[str]:
    with FeatureCache(cache) as opened:
        return list(opened.paths)


def test_links_into_the_data_are_not_followed_and_no_file_is_taken_twice(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", {"cat": 4, "dog": 4})
    make_class_folders(tmp_path / "elsewhere", {"more": 2}, start_seed=50)
    os.symlink(".", data / "cat" / "self")  # a loop
    os.symlink("..", data / "dog" / "up")  # the whole data set again, labelled dog
    os.symlink("../cat/img_000.jpg", data / "dog" / "same.jpg")  # a cat image as a dog
    os.symlink(tmp_path / "elsewhere" / "more", data / "dog" / "more")  # outside the tree: followed
    os.link(data / "cat" / "img_001.jpg", data / "cat" / "hard.jpg")  # one file under two names
    assert extract(data, tmp_path / "c.h5") == 0
    out = capsys.readouterr().out
    paths = cached_paths(tmp_path / "c.h5")
    assert len(paths) == 4 + 4 + 2
    assert "dog/more/img_000.jpg" in paths and not any("self" in p or "up/" in p for p in paths)
    assert "skipped cat/self: link to a folder already in the data" in out
    assert "skipped dog/up: link to a folder already in the data" in out
    assert "skipped dog/same.jpg: the same file as cat/img_000.jpg" in out
    assert "skipped cat/img_001.jpg: the same file as cat/hard.jpg" in out  # first in sorted order wins


def test_a_class_called_train_is_a_class_and_split_folders_with_strays_are_refused(tmp_path, capsys):
    data = make_class_folders(tmp_path / "vehicles", {"bus": 3, "car": 3, "train": 3})
    assert extract(data, tmp_path / "v.h5") == 0
    assert "read as class folders: bus, car, train" in capsys.readouterr().out
    with FeatureCache(tmp_path / "v.h5") as cache:
        assert cache.class_names == ["bus", "car", "train"] and not any(cache.splits)

    split = tmp_path / "split"
    make_class_folders(split / "train", {"a": 3, "b": 3})
    make_class_folders(split / "validation", {"a": 2, "b": 2}, start_seed=9)
    assert extract(split, tmp_path / "s.h5") == 0
    assert "read as split folders: train (train), validation (val)" in capsys.readouterr().out
    make_class_folders(split / "extra", {"c": 2}, start_seed=20)
    assert extract(split, tmp_path / "s.h5") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "other folders beside them (extra)" in err and "\n" not in err


def test_a_name_that_is_not_utf8_is_skipped_and_reported_not_fatal(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", {"a": 3, "b": 3})
    bad = os.path.join(os.fsencode(data / "a"), b"caf\xe9.jpg")
    save(photo(seed=99), Path(os.fsdecode(bad)), "JPEG")
    for _ in range(2):  # every re-run too
        assert extract(data, tmp_path / "c.h5") == 0
        out = capsys.readouterr().out
        assert "skipped a/caf\\xe9.jpg: file name is not valid UTF-8; rename it" in out
    assert len(cached_paths(tmp_path / "c.h5")) == 6


def test_manifest_and_data_argument_errors_are_one_line(tmp_path, capsys):
    make_class_folders(tmp_path / "imgs", {"a": 2, "b": 2})
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nimgs/a/img_000.jpg,a\nimgs/b/img_00\x001.jpg,b\n", encoding="utf-8")
    assert extract(manifest, tmp_path / "m.h5") == 2
    err = capsys.readouterr().err.strip()
    assert f"{manifest}:3: the row holds a NUL byte" in err and "\n" not in err
    assert extract(tmp_path / "imgs" / "a" / "img_000.jpg", tmp_path / "x.h5") == 2
    err = capsys.readouterr().err.strip()
    assert "is an image file; DATA is a folder of class folders or a CSV manifest" in err and "\n" not in err


def test_another_data_folder_does_not_silently_empty_the_cache(tmp_path, capsys):
    first = make_class_folders(tmp_path / "first", {"a": 4, "b": 4})
    other = make_class_folders(tmp_path / "other", {"a": 1, "b": 1}, start_seed=40)
    assert extract(first, tmp_path / "c.h5") == 0
    assert extract(other, tmp_path / "c.h5") == 2
    err = capsys.readouterr().err.strip()
    assert "made from" in err and "would be dropped" in err and "--prune" in err and "\n" not in err
    assert len(cached_paths(tmp_path / "c.h5")) == 8  # untouched
    for name in ("img_000.jpg", "img_001.jpg", "img_002.jpg"):
        (first / "a" / name).unlink()
        (first / "b" / name).unlink()
    assert extract(first, tmp_path / "c.h5") == 2  # 6 of 8 gone from the same folder: more than half
    err = capsys.readouterr().err
    assert "6 of its 8 images are no longer in" in err and "--prune" in err
    assert extract(first, tmp_path / "c.h5", "--prune") == 0
    assert "6 removed" in capsys.readouterr().out
    assert len(cached_paths(tmp_path / "c.h5")) == 2


def test_auto_precision_extends_a_cache_in_its_own_precision(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", {"a": 3, "b": 3})
    assert extract(data, tmp_path / "c.h5", "--precision", "bfloat16") == 0
    for name in ("a", "b"):  # one new image per class
        save(photo(seed=70 + len(name)), data / name / "new.jpg", "JPEG")
    capsys.readouterr()
    assert extract(data, tmp_path / "c.h5") == 0  # --precision auto, as on a laptop
    captured = capsys.readouterr()
    assert "precision auto: bfloat16" in captured.out and "2 extracted, 6 kept" in captured.out, captured
    with h5py.File(tmp_path / "c.h5") as cache:
        assert cache.attrs["recipe.precision"] == "bfloat16"


@pytest.mark.parametrize(
    "device, expected",
    [
        (Device("jax", (9, 0)), "bfloat16"),  # H100
        (Device("torch", (8, 0)), "bfloat16"),  # A100
        (Device("tensorflow", (7, 5)), "float16"),  # T4: tensor cores without bfloat16
        (Device("torch", (7, 0)), "float16"),  # V100
        (Device("jax", (6, 0)), "float16"),  # P100
        (Device("tensorflow", None, frozenset({"avx2", "amx_bf16"})), "bfloat16"),
        (Device("tensorflow", None, frozenset({"avx512f", "avx512_bf16"})), "bfloat16"),  # measured 2x on Zen 4
        (Device("jax", None, frozenset({"avx512_bf16"})), "float32"),  # measured no faster there
        (Device("torch", None, frozenset({"avx2"})), "float32"),
    ],
)
def test_auto_precision_follows_the_hardware(device, expected):
    assert auto_precision(device) == expected


def test_mobilenetv2_weights_follow_the_input_size_as_keras_names_them():
    spec = BACKBONES["mobilenetv2"]
    assert spec.weights_file(160) == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_160_no_top.h5"
    assert spec.weights_file(200) == spec.weights_file(224)  # Keras loads the 224 weights for other sizes
    assert weights_path("mobilenetv2", "imagenet", 96).name.endswith("_96_no_top.h5")


def test_the_cache_records_whether_tf32_was_allowed(tmp_path):
    data = make_class_folders(tmp_path / "data", {"a": 2, "b": 2})
    assert extract(data, tmp_path / "c.h5") == 0
    with h5py.File(tmp_path / "c.h5") as cache:
        assert cache.attrs["tf32"] == "not applicable (CPU)"
