"""A cache never loses data when it is renamed, copied, moved or shares a folder with another cache (issue 36).

Every case copies one module-wide reference cache (``shutil.copytree``) instead of extracting it
again; extraction runs in-process through ``pipeline.cli.main`` with ``--weights none`` at 32 px.
Real processes are used only where only a process shows it: kills, racing writers, readers
racing commits. Each test checks rows against the reference by path, through the product's
reader and through plain h5py (and h5dump where installed), so a lost or borrowed row fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from image_factory import make_class_folders
from legacy_index import rewrite_as_version_2

from features_cache import schema
from features_cache.reader import FeatureCache
from pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [
    "--weights",
    "none",
    "--image-size",
    "32",
    "--batch-size",
    "4",
    "--precision",
    "float32",
    "--storage",
    "float32",
    "--shard-rows",
    "2",
]
EXTRA = ("a/000.jpg", "b/000.jpg", "c/000.jpg")  # held back: names that sort first in their class


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """The data (with the extra images held back), a cache of it, and every image's features (by path)."""
    root = tmp_path_factory.mktemp("ownership")
    every = make_class_folders(root / "every", {"a": 5, "b": 5, "c": 5}, size=(40, 30))
    for name in EXTRA:
        shutil.copy(every / name.replace("000", "img_004"), every / name)
        (every / name).write_bytes((every / name).read_bytes() + b"\0")  # other bytes, so another image's features
    full = root / "full.h5"
    assert main(["extract", str(every), "--cache", str(full), *SETTINGS]) == 0
    data = root / "data"
    shutil.copytree(every, data)
    for name in EXTRA:
        (data / name).unlink()
    base = root / "base" / "feats.h5"
    base.parent.mkdir()
    assert main(["extract", str(data), "--cache", str(base), *SETTINGS]) == 0
    return {"every": every, "data": data, "base": base, "features": rows_of(full)}


def rows_of(cache: Path) -> dict[str, np.ndarray]:
    with FeatureCache(cache) as reader:
        return dict(zip(reader.paths, reader.features()))


def plain_rows(cache: Path) -> dict[str, np.ndarray]:
    """What any HDF5 reader sees: rows in stored order, paired with the stored paths."""
    with h5py.File(cache, "r") as f:
        return dict(zip((p.decode() for p in f["paths"][()]), f["features"][()]))


def assert_rows(cache: Path, world: dict, paths: set[str] | None = None) -> None:
    """The cache holds exactly ``paths`` (by default every image it was given), each with its own features,
    through the product's reader and through plain h5py (and h5dump)."""
    for seen in (rows_of(cache), plain_rows(cache)):
        if paths is not None:
            assert set(seen) == paths
        for path, row in seen.items():
            np.testing.assert_allclose(row, world["features"][path], rtol=1e-4, atol=1e-5, err_msg=path)
    if shutil.which("h5dump"):
        dump = subprocess.run(["h5dump", "-d", "features", str(cache)], capture_output=True, text=True, timeout=60)
        assert dump.returncode == 0 and "nan" not in dump.stdout.lower(), dump.stderr


def copy_of(world: dict, tmp_path: Path, name: str = "feats.h5") -> tuple[Path, Path]:
    """A fresh copy of the reference cache (index and shards folder) and of its data, in ``tmp_path``."""
    base = world["base"]
    cache = tmp_path / name
    shutil.copy2(base, cache)
    shutil.copytree(schema.shards_dir(base), schema.shards_dir(cache))
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    return cache, data


def run(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def extract(capsys, data: Path, cache: Path, *more: str) -> tuple[int, str, str]:
    return run(capsys, "extract", data, "--cache", cache, *SETTINGS, *more)


def own_unreferenced(capsys, cache: Path) -> str:
    """``info``'s line about files of the shards folder no index names ("" when there are none)."""
    code, out, _ = run(capsys, "info", cache)
    assert code == 0
    return "\n".join(line for line in out.splitlines() if "no index names" in line)


def paths_in(data: Path) -> set[str]:
    return {str(p.relative_to(data)) for p in data.rglob("*.jpg")}


# ---------------------------------------------------------------- 1: a new cache at a renamed cache's old name


@pytest.mark.parametrize("settings", [[], ["--image-size", "48"]])
def test_a_new_cache_at_a_renamed_caches_old_name_takes_nothing_from_it(settings, world, tmp_path, capsys):
    cache, data = copy_of(world, tmp_path)
    old = tmp_path / "feats-old.h5"
    cache.rename(old)  # the old cache keeps reading feats.h5.shards
    before = rows_of(old)
    shutil.rmtree(data / "c")
    code, out, err = extract(capsys, data, cache, *settings)
    assert code == 0, err
    assert "kept" not in out or "0 kept" in out  # nothing adopted from the other cache
    for command in (["info", old], ["verify", old]):
        assert run(capsys, *command)[0] == 0
    assert_rows(old, world, set(before))
    assert f"that {old} reads" in run(capsys, "info", cache)[1]
    if not settings:
        assert_rows(cache, world, paths_in(data))
        assert run(capsys, "compact", cache)[0] == 0
        assert extract(capsys, data, cache)[0] == 0
        assert_rows(old, world, set(before))
        assert_rows(cache, world, paths_in(data))


# ---------------------------------------------------------------- 2: a copy under a new name


def test_a_copy_under_a_new_name_reads_its_own_files_and_outlives_the_original(world, tmp_path, capsys):
    cache, data = copy_of(world, tmp_path)
    repaired, extended = tmp_path / "backup.h5", tmp_path / "extended.h5"
    for copy in (repaired, extended):
        shutil.copy2(cache, copy)
        shutil.copytree(schema.shards_dir(cache), schema.shards_dir(copy))
        with FeatureCache(copy) as reader:
            assert {file.parent for file in [*reader.shard_files, *reader.segment_files]} == {schema.shards_dir(copy)}
    assert run(capsys, "compact", cache)[0] == 0
    code, _, err = run(capsys, "verify", repaired)
    assert code == 1 and "run `pipeline verify --repair" in err  # plain readers still read the original's folder
    assert run(capsys, "verify", "--repair", repaired)[0] == 0
    assert run(capsys, "verify", repaired)[0] == 0
    assert_rows(repaired, world, paths_in(data))
    grown = tmp_path / "grown-data"
    shutil.copytree(data, grown)
    shutil.copy(world["every"] / EXTRA[0], grown / EXTRA[0])
    assert extract(capsys, grown, extended)[0] == 0  # extend the other copy, unrepaired
    with FeatureCache(extended) as reader:
        assert {file.parent for file in [*reader.shard_files, *reader.segment_files]} == {schema.shards_dir(extended)}
    cache.unlink()  # the original goes
    shutil.rmtree(schema.shards_dir(cache))
    for copy, source in ((repaired, data), (extended, grown)):
        assert run(capsys, "verify", copy)[0] == 0
        assert_rows(copy, world, paths_in(source))


# ---------------------------------------------------------------- 3: verify reads rows at their stored position


def test_verify_checks_each_shard_at_its_stored_rows_and_repair_records_it(world, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    assert extract(capsys, data, a, "--shard-rows", "2048")[0] == 0  # one shard; its rows' stamps then stay valid
    a.rename(b)
    for name in EXTRA:  # names that sort first: an incremental commit stores them after the others
        shutil.copy(world["every"] / name, data / name)
    code, _, err = extract(capsys, data, b, "--shard-rows", "8")  # one shard holds them, the first row by path
    assert code == 0, err
    b.rename(c)
    schema.shards_dir(b).rename(schema.shards_dir(c))
    code, _, err = run(capsys, "verify", c)
    assert code == 1 and "read NaN" in err, err
    assert run(capsys, "verify", "--repair", c)[0] == 0
    assert run(capsys, "verify", c)[0] == 0
    with h5py.File(c, "r") as f:
        assert not np.isnan(f["features"][()]).any() and all(f["paths"][()])
    assert_rows(c, world, paths_in(data))


# ---------------------------------------------------------------- 4: --force applies to every view


def test_force_rebuilds_the_views_too(world, tmp_path, capsys):
    cache, data = copy_of(world, tmp_path)
    assert extract(capsys, data, cache, "--views", "flip")[0] == 0
    code, _, err = extract(capsys, data, cache, "--views", "flip", "--force", "--image-size", "48")
    assert code == 0, err
    for path in (cache, cache.with_name("feats.h5.view-flip.h5")):
        with FeatureCache(path) as reader:
            assert reader.recipe.image_size == 48


# ---------------------------------------------------------------- 5: nothing left behind; one writer, always


def test_a_run_that_fails_before_writing_leaves_nothing(world, tmp_path, capsys):
    weights = tmp_path / "broken.weights.h5"
    weights.write_text("not weights\n")
    folder = tmp_path / "cache"
    folder.mkdir()
    code, _, err = run(
        capsys, "extract", world["data"], "--cache", folder / "photos.h5", "--weights", weights, "--image-size", "32"
    )
    assert code != 0 and len([line for line in err.splitlines() if line.startswith("error:")]) == 1, err
    assert list(folder.iterdir()) == []
    cache, data = copy_of(world, tmp_path)
    assert extract(capsys, data, cache)[0] == 0
    assert not cache.with_name("feats.h5.lock").exists()  # a finished run leaves only the cache


WRITER = """
import os, random, sys, time
from features_cache.errors import CacheError
from features_cache.lock import exclusive_writer
cache, marker, until = sys.argv[1], sys.argv[2], float(sys.argv[3])
held = 0
while time.time() < until:
    try:
        with exclusive_writer(cache):
            try:
                other = int(open(marker).read() or 0)
            except (FileNotFoundError, ValueError):
                other = 0
            if other and other != os.getpid():
                try:  # a killed holder leaves its marker; it is dead, or a zombie its parent has yet to reap
                    state = open(f"/proc/{other}/stat").read().rsplit(")", 1)[1].split()[0]
                except FileNotFoundError:
                    state = "X"
                if state not in "ZX":
                    sys.exit(3)  # a live process holds the lock too
            with open(marker, "w") as handle:
                handle.write(str(os.getpid()))
            time.sleep(random.random() / 500)
            os.unlink(marker)
            held += 1
    except CacheError:
        time.sleep(random.random() / 1000)
print(held)
"""


def test_racing_writers_never_hold_one_cache_together_across_removal_and_kills(tmp_path):
    cache, marker = tmp_path / "feats.h5", tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    until = time.time() + 4

    def writer() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", WRITER, str(cache), str(marker), str(until)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    writers, killed = [writer() for _ in range(4)], 0
    rng = np.random.default_rng(0)
    while time.time() < until - 1.5:
        time.sleep(0.2 + rng.random() / 5)
        victim = writers.pop(int(rng.integers(len(writers))))
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed += 1
        writers.append(writer())
    held = []
    for process in writers:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, (process.returncode, err)
        held.append(int(out))
    assert killed >= 5 and min(held) > 0
    assert not cache.with_name("feats.h5.lock").exists()


# ---------------------------------------------------------------- 6: readers racing commits


READER = """
import json, sys, time
import numpy as np
from features_cache.errors import CacheError
from features_cache.reader import FeatureCache
cache, expected, stop = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
import os
reads, refused, wrong = 0, [], 0
while not os.path.exists(stop):
    try:
        with FeatureCache(cache) as reader:
            rows = reader.features()
            for path, row in zip(reader.paths, rows):
                if path not in expected or not np.allclose(row.reshape(-1)[:8], expected[path], rtol=1e-4, atol=1e-5):
                    wrong += 1
        reads += 1
        if reads == 1:
            open(stop + "-ready-" + str(os.getpid()), "w").close()
    except CacheError as error:
        refused.append(str(error))
print(json.dumps({"reads": reads, "refused": refused[:3], "refusals": len(refused), "wrong": wrong}))
"""


def test_readers_are_never_refused_or_wrong_while_commits_drop_shards(world, tmp_path, capsys):
    cache, data = copy_of(world, tmp_path)
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps({path: row.reshape(-1)[:8].tolist() for path, row in world["features"].items()}))
    stop, deadline = tmp_path / "stop", time.time() + 60
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", READER, str(cache), str(expected), str(stop)],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        while len(list(tmp_path.glob("stop-ready-*"))) < len(readers) and time.time() < deadline:
            time.sleep(0.05)  # the readers are importing, then reading
        for _ in range(20):
            assert run(capsys, "compact", cache)[0] == 0
        assert extract(capsys, data, cache, "--force")[0] == 0
        (data / "a" / "img_000.jpg").unlink()
        assert extract(capsys, data, cache)[0] == 0
        for _ in range(5):
            assert run(capsys, "compact", cache)[0] == 0
    finally:
        stop.touch()
    for reader in readers:
        out, err = reader.communicate(timeout=120)
        assert reader.returncode == 0, err
        result = json.loads(out)
        assert result["reads"] > 20 and result["refusals"] == 0 and result["wrong"] == 0, result


# ---------------------------------------------------------------- 7: the fix a refusal names works


@pytest.mark.parametrize("fix", ["copy the folder", "--force"])
def test_a_file_where_the_shards_folder_goes_names_fixes_that_work(fix, world, tmp_path, capsys):
    cache, data = copy_of(world, tmp_path)
    kept = tmp_path / "kept.shards"
    schema.shards_dir(cache).rename(kept)
    schema.shards_dir(cache).write_text("x\n")
    for command in (["info", cache], ["extract", data, "--cache", cache, *SETTINGS]):
        code, _, err = run(capsys, *command)
        assert code != 0 and len(err.strip().splitlines()) == 1, err
        assert (
            "move the file feats.h5.shards away" in err
            and "copy the folder feats.h5.shards" in err
            and "--force" in err
        )
    schema.shards_dir(cache).rename(tmp_path / "moved-away")  # the first half of each fix
    if fix == "copy the folder":
        kept.rename(schema.shards_dir(cache))
        assert extract(capsys, data, cache)[0] == 0
    else:
        assert extract(capsys, data, cache, "--force")[0] == 0
    assert run(capsys, "verify", cache)[0] == 0
    assert_rows(cache, world, paths_in(data))


def test_shards_failing_their_row_checksums_are_repaired_by_verify_then_extract(world, tmp_path, capsys):
    cache, data = copy_of(world, tmp_path)
    for shard in schema.shards_dir(cache).glob("shard-*.h5"):  # every shard: the index is left with none
        with h5py.File(shard, "r+") as f:
            f[schema.ROW_CHECKSUM][0] = f[schema.ROW_CHECKSUM][0] ^ 1
    with pytest.raises(Exception, match="row checksum mismatch"):
        rows_of(cache)
    code, _, err = run(capsys, "verify", "--repair", cache)
    assert code == 1 and "then `pipeline extract` again" in err
    assert not list(schema.shards_dir(cache).glob("shard-*.h5"))
    code, _, err = extract(capsys, data, cache)  # the fix verify named
    assert code == 0, err
    assert run(capsys, "verify", cache)[0] == 0
    assert_rows(cache, world, paths_in(data))


def test_a_missing_shard_and_a_missing_folder_are_fixed_as_the_refusal_says(world, tmp_path, capsys):
    cache, data = copy_of(world, tmp_path)
    next(schema.shards_dir(cache).glob("shard-*.h5")).unlink()
    code, _, err = run(capsys, "info", cache)
    assert code != 0 and "run `pipeline extract` again" in err
    assert extract(capsys, data, cache)[0] == 0
    assert_rows(cache, world, paths_in(data))
    shutil.rmtree(schema.shards_dir(cache))
    code, _, err = run(capsys, "info", cache)
    assert code != 0 and "or run `pipeline extract --force`" in err
    assert extract(capsys, data, cache, "--force")[0] == 0
    assert run(capsys, "verify", cache)[0] == 0
    assert_rows(cache, world, paths_in(data))


# ---------------------------------------------------------------- 8: an interrupted clean-up is finished, not undone


@pytest.mark.parametrize("deleted", [1, 2])
def test_the_next_writer_finishes_an_interrupted_compaction(deleted, world, tmp_path, capsys):
    cache, data = copy_of(world, tmp_path)
    killed = subprocess.run(
        [sys.executable, "-m", "pipeline", "compact", str(cache)],
        cwd=REPO,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "PIPELINE_KILL_AT": f"collecting:{deleted + 1}"},
        timeout=300,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with FeatureCache(cache) as reader:
        compacted = {file.name for file in reader.shard_files}
    assert len(compacted) == 1
    left = own_unreferenced(capsys, cache)
    assert "files (" in left and "bytes) no index names" in left
    code, out, _ = run(capsys, "verify", cache)
    assert code == 0 and "no index names" in out
    code, out, err = extract(capsys, data, cache)
    assert code == 0, err
    with FeatureCache(cache) as reader:
        assert {file.name for file in reader.shard_files} == compacted  # the compaction stands
    assert own_unreferenced(capsys, cache) == ""
    assert {p.name for p in schema.shards_dir(cache).glob("shard-*.h5")} == compacted
    assert_rows(cache, world, paths_in(data))


# ---------------------------------------------------------------- every rename, copy and move the docs promise


MOVES = [
    "moved together",
    "renamed together",
    "index renamed alone",
    "copied together under a new name",
    "copied together elsewhere",
    "index copied alone",
]


@pytest.mark.parametrize("how", MOVES)
def test_every_promised_rename_copy_and_move_keeps_both_caches_whole(how, world, tmp_path, capsys):
    cache, data = copy_of(world, tmp_path)
    target = {
        "moved together": tmp_path / "elsewhere" / "feats.h5",
        "renamed together": tmp_path / "renamed.h5",
        "index renamed alone": tmp_path / "renamed.h5",
        "copied together under a new name": tmp_path / "backup.h5",
        "copied together elsewhere": tmp_path / "elsewhere" / "feats.h5",
        "index copied alone": tmp_path / "backup.h5",  # it reads feats.h5.shards, which the original keeps for it
    }[how]
    target.parent.mkdir(exist_ok=True)
    move = how.startswith(("moved", "renamed", "index renamed"))
    (shutil.move if move else shutil.copy2)(cache, target)
    if not how.startswith("index"):
        (shutil.move if move else shutil.copytree)(schema.shards_dir(cache), schema.shards_dir(target))
    caches = [target] if move else [cache, target]
    if how == "index renamed alone":  # and a new cache takes the old name, in the same folder
        other = tmp_path / "other-data"
        shutil.copytree(data, other)
        shutil.rmtree(other / "c")
        assert extract(capsys, other, cache)[0] == 0
        caches.append(cache)
    held = {
        path: paths_in(other) if path == cache and how == "index renamed alone" else paths_in(data) for path in caches
    }
    for path in caches:
        code, _, _ = run(capsys, "verify", path)
        if code != 0:  # a copy under a new name: plain readers still read the original's folder until repaired
            assert how == "copied together under a new name" or how == "renamed together", how
            assert run(capsys, "verify", "--repair", path)[0] == 0
        assert run(capsys, "info", path)[0] == 0 and run(capsys, "verify", path)[0] == 0
        assert_rows(path, world, held[path])
    for n, path in enumerate(caches):  # grow, compact and collect each, then check every cache again
        source = other if path == cache and how == "index renamed alone" else data
        shutil.copy(world["every"] / EXTRA[n], source / EXTRA[n])
        held[path] = paths_in(source)
        assert extract(capsys, source, path)[0] == 0
        assert run(capsys, "compact", path)[0] == 0
        assert own_unreferenced(capsys, path) == ""
        for each in caches:
            assert run(capsys, "verify", each)[0] == 0
            assert_rows(each, world, held[each])
    for path in caches:  # a last collection on each: nothing any of them reads goes, nothing unread stays
        assert run(capsys, "compact", path)[0] == 0
        assert own_unreferenced(capsys, path) == ""
    for path in caches:
        assert run(capsys, "verify", path)[0] == 0
        assert_rows(path, world, held[path])


def test_a_cache_written_before_identities_opens_shares_its_folder_and_gets_one(world, tmp_path, capsys):
    cache, data = copy_of(world, tmp_path)
    rewrite_as_version_2(cache)  # the layout of releases before segments, and no identity in it
    with h5py.File(cache, "r+") as f:
        for name in ("cache_id", "generation"):
            del f.attrs[name]
    with FeatureCache(cache) as reader:
        assert reader.version == schema.SHARDED_VERSION and reader.owner is None
    old = tmp_path / "legacy.h5"
    cache.rename(old)
    other = tmp_path / "other-data"
    shutil.copytree(data, other)
    shutil.rmtree(other / "c")
    assert extract(capsys, other, cache)[0] == 0  # a new cache at its old name, sharing feats.h5.shards
    assert run(capsys, "verify", old)[0] == 0
    assert_rows(old, world, paths_in(data))
    shutil.copy(world["every"] / EXTRA[0], data / EXTRA[0])
    assert extract(capsys, data, old)[0] == 0
    assert run(capsys, "compact", old)[0] == 0 and run(capsys, "compact", cache)[0] == 0
    with FeatureCache(old) as reader:
        assert reader.version == schema.INDEX_VERSION and reader.owner is not None
    for path, source in ((old, data), (cache, other)):
        assert run(capsys, "verify", path)[0] == 0
        assert_rows(path, world, paths_in(source))
