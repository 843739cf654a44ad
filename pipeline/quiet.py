"""TensorFlow's start-up chatter kept off the user's terminal.

Importing TensorFlow prints native log lines ("All log messages before absl::InitializeLog()
...", the oneDNN notice, CPU feature hints) straight to file descriptor 2, twice, whatever
``TF_CPP_MIN_LOG_LEVEL`` says. A finder on ``sys.meta_path`` runs that one import with
descriptor 2 pointed at ``/dev/null`` and sets TensorFlow's Python logger to errors, so
users see only the tool's own lines; ``--verbose`` (or ``PIPELINE_VERBOSE=1``) removes it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys

from classifiers.tf_quiet import native_stderr_silenced

NOISY = "tensorflow"


class _SilencedLoader(importlib.abc.Loader):
    """Runs the real loader with native stderr silenced, then hands the module back to it."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self.loader
        with native_stderr_silenced():
            self.loader.exec_module(module)
        logging.getLogger(NOISY).setLevel(logging.ERROR)


class QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Finds nothing itself: it wraps the loader of the top-level ``tensorflow`` package, once."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != NOISY:
            return None
        uninstall()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _SilencedLoader(spec.loader)
        return spec


def quiet_start() -> None:
    """What every command line entry point calls first: TensorFlow's C++ and gRPC logs at errors
    only (unless already set) and its import silenced. Library imports never call it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    install()


def install() -> None:
    """Silence TensorFlow's import unless it already happened or the user asked to see everything."""
    if NOISY in sys.modules or os.environ.get("PIPELINE_VERBOSE") == "1":
        return
    if not any(isinstance(finder, QuietTensorFlow) for finder in sys.meta_path):
        sys.meta_path.insert(0, QuietTensorFlow())


def uninstall() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, QuietTensorFlow)]
