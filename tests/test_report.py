"""``pipeline report``: the misclassified images of a real run, as text, CSV and a page Chromium renders."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.demo_data import write_digits
from pipeline.extraction.extract import ExtractOptions, run_extract

# Class folders named to test escaping: Korean text and markup characters.
RENAMED = {"seven": "일곱 <7>", "one": "하나 & 1"}
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
# Written into the page copy that Chromium renders: what each image decoded to, read back from the DOM.
PROBE = """<script>
window.addEventListener("load", () => {
  for (const img of document.images) img.setAttribute("data-decoded-width", String(img.naturalWidth));
  document.body.setAttribute("data-probed", "yes");
});
</script>"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A logistic-regression run on 25 digits per class, two classes with awkward names."""
    root = tmp_path_factory.mktemp("report")
    data = write_digits(root / "digits", per_class=25)
    for old, new in RENAMED.items():
        (data / old).rename(data / new)
    cache = root / "digits.h5"
    run_extract(ExtractOptions(data=str(data), cache=str(cache), weights="none", image_size=32, storage_dtype="float32"))
    runs = root / "runs"
    assert main(["train", str(cache), "--head", "logreg", "--set", "C=0.005", "--name", "lr", "--runs-dir", str(runs)]) == 0
    return runs / "lr"


def predictions(run_dir: Path, split: str) -> list[dict[str, str]]:
    with open(run_dir / "predictions.csv", newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if row["split"] == split]


def render_dom(page: Path, tmp_path: Path) -> str:
    """The DOM of ``page`` after headless Chromium loaded it and the probe ran."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed; `apt-get install chromium` (.ci/run installs it)"
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    result = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return result.stdout


def test_report_lists_mistakes_most_confident_first(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    test_rows = predictions(run_dir, "test")
    wrong = [row for row in test_rows if row["true"] != row["predicted"]]
    assert wrong, "the run should make some mistakes for the report to show"
    assert f"errors: {len(wrong)}/{len(test_rows)} ({100 * len(wrong) / len(test_rows):.1f}%)" in out
    assert "errors per true class:" in out
    with open(run_dir / "errors.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["path", "true", "predicted", "confidence", "runner_up"]
    assert {row["path"] for row in rows} == {row["path"] for row in wrong}
    confidences = [float(row["confidence"]) for row in rows]
    assert confidences == sorted(confidences, reverse=True)
    by_path = {row["path"]: row for row in wrong}
    for row in rows:
        source = by_path[row["path"]]
        assert (row["true"], row["predicted"]) == (source["true"], source["predicted"])
        others = {name: float(source[f"p_{name}"]) for name in _classes(source) if name != source["predicted"]}
        assert row["runner_up"] == max(others, key=others.get)


def _classes(row: dict[str, str]) -> list[str]:
    return [key[2:] for key in row if key.startswith("p_")]


def test_report_page_renders_in_chromium(run_dir, tmp_path):
    assert main(["report", str(run_dir)]) == 0
    n_errors = len(predictions(run_dir, "test")) - sum(
        row["true"] == row["predicted"] for row in predictions(run_dir, "test")
    )
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"(src|href)=\"(https?:)?//", page), "the page must not fetch anything"
    dom = render_dom(run_dir / "report.html", tmp_path)
    assert 'data-probed="yes"' in dom
    assert dom.count('class="card"') == n_errors
    widths = re.findall(r'data-decoded-width="(\d+)"', dom)
    assert len(widths) == n_errors and all(int(width) > 0 for width in widths)
    assert dom.count("<svg") == 1 and dom.count("<rect") == 10 * 10
    assert dom.count("<tr>") == 1 + 10
    assert "일곱 &lt;7&gt;" in dom and "하나 &amp; 1" in dom
    assert "<7>" not in dom


def test_report_survives_moved_images(run_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    assert main(["report", str(copy), "--split", "val"]) == 0
    assert f"/{len(predictions(run_dir, 'val'))} (" in capsys.readouterr().out
    assert main(["report", str(copy)]) == 0
    capsys.readouterr()
    with open(copy / "errors.csv", newline="", encoding="utf-8") as handle:
        errors = list(csv.DictReader(handle))
    config = (copy / "config.json").read_text(encoding="utf-8")
    data_root = Path(re.search(r'"data_root": "([^"]+)"', config).group(1))
    gone = data_root / errors[0]["path"]
    moved = tmp_path / "moved.png"
    shutil.move(gone, moved)
    try:
        assert main(["report", str(copy)]) == 0
        out = capsys.readouterr().out
        dom = render_dom(copy / "report.html", tmp_path)
    finally:
        shutil.move(moved, gone)
    assert f"image not found at {gone}" in out
    assert dom.count('class="missing"') == 1 and f"image not found at {gone}" in dom
    widths = re.findall(r'data-decoded-width="(\d+)"', dom)
    assert len(widths) == len(errors) - 1 and all(int(width) > 0 for width in widths)


def errors_of(run: Path, split: str) -> list[str]:
    rows = (run / "predictions.csv").read_text(encoding="utf-8").splitlines()[1:]
    return [row for row in rows if row.split(",")[1] == split and row.split(",")[2] != row.split(",")[3]]


def test_report_refuses_unknown_run_and_falls_back_to_val_without_test_images(run_dir, tmp_path, capsys):
    assert main(["report", "no-such-run", "--runs-dir", str(tmp_path)]) == 2
    assert "error: no run 'no-such-run'" in capsys.readouterr().err
    copy = tmp_path / "val-only"
    shutil.copytree(run_dir, copy)
    lines = (copy / "predictions.csv").read_text(encoding="utf-8").splitlines()
    kept = [lines[0], *(line for line in lines[1:] if line.split(",")[1] == "val")]
    (copy / "predictions.csv").write_text("\n".join(kept) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["report", str(copy)]) == 0  # no test images: the report is on val
    assert f"errors: {len(errors_of(copy, 'val'))}/{len(kept) - 1} (" in capsys.readouterr().out
    assert main(["report", str(copy), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert "has no test images" in err and "--split val" in err and len(err.strip().splitlines()) == 1
