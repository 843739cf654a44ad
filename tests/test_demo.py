"""``make demo``'s program: a stratified subset by default, the weights it used said first, next steps said last."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_a_small_stratified_subset_and_prints_next_steps(tmp_path):
    args = ["--data", "d", "--cache", "c/digits.h5", "--runs-dir", "r", "--image-size", "32", "--per-class", "4"]
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras-home")}  # no ImageNet weights there
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.demo", *args], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.splitlines()[0].startswith("NOTE: this demo runs on SEEDED RANDOM weights")
    classes = [folder for folder in (tmp_path / "d").iterdir() if not folder.name.startswith(".")]  # .pipeline-splits.json
    assert sorted(len(list(folder.iterdir())) for folder in classes) == [4] * 10
    assert "errors: " in out
    steps = [line.strip() for line in out.rstrip().splitlines()[-7:]]
    assert steps[0].startswith("make train-head CACHE=c/digits.h5 RUNS_DIR=r HEAD=dense")
    assert steps[4].startswith('make extract DATA=d CACHE=c/digits-block4.h5 IMAGE_SIZE=32 WEIGHTS=none EXTRACT_FLAGS="--layer block4_pool')
    assert steps[5].startswith('make train-head CACHE=c/digits-block4.h5 RUNS_DIR=r HEAD=finetune TRAIN_FLAGS="--views flip"')
    assert Path(tmp_path / "c" / "digits.h5").is_file()
