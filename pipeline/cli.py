"""``python -m pipeline <command>``: one module per command under ``pipeline.commands``.

Every command ends the same way: its result, or one line ``error: ...`` naming the path or
value and the fix, with a non-zero exit. Expected failures are ``PipelineError`` and
``CacheError``; an ``OSError`` (a full disk, a missing folder, a permission) is reported
with its path; anything else is a bug, reported in one line that asks for ``--verbose``,
which shows the traceback (and TensorFlow's start-up log).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys

from classifiers.errors import HeadError
from features_cache.errors import CacheError
from pipeline import quiet
from pipeline.errors import PipelineError

COMMANDS = ("extract", "info", "train", "runs", "evaluate", "report", "audit", "predict", "export", "verify", "compact")
EXIT_ERROR = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline", description="Extract CNN codes once into an HDF5 cache, then train cheap heads on them."
    )
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and TensorFlow's own log lines")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"pipeline.commands.{name}").register(subparsers)
    for subparser in subparsers.choices.values():
        subparser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, where an unknown option is named with the closest one the command has."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = parser._subparsers._group_actions[0].choices[args.command]  # noqa: SLF001 - argparse keeps them there
        options = [option for action in command._actions for option in action.option_strings]  # noqa: SLF001
        given = [word.split("=", 1)[0] for word in unknown if word.startswith("--")]
        hints = [match for word in given for match in difflib.get_close_matches(word, options, n=1, cutoff=0.6)]
        hint = f"; did you mean `{hints[0]}`?" if hints else f"; `pipeline {args.command} --help` lists the options"
        command.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    return args


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def describe_os_error(error: OSError) -> str:
    """An OS error as ``path: what happened; the fix``."""
    where = error.filename or ""
    what = error.strerror or str(error)
    if error.errno == 28:  # ENOSPC
        folder = os.path.dirname(os.path.abspath(where)) if where else "the output folder"
        return f"{where or folder}: no space left on the device; free space in {folder} and run the same command again"
    return f"{where}: {what}" if where else what


def _in_utf8_mode() -> None:
    """Run the command again in Python's UTF-8 mode when the locale decodes file names otherwise.

    Under ``PYTHONUTF8=0`` with an ASCII or Latin-1 locale, ``café/`` would be read as another
    name (or none): the same folder would then give other class names and paths than elsewhere.
    """
    if sys.getfilesystemencoding().lower().replace("-", "") != "utf8":
        os.execv(sys.executable, [sys.executable, "-X", "utf8", "-m", "pipeline", *sys.argv[1:]])


def _printable_anywhere() -> None:
    """Let every line reach the terminal whatever the locale: a class named ``café`` under an ASCII
    locale (``LC_ALL=C PYTHONUTF8=0``) is written ``caf\\xe9`` instead of ending the command."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        _in_utf8_mode()
    quiet.quiet_start()
    _printable_anywhere()
    args = parse_args(build_parser(), argv)
    if args.verbose:
        quiet.uninstall()
        os.environ["PIPELINE_VERBOSE"] = "1"  # the Keras heads' own quiet import (classifiers.tf_quiet) steps aside too
    try:
        return int(args.run(args) or 0)
    except (PipelineError, CacheError, HeadError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        resume = ": finished batches are kept; run the same command again to resume" if args.command == "extract" else ""
        print(f"interrupted{resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as error:
        if args.verbose:
            raise
        print(f"error: {one_line(describe_os_error(error))}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as error:  # noqa: BLE001 - a bug: one line here, the traceback with --verbose
        if args.verbose:
            raise
        print(
            f"error: internal error in `{args.command}` ({type(error).__name__}: {one_line(error)[:300]}); "
            "run it again with --verbose to see the traceback, and report it",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
