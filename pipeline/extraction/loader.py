"""Parallel decoding into fixed-shape uint8 batches, a bounded number of images ahead.

Two kinds of workers, same results. ``threads``: Pillow releases the GIL while it decodes
and resizes, so a thread pool keeps a few cores busy with no start-up cost. ``processes``:
spawned workers decode into slots of one shared-memory block and send back only the small
file record, never a pixel array; they scale past what one interpreter's locks allow on
many-core GPU hosts. At most ``prefetch`` batches are in flight either way, so memory
stays flat whatever the number of images.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import shared_memory

import numpy as np

from features_cache.records import TRANSIENT, FileRecord, FileStamp, SkippedFile
from pipeline.errors import PipelineError
from pipeline.extraction.images import (
    DecodeBudget,
    ImageReadError,
    ResizeSpec,
    default_budget,
    failure_depends_on,
    read_image,
)

DECODERS = ("auto", "threads", "processes")
# From `make bench` decode scaling: on a few cores threads decode as fast as processes and start
# at once; from this many workers on, one interpreter's GIL work (file reads, hashing, array
# copies) starts to cap threads, and spawning workers costs well under a second.
PROCESSES_FROM_WORKERS = 8
PROCESS_CHUNK = 8


@dataclasses.dataclass
class DecodedBatch:
    """``images[:count]`` are real; the rest is zero padding so every batch has one shape."""

    images: np.ndarray
    count: int
    records: list[FileRecord]
    skipped: list[SkippedFile]


@dataclasses.dataclass(frozen=True)
class LoadTask:
    path: str
    absolute: str


def load_file(task: LoadTask, spec: ResizeSpec, budget: DecodeBudget) -> tuple[np.ndarray | None, FileRecord | SkippedFile]:
    """One file's pixels and record, or ``None`` and why it was skipped: every decoder's CPU path."""
    try:
        stamp = FileStamp.of(task.absolute)
    except OSError as error:
        return None, SkippedFile(task.path, f"cannot read file ({error.strerror})", FileStamp(-1, -1), TRANSIENT)
    try:
        pixels, digest = read_image(task.absolute, spec, budget)
    except ImageReadError as error:
        return None, SkippedFile(task.path, str(error), stamp, failure_depends_on(error, spec))
    return pixels, FileRecord(task.path, digest, stamp)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def resolve_decoder(decoder: str, workers: int) -> str:
    """``auto``: threads on a few cores, processes from :data:`PROCESSES_FROM_WORKERS` workers on."""
    if decoder not in DECODERS:
        raise PipelineError(f"unknown decoder {decoder!r}; use one of {', '.join(DECODERS)}")
    if decoder != "auto":
        return decoder
    return "processes" if workers >= PROCESSES_FROM_WORKERS else "threads"


# ---------------------------------------------------------------- process workers

_slots: np.ndarray | None = None
_budget: DecodeBudget | None = None
_memory: shared_memory.SharedMemory | None = None


def _attach(name: str, shape: tuple[int, ...], budget_bytes: int) -> None:
    """Worker start-up: map the shared slots; Ctrl-C is the parent's to handle, and a parent
    that is killed takes its workers with it (then the resource tracker frees the block)."""
    global _slots, _budget, _memory
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()
    _memory = shared_memory.SharedMemory(name=name)  # spawned children share the parent's resource tracker
    _slots = np.ndarray(shape, dtype=np.uint8, buffer=_memory.buf)
    _budget = DecodeBudget(budget_bytes)


def _exit_with(parent_sentinel: int) -> None:
    multiprocessing.connection.wait([parent_sentinel])
    os._exit(1)


def _load_into_slots(tasks: list[LoadTask], spec: ResizeSpec, first_slot: int, window: int) -> list[FileRecord | SkippedFile]:
    records = []
    for offset, task in enumerate(tasks):
        pixels, record = load_file(task, spec, _budget)
        if pixels is not None:
            _slots[(first_slot + offset) % window] = pixels
        records.append(record)
    return records


class _SharedMemoryPool:
    """Spawned decode processes writing into ``window`` image slots of one shared block."""

    def __init__(self, workers: int, window: int, spec: ResizeSpec, budget: DecodeBudget) -> None:
        shape = (window, spec.size, spec.size, 3)
        self._memory = shared_memory.SharedMemory(create=True, size=max(1, int(np.prod(shape))))
        self.slots = np.ndarray(shape, dtype=np.uint8, buffer=self._memory.buf)
        self._spec = spec
        self._window = window
        self._executor = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),  # never fork a process that runs a model
            initializer=_attach,
            initargs=(self._memory.name, shape, max(1, budget.capacity // workers)),
        )

    def submit(self, sequence: int, tasks: list[LoadTask]) -> Future:
        return self._executor.submit(_load_into_slots, tasks, self._spec, sequence % self._window, self._window)

    def results(self, sequence: int, records: list[FileRecord | SkippedFile]) -> Iterator[tuple[np.ndarray | None, object]]:
        for offset, record in enumerate(records):
            slot = (sequence + offset) % self._window
            yield (self.slots[slot] if isinstance(record, FileRecord) else None), record

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        del self.slots
        self._memory.close()
        self._memory.unlink()


class _ThreadPool:
    def __init__(self, workers: int, budget: DecodeBudget, spec: ResizeSpec) -> None:
        self._executor: Executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
        self._budget = budget
        self._spec = spec

    def submit(self, sequence: int, tasks: list[LoadTask]) -> Future:
        return self._executor.submit(load_file, tasks[0], self._spec, self._budget)

    @staticmethod
    def results(sequence: int, result: tuple[np.ndarray | None, FileRecord | SkippedFile]) -> Iterator[tuple]:
        yield result

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def iter_batches(
    tasks: Sequence[LoadTask],
    spec: ResizeSpec,
    batch_size: int,
    workers: int | None = None,
    prefetch: int = 2,
    budget: DecodeBudget | None = None,
    decoder: str = "auto",
) -> Iterator[DecodedBatch]:
    """Decode ``tasks`` in order and yield full batches of the images that could be read.

    Files that fail are reported in the ``skipped`` list of the batch they fell into. All
    decoding workers share one memory ``budget`` (default: a quarter of the free memory;
    processes split it evenly).
    """
    budget = budget or default_budget()
    workers = workers or default_workers()
    kind = resolve_decoder(decoder, workers)
    # a process is sent several files per message, so messages cost little beside decoding
    chunk = max(1, min(PROCESS_CHUNK, batch_size)) if kind == "processes" else 1
    window = max(batch_size * (prefetch + 1), chunk * workers * 2)
    window += -window % chunk
    pool = _SharedMemoryPool(workers, window, spec, budget) if kind == "processes" else _ThreadPool(workers, budget, spec)
    try:
        yield from _assemble(tasks, pool, chunk, batch_size, window, spec)
    except BrokenProcessPool:
        raise PipelineError(
            "a decoding process died (out of memory, killed, or a script that starts work without an "
            "`if __name__ == '__main__':` guard); run again, or use --decoder threads: finished images are kept"
        ) from None
    finally:
        pool.close()


def _assemble(
    tasks: Sequence[LoadTask], pool: _ThreadPool | _SharedMemoryPool, chunk: int, batch_size: int, window: int, spec: ResizeSpec
) -> Iterator[DecodedBatch]:
    """Keep ``window`` decodes in flight, ``chunk`` files per call, and pack finished images in task order."""
    images = np.zeros((batch_size, spec.size, spec.size, 3), dtype=np.uint8)
    count, records, skipped = 0, [], []
    pending: collections.deque[tuple[int, Future]] = collections.deque()
    chunks = ((start, list(tasks[start : start + chunk])) for start in range(0, len(tasks), chunk))
    for start, part in itertools.islice(chunks, window // chunk):
        pending.append((start, pool.submit(start, part)))
    while pending:
        start, future = pending.popleft()
        for pixels, record in pool.results(start, future.result()):
            if pixels is not None:
                images[count] = pixels  # copied out before the slot is handed to another file
                records.append(record)
                count += 1
            else:
                skipped.append(record)
            if count == batch_size:
                yield DecodedBatch(images, count, records, skipped)
                images = np.zeros_like(images)
                count, records, skipped = 0, [], []
        following = next(chunks, None)
        if following is not None:
            pending.append((following[0], pool.submit(*following)))
    if count or skipped:
        yield DecodedBatch(images, count, records, skipped)
