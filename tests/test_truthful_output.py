"""What the commands print is whole and true: full paths in logs, the cache a run used, exit codes
that say when nothing worked, options that do nothing refused, one limit per skip line."""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import pytest
from image_factory import decompression_bomb_png

from pipeline.cli import main
from pipeline.extraction.images import ImageReadError, ResizeSpec, read_image


@pytest.fixture(scope="module")
def run(digits_cache: Path, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    assert main(["train", str(digits_cache), "--head", "logreg", "--name", "lr", "--runs-dir", str(runs)]) == 0
    return runs


def test_tables_print_whole_paths_when_stdout_is_not_a_terminal(run, digits_dir, tmp_path, capsys):
    folder = tmp_path / ("validation-" + "coffee" * 20) / "coffee-beans-of-a-long-name"
    folder.mkdir(parents=True)
    for image in sorted((digits_dir / "three").iterdir())[:2]:
        shutil.copy(image, folder / image.name)
    capsys.readouterr()
    assert main(["predict", "lr", str(folder), "--runs-dir", str(run), "--out", str(tmp_path / "p.csv"), "--include-seen"]) == 0
    out = capsys.readouterr().out
    assert str(folder / sorted(p.name for p in folder.iterdir())[0]) in out and "…" not in out, out


def test_runs_table_names_the_cache_file_not_the_settings_fingerprint(run, digits_cache, capsys):
    capsys.readouterr()
    assert main(["runs", "--runs-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert digits_cache.name in out, out


def test_predict_exits_non_zero_when_no_input_could_be_read(run, tmp_path, capsys):
    for name in ("a.png", "b.jpg"):
        (tmp_path / name).write_bytes(b"not an image")
    assert main(["predict", "lr", str(tmp_path), "--runs-dir", str(run), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none of the 2 files could be read" in err[0] and "a.png" in err[0], err


def test_gpus_per_worker_is_refused_by_the_local_engine(digits_dir, tmp_path, capsys):
    code = main(["extract", str(digits_dir), "--cache", str(tmp_path / "c.h5"), "--weights", "none", "--gpus-per-worker", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--gpus-per-worker 1 applies to --engine ray only" in err[0], err
    assert not (tmp_path / "c.h5").exists()


def test_demo_next_steps_use_the_demo_s_own_cache():
    from pipeline.demo import next_steps

    args = argparse.Namespace(data="data/mine", cache="cache/mine.h5", runs_dir="runs", image_size=224)
    text = next_steps(args)
    assert "CACHE=cache/mine.h5" in text and "--cache cache/mine.h5" in text and "--data data/mine" in text
    assert "cache/digits.h5" not in text


@pytest.mark.parametrize("max_pixels", [None, 100_000_000])
def test_a_decompression_bomb_skip_quotes_one_limit(tmp_path, max_pixels):
    bomb = decompression_bomb_png(tmp_path / "bomb.png")
    spec = ResizeSpec(32) if max_pixels is None else ResizeSpec(32, max_pixels=max_pixels)
    with pytest.raises(ImageReadError) as caught:
        read_image(str(bomb), spec)
    reason = str(caught.value)
    numbers = {n.replace(",", "") for n in re.findall(r"\d[\d,]{6,}", reason)}
    assert numbers == {"3600000000", str(spec.max_pixels)}, reason
    assert f"limit of {spec.max_pixels:,}" in reason and "raise --max-pixels" in reason


def test_audit_of_a_test_only_cache_audits_what_it_can(digits_dir, tmp_path, capsys):
    data = tmp_path / "data"
    for name in ("zero", "one"):
        shutil.copytree(digits_dir / name, data / "test" / name)
    cache = tmp_path / "test-only.h5"
    assert main(["extract", str(data), "--cache", str(cache), "--weights", "none", "--image-size", "32"]) == 0
    capsys.readouterr()
    assert main(["audit", str(cache), "--folds", "3"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "near-duplicate groups" in out and (tmp_path / "test-only.audit" / "audit.html").is_file()
