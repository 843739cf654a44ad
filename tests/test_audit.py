"""``pipeline audit``: planted wrong labels in real images must rank near the top."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.audit import run_audit
from pipeline.cli import main
from pipeline.demo_data import CLASS_NAMES, write_digits
from pipeline.extract import ExtractOptions, run_extract

PER_CLASS = 40
PLANTED_PER_CLASS = 2


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, set[str]]:
    """A digits cache where 2 images of every class were moved into the next class's folder."""
    root = tmp_path_factory.mktemp("audit")
    data = write_digits(root / "digits", per_class=PER_CLASS)
    chosen = {name: sorted((data / name).iterdir())[:PLANTED_PER_CLASS] for name in CLASS_NAMES}
    wrong = set()
    for number, name in enumerate(CLASS_NAMES):
        target = CLASS_NAMES[(number + 1) % len(CLASS_NAMES)]
        for image in chosen[name]:
            shutil.move(image, data / target / image.name)
            wrong.add(f"{target}/{image.name}")
    cache = root / "digits.h5"
    run_extract(ExtractOptions(data=str(data), cache=str(cache), weights="none", image_size=32))
    return cache, wrong


def test_planted_label_errors_rank_near_the_top(planted, tmp_path, capsys):
    cache, wrong = planted
    out = tmp_path / "audit.csv"
    assert main(["audit", str(cache), "--out", str(out), "--show", "30"]) == 0
    printed = capsys.readouterr().out
    assert "out-of-fold accuracy" in printed and "flagged by confident learning" in printed
    with open(out, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["rank", "path", "split", "given", "suggested", "self_confidence", "margin", "flagged"]
    assert len(rows) == PER_CLASS * len(CLASS_NAMES)
    assert [int(row["rank"]) for row in rows] == list(range(1, len(rows) + 1))
    scores = [float(row["self_confidence"]) for row in rows]
    assert scores == sorted(scores)
    top = {row["path"] for row in rows[: 2 * len(wrong)]}
    assert len(top & wrong) >= 0.8 * len(wrong), f"only {len(top & wrong)} of {len(wrong)} planted errors in the top"
    flagged = {row["path"] for row in rows if row["flagged"] == "1"}
    assert len(flagged & wrong) >= 0.6 * len(wrong)
    page = out.with_suffix(".html").read_text(encoding="utf-8")
    assert page.count('class="card"') == 30 and page.count("data:image/jpeg;base64,") == 30


def test_margin_ranking_and_out_of_fold_probabilities(planted):
    cache, wrong = planted
    result = run_audit(cache, folds=4, ranking="margin")
    assert result.probabilities.shape == (PER_CLASS * len(CLASS_NAMES), len(CLASS_NAMES))
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-6)
    margins = result.margin[result.order]
    assert np.all(np.diff(margins) >= 0)
    top = {result.paths[i] for i in result.order[: 2 * len(wrong)]}
    assert len(top & wrong) >= 0.8 * len(wrong)


def test_audit_refuses_bad_settings(planted, capsys):
    cache, _ = planted
    assert main(["audit", str(cache), "--folds", "50"]) == 2
    err = capsys.readouterr().err
    assert "fewer than --folds 50" in err and "pass --folds" in err
    assert main(["audit", str(cache), "--head", "forest"]) == 2
    assert "unknown head 'forest'" in capsys.readouterr().err
    assert main(["audit", str(cache), "--set", "depth=3"]) == 2
    assert "no setting 'depth'" in capsys.readouterr().err
    assert main(["audit", str(cache.with_name("missing.h5"))]) == 2
    assert "no such cache" in capsys.readouterr().err
