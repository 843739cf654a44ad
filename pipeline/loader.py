"""Parallel decoding into fixed-shape uint8 batches, a bounded number of images ahead.

Pillow releases the GIL while it decodes and resizes, so a thread pool decodes on
every core while the model runs. At most ``prefetch`` batches are in flight, so memory
stays flat whatever the number of images.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from features_cache.records import TRANSIENT, FileRecord, FileStamp, SkippedFile
from pipeline.images import DecodeBudget, ImageReadError, ResizeSpec, default_budget, failure_depends_on, read_image


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


def _load(task: LoadTask, spec: ResizeSpec, budget: DecodeBudget) -> tuple[np.ndarray | None, FileRecord | SkippedFile]:
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


def iter_batches(
    tasks: Sequence[LoadTask],
    spec: ResizeSpec,
    batch_size: int,
    workers: int | None = None,
    prefetch: int = 2,
    budget: DecodeBudget | None = None,
) -> Iterator[DecodedBatch]:
    """Decode ``tasks`` in order and yield full batches of the images that could be read.

    Files that fail are reported in the ``skipped`` list of the batch they fell into. All
    decoding threads share one memory ``budget`` (default: a quarter of the free memory).
    """
    budget = budget or default_budget()
    window = batch_size * (prefetch + 1)
    images = np.zeros((batch_size, spec.size, spec.size, 3), dtype=np.uint8)
    count, records, skipped = 0, [], []
    with ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="decode") as pool:
        pending: collections.deque[Future] = collections.deque()
        upcoming = iter(tasks)
        for task in upcoming:
            pending.append(pool.submit(_load, task, spec, budget))
            if len(pending) >= window:
                break
        while pending:
            pixels, record = pending.popleft().result()
            next_task = next(upcoming, None)
            if next_task is not None:
                pending.append(pool.submit(_load, next_task, spec, budget))
            if pixels is None:
                skipped.append(record)
                continue
            images[count] = pixels
            records.append(record)
            count += 1
            if count == batch_size:
                yield DecodedBatch(images, count, records, skipped)
                images = np.zeros_like(images)
                count, records, skipped = 0, [], []
        if count or skipped:
            yield DecodedBatch(images, count, records, skipped)
