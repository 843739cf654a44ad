"""Never silently wrong when files are swapped, remapped or copied out; compact, disk full and
leftovers end cleanly. Each test is a way a real cache was once read wrong or left dirty."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from image_factory import make_class_folders
from test_cache_faults import args, damage, extract
from test_extract import assert_same_cache, copy_cache, options, snapshot

from features_cache import schema
from features_cache.compact import compact
from features_cache.errors import CacheError
from features_cache.reader import FeatureCache
from features_cache.records import FileRecord, FileStamp
from features_cache.shards import file_digest, new_shard_path, write_shard
from features_cache.verify import damage as verify_damage
from features_cache.writer import FeatureSource, Row, write_index
from pipeline.cli import main
from pipeline.extraction.extract import run_extract

REPO = Path(__file__).resolve().parents[1]
CLASSES = {"a": 9, "b": 9}


@pytest.fixture
def cache(built, tmp_path) -> Path:
    return copy_cache(built, tmp_path)


@pytest.fixture(scope="module")
def made_at_64(data, weights_file, tmp_path_factory) -> Path:
    """A cache of the same images made with other settings (64 px): its shards are orphans in ``cache``'s folder."""
    other = tmp_path_factory.mktemp("at-64") / "features.h5"
    run_extract(options(data, other, weights_file, image_size=64))
    return other


def test_a_live_shard_swapped_for_another_of_the_same_size_is_refused_and_redone(cache, data, reference, weights_file, tmp_path, capsys):
    other_data = make_class_folders(tmp_path / "other", CLASSES, start_seed=1000)  # same names, other pixels
    other = tmp_path / "other.h5"
    run_extract(options(other_data, other, weights_file))
    with FeatureCache(cache) as ours, FeatureCache(other) as theirs:
        mine, foreign = ours.shard_files[1], theirs.shard_files[1]
    assert mine.stat().st_size == foreign.stat().st_size  # the size check alone cannot tell them apart
    shutil.copy(foreign, mine)

    with pytest.raises(CacheError, match=re.escape(str(mine)) + ": not the shard"):
        FeatureCache(cache)
    capsys.readouterr()
    assert main(["info", str(cache)]) == 2 and mine.name in capsys.readouterr().err
    code, err = extract(data, cache, weights_file, capsys)
    assert code == 0 and "unchanged" not in capsys.readouterr().out + err
    assert_same_cache(snapshot(cache), reference)
    assert main(["verify", str(cache)]) == 0


def _two_chunk_cache(folder: Path) -> tuple[Path, Path, np.ndarray]:
    """A cache of one shard of 128 rows of 4x4x512 float16: two chunks of 64 rows."""
    recipe = schema.Recipe(backbone="vgg16", weights="synthetic", weights_sha256="0" * 64, image_size=128,
                           preprocessing="caffe", resize="stretch", interpolation="bilinear",
                           background="rgb(255,255,255)", precision="float32", storage_dtype="float16")
    features = np.random.default_rng(0).random((128, 4, 4, 512)).astype(np.float16)
    records = [FileRecord(f"c/img_{i:03d}.jpg", f"{i:032x}", FileStamp(0, 0)) for i in range(128)]
    cache = folder / "synthetic.h5"
    schema.shards_dir(cache).mkdir(parents=True)
    shard = new_shard_path(cache)
    shard_id = write_shard(shard, recipe, features, records, [])
    table = [(os.path.relpath(shard, folder), 128, shard.stat().st_size, file_digest(shard), shard_id)]
    rows = [Row(r, 0, "", FeatureSource(str(shard), i)) for i, r in enumerate(records)]
    write_index(cache, recipe=recipe, feature_shape=(4, 4, 512), class_names=["c"], rows=rows, skipped=[], attrs={}, shards=table)
    return cache, shard, features


def test_a_chunk_index_pointing_at_another_chunk_is_an_error_naming_the_shard(tmp_path):
    cache, shard, features = _two_chunk_cache(tmp_path)
    with h5py.File(shard, "r") as f:
        first, second = (f[schema.FEATURES].id.get_chunk_info(i).byte_offset for i in (0, 1))
    raw = bytearray(shard.read_bytes())
    pointer = raw.find(struct.pack("<Q", second))
    assert pointer > 0 and raw.find(struct.pack("<Q", second), pointer + 1) < 0
    raw[pointer : pointer + 8] = struct.pack("<Q", first)  # chunk 1 now reads chunk 0's valid bytes
    shard.write_bytes(bytes(raw))
    with h5py.File(shard, "r") as f:  # HDF5 itself sees nothing wrong: fletcher32 is valid
        np.testing.assert_array_equal(f[schema.FEATURES][64:128], features[:64])

    with FeatureCache(cache) as reader:
        np.testing.assert_array_equal(reader.features(np.arange(64), dtype=np.float16), features[:64])
        with pytest.raises(CacheError, match=re.escape(str(shard)) + r": row 64 .*row checksum"):
            reader.features()
    assert [(file, "checksum" in why) for file, why in verify_damage(cache)] == [(shard, True)]


def test_flipped_bits_in_a_compact_to_file_are_caught_on_read_and_by_verify(cache, tmp_path, capsys):
    single = compact(cache, tmp_path / "shared.h5")
    assert main(["verify", str(single)]) == 0
    damage(single, "flip-data")
    with pytest.raises(CacheError, match=re.escape(str(single))):
        snapshot(single)
    capsys.readouterr()
    assert main(["verify", str(single)]) == 1
    assert str(single) in capsys.readouterr().err


@pytest.mark.parametrize("how", ["folder is a file", "index copied alone"])
def test_a_missing_shards_folder_is_named_with_the_fix(how, cache, data, weights_file, tmp_path, capsys):
    if how == "folder is a file":
        shutil.rmtree(schema.shards_dir(cache))
        schema.shards_dir(cache).write_text("not a folder")
        index = cache
    else:
        (tmp_path / "copy").mkdir()
        index = Path(shutil.copy(cache, tmp_path / "copy" / "features.h5"))
    folder = schema.shards_dir(index).name
    for command in (["info", str(index)], args(data, index, weights_file)):
        capsys.readouterr()
        assert main(command) == 2
        err = capsys.readouterr().err
        assert folder in err and "copy the folder" in err and "missing or damaged" not in err, err


def test_a_reader_opened_before_compact_keeps_reading_its_snapshot(cache, reference):
    with FeatureCache(cache) as before:
        compact(cache)
        assert not any(file.exists() for file in before.shard_files)
        np.testing.assert_allclose(before.features(), reference["features"], rtol=1e-4, atol=1e-5)
    assert_same_cache(snapshot(cache), reference)


def test_a_reader_opened_before_images_are_added_and_removed_keeps_reading(data, weights_file, tmp_path):
    source = tmp_path / "photos"
    shutil.copytree(data, source)
    cache = tmp_path / "features.h5"
    run_extract(options(source, cache, weights_file))
    expected = snapshot(cache)
    with FeatureCache(cache) as before:
        for name in ("a/img_000.jpg", "a/img_001.jpg", "a/img_002.jpg", "a/img_003.jpg"):  # all of the first shard
            (source / name).unlink()
        make_class_folders(source / "b", {"new": 2}, start_seed=500)
        shutil.move(source / "b" / "new" / "img_000.jpg", source / "b" / "new0.jpg")
        shutil.move(source / "b" / "new" / "img_001.jpg", source / "b" / "new1.jpg")
        (source / "b" / "new").rmdir()
        report = run_extract(options(source, cache, weights_file, batch_size=2))
        assert report.extracted == 2 and report.removed == 4
        assert not all(file.exists() for file in before.shard_files)  # the old shard of a/ was collected
        np.testing.assert_allclose(before.features(), expected["features"], rtol=1e-4, atol=1e-5)
        assert before.paths == expected["paths"]


@pytest.fixture
def tmpfs(tmp_path):
    """A 16 MB tmpfs (needs root): its mount point."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here; these tests need root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path, leave_bytes: int) -> Path:
    """Fill ``mount`` until only about ``leave_bytes`` are free; returns the filler file."""
    filler = mount / "filler"
    free = shutil.disk_usage(mount).free
    with open(filler, "wb") as handle, contextlib.suppress(OSError):
        handle.write(b"\0" * max(0, free - leave_bytes))
    return filler


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *argv], cwd=REPO, capture_output=True, text=True, timeout=300)


def _asked_megabytes(done: subprocess.CompletedProcess, mount: Path) -> int:
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (done.returncode, err[-3000:])
    found = re.fullmatch(rf"error: no space left: free (\d+) MB in {re.escape(str(mount))}\S* and run the same command again", err)
    assert found, err
    return int(found.group(1))


def test_a_full_disk_during_compact_to_is_one_line_and_following_it_finishes(cache, tmpfs):
    filler = _fill(tmpfs, 100_000)
    target = tmpfs / "shared.h5"
    asked = _asked_megabytes(_cli("compact", str(cache), "--to", str(target)), tmpfs)
    assert sorted(os.listdir(tmpfs)) == ["filler"]
    os.truncate(filler, max(0, filler.stat().st_size - asked * 1_000_000))
    assert main(["compact", str(cache), "--to", str(target)]) == 0  # what a process shows is checked above
    assert main(["verify", str(target)]) == 0


def test_the_free_figure_of_a_full_disk_is_what_the_whole_job_needs(digits_dir, tmpfs):
    cache = tmpfs / "features.h5"
    command = ("extract", str(digits_dir), "--cache", str(cache), "--weights", "none", "--image-size", "64", "--storage", "float32")
    filler = _fill(tmpfs, 700_000)
    asked = _asked_megabytes(_cli(*command), tmpfs)
    os.truncate(filler, max(0, filler.stat().st_size - asked * 1_000_000))  # free exactly what was asked
    assert main(list(command)) == 0
    with FeatureCache(cache) as finished:
        assert len(finished) == 400


def _main(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def _manifests(data: Path, folder: Path) -> tuple[Path, Path, Path]:
    """A copy of ``data`` with two CSV manifests in its root: as the folders say, and with
    a/img_000.jpg relabelled b and b/img_008.jpg left out (a review's manifest)."""
    source = folder / "photos"
    shutil.copytree(data, source)
    rows = sorted(str(p.relative_to(source)) for p in source.rglob("*.jpg"))
    as_is, reviewed = source / "as-is.csv", source / "review.csv"
    as_is.write_text("path,label\n" + "".join(f"{p},{p.split('/')[0]}\n" for p in rows))
    reviewed.write_text("path,label\n" + "".join(
        f"{p},{'b' if p == 'a/img_000.jpg' else p.split('/')[0]}\n" for p in rows if p != "b/img_008.jpg"))
    return source, as_is, reviewed


def test_a_killed_commits_temporary_index_is_removed_by_a_run_with_nothing_to_do(data, weights_file, tmp_path, capsys):
    _, as_is, reviewed = _manifests(data, tmp_path)
    cache = tmp_path / "features.h5"
    run_extract(options(as_is, cache, weights_file))
    env = {**os.environ, "PIPELINE_KILL_AT": "index-before-rename"}
    killed = subprocess.run([sys.executable, "-m", "pipeline", *args(reviewed, cache, weights_file)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
    code, out, _ = _main(args(as_is, cache, weights_file), capsys)  # as the index says: nothing to do
    assert code == 0 and "unchanged" in out
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_orphans_made_with_other_settings_are_reported_once_and_deleted(cache, data, made_at_64, weights_file, capsys):
    with FeatureCache(made_at_64) as made_otherwise:
        orphan = Path(shutil.copy(made_otherwise.shard_files[0], schema.shards_dir(cache)))
    code, err = extract(data, cache, weights_file, capsys)
    assert code == 0 and str(orphan) in err and "other settings" in err and "deleted" in err
    assert not orphan.exists()
    code, err = extract(data, cache, weights_file, capsys)
    assert code == 0 and str(orphan) not in err


def test_orphans_are_kept_with_keep_orphans(cache, data, made_at_64, weights_file, capsys):
    with FeatureCache(made_at_64) as made_otherwise:
        orphan = Path(shutil.copy(made_otherwise.shard_files[0], schema.shards_dir(cache)))
    capsys.readouterr()
    assert main([*args(data, cache, weights_file), "--keep-orphans"]) == 0
    assert orphan.exists() and "kept (--keep-orphans)" in capsys.readouterr().err


def test_a_folder_named_like_a_shard_is_listed_not_treated_as_a_shard(cache, data, weights_file, capsys):
    stray = schema.shards_dir(cache) / "shard-0123.h5"
    stray.mkdir()
    (stray / "notes.txt").write_text("someone's files")
    code, out, err = _main(args(data, cache, weights_file), capsys)
    assert code == 0 and "unchanged" in out and "extracted again" not in err
    assert [line for line in err.splitlines() if str(stray) in line] == [f"{stray}: a folder in the shards folder, not part of the cache; left alone, remove it"]
    assert (stray / "notes.txt").exists()


def test_a_relabel_and_exclusion_only_run_writes_the_index_without_keras(data, weights_file, tmp_path):
    source, as_is, reviewed = _manifests(data, tmp_path)
    cache = tmp_path / "features.h5"
    run_extract(options(as_is, cache, weights_file))
    before = snapshot(cache)
    settings = dataclasses.asdict(options(reviewed, cache, weights_file))
    script = (
        "import json, sys; from pipeline.extraction.extract import ExtractOptions, run_extract; "
        "r = run_extract(ExtractOptions(**json.loads(sys.argv[1]))); "
        "print(r.written, r.extracted, r.removed, 'keras' in sys.modules, 'tensorflow' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script, json.dumps(settings)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "0", "1", "False", "False"]
    after = snapshot(cache)
    assert "b/img_008.jpg" not in after["paths"] and len(after["paths"]) == 17
    where = after["paths"].index("a/img_000.jpg")
    assert after["classes"][after["labels"][where]] == "b"
    kept = [before["paths"].index(p) for p in after["paths"]]
    np.testing.assert_array_equal(after["features"], before["features"][kept])
    assert main(["verify", str(cache)]) == 0
