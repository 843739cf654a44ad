"""The loader: threads and shared-memory processes give the same batches, and fail cleanly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import psutil
import pytest
from image_factory import cmyk_jpeg, exif_rotated_jpeg, photo, save, sixteen_bit_png, truncated_jpeg

from pipeline.errors import PipelineError
from pipeline.extraction.images import ResizeSpec
from pipeline.extraction.loader import LoadTask, iter_batches, resolve_decoder

SPEC = ResizeSpec(32)


@pytest.fixture(scope="module")
def mixed_tasks(tmp_path_factory: pytest.TempPathFactory) -> list[LoadTask]:
    """Readable images of several kinds with broken files between them."""
    root = tmp_path_factory.mktemp("mixed")
    files = []
    for i in range(11):
        files.append(save(photo(60 + i, 40, seed=i), root / f"photo_{i:02d}.jpg"))
        if i == 2:
            files.append(truncated_jpeg(root / "truncated.jpg"))
        if i == 5:
            (root / "empty.png").write_bytes(b"")
            files.append(root / "empty.png")
        if i == 7:
            (root / "notes.jpg").write_text("not an image")
            files.append(root / "notes.jpg")
    files += [cmyk_jpeg(root / "cmyk.jpg"), exif_rotated_jpeg(root / "rotated.jpg"), sixteen_bit_png(root / "deep.png")]
    files.append(root / "vanished.jpg")  # listed, then gone before it is read
    return [LoadTask(path.name, str(path)) for path in files]


def _collect(tasks: list[LoadTask], decoder: str, workers: int, batch_size: int = 4):
    batches = list(iter_batches(tasks, SPEC, batch_size, workers, decoder=decoder))
    for batch in batches:
        assert batch.images.shape == (batch_size, 32, 32, 3) and batch.images.dtype == np.uint8
        assert not batch.images[batch.count :].any(), "padding rows must be zeros"
    images = np.concatenate([b.images[: b.count] for b in batches])
    records = [r for b in batches for r in b.records]
    skipped = [s for b in batches for s in b.skipped]
    return images, records, skipped


@pytest.mark.parametrize("workers", [1, 2])
def test_processes_give_the_same_batches_as_threads(mixed_tasks: list[LoadTask], workers: int) -> None:
    threads = _collect(mixed_tasks, "threads", workers)
    processes = _collect(mixed_tasks, "processes", workers)
    np.testing.assert_array_equal(processes[0], threads[0])
    assert processes[1] == threads[1]
    assert processes[2] == threads[2]
    assert [r.path for r in threads[1]][:3] == ["photo_00.jpg", "photo_01.jpg", "photo_02.jpg"]
    assert {s.path for s in threads[2]} == {"truncated.jpg", "empty.png", "notes.jpg", "vanished.jpg"}
    assert len(threads[1]) == 14


def _shared_blocks() -> set[str]:
    return set(os.listdir("/dev/shm")) if Path("/dev/shm").is_dir() else set()


def test_shared_memory_is_released_after_a_full_run_and_an_abandoned_one(mixed_tasks: list[LoadTask]) -> None:
    before = _shared_blocks()
    _collect(mixed_tasks, "processes", 2)
    batches = iter_batches(mixed_tasks, SPEC, 2, 2, decoder="processes")
    next(batches)
    batches.close()  # the consumer stopped early: a Ctrl-C or an error in the model
    assert _shared_blocks() <= before


def _decode_processes() -> list[psutil.Process]:
    return [
        child for child in psutil.Process().children(recursive=True)
        if "resource_tracker" not in " ".join(child.cmdline())
    ]


def test_a_killed_decoding_process_is_one_clear_error(mixed_tasks: list[LoadTask]) -> None:
    batches = iter_batches(mixed_tasks * 20, SPEC, 2, 2, decoder="processes")
    next(batches)
    for child in _decode_processes():
        child.kill()
    with pytest.raises(PipelineError, match="a decoding process died"):
        for _ in batches:
            pass


def test_auto_picks_threads_on_few_cores_and_processes_on_many() -> None:
    assert resolve_decoder("auto", 2) == "threads"
    assert resolve_decoder("auto", 16) == "processes"
    assert resolve_decoder("processes", 1) == "processes"
    with pytest.raises(PipelineError, match="unknown decoder 'gpus'"):
        resolve_decoder("gpus", 2)


def test_extract_with_decoding_processes_writes_the_same_cache(digits_dir: Path, digits_cache: Path, tmp_path: Path) -> None:
    import h5py

    from pipeline.extraction.extract import ExtractOptions, run_extract

    cache = tmp_path / "processes.h5"
    run_extract(ExtractOptions(data=str(digits_dir), cache=str(cache), weights="none", image_size=32,
                               decoder="processes", workers=2))
    with h5py.File(digits_cache) as threads, h5py.File(cache) as processes:
        assert list(processes["paths"].asstr()[()]) == list(threads["paths"].asstr()[()])
        np.testing.assert_array_equal(processes["features"][()], threads["features"][()])
        assert processes.attrs["identity"] == threads.attrs["identity"]
