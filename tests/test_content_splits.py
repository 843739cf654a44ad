"""Splits, folds and the split memory keyed by content: copies never straddle splits, other
fractions never overwrite an assignment, audit only reads it, copies never vouch for each other."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
from sklearn.neighbors import KNeighborsClassifier

from features_cache.reader import FeatureCache
from pipeline.analysis.audit import run_audit
from pipeline.demo_data import write_digits
from pipeline.extraction.extract import ExtractOptions, run_extract
from pipeline.health import duplicates, labels
from pipeline.training.split_memory import memory_path, shared_memory_path
from pipeline.training.splits import plan_cache_splits

ARGS = {"weights": "none", "image_size": 32}


def extract(data: Path, cache: Path) -> None:
    run_extract(ExtractOptions(data=str(data), cache=str(cache), **ARGS))


def splits_by_path(cache_path: Path, fractions=(0.7, 0.15, 0.15), remember: bool = True) -> dict[str, str]:
    with FeatureCache(cache_path) as cache:
        return dict(zip(cache.paths, plan_cache_splits(cache, fractions, remember=remember).splits.tolist()))


def plant_copies(data: Path, count: int, prefix: str = "copy") -> dict[str, str]:
    """Byte copies of ``count`` images under new names in the same class: copy path -> original path."""
    originals = sorted(data.rglob("digit_*.png"))[::3][:count]
    copies = {}
    for number, original in enumerate(originals):
        copy = original.with_name(f"{prefix}_{number:02d}.png")
        shutil.copyfile(original, copy)
        copies[copy.relative_to(data).as_posix()] = original.relative_to(data).as_posix()
    return copies


def test_byte_identical_copies_always_share_a_split(tmp_path):
    data = write_digits(tmp_path / "digits", per_class=12)
    copies = plant_copies(data, 25)
    extract(data, tmp_path / "a.h5")
    splits = splits_by_path(tmp_path / "a.h5")
    straddling = [copy for copy, original in copies.items() if splits[copy] != splits[original]]
    assert straddling == []
    more = plant_copies(data, 30, prefix="later")  # copies arriving later go where their twins already are
    extract(data, tmp_path / "a.h5")
    later = splits_by_path(tmp_path / "a.h5")
    assert all(later[copy] == later[original] for copy, original in {**copies, **more}.items())
    assert all(later[path] == split for path, split in splits.items())


def test_copies_in_two_stored_split_folders_are_counted(tmp_path):
    for split in ("train", "validation"):
        write_digits(tmp_path / "data" / split, per_class=6)
    (tmp_path / "data" / "validation" / "three" / "digit_0003.png").unlink(missing_ok=True)
    extract(tmp_path / "data", tmp_path / "a.h5")
    with FeatureCache(tmp_path / "a.h5") as cache:
        notes = plan_cache_splits(cache).notes
    # write_digits writes the same first digits into both folders: every one is in train and in val
    assert any("images have byte-identical copies in another stored split" in note for note in notes), notes


def test_other_fractions_neither_move_nor_forget_the_first_assignment(tmp_path):
    data = write_digits(tmp_path / "digits", per_class=20)
    extract(data, tmp_path / "a.h5")
    halves = splits_by_path(tmp_path / "a.h5", (0.5, 0.25, 0.25))
    default = splits_by_path(tmp_path / "a.h5")
    write_digits(data, per_class=30)  # new images arrive
    extract(data, tmp_path / "a.h5")
    halves_after = splits_by_path(tmp_path / "a.h5", (0.5, 0.25, 0.25))
    default_after = splits_by_path(tmp_path / "a.h5")
    assert {p: halves_after[p] for p in halves} == halves
    assert {p: default_after[p] for p in default} == default
    with FeatureCache(tmp_path / "a.h5") as cache:
        notes = plan_cache_splits(cache, (0.6, 0.2, 0.2)).notes
    assert any("splits the images anew" in note and "0.5,0.25,0.25" in note for note in notes), notes


def test_a_renamed_file_keeps_its_split(tmp_path):
    data = write_digits(tmp_path / "digits", per_class=12)
    extract(data, tmp_path / "a.h5")
    before = splits_by_path(tmp_path / "a.h5")
    (data / "seven" / "digit_0007.png").rename(data / "seven" / "renamed.png")
    extract(data, tmp_path / "a.h5")
    after = splits_by_path(tmp_path / "a.h5")
    assert after["seven/renamed.png"] == before["seven/digit_0007.png"]


def test_a_version_one_memory_is_read_by_content(tmp_path):
    data = write_digits(tmp_path / "digits", per_class=12)
    extract(data, tmp_path / "a.h5")
    before = splits_by_path(tmp_path / "a.h5")
    flipped = {path: {"train": "test", "val": "train", "test": "val"}[split] for path, split in before.items()}
    memory_path(tmp_path / "a.h5").write_text(
        json.dumps({"version": 1, "fractions": [0.7, 0.15, 0.15], "splits": flipped}), encoding="utf-8"
    )
    shared_memory_path(data).unlink()  # as written before the memory moved to the data root
    assert splits_by_path(tmp_path / "a.h5") == flipped
    assert json.loads(memory_path(tmp_path / "a.h5").read_text(encoding="utf-8"))["version"] == 2


def test_audit_reads_the_split_memory_and_never_writes_it(tmp_path):
    data = write_digits(tmp_path / "digits", per_class=12)
    extract(data, tmp_path / "a.h5")
    run_audit(tmp_path / "a.h5", folds=3)
    assert not memory_path(tmp_path / "a.h5").exists() and not shared_memory_path(data).exists()
    splits_by_path(tmp_path / "a.h5", (0.5, 0.25, 0.25))
    remembered = shared_memory_path(data).read_bytes()
    result = run_audit(tmp_path / "a.h5", folds=3)
    assert shared_memory_path(data).read_bytes() == remembered
    assert len(result.splits) == 120


def test_folds_group_copies_so_a_copy_never_vouches_for_its_twins_wrong_label(tmp_path):
    """The reproduction: flipped labels whose byte copies carry the same wrong label. With plain
    folds the copy in the training fold makes the wrong label look right; grouped folds do not."""
    data = write_digits(tmp_path / "digits", per_class=12)
    flipped = sorted((data / "zero").glob("*.png"))[:6]
    for number, path in enumerate(flipped):  # label error: zeros filed as ones, each with a byte copy
        path.rename(data / "one" / f"flipped_{number}.png")
        shutil.copyfile(data / "one" / f"flipped_{number}.png", data / "one" / f"flipped_{number}_copy.png")
    extract(data, tmp_path / "a.h5")
    with FeatureCache(tmp_path / "a.h5") as cache:
        X, y = cache.features(np.arange(len(cache))).reshape(len(cache), -1), cache.labels
        hashes = [record.content_hash for record in cache.records()]
        wrong = np.array(["flipped_" in path for path in cache.paths])
    groups = duplicates.fold_groups(hashes, [])
    assert len(np.unique(groups)) == len(hashes) - len(flipped)
    nearest = KNeighborsClassifier(n_neighbors=1)
    plain = labels.out_of_fold_probabilities(X, y, nearest, 3, seed=0, groups=np.arange(len(y)))
    grouped = labels.out_of_fold_probabilities(X, y, nearest, 3, seed=0, groups=groups)
    assert labels.label_issues(grouped, y)[wrong].sum() > labels.label_issues(plain, y)[wrong].sum()


def test_evaluate_refuses_the_runs_training_images_under_any_name_and_in_any_cache(tmp_path, capsys):
    """The reproduction: a cache of the very training images (renamed, copied elsewhere, or a
    `compact --to` copy) used to score as new images, well above the run's real test accuracy."""
    from pipeline.cli import main

    data = write_digits(tmp_path / "digits", per_class=14)
    extract(data, tmp_path / "a.h5")
    assert main(["train", str(tmp_path / "a.h5"), "--head", "logreg", "--name", "lr", "--runs-dir", str(tmp_path / "runs")]) == 0
    copied = tmp_path / "copied"
    for path in data.rglob("*.png"):  # the same bytes under new names
        target = copied / path.parent.name / f"renamed_{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    extract(copied, tmp_path / "copied.h5")
    assert main(["compact", str(tmp_path / "a.h5"), "--to", str(tmp_path / "standalone.h5")]) == 0
    capsys.readouterr()
    for other in ("copied.h5", "standalone.h5"):
        assert main(["evaluate", str(tmp_path / "runs" / "lr"), str(tmp_path / other)]) == 2
        err = capsys.readouterr().err
        assert "images have the same content as training images of run 'lr'" in err and err.count("\n") == 1, err

    mixed = tmp_path / "mixed"  # new digits beside a few training ones: scored apart with --include-seen
    write_digits(tmp_path / "more", per_class=24)
    for path in (tmp_path / "more").rglob("*.png"):
        target = mixed / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    extract(mixed, tmp_path / "mixed.h5")
    assert main(["evaluate", str(tmp_path / "runs" / "lr"), str(tmp_path / "mixed.h5")]) == 2
    assert "pass --include-seen" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "runs" / "lr"), str(tmp_path / "mixed.h5"), "--include-seen"]) == 0
    printed = capsys.readouterr().out
    with FeatureCache(tmp_path / "a.h5") as cache:
        trained = len(plan_cache_splits(cache).rows("train"))
    assert f"{240 - trained} images" in printed and f"{trained} training images of the run" in printed, printed


def test_a_val_that_chose_the_setting_is_said_to_be_optimistic(tmp_path, capsys):
    """train/ + validation/ folders have no test split: a --set grid picks on val and scores on val."""
    from pipeline.cli import main

    for split in ("train", "validation"):
        write_digits(tmp_path / "data" / split, per_class=8 if split == "train" else 4)
    extract(tmp_path / "data", tmp_path / "a.h5")
    runs = tmp_path / "runs"
    assert main(["train", str(tmp_path / "a.h5"), "--head", "logreg", "--set", "C=0.1,1", "--runs-dir", str(runs)]) == 0
    printed = capsys.readouterr().out
    assert "val chose the setting among 2 runs (--set) and is also the only split scored" in printed
    assert main(["report", "--runs-dir", str(runs)]) == 0
    assert "val chose the setting among 2 runs" in capsys.readouterr().out
    assert main(["train", str(tmp_path / "a.h5"), "--head", "logreg", "--name", "one", "--runs-dir", str(runs)]) == 0
    assert "val chose" not in capsys.readouterr().out


def test_predict_refuses_training_images_or_marks_them(tmp_path, capsys):
    from pipeline.cli import main

    data = write_digits(tmp_path / "digits", per_class=10)
    extract(data, tmp_path / "a.h5")
    runs = tmp_path / "runs"
    assert main(["train", str(tmp_path / "a.h5"), "--head", "logreg", "--name", "lr", "--runs-dir", str(runs)]) == 0
    with FeatureCache(tmp_path / "a.h5") as cache:
        plan = plan_cache_splits(cache)
        trained = [cache.paths[r] for r in plan.rows("train")]
        held_out = [cache.paths[r] for r in plan.rows("val")]
    folder = tmp_path / "new"
    folder.mkdir()
    shutil.copyfile(data / trained[0], folder / "looks_new.png")  # a training image under a new name
    shutil.copyfile(data / held_out[0], folder / "held_out.png")
    out = tmp_path / "p.csv"
    capsys.readouterr()
    assert main(["predict", "lr", str(folder), "--runs-dir", str(runs), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1 of the 2 images have the same content as training images of run 'lr'" in err and "looks_new.png" in err
    assert not out.exists()
    assert main(["predict", "lr", str(folder), "--runs-dir", str(runs), "--out", str(out), "--include-seen"]) == 0
    with open(out, newline="", encoding="utf-8") as handle:
        marks = {Path(row["path"]).name: row["seen_in_training"] for row in csv.DictReader(handle)}
    assert marks == {"looks_new.png": "true", "held_out.png": "false"}


def test_a_new_near_duplicate_goes_where_its_twin_is(tmp_path):
    """Re-encoded copies (other bytes, same photo) arriving later join their twin's split."""
    from image_factory import make_class_folders
    from PIL import Image

    data = make_class_folders(tmp_path / "data", {"warm": 14, "cool": 14, "green": 14}, size=(96, 72))
    extract(data, tmp_path / "a.h5")
    with FeatureCache(tmp_path / "a.h5") as cache:
        before = dict(zip(cache.paths, plan_cache_splits(cache, check_leakage=True).splits.tolist()))
    for path in sorted(data.rglob("*.jpg"))[::2]:  # a re-encoded (lossy JPEG) copy of every second image
        Image.open(path).convert("RGB").save(path.with_name(path.stem + "_again.jpg"), "JPEG", quality=60)
    extract(data, tmp_path / "a.h5")
    with FeatureCache(tmp_path / "a.h5") as cache:
        after = dict(zip(cache.paths, plan_cache_splits(cache, check_leakage=True).splits.tolist()))
    copies = {p: p.replace("_again.jpg", ".jpg") for p in after if p.endswith("_again.jpg")}
    assert len(copies) == 21 and {p: after[p] for p in before} == before
    assert sum(after[copy] == after[original] for copy, original in copies.items()) == len(copies)
