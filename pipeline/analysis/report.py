"""What a trained run gets wrong: its misclassified images, as a CSV and a page to look at.

Everything comes from the run folder (``config.json`` and ``predictions.csv``), so the
report works for every head and needs neither the cache nor the model. Images are only
opened for thumbnails; one that has moved or been deleted is reported, not fatal.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np

from features_cache import atomic
from pipeline.analysis import html_page
from pipeline.analysis.curves import learning_curve_svg
from pipeline.errors import PipelineError
from pipeline.training.runs import load_run_config, read_index, resolve_run

ERRORS_COLUMNS = ("path", "true", "predicted", "confidence", "runner_up")


@dataclasses.dataclass(frozen=True)
class Mistake:
    path: str
    absolute: Path
    true: str
    predicted: str
    confidence: float
    runner_up: str
    runner_up_probability: float


@dataclasses.dataclass
class ErrorReport:
    run_dir: Path
    split: str
    total: int
    class_names: list[str]
    mistakes: list[Mistake]
    confusion: np.ndarray
    errors_csv: Path
    html: Path
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def error_rate(self) -> float:
        return len(self.mistakes) / self.total if self.total else 0.0

    def errors_per_class(self) -> dict[str, int]:
        """Misclassified images per true class, for every class (zeros included)."""
        counts = dict.fromkeys(self.class_names, 0)
        for mistake in self.mistakes:
            counts[mistake.true] += 1
        return counts


def read_predictions(run_dir: Path, class_names: list[str]) -> list[dict[str, str]]:
    """The rows of ``predictions.csv``, checked for the columns the report needs."""
    path = run_dir / "predictions.csv"
    if not path.is_file():
        raise PipelineError(f"{path}: no predictions in this run folder; train it again with `python -m pipeline train`")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        columns = set(reader.fieldnames or ())
    needed = {"path", "split", "true", "predicted"} | {f"p_{name}" for name in class_names}
    missing = sorted(needed - columns)
    if missing:
        raise PipelineError(f"{path}: missing columns {', '.join(missing)}; train the run again with `python -m pipeline train`")
    return rows


def class_name(value: str, class_names: list[str]) -> str:
    """Labels are stored as class names; an integer index is accepted as well."""
    if value in class_names:
        return value
    if value.isdigit() and int(value) < len(class_names):
        return class_names[int(value)]
    raise PipelineError(f"predictions.csv: unknown class {value!r}; the run's classes are {', '.join(class_names)}")


def latest_run(runs_dir: str | Path = "runs") -> str:
    """The name of the most recently trained run under ``runs_dir``."""
    entries = read_index(runs_dir)
    if not entries:
        raise PipelineError(f"no runs in {runs_dir}/ yet; train one with `make train-head` or `python -m pipeline train CACHE.h5`")
    return entries[-1]["name"]  # the index is append-only: the last line is the newest run


def build_report(run: str, split: str | None = None, runs_dir: str | Path = "runs") -> ErrorReport:
    """Find the misclassified images of ``split`` and write ``errors.csv`` and ``report.html``.

    ``split`` None means test when the run has test images, else val (a data set with
    ``train/`` and ``validation/`` folders only).
    """
    run_dir = resolve_run(run, runs_dir)
    config = load_run_config(run_dir)
    class_names = [str(name) for name in config["class_names"]]
    data_root = Path(str(config.get("cache", {}).get("data_root", "")))
    predictions = read_predictions(run_dir, class_names)
    present = {row["split"] for row in predictions}
    if split is None:
        split = "test" if "test" in present else "val"
    rows = [row for row in predictions if row["split"] == split]
    if not rows:
        others = " or ".join(f"--split {s}" for s in ("test", "val") if s in present and s != split)
        raise PipelineError(
            f"{run_dir}: the run has no {split} images"
            + (f"; pass {others}" if others else "; train it again on a cache with held-out images")
        )
    index = {name: i for i, name in enumerate(class_names)}
    confusion = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    mistakes = []
    for row in rows:
        true, predicted = class_name(row["true"], class_names), class_name(row["predicted"], class_names)
        confusion[index[true], index[predicted]] += 1
        if true == predicted:
            continue
        probabilities = np.array([float(row[f"p_{name}"]) for name in class_names])
        order = np.argsort(-probabilities, kind="stable")
        runner_up = next(int(k) for k in order if int(k) != index[predicted])
        mistakes.append(
            Mistake(
                path=row["path"],
                absolute=data_root / row["path"],
                true=true,
                predicted=predicted,
                confidence=float(row.get("confidence") or probabilities[index[predicted]]),
                runner_up=class_names[runner_up],
                runner_up_probability=float(probabilities[runner_up]),
            )
        )
    mistakes.sort(key=lambda m: (-m.confidence, m.path))
    report = ErrorReport(
        run_dir, split, len(rows), class_names, mistakes, confusion, run_dir / "errors.csv", run_dir / "report.html"
    )
    report.warnings = [
        note for note in config.get("split", {}).get("notes", []) if isinstance(note, str) and note.startswith("warning:")
    ]
    write_errors_csv(report)
    name, head = str(config.get("name", run_dir.name)), str(config.get("head", ""))
    html_page.write_page(report.html, render(report, name, head, read_history(run_dir)))
    return report


def read_history(run_dir: Path) -> dict:
    """The run's per-epoch history; empty when missing or unreadable (the curve is then left out)."""
    try:
        history = json.loads((run_dir / "history.json").read_text())
    except (OSError, ValueError):
        return {}
    return history if isinstance(history, dict) else {}


def write_errors_csv(report: ErrorReport) -> None:
    with atomic.open_replacing(report.errors_csv, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(ERRORS_COLUMNS)
        for m in report.mistakes:
            writer.writerow([m.path, m.true, m.predicted, f"{m.confidence:.6f}", m.runner_up])


def summary_line(report: ErrorReport) -> str:
    return f"errors: {len(report.mistakes)}/{report.total} ({100 * report.error_rate:.1f}%)"


def render(report: ErrorReport, name: str, head: str, history: dict) -> str:
    cards = [
        html_page.Card(
            m.path,
            m.absolute,
            (
                f"true: {m.true}",
                f"predicted: {m.predicted} ({m.confidence:.1%})",
                f"runner-up: {m.runner_up} ({m.runner_up_probability:.1%})",
            ),
        )
        for m in report.mistakes
    ]
    per_class = ", ".join(f"{cls} {count}" for cls, count in report.errors_per_class().items())
    sections = [
        (f"Misclassified images ({len(report.mistakes)}), most confident first", html_page.cards_html(cards)),
        ("Confusion matrix (rows: true class, columns: predicted)", html_page.confusion_svg(report.confusion, report.class_names)),
        ("Per-class metrics", html_page.metrics_table(html_page.per_class_metrics(report.confusion, report.class_names))),
    ]
    curve = learning_curve_svg(history)
    if curve:
        sections.insert(1, ("Learning curve (training and validation, per epoch)", f'<div class="curves">{curve}</div>'))
    return html_page.render_page(
        f"Errors of run {name} on its {report.split} images",
        [f"head: {head}" if head else "", summary_line(report), f"errors per true class: {per_class}"],
        sections,
    )
