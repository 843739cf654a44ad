"""The documentation cannot drift from the product: the site builds strictly, the command reference is
the parsers' own, and the README's start-to-finish commands, the tutorial and the notebook example run.

Commands run in process at a small size: `extract` at 32 px on seeded random weights (whatever
`--weights` and `--image-size` the page gives), the Keras heads for one epoch without XLA's compile. Every other shell
line than `python -m pipeline ...` and `mkdir -p` fails the test, so no page can show a command
that is not run here.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from sklearn.exceptions import ConvergenceWarning
from test_layouts import fruit

from pipeline.cli import main

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
SHAPES = {
    "tomato": ((200, 30, 30), "circle"),
    "pumpkin": ((230, 130, 20), "wide"),
    "watermelon": ((40, 150, 50), "stripes"),
}


def photos(root: Path, per_class: int, seed: int = 0) -> Path:
    for number, (name, (colour, kind)) in enumerate(SHAPES.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            fruit(kind, colour, seed + 1000 * number + i).save(root / name / f"{name}_{i:03d}.jpg", quality=90)
    return root


def section(text: str, heading: str) -> str:
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def small(args: list[str]) -> list[str]:
    """The same command at test size."""
    if args[0] == "extract":
        kept, skip = [], False
        for word in args:
            if skip:
                skip = False
            elif word in ("--weights", "--image-size"):
                skip = True
            else:
                kept.append(word)
        return [*kept, "--image-size", "32", "--weights", "none"]
    if args[0] == "train":
        head = args[args.index("--head") + 1] if "--head" in args else "dense"
        if head in ("dense", "gap", "finetune"):
            args = [*args, "--set", "epochs=1", "--set", "jit_compile=false"] + (
                ["--set", "head_epochs=1"] if head == "finetune" else []
            )
    return args


def run_shell(block: str) -> list[str]:
    """Run every line of a shell block; returns the commands run."""
    ran = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[:2] == ["mkdir", "-p"]:
            for folder in words[2:]:
                Path(folder).mkdir(parents=True, exist_ok=True)
        elif words[:3] == ["python", "-m", "pipeline"]:
            assert main(small(words[3:])) == 0, line
        else:
            pytest.fail(f"a shell line the docs test cannot run: {line}")
        ran.append(words[3] if words[0] == "python" else words[0])
    return ran


def test_the_site_builds_strictly(tmp_path):
    """A broken link, a missing anchor or a page left out of the nav fails the build."""
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()


def test_the_command_reference_is_what_the_parsers_say():
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "cli_reference.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    page = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    assert page == generator.render(), (
        "docs/reference/cli.md is stale: run `python docs/cli_reference.py` (or make docs)"
    )
    assert "`--image-size IMAGE_SIZE` | `224`" in page and "## compact" in page


def test_the_readme_is_a_front_door():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 150


def test_the_readme_start_to_finish_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photos(tmp_path / "photos", 8)
    photos(tmp_path / "new_photos", 1, seed=50)
    (tmp_path / "new_photos" / "tomato" / "tomato_000.jpg").rename(tmp_path / "new_photos" / "one.jpg")
    text = section(README.read_text(encoding="utf-8"), "## Your photos, start to finish")
    (shell,) = blocks(text, "bash")
    assert run_shell(shell) == ["mkdir", "extract", "train", "report", "audit", "predict", "export"]
    assert Path("predictions.csv").is_file() and Path("model.keras").is_file()
    (example,) = blocks(text, "python")
    exec(compile(example, str(README), "exec"), {})
    (loading,) = blocks((DOCS / "how-to" / "deploy.md").read_text(encoding="utf-8"), "python")
    exec(compile(loading, "docs/how-to/deploy.md", "exec"), {})


def test_the_tutorial_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photos(tmp_path / "vegetables" / "train", 6)
    photos(tmp_path / "vegetables" / "validation", 2, seed=500)
    ran = [
        command
        for block in blocks((DOCS / "tutorial.md").read_text(encoding="utf-8"), "bash")
        for command in run_shell(block)
    ]
    assert ran.count("extract") == 2 and ran.count("train") == 4 and ran[-1] == "export"
    assert Path("vegetables.keras").is_file() and (tmp_path / "runs" / "finetuned" / "report.html").is_file()


def test_the_notebook_example_runs_and_converges(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photos(tmp_path / "photos", 10)
    Path("cache").mkdir()
    assert main(["extract", "photos", "--cache", "cache/photos.h5", "--image-size", "32", "--weights", "none"]) == 0
    (example,) = blocks((DOCS / "how-to" / "notebook.md").read_text(encoding="utf-8"), "python")
    example = example.replace("DenseHead(epochs=5", "DenseHead(epochs=1, jit_compile=False")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        for _ in range(2):  # the cell runs again: overwrite=True replaces its runs
            exec(compile(example, "docs/how-to/notebook.md", "exec"), {})
    assert sorted(p.name for p in Path("runs").iterdir() if not p.name.startswith(".")) == [
        "index.jsonl",
        "notebook-dense",
        "notebook-logreg",
    ]
