"""A newcomer's first hour: each surprise found by trying the product on a folder of photos, as a test.

Small on purpose: 32 px images, random or tiny weights, CLI calls in process. TensorFlow's native
log lines from a head fitted in Python (file descriptor 2, seen only from a process) are checked in
test_compile_cache.py, whose processes fit one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from sklearn.linear_model import LogisticRegression
from test_layouts import extract, write_layout

from classifiers.compile_cache import cache_folder, cpu_key
from features_cache import FeatureCache
from pipeline.cli import main
from pipeline.demo import next_steps
from pipeline.errors import PipelineError
from pipeline.training.datasets import load_split, save_run
from pipeline.training.runs import read_index


@pytest.fixture(scope="module")
def photos_and_cache(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("first-hour")
    photos = write_layout(root / "photos", {"": 8})
    return photos, extract(photos, root / "photos.h5")


def test_an_image_folder_given_as_a_cache_is_named_with_the_extract_command_that_makes_one(photos_and_cache, capsys):
    photos, _ = photos_and_cache
    assert main(["train", str(photos)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{photos}: is a folder, not a feature cache" in err
    assert f"`python -m pipeline extract {photos} --cache cache/photos.h5`" in err
    assert "--force" not in err


def test_a_misspelled_option_gets_the_closest_one(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["extract", "photos", "--cache", "c.h5", "--img-size", "96"])
    assert stopped.value.code == 2
    assert "unrecognized arguments: --img-size 96; did you mean `--image-size`?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "c.h5", "--hed=logreg"])
    assert "did you mean `--head`?" in capsys.readouterr().err


def test_train_names_the_head_when_it_is_the_default(photos_and_cache, tmp_path, capsys):
    _, cache = photos_and_cache
    runs = str(tmp_path / "runs")
    assert main(["train", str(cache), "--runs-dir", runs, "--set", "epochs=1", "--set", "units=8"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "head: dense (the default; --head gap, logreg or finetune picks another)"
    assert main(["train", str(cache), "--runs-dir", runs, "--head", "logreg"]) == 0
    assert "the default" not in capsys.readouterr().out


def tiny_weights(path: Path, seed: int) -> Path:
    """A MobileNetV2 include_top=False weights file at 32 px (9 MB), standing in for a downloaded VGG16 file."""
    import keras

    keras.utils.set_random_seed(seed)
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(path)
    return path


def test_extract_without_weights_on_a_cache_takes_the_weights_file_the_cache_was_made_with(tmp_path, capsys):
    photos = write_layout(tmp_path / "photos", {"": 3})
    weights = tiny_weights(tmp_path / "mine.weights.h5", seed=1)
    cache = str(tmp_path / "photos.h5")
    common = ["extract", str(photos), "--cache", cache, "--backbone", "mobilenetv2", "--image-size", "32"]
    assert main([*common, "--weights", str(weights)]) == 0
    write_layout(tmp_path / "more", {"": 1})
    for image in (tmp_path / "more").rglob("*.jpg"):
        image.rename(photos / image.parent.name / f"new-{image.name}")
    capsys.readouterr()
    assert main(common) == 0  # offline, on main this tried to download ImageNet's weights
    out = capsys.readouterr().out
    assert f"weights: {weights.resolve()}, the file {cache} was made with (no --weights given)" in out
    with FeatureCache(cache) as opened:
        assert len(opened) == 12 and opened.recipe.weights == str(weights.resolve())
        lost = opened.shard_files[0]
    lost.unlink()  # a cache that needs rebuilding from its shards still names its weights
    assert main(common) == 0
    assert "the file" in capsys.readouterr().out

    tiny_weights(weights, seed=2)  # the same path, other values: the recorded hash refuses it
    (photos / "수박" / "new-수박_000.jpg").unlink()
    assert main([*common, "--prune"]) == 2
    assert "weights" in capsys.readouterr().err
    weights.unlink()
    assert main(common) == 2
    err = capsys.readouterr().err
    assert f"was made with --weights {weights.resolve()}" in err and "no longer there" in err


def test_the_demo_next_steps_include_your_own_folder():
    args = argparse.Namespace(data="data/digits", cache="cache/digits.h5", runs_dir="runs", image_size=224)
    text = next_steps(args, "imagenet")
    assert "make extract DATA=path/to/photos CACHE=cache/photos.h5" in text
    assert "make train-head CACHE=cache/photos.h5" in text


def test_save_run_refuses_a_taken_name_naming_overwrite_and_replaces_the_run_with_it(photos_and_cache, tmp_path):
    _, cache_path = photos_and_cache
    runs = tmp_path / "runs"
    with FeatureCache(cache_path) as cache:
        X, y = load_split(cache, "train", pooling="avg")
        model = LogisticRegression(max_iter=1000).fit(X, y)
        first = save_run(model, cache, pooling="avg", runs_dir=runs, name="nb")
        with pytest.raises(PipelineError, match=r"run 'nb' already exists .*save_run\(\.\.\., overwrite=True\)"):
            save_run(model, cache, pooling="avg", runs_dir=runs, name="nb")
        again = save_run(model, cache, pooling="avg", runs_dir=runs, name="nb", overwrite=True)
    assert again == first and (again / "config.json").is_file()
    assert [entry["name"] for entry in read_index(runs)] == ["nb"]
    assert [p.name for p in runs.iterdir() if p.name.startswith(".")] == []


CPUINFO = "processor\t: 0\nmodel name\t: {model}\nflags\t\t: {flags}\n\nprocessor\t: 1\nmodel name\t: {model}\nflags\t\t: {flags}\n"


def test_xla_programs_are_kept_per_cpu_and_never_where_the_cpu_cannot_be_named(tmp_path, monkeypatch):
    monkeypatch.delenv("PIPELINE_XLA_CACHE", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    avx512 = CPUINFO.format(model="AMD EPYC 9B14", flags="fpu sse2 avx2 avx512f avx512_bf16")
    avx2 = CPUINFO.format(model="AMD EPYC 7B12", flags="fpu sse2 avx2")
    assert cache_folder("2.21.0", avx512).parent == tmp_path / "xla-cache"
    assert cache_folder("2.21.0", avx512) != cache_folder("2.21.0", avx2)
    assert cpu_key(avx512) == cpu_key(avx512.replace("processor\t: 1", "processor\t: 7"))
    assert cpu_key("processor\t: 0\nvendor_id\t: GenuineIntel\n") is None  # no flags: no cache, every run compiles
    assert cache_folder("2.21.0", "") is None
