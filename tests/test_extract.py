"""Stage one end to end: real images, real VGG16, real HDF5 files."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from image_factory import make_class_folders, photo, save, truncated_jpeg

from features_cache import schema
from features_cache.errors import CacheError
from features_cache.lock import exclusive_writer
from features_cache.reader import FeatureCache
from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.extraction.extract import ExtractOptions, run_extract
from pipeline.extraction.images import ResizeSpec, read_image

CLASSES = {"토마토": 6, "호박": 5, "수박": 5}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def photos(tmp_path) -> Path:
    return make_class_folders(tmp_path / "photos", CLASSES)


def options(data: Path, cache: Path, weights: Path, **overrides) -> ExtractOptions:
    # a shard per batch of 4 (extract gathers 2,048 rows a shard by default), so tests see many shards
    settings = {"image_size": 32, "batch_size": 4, "precision": "float32", "storage_dtype": "float32", "shard_rows": 4}
    return ExtractOptions(data=str(data), cache=str(cache), weights=str(weights), **{**settings, **overrides})


def snapshot(cache_path: Path) -> dict:
    with FeatureCache(cache_path) as cache:
        return {
            "paths": cache.paths,
            "labels": cache.labels.tolist(),
            "classes": cache.class_names,
            "splits": cache.splits.tolist(),
            "features": cache.features(),
            # what the cache says of each skip; stamps name inodes, which a copied data folder changes
            "skipped": [(item.path, item.reason, item.depends_on) for item in cache.skipped()],
        }


def copy_cache(built: Path, folder: Path) -> Path:
    """A copy of the cache ``built`` (alone in its folder, with its shards folder) into ``folder``, under its own name.

    The index records its shards relative to itself, so the copy is what extracting the same
    images into ``folder`` gives, with none of the extraction's time.
    """
    shutil.copytree(built.parent, folder, dirs_exist_ok=True)
    return folder / built.name


def assert_only_listed_files(cache_path: Path) -> None:
    """The shards folder holds exactly the shards and segments the index lists: no temporaries, no garbage."""
    with FeatureCache(cache_path) as cache:
        listed = {p.resolve() for p in [*cache.shard_files, *cache.segment_files]}
    assert {p.resolve() for p in schema.shards_dir(cache_path).iterdir()} == listed


def plain_snapshot(cache_path: Path) -> dict:
    """What any HDF5 reader sees in the index (rows in storage order), put in the product's order (by path)."""
    with h5py.File(cache_path, "r") as f:
        paths = [str(p) for p in f["paths"].asstr()[()]]
        order = sorted(range(len(paths)), key=paths.__getitem__)
        return {
            "paths": [paths[i] for i in order],
            "labels": f["labels"][()][order].tolist(),
            "classes": [str(c) for c in f["class_names"].asstr()[()]],
            "splits": [str(s) for s in f["split"].asstr()[()][order]],
            "features": f["features"][()][order].astype(np.float32),
        }


def assert_same_cache(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a["paths"] == b["paths"] and a["labels"] == b["labels"] and a["classes"] == b["classes"]
    assert a["splits"] == b["splits"] and a["skipped"] == b["skipped"]
    np.testing.assert_allclose(a["features"], b["features"], rtol=1e-4, atol=atol)


def test_features_equal_vgg16_on_preprocess_input(photos, tmp_path, weights_file):
    cache_path = tmp_path / "features.h5"
    report = run_extract(options(photos, cache_path, weights_file))
    assert report.extracted == 16 and report.skipped == []
    with FeatureCache(cache_path) as cache:
        assert cache.feature_shape == (1, 1, 512)
        assert cache.class_names == sorted(CLASSES)
        images = np.stack([read_image(str(photos / p), ResizeSpec(32))[0] for p in cache.paths]).astype("float32")
        reference = keras.applications.VGG16(include_top=False, weights=str(weights_file), input_shape=(32, 32, 3))
        expected = keras.ops.convert_to_numpy(reference(keras.applications.vgg16.preprocess_input(images)))
        np.testing.assert_allclose(cache.features(), expected, rtol=1e-4, atol=1e-4)
        assert [cache.class_names[label] for label in cache.labels] == [p.split("/")[0] for p in cache.paths]


def test_cache_records_how_it_was_made(photos, tmp_path, weights_file):
    cache_path = tmp_path / "features.h5"
    run_extract(options(photos, cache_path, weights_file, storage_dtype="float16"))
    with h5py.File(cache_path, "r") as f:
        attrs = dict(f.attrs)
        features = f[schema.FEATURES]
        assert features.dtype == np.float16 and features.is_virtual
        through_hdf5 = features[()]
    with FeatureCache(cache_path) as cache:
        np.testing.assert_array_equal(through_hdf5, cache.features(dtype=np.float16))
        for shard in cache.shard_files:
            with h5py.File(shard, "r") as f:
                chunks = f[schema.FEATURES].chunks
                assert f[schema.FEATURES].fletcher32 and chunks[1:] == (1, 1, 512) and chunks[0] * 512 * 2 <= 1 << 20
    assert attrs["recipe.backbone"] == "vgg16" and attrs["recipe.preprocessing"] == "caffe"
    assert attrs["recipe.image_size"] == 32 and attrs["recipe.precision"] == "float32"
    assert attrs["recipe.resize"] == "stretch" and attrs["recipe.interpolation"] == "bilinear"
    assert attrs["recipe.weights"] == str(weights_file.resolve()) and len(attrs["recipe.weights_sha256"]) == 64
    assert attrs["complete"] and attrs["version.keras"] == keras.__version__
    assert attrs["data_root"] == str(photos.resolve())


def test_incremental_run_processes_only_new_and_changed_images(photos, tmp_path, weights_file):
    cache_path = tmp_path / "features.h5"
    run_extract(options(photos, cache_path, weights_file))
    unchanged = run_extract(options(photos, cache_path, weights_file))
    assert (unchanged.extracted, unchanged.kept, unchanged.written) == (0, 16, False)

    save(photo(60, 45, seed=500), photos / "호박" / "new.jpg", "JPEG")
    save(photo(60, 45, seed=501), photos / "수박" / "img_000.jpg", "JPEG")
    (photos / "토마토" / "img_001.jpg").unlink()
    touched = photos / "토마토" / "img_002.jpg"
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))
    report = run_extract(options(photos, cache_path, weights_file))
    assert (report.extracted, report.removed, report.kept) == (2, 1, 14)

    fresh = tmp_path / "fresh.h5"
    run_extract(options(photos, fresh, weights_file))
    assert_same_cache(snapshot(cache_path), snapshot(fresh))


def test_a_no_op_rerun_decides_without_loading_keras(photos, tmp_path, weights_file):
    settings = options(photos, tmp_path / "features.h5", weights_file)
    run_extract(settings)
    script = (
        "import json, sys; from pipeline.extraction.extract import ExtractOptions, run_extract; "
        "report = run_extract(ExtractOptions(**json.loads(sys.argv[1]))); "
        "print(report.written, report.kept, 'keras' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(dataclasses.asdict(settings))],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    assert result.stdout.split() == ["False", "16", "False"]


def test_cache_made_with_other_settings_is_refused_until_force(photos, tmp_path, weights_file):
    cache_path = tmp_path / "features.h5"
    run_extract(options(photos, cache_path, weights_file))
    with pytest.raises(PipelineError, match=r"made with other settings \(image_size: 32 != 64\).*--force"):
        run_extract(options(photos, cache_path, weights_file, image_size=64))
    report = run_extract(options(photos, cache_path, weights_file, image_size=64, force=True))
    assert report.extracted == 16
    with FeatureCache(cache_path) as cache:
        assert cache.feature_shape == (2, 2, 512) and cache.recipe.image_size == 64


def test_bad_files_are_skipped_reported_and_recorded(photos, tmp_path, weights_file):
    truncated_jpeg(photos / "호박" / "broken.jpg")
    (photos / "호박" / "empty.png").write_bytes(b"")
    (photos / "수박" / "notes.jpg").write_text("not a picture")
    (photos / "수박" / "readme.txt").write_text("ignored: not an image type")
    cache_path = tmp_path / "features.h5"
    report = run_extract(options(photos, cache_path, weights_file))
    reasons = {item.path: item.reason for item in report.skipped}
    assert set(reasons) == {"호박/broken.jpg", "호박/empty.png", "수박/notes.jpg"}
    assert "truncated" in reasons["호박/broken.jpg"] and reasons["호박/empty.png"] == "empty file"
    with FeatureCache(cache_path) as cache:
        assert len(cache) == 16 and {s.path for s in cache.skipped()} == set(reasons)
    again = run_extract(options(photos, cache_path, weights_file))
    assert again.extracted == 0 and len(again.skipped) == 3 and not again.written


def test_split_folders_and_csv_manifest(tmp_path, weights_file):
    root = tmp_path / "split"
    for split, count in (("train", 3), ("validation", 2), ("test", 2)):
        make_class_folders(root / split, {"cat": count, "dog": count}, start_seed=count * 10)
    run_extract(options(root, tmp_path / "split.h5", weights_file))
    with FeatureCache(tmp_path / "split.h5") as cache:
        assert sorted(set(cache.splits)) == ["test", "train", "val"]
        assert cache.class_names == ["cat", "dog"] and len(cache) == 14

    manifest = tmp_path / "split" / "labels.csv"
    rows = ["path,label,split", "train/cat/img_000.jpg,kitty,train", "test/dog/img_000.jpg,puppy,test"]
    manifest.write_text("\n".join(rows + ["train/dog/img_001.jpg,puppy,"]) + "\n")
    run_extract(options(manifest, tmp_path / "csv.h5", weights_file))
    with FeatureCache(tmp_path / "csv.h5") as cache:
        assert cache.paths == ["test/dog/img_000.jpg", "train/cat/img_000.jpg", "train/dog/img_001.jpg"]
        assert cache.class_names == ["kitty", "puppy"] and cache.splits.tolist() == ["test", "train", ""]

    manifest.write_text(manifest.read_text().replace("test/dog/img_000.jpg,puppy", "test/dog/img_000.jpg,kitty"))
    relabelled = run_extract(options(manifest, tmp_path / "csv.h5", weights_file))
    assert relabelled.extracted == 0 and relabelled.written
    with FeatureCache(tmp_path / "csv.h5") as cache:
        assert cache.class_names == ["kitty", "puppy"] and cache.labels.tolist() == [0, 0, 1]


def test_a_second_writer_is_refused(photos, tmp_path, weights_file):
    cache_path = tmp_path / "features.h5"
    with (
        exclusive_writer(cache_path),
        pytest.raises(CacheError, match="another extraction .* is writing this cache"),
        exclusive_writer(cache_path),
    ):
        pass
    with exclusive_writer(cache_path), pytest.raises(PipelineError, match="another extraction"):
        run_extract(options(photos, cache_path, weights_file))


def run_cli(*args: str) -> subprocess.Popen:
    """``python -m pipeline ARGS`` with Ctrl-C handled as in a terminal, even when the tests run in the
    background (where the shell starts them with SIGINT ignored, and children inherit that)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_shards(process: subprocess.Popen, cache_path: Path, count: int) -> Path:
    """Wait until a running extraction has committed ``count`` batches as shards."""
    shards = schema.shards_dir(cache_path)
    deadline = time.monotonic() + 120
    while len(list(shards.glob("shard-*.h5"))) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return shards


def cli_args(data: Path, cache_path: Path, weights_file: Path) -> list[str]:
    return [
        "extract", str(data), "--cache", str(cache_path), "--weights", str(weights_file),
        "--image-size", "32", "--batch-size", "4", "--precision", "float32", "--shard-rows", "4",
    ]


def resume(data: Path, cache_path: Path, weights_file: Path, capsys) -> int:
    """Run the same command again (in this process: only the interrupted run needs one) to the end; returns how many
    images it extracted."""
    capsys.readouterr()
    assert main(cli_args(data, cache_path, weights_file)) == 0
    out = capsys.readouterr().out
    return int(out.split("(")[1].split(" extracted")[0])


def test_sigkill_mid_run_resumes_to_the_same_cache(tmp_path, weights_file, capsys):
    data = make_class_folders(tmp_path / "many", {"a": 200, "b": 200}, size=(80, 60))  # too many to finish in the gap
    cache_path = tmp_path / "killed.h5"
    process = run_cli(*cli_args(data, cache_path, weights_file), "--workers", "1")
    shards = wait_for_shards(process, cache_path, 5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    committed = len(list(shards.glob("shard-*.h5")))
    assert committed < 100, "the run finished before it could be killed"
    with pytest.raises(CacheError, match="no such cache"):
        FeatureCache(cache_path)

    assert resume(data, cache_path, weights_file, capsys) <= 400 - 4 * committed
    assert len(list(shards.glob("shard-*.h5"))) == 400 // 4  # one shard a batch of 4
    assert_only_listed_files(cache_path)  # no leftovers

    uninterrupted = tmp_path / "straight.h5"
    run_extract(options(data, uninterrupted, weights_file, storage_dtype="float16"))
    assert_same_cache(snapshot(cache_path), snapshot(uninterrupted), atol=1e-3)


def test_ctrl_c_keeps_finished_batches_and_says_how_to_resume(tmp_path, weights_file, capsys):
    data = make_class_folders(tmp_path / "many", {"a": 200, "b": 200}, size=(80, 60))  # too many to finish in the gap
    cache_path = tmp_path / "interrupted.h5"
    process = run_cli(*cli_args(data, cache_path, weights_file), "--workers", "1")
    shards = wait_for_shards(process, cache_path, 3)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted: finished batches are kept" in err, err
    kept = len(list(shards.glob("shard-*.h5")))
    assert 3 <= kept < 100
    assert resume(data, cache_path, weights_file, capsys) <= 400 - 4 * kept
    with FeatureCache(cache_path) as cache:
        assert len(cache) == 400


def test_a_killed_incremental_run_keeps_the_old_cache(photos, tmp_path, weights_file):
    cache_path = tmp_path / "features.h5"
    run_extract(options(photos, cache_path, weights_file))
    before = snapshot(cache_path)
    save(photo(40, 30, seed=900), photos / "수박" / "new.png")
    shards = schema.shards_dir(cache_path)
    (shards / ".shard-dead.h5.tmp-999999").write_bytes(b"half a shard")  # what a kill mid-write leaves
    (shards / "shard-garbage.h5").write_text("not hdf5")  # a damaged unindexed shard: dropped
    assert_same_cache(snapshot(cache_path), before)  # readers never see unindexed shards
    report = run_extract(options(photos, cache_path, weights_file))
    assert report.written and report.extracted == 1
    assert_only_listed_files(cache_path)
    assert not (shards / "shard-garbage.h5").exists()


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "no such folder or CSV file"),
        ("empty", "no class folders"),
        ("empty-class", "class folder is empty; add images to it or remove it"),
        ("one-class", "only one class"),
        ("bad-csv", "labels.csv:2: expected `path,label\\[,split\\]`"),
        ("no-cache-folder", "does not exist; create it or choose another --cache path"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, capsys, layout, message):
    data = tmp_path / "data"
    cache = tmp_path / "c.h5"
    if layout != "missing":
        data.mkdir()
    if layout in ("empty-class", "one-class", "no-cache-folder"):
        make_class_folders(data, {"cat": 2} if layout == "one-class" else {"cat": 2, "dog": 2})
    if layout == "empty-class":
        (data / "bird").mkdir()
    if layout == "no-cache-folder":
        cache = tmp_path / "nowhere" / "c.h5"
    if layout == "bad-csv":
        data = data / "labels.csv"
        data.write_text("path,label\nonly-one-column\n")
    code = main(["extract", str(data), "--cache", str(cache), "--weights", "none", "--image-size", "32"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert __import__("re").search(message, err), err


def test_every_file_failing_exits_nonzero(tmp_path, capsys):
    data = tmp_path / "data"
    for name in ("cat", "dog"):
        (data / name).mkdir(parents=True)
        (data / name / "x.jpg").write_bytes(b"junk")
    code = main(["extract", str(data), "--cache", str(tmp_path / "c.h5"), "--weights", "none", "--image-size", "32"])
    assert code == 2 and "none of the 2 files could be read" in capsys.readouterr().err
    assert not (tmp_path / "c.h5").exists()


def test_missing_imagenet_weights_say_where_to_put_them(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    code = main(["extract", str(photos), "--cache", str(tmp_path / "c.h5"), "--image-size", "32"])
    err = capsys.readouterr().err
    if code == 0:  # a machine with network access downloaded the real weights
        return
    assert code == 2 and "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in err and "--weights" in err
    assert str(tmp_path / "keras_home" / "models") in err


def test_bfloat16_features_match_float32_closely(photos, tmp_path, weights_file):
    run_extract(options(photos, tmp_path / "f32.h5", weights_file))
    run_extract(options(photos, tmp_path / "bf16.h5", weights_file, precision="bfloat16"))
    a, b = snapshot(tmp_path / "f32.h5")["features"], snapshot(tmp_path / "bf16.h5")["features"]
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.99


def test_info_prints_counts_recipe_and_skipped(photos, tmp_path, weights_file, capsys):
    shutil.copy(REPO / "pyproject.toml", photos / "토마토" / "broken.png")
    cache_path = tmp_path / "features.h5"
    run_extract(options(photos, cache_path, weights_file))
    assert main(["info", str(cache_path)]) == 0
    out = capsys.readouterr().out
    assert "16 images, 3 classes" in out and "vgg16" in out and "토마토" in out
    assert "토마토/broken.png: not an image" in out


def test_dropping_another_folders_rows_or_most_rows_needs_prune(photos, tmp_path, weights_file):
    cache_path = tmp_path / "features.h5"
    run_extract(options(photos, cache_path, weights_file))
    other = make_class_folders(tmp_path / "other", {"x": 3, "y": 3})
    with pytest.raises(PipelineError, match="was made from .* pass --prune"):
        run_extract(options(other, cache_path, weights_file))
    for folder in ("토마토", "호박"):
        shutil.rmtree(photos / folder)
    save(photo(40, 30, seed=901), photos / "호박" / "one.png")
    with pytest.raises(PipelineError, match="11 of its 16 images are no longer in .* pass --prune"):
        run_extract(options(photos, cache_path, weights_file))
    assert run_extract(options(photos, cache_path, weights_file, prune=True)).removed == 11
    with FeatureCache(cache_path) as cache:
        assert len(cache) == 6


def test_auto_precision_keeps_the_precision_the_cache_was_made_with(photos, tmp_path, weights_file):
    cache_path = tmp_path / "features.h5"
    run_extract(options(photos, cache_path, weights_file, precision="bfloat16"))
    save(photo(40, 30, seed=902), photos / "호박" / "new.png")
    report = run_extract(options(photos, cache_path, weights_file, precision="auto"))
    assert report.extracted == 1 and any(note.startswith("precision auto: bfloat16") for note in report.notes)
    with FeatureCache(cache_path) as cache:
        assert cache.recipe.precision == "bfloat16"


def test_non_finite_features_are_refused_naming_the_image(photos, tmp_path):
    keras.utils.set_random_seed(1234)
    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    values = model.get_weights()
    model.set_weights([*values[:-1], np.full_like(values[-1], np.inf)])  # the last bias: infinite features
    weights = tmp_path / "huge.weights.h5"
    model.save_weights(weights)
    cache_path = tmp_path / "features.h5"
    with pytest.raises(PipelineError, match=r"\.jpg: the backbone produced non-finite features") as raised:
        run_extract(options(photos, cache_path, weights))
    assert not cache_path.exists()
    # the failed run joined its decoding threads itself (the traceback still holds its frames): left to a garbage
    # collection, that clean-up once ran inside threading's own lock as another thread started, and hung the process
    assert raised.traceback and not [t.name for t in threading.enumerate() if t.name.startswith("decode")]
