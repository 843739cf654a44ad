"""Where ``pipeline extract``'s wall time goes: the same command, timed phase by phase.

Run as its own process by ``bench.throughput`` (``--child phases``): it runs ``pipeline
extract`` through ``pipeline.cli.main`` with a timer around each step the command takes
(the steps are looked up by name at call time, so wrapping the module attribute times the
real call), and writes the seconds as JSON. Serial phases add up to the process wall;
the work done on decoding threads and the writer thread (decode, hashing, copies to the
host, shard writes) overlaps the model and is reported as busy seconds summed over threads.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import threading
import time
from collections import defaultdict
from pathlib import Path

# Serial steps of the command, in order: (module, attribute, phase).
SERIAL = (
    ("pipeline.extraction.extract", "discover", "discover the files"),
    ("pipeline.extraction.extract", "request_fingerprint", "request fingerprint"),
    ("pipeline.extraction.backbones", "build_backbone", "build the backbone"),
    ("pipeline.extraction.plan", "plan", "plan (stat, hash what changed)"),
    ("pipeline.extraction.local_engine", "extract_locally", "extraction loop"),
    ("pipeline.extraction.extract", "commit", "commit (index)"),
    ("pipeline.extraction.extract", "collect_garbage", "remove old shards"),
)
# Work on other threads while the loop runs: (module, attribute, phase).
OVERLAPPED = (
    ("pipeline.extraction.images", "decode", "decode + resize (decoder threads)"),
    ("pipeline.extraction.images", "content_hash", "content hash (decoder threads)"),
    ("pipeline.extraction.shard_writer", "write_shard", "write shards (writer thread)"),
    ("pipeline.extraction.shard_writer", "file_digest", "digest shards (writer thread)"),
)
# The model's forward pass, on the loop's thread (its first call traces and compiles the step).
MODEL = ("pipeline.extraction.backbones", "Backbone", "predict", "model forward passes (loop thread)")
LAUNCHED = "BENCH_LAUNCHED_AT"


class Timers:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.first: dict[str, float] = {}
        self._lock = threading.Lock()

    def wrap(self, module_name: str, attribute: str, phase: str, member: str | None = None) -> None:
        """Time every call of ``module.attribute`` (or of its ``member``, for a class's method)."""
        owner = importlib.import_module(module_name)
        if member is not None:
            owner, attribute = getattr(owner, attribute), member
        inner = getattr(owner, attribute)

        @functools.wraps(inner)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                took = time.perf_counter() - started
                with self._lock:
                    self.seconds[phase] += took
                    self.calls[phase] += 1
                    self.first.setdefault(phase, took)

        setattr(owner, attribute, timed)


def run(argv: list[str], result: Path) -> int:
    """``pipeline extract`` with ``argv``; writes each phase's seconds into ``result``."""
    entered = time.time()
    launched = float(os.environ.get(LAUNCHED, entered))
    imported = time.perf_counter()
    from pipeline import cli, quiet

    quiet.quiet_start()
    for module_name in ("pipeline.extraction.extract", "pipeline.extraction.local_engine"):
        importlib.import_module(module_name)
    imports = time.perf_counter() - imported
    # The command imports Keras (and its backend) when it first needs the backbone; here that import is timed on
    # its own, before the command runs, so "build the backbone" is the build alone.
    imported = time.perf_counter()
    importlib.import_module(MODEL[0])
    keras_import = time.perf_counter() - imported
    timers = Timers()
    for step in (*SERIAL, *OVERLAPPED):
        timers.wrap(*step)
    timers.wrap(MODEL[0], MODEL[1], MODEL[3], member=MODEL[2])
    started = time.perf_counter()
    code = cli.main(["extract", *argv])
    command = time.perf_counter() - started
    serial = sum(timers.seconds[phase] for _, _, phase in SERIAL)
    phases = {
        "interpreter start-up": entered - launched,
        "import the command line": imports,
        "import Keras and its backend": keras_import,
        **{phase: timers.seconds[phase] for _, _, phase in SERIAL},
        "the rest of the command (options, lock, report)": command - serial,
    }
    result.write_text(json.dumps({
        "exit": code,
        "phases": phases,
        "overlapped": {phase: timers.seconds[phase] for *_, phase in (*OVERLAPPED, MODEL)},
        "first_call": {phase: timers.first.get(phase, 0.0) for *_, phase in (*SERIAL, *OVERLAPPED, MODEL)},
        "calls": dict(timers.calls),
        "finished_at": time.time(),
    }))
    return code


if __name__ == "__main__":
    import sys

    raise SystemExit(run(sys.argv[2:], Path(sys.argv[1])))
