"""Class names outside ASCII under an ASCII locale: the same cache, names and pages as under UTF-8."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from features_cache import FeatureCache


@pytest.fixture(scope="module")
def accented(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("locale") / "data"
    rng = np.random.default_rng(0)
    for name in ("café", "thé"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / name / f"crème-{i}.png")
    return root


def test_commands_under_an_ascii_locale(accented, tmp_path):
    """``LC_ALL=C`` alone puts Python in UTF-8 mode (PEP 540); with ``PYTHONUTF8=0`` too it reads names as ASCII."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHONUTF8", "PYTHONIOENCODING"))}
    env.update(LC_ALL="C", LANG="C", PYTHONUTF8="0")
    cache, runs = tmp_path / "c.h5", tmp_path / "runs"

    def run(*argv: str) -> str:
        done = subprocess.run([sys.executable, "-m", "pipeline", *argv], capture_output=True, env=env, timeout=600)
        out = (done.stdout + done.stderr).decode("utf-8", "replace")
        assert done.returncode == 0, (argv, out)
        assert "internal error" not in out and "Traceback" not in out, out
        return out

    run("extract", str(accented), "--cache", str(cache), "--weights", "none", "--image-size", "32")
    assert "café" in run("info", str(cache))
    run("train", str(cache), "--head", "gap", "--set", "epochs=1", "--name", "g", "--runs-dir", str(runs))
    run("report", "g", "--runs-dir", str(runs))
    run("audit", str(cache), "--folds", "2", "--out", str(tmp_path / "audit"))
    with FeatureCache(cache) as opened:
        assert opened.class_names == ["café", "thé"]
        assert all(path.split("/")[1].startswith("crème-") for path in opened.paths)
    assert sorted(p.name for p in runs.iterdir()) == ["g", "index.jsonl"]  # no staging folder left behind
    page = (runs / "g" / "report.html").read_text(encoding="utf-8")
    assert "café" in page and "cannot read image" not in page and "image not found" not in page
