"""The cache under kills, damage and full disks: the next run is right or refuses in one line.

Real processes are killed with SIGKILL at named points of ``extract``, real files are
damaged byte by byte, and a real tmpfs runs out of space. After each, the next run must
give a cache equal to an uninterrupted run's, or refuse with one line and no traceback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest
from image_factory import photo, save
from test_extract import assert_only_listed_files, assert_same_cache, cli_args, copy_cache, options, snapshot

from features_cache import integrity, schema
from features_cache.compact import compact
from features_cache.errors import CacheError
from features_cache.reader import FeatureCache
from features_cache.writer import FeatureSource, Row, write_cache
from pipeline.cli import main
from pipeline.extraction.extract import run_extract

REPO = Path(__file__).resolve().parents[1]


def args(data: Path, cache: Path, weights: Path) -> list[str]:
    return [*cli_args(data, cache, weights), "--storage", "float32"]


def extract(data: Path, cache: Path, weights: Path, capsys) -> tuple[int, str]:
    """Run ``pipeline extract`` in this process; returns the exit code and stderr."""
    capsys.readouterr()
    code = main(args(data, cache, weights))
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    return code, err


def assert_one_line_refusal(code: int, err: str) -> None:
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code != 0 and len(errors) == 1, err


def assert_recovers(data: Path, cache: Path, weights: Path, reference: dict, capsys) -> None:
    """The next run finishes right, or refuses in one line and --force then finishes right."""
    code, err = extract(data, cache, weights, capsys)
    if code != 0:
        assert_one_line_refusal(code, err)
        capsys.readouterr()
        assert main([*args(data, cache, weights), "--force"]) == 0
    try:
        assert_same_cache(snapshot(cache), reference)
    except CacheError as error:  # damage found on read: verify names it, repair drops it, extract redoes it
        assert "\n" not in str(error)
        assert main(["verify", str(cache)]) == 1
        assert main(["verify", "--repair", str(cache)]) == 1
        assert extract(data, cache, weights, capsys)[0] == 0
        assert main(["verify", str(cache)]) == 0
        assert_same_cache(snapshot(cache), reference)


def grown(data: Path, tmp_path: Path) -> Path:
    """A copy of ``data`` with 3 images fewer: the cache built from it then gains them back."""
    copy = tmp_path / "photos"
    shutil.copytree(data, copy)
    removed = tmp_path / "held-back"
    removed.mkdir()
    for name in ("a/img_000.jpg", "b/img_001.jpg", "b/img_002.jpg"):
        shutil.move(copy / name, removed / name.replace("/", "-"))
    return copy


@pytest.mark.parametrize("point", ["planned", "shard-before-rename", "shard-written", "index-before-rename", "committed", "collecting"])
def test_sigkill_at_every_phase(point, data, built, reference, weights_file, tmp_path, capsys):
    cache = copy_cache(built, tmp_path)
    save(photo(50, 40, seed=77), data / "a" / "extra.png")  # the killed run has work to do
    (schema.shards_dir(cache) / "shard-junk.h5").write_text("junk")  # and garbage to collect
    try:
        env = {**os.environ, "PIPELINE_KILL_AT": point}
        killed = subprocess.run([sys.executable, "-m", "pipeline", *args(data, cache, weights_file)],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    finally:
        (data / "a" / "extra.png").unlink()
    assert_recovers(data, cache, weights_file, reference, capsys)
    assert_only_listed_files(cache)


def _spawned_workers(group: int) -> list[psutil.Process]:
    """The decoding processes of process group ``group`` (the killed run's: tests running beside it have their own)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getpgid(process.pid) == group and "spawn_main" in " ".join(process.info["cmdline"] or []):
                found.append(process)
    return found


def test_sigkill_with_decoding_processes_leaves_no_workers_and_resumes(data, reference, weights_file, tmp_path, capsys):
    cache = tmp_path / "features.h5"
    env = {**os.environ, "PIPELINE_KILL_AT": "shard-written:2"}
    with subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args(data, cache, weights_file), "--decoder", "processes", "--workers", "2"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    ) as killed:
        _, stderr = killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL, stderr
    _, alive = psutil.wait_procs(_spawned_workers(killed.pid), timeout=15)
    assert not alive, "decoding processes outlived the killed run"
    assert len(list(schema.shards_dir(cache).glob("shard-*.h5"))) == 2
    assert_recovers(data, cache, weights_file, reference, capsys)


def damage(path: Path, how: str) -> None:
    if how == "delete":
        path.unlink()
    elif how == "directory":
        path.unlink()
        path.mkdir()
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "zero":
        path.write_bytes(b"")
    elif how == "text":
        path.write_text("this is not HDF5\n")
    else:
        raw = bytearray(path.read_bytes())
        where = {
            "flip-metadata": lambda: 200,
            "flip-row-data": lambda: raw.find(b"img_004.jpg") + 4,  # another image's name, same length
            "flip-data": lambda: _feature_offset(path),
        }[how]()
        raw[where] ^= 0x01
        path.write_bytes(bytes(raw))


def _feature_offset(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return int(f[schema.FEATURES].id.get_chunk_info(0).byte_offset) + 17


HOW = ["delete", "directory", "truncate", "zero", "text", "flip-metadata", "flip-row-data"]


@pytest.fixture(scope="module")
def half_indexed(data, weights_file, tmp_path_factory) -> tuple[Path, Path, str]:
    """(images, cache, shard name): a run killed before indexing the batch it wrote for 3 added images."""
    root = tmp_path_factory.mktemp("half-indexed")
    source = grown(data, root)
    cache = root / "cache" / "features.h5"
    cache.parent.mkdir()
    run_extract(options(source, cache, weights_file))
    shards = sorted(schema.shards_dir(cache).glob("shard-*.h5"))
    for name in ("a-img_000.jpg", "b-img_001.jpg", "b-img_002.jpg"):
        shutil.copy(root / "held-back" / name, source / name.replace("-", "/", 1))
    env = {**os.environ, "PIPELINE_KILL_AT": "index-before-rename"}
    killed = subprocess.run([sys.executable, "-m", "pipeline", *args(source, cache, weights_file)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    unindexed = next(p for p in schema.shards_dir(cache).glob("shard-*.h5") if p not in shards)
    return source, cache, unindexed.name


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("which", ["index", "live shard", "unindexed shard"])
def test_damaged_files_are_rebuilt_or_refused(which, how, data, built, half_indexed, reference, weights_file, tmp_path, capsys):
    if which == "unindexed shard":  # a batch a killed run finished but never indexed
        source, killed, name = half_indexed
        cache = copy_cache(killed, tmp_path)
        target = schema.shards_dir(cache) / name
    else:
        source, cache = data, copy_cache(built, tmp_path)
        shards = sorted(schema.shards_dir(cache).glob("shard-*.h5"))
        target = cache if which == "index" else shards[len(shards) // 2]
    damage(target, how)
    assert_recovers(source, cache, weights_file, reference, capsys)


def test_flipped_feature_bits_are_caught_on_read_and_by_verify(data, built, reference, weights_file, tmp_path, capsys):
    cache = copy_cache(built, tmp_path)
    damage(sorted(schema.shards_dir(cache).glob("shard-*.h5"))[1], "flip-data")
    with pytest.raises(CacheError, match="damaged shard"):
        snapshot(cache)
    assert main(["verify", str(cache)]) == 1
    assert "digest mismatch" in capsys.readouterr().err
    assert_recovers(data, cache, weights_file, reference, capsys)


@pytest.fixture
def small_disk(tmp_path) -> Path:
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,nr_inodes=64", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("free_kb", [None, 0, 40, 120, 260])  # no inodes (lock), shards, index, none short
def test_disk_full_is_one_line_and_the_same_command_finishes(free_kb, small_disk, data, reference, weights_file, capsys):
    cache = small_disk / "features.h5"
    filler = small_disk / "filler"
    with open(filler, "wb") as handle, contextlib.suppress(OSError):
        handle.write(b"\0" * (2048 - (free_kb or 0)) * 1024)
    inodes = small_disk / "inodes"
    if free_kb is None:
        inodes.mkdir()
        with contextlib.suppress(OSError):
            for i in range(64):
                (inodes / str(i)).touch()
    code, err = extract(data, cache, weights_file, capsys)
    if code != 0:
        assert_one_line_refusal(code, err)
        assert "run the same command again" in err and str(small_disk) in err
    filler.unlink()
    shutil.rmtree(inodes, ignore_errors=True)
    assert extract(data, cache, weights_file, capsys)[0] == 0
    assert_same_cache(snapshot(cache), reference)


def test_the_index_reads_with_hdf5_tools_and_relative_paths(built, tmp_path):
    cache = copy_cache(built, tmp_path / "here")
    if not (shutil.which("h5dump") and shutil.which("h5ls")):
        pytest.skip("hdf5-tools not installed (CI installs them)")
    for command in (["h5dump", "-H", str(cache)], ["h5ls", "-r", str(cache)]):
        done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0 and "error" not in done.stdout + done.stderr.lower(), done.stderr
    moved = tmp_path / "moved"
    shutil.move(cache.parent, moved)
    with h5py.File(moved / "features.h5", "r") as f, FeatureCache(moved / "features.h5") as moved_cache:
        np.testing.assert_array_equal(f[schema.FEATURES][()], moved_cache.features())


def test_compact_and_version_one_caches(data, built, reference, weights_file, tmp_path, capsys):
    cache = copy_cache(built, tmp_path)
    single = compact(cache, tmp_path / "shared.h5")
    assert_same_cache(snapshot(single), reference)
    compact(cache)
    assert len(list(schema.shards_dir(cache).glob("shard-*.h5"))) == 1
    assert_only_listed_files(cache)
    assert_same_cache(snapshot(cache), reference)

    old = tmp_path / "v1.h5"  # a version-1 cache is one standalone file: read, then upgraded by extract
    with FeatureCache(single) as standalone:
        rows = [Row(r, int(standalone.labels[i]), str(standalone.splits[i]), FeatureSource(str(single), i))
                for i, r in enumerate(standalone.records())]
        write_cache(old, recipe=standalone.recipe, feature_shape=standalone.feature_shape,
                    class_names=standalone.class_names, rows=rows, skipped=[], attrs={"data_root": str(data.resolve())})
    assert_same_cache(snapshot(old), reference)
    assert extract(data, old, weights_file, capsys)[0] == 0
    with FeatureCache(old) as upgraded:
        assert upgraded.version == schema.INDEX_VERSION
    assert_same_cache(snapshot(old), reference)


def _h5dump_rows(index: Path, rows: list[int]) -> list[str]:
    """The first value of each of ``rows`` of ``features`` as HDF5's own ``h5dump`` prints it."""
    values = []
    for row in rows:
        done = subprocess.run(["h5dump", "-d", "features", "-s", f"{row},0,0,0", "-c", "1,1,1,1", str(index)],
                              capture_output=True, text=True, cwd=index.parent)
        assert done.returncode == 0, done.stderr
        values.append(done.stdout.split(f"({row},0,0,0):")[1].split()[0])
    return values


def _plain_read(index: Path) -> np.ndarray:
    """``features`` as any HDF5 reader sees it (in storage order), put in the product's order by the index's ``paths``."""
    with h5py.File(index, "r") as f:
        paths = list(f[schema.PATHS].asstr()[()])
        return f[schema.FEATURES][()][sorted(range(len(paths)), key=paths.__getitem__)]


def test_a_deleted_shard_reads_as_nan_in_hdf5_readers_and_is_an_error_in_the_product(built, tmp_path, capsys):
    cache = copy_cache(built, tmp_path)
    with FeatureCache(cache) as before:
        gone = before.shard_files[1]
        rows = [i for i, (file, _) in enumerate(before.sources()) if file == gone]
        expected = before.features()
    gone.unlink()
    plain = _plain_read(cache)
    assert np.isnan(plain[rows]).all(), "a missing shard's rows must read as NaN, never zeros"
    kept = np.setdiff1d(np.arange(len(plain)), rows)
    np.testing.assert_array_equal(plain[kept], expected[kept])
    if shutil.which("h5dump"):
        assert [v.lower().strip(",") for v in _h5dump_rows(cache, [rows[0], int(kept[0])])][0] == "nan"
    with pytest.raises(CacheError, match=f"{gone.name}: shard of .* is missing or damaged; run `pipeline extract`"):
        FeatureCache(cache)
    capsys.readouterr()
    assert main(["verify", str(cache)]) == 2
    assert "missing or damaged" in capsys.readouterr().err


def test_a_row_that_reads_as_nan_is_an_error_naming_the_shard_never_data(built, tmp_path, capsys):
    cache = copy_cache(built, tmp_path)
    with FeatureCache(cache) as before:
        shard = before.shard_files[0]
    with h5py.File(shard, "r+") as f:  # a NaN written with its own checksum: only the NaN check can tell
        row = f[schema.FEATURES][1]
        row.reshape(-1)[0] = np.nan
        f[schema.FEATURES][1] = row
        sums = f[schema.ROW_CHECKSUM][()]
        sums[1] = integrity.row_checksums(row[None])[0]
        f[schema.ROW_CHECKSUM][...] = sums
    with FeatureCache(cache) as reader, pytest.raises(CacheError, match=f"{shard.name}: row 1 reads as NaN .* run `pipeline verify --repair"):
        reader.features()
    capsys.readouterr()
    assert main(["verify", str(cache)]) == 1
    err = capsys.readouterr().err
    assert f"{shard}: " in err and "row 1 reads as NaN" in err, err


@pytest.mark.parametrize("how", ["index renamed alone", "both renamed together", "both moved and renamed"])
def test_a_renamed_or_moved_cache_reads_the_same_everywhere(how, data, reference, weights_file, tmp_path, capsys):
    source = tmp_path / "photos"
    shutil.copytree(data, source)
    held = tmp_path / "held.jpg"
    shutil.move(source / "a" / "img_000.jpg", held)  # added by a later extract
    cache = tmp_path / "features.h5"
    run_extract(options(source, cache, weights_file))
    expected = snapshot(cache)["features"]
    target = {"index renamed alone": tmp_path / "renamed.h5", "both renamed together": tmp_path / "renamed.h5",
              "both moved and renamed": tmp_path / "elsewhere" / "deeper" / "moved.h5"}[how]
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(cache, target)
    if how != "index renamed alone":
        shutil.move(schema.shards_dir(cache), schema.shards_dir(target))
    np.testing.assert_array_equal(snapshot(target)["features"], expected)  # the product reads it at once
    capsys.readouterr()
    assert main(["info", str(target)]) == 0
    if how == "index renamed alone":
        np.testing.assert_array_equal(_plain_read(target), expected)  # and so does every HDF5 reader
        assert main(["verify", str(target)]) == 0
    else:
        assert "plain HDF5 readers see NaN rows until `pipeline verify --repair" in capsys.readouterr().out
        assert np.isnan(_plain_read(target)).all()  # NaN, never zeros, until the index names the new folder
        assert main(["verify", str(target)]) == 1
        assert "plain HDF5 readers of" in capsys.readouterr().err
        assert main(["verify", "--repair", str(target)]) == 0
        assert main(["verify", str(target)]) == 0
    np.testing.assert_array_equal(_plain_read(target), expected)
    if shutil.which("h5dump"):
        assert [float(v.strip(",")) for v in _h5dump_rows(target, [0, len(expected) - 1])] == pytest.approx(
            [float(expected[0].reshape(-1)[0]), float(expected[-1].reshape(-1)[0])], rel=1e-5)  # h5dump prints 6 digits
    shutil.move(held, source / "a" / "img_000.jpg")
    assert extract(source, target, weights_file, capsys)[0] == 0  # a later extract adds the image
    assert_same_cache(snapshot(target), reference)
    np.testing.assert_array_equal(_plain_read(target), snapshot(target)["features"])
    compact(target)
    assert_same_cache(snapshot(target), reference)
    np.testing.assert_array_equal(_plain_read(target), snapshot(target)["features"])
    assert main(["verify", str(target)]) == 0


def test_a_streaming_reader_keeps_its_snapshot_through_compact_and_garbage_collection(data, weights_file, tmp_path):
    source = tmp_path / "photos"
    shutil.copytree(data, source)
    cache = tmp_path / "features.h5"
    run_extract(options(source, cache, weights_file))
    expected = snapshot(cache)
    with FeatureCache(cache) as reader:  # a `--load stream` training run: batch by batch, for a long time
        batches = reader.iter_features(np.random.default_rng(0).permutation(len(reader)), batch_size=4)
        seen = [next(batches)]
        compact(cache)  # every shard the reader opened is deleted
        assert not any(file.exists() for file in reader.shard_files)
        seen.append(next(batches))
        for name in ("a/img_000.jpg", "a/img_001.jpg", "b/img_005.jpg"):
            (source / name).unlink()
        report = run_extract(options(source, cache, weights_file))  # drops rows, collects the shard compact made
        assert report.written and report.removed == 3
        seen.extend(batches)
        order = np.random.default_rng(0).permutation(len(reader))
        np.testing.assert_array_equal(np.concatenate(seen), expected["features"][order])
        assert reader.paths == expected["paths"]
    with FeatureCache(cache) as after:
        assert len(after) == len(expected["paths"]) - 3
