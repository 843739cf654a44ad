"""Running out of disk at every phase of extract: one line, no traceback or crash, finished batches kept,
and the same command finishes the job once space is freed. Needs a small tmpfs (root)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from features_cache.reader import FeatureCache
from pipeline.demo_data import write_digits
from pipeline.extraction.extract import ExtractOptions, run_extract


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs whose size the test sets and changes: (mount point, resize function)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); these tests need root")

    def resize(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)

    yield mount, resize
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("disk") / "digits", per_class=40)


def extract(data: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "extract", str(data), "--cache", str(cache), "--weights", "none",
         "--image-size", "32", "--storage", "float32"],
        capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize("size, phase", [("0", "lock"), ("700K", "shard writes")])
def test_a_full_disk_at_every_phase_is_one_line_and_the_same_command_finishes(small_disk, digits, tmp_path, size, phase):
    mount, resize = small_disk
    cache = mount / "c.h5"
    if size == "0":
        filler = mount / "filler"
        with open(filler, "wb") as handle:  # fill it completely
            try:
                while True:
                    handle.write(b"\0" * 65536)
            except OSError:
                pass
    else:
        resize(size)
    failed = extract(digits, cache)
    assert failed.returncode == 2, (phase, failed.returncode, failed.stderr[-2000:])
    err = failed.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, (phase, err)
    assert "Traceback" not in err and "Exception ignored" not in err
    assert "free space in" in err or "No space left" in err or "no space left" in err, err
    assert not cache.exists()

    if size == "0":
        (mount / "filler").unlink()
    resize("8M")
    finished = extract(digits, cache)
    assert finished.returncode == 0, finished.stderr
    reference = tmp_path / "reference.h5"
    run_extract(ExtractOptions(data=str(digits), cache=str(reference), weights="none", image_size=32, storage_dtype="float32"))
    with FeatureCache(cache) as got, FeatureCache(reference) as expected:
        assert got.paths == expected.paths and list(got.labels) == list(expected.labels)
        np.testing.assert_allclose(got.features(), expected.features(), atol=1e-6)
    leftovers = [name for name in os.listdir(mount) if ".tmp-" in name]
    assert not leftovers
