"""Write docs/reference/cli.md from the command line's own argparse parsers, so the page cannot drift.

``make docs`` runs it before building the site; ``tests/test_docs.py`` fails when the committed
page differs from what this prints. Run ``python docs/cli_reference.py`` after changing an option.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "reference" / "cli.md"
WIDTH = "100"  # argparse wraps usage lines to $COLUMNS; fixed so the page is the same on every terminal

HEADER = """# Command reference

Every command and option of `python -m pipeline` (also installed as `pipeline`), generated from
the argparse parsers by `python docs/cli_reference.py`; `make docs` regenerates it and the tests
fail when this page differs from the parsers. Do not edit it by hand.

Every command ends with its result, or one line `error: ...` naming the path or value and the fix
(exit 2). `--verbose`, before or after the command, shows tracebacks and TensorFlow's own log
lines. A misspelled option is answered with the closest one (`did you mean --image-size?`).
"""


def cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def option_rows(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()  # noqa: SLF001 - argparse's own %(default)s expansion
    rows = ["| argument | default | what |", "|---|---|---|"]
    for action in parser._actions:  # noqa: SLF001
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):  # noqa: SLF001
            continue
        if action.option_strings:
            names = ", ".join(action.option_strings)
            if action.nargs != 0:
                names += f" {formatter._format_args(action, action.metavar or action.dest.upper())}"  # noqa: SLF001
        else:
            names = action.metavar or action.dest
        default = action.default
        shown = "" if default in (None, False, argparse.SUPPRESS, []) else f"`{default}`"
        what = formatter._expand_help(action) if action.help else ""  # noqa: SLF001
        if action.choices and not isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            what += f" (one of {', '.join(f'`{c}`' for c in action.choices)})"
        rows.append(f"| `{cell(names)}` | {cell(shown)} | {cell(what)} |")
    return rows


def render() -> str:
    os.environ["COLUMNS"] = WIDTH
    sys.path.insert(0, str(ROOT))
    from pipeline.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    helps = {choice.dest: choice.help for choice in subparsers._choices_actions}  # noqa: SLF001
    lines = [HEADER, "| command | what |", "|---|---|"]
    lines += [f"| [`{name}`](#{name}) | {cell(helps.get(name, ''))} |" for name in subparsers.choices]
    for name, command in subparsers.choices.items():
        lines += ["", f"## {name}", "", cell(command.description or helps.get(name, "")), ""]
        lines += ["```", command.format_usage().strip(), "```", "", *option_rows(command)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    PAGE.write_text(render(), encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")
