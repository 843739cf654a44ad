"""Leakage is defined once: ``train``, ``report``, ``audit``, its page and its CSV files give the same
counts, every count equals the rows of the file it summarises, and both images of a pair share a group."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest
from image_factory import make_class_folders
from PIL import Image

from pipeline.cli import main
from pipeline.health import duplicates, leakage

PLANTED = 6


@pytest.fixture(scope="module")
def leaky(tmp_path_factory) -> Path:
    """Photo-like images in train/ and test/ folders; 6 test images also in train as a re-encoded and a
    resized copy (a group of 3 with 2 pairs across splits), one test image twice in test."""
    root = tmp_path_factory.mktemp("leaky")
    source = make_class_folders(root / "source", {"warm": 12, "cool": 12, "green": 12}, size=(96, 72))
    data = root / "data"
    tested = []
    for k, path in enumerate(sorted(source.rglob("*.jpg"))):
        split = "test" if k % 4 == 0 else "train"
        target = data / split / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        if split == "test":
            tested.append(target)
    for target in tested[:PLANTED]:
        image = Image.open(target).convert("RGB")
        twin = data / "train" / target.parent.name
        image.save(twin / f"{target.stem}_q60.jpg", "JPEG", quality=60)
        image.resize((72, 54)).save(twin / f"{target.stem}_small.jpg", "JPEG", quality=65)
    Image.open(tested[-1]).convert("RGB").save(tested[-1].with_name("again.jpg"), "JPEG", quality=70)
    cache = root / "leaky.h5"
    assert main(["extract", str(data), "--cache", str(cache), "--weights", "none", "--image-size", "32"]) == 0
    return cache


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def warned(text: str, split: str) -> int:
    found = re.search(rf"warning: (\d+) {split} images? ha(?:s|ve) a near-duplicate in train", text)
    return int(found.group(1)) if found else 0


def test_a_chain_of_pairs_is_one_group_so_both_images_of_every_pair_share_it():
    pairs = [
        duplicates.Pair(0, 1, 0.99),
        duplicates.Pair(1, 2, 0.98),
        duplicates.Pair(3, 4, 0.97),
        duplicates.Pair(5, 2, 0.9),
    ]
    groups = duplicates.groups(pairs, 7)
    assert groups == [[0, 1, 2, 5], [3, 4]]
    group_of = {i: number for number, group in enumerate(groups) for i in group}
    assert all(group_of[p.a] == group_of[p.b] for p in pairs)


def test_leaks_are_held_out_images_paired_with_a_train_image():
    pairs = [
        duplicates.Pair(0, 1, 0.99),
        duplicates.Pair(1, 2, 0.95),
        duplicates.Pair(3, 4, 0.97),
        duplicates.Pair(2, 5, 0.9),
    ]
    splits = ["train", "test", "val", "val", "test", "train"]
    found = leakage.leaks(pairs, splits)
    # 1 (test) pairs with train 0; 2 (val) with train 5; 3 and 4 are val~test, no train: no leak
    assert [(leak.row, leak.twin) for leak in found] == [(2, 5), (1, 0)]
    assert leakage.leak_counts(found, splits) == {"val": 1, "test": 1}


def test_train_report_audit_page_and_csvs_count_leakage_alike(leaky, tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "audit"
    capsys.readouterr()
    assert main(["train", str(leaky), "--head", "logreg", "--runs-dir", str(runs), "--name", "lr"]) == 0
    trained = capsys.readouterr().out
    assert main(["report", "lr", "--runs-dir", str(runs)]) == 0
    reported = capsys.readouterr().out
    assert main(["audit", str(leaky), "--out", str(out)]) == 0
    audited = capsys.readouterr().out

    pairs, leaks = rows_of(out / "duplicates.csv"), rows_of(out / "leakage.csv")
    summary = re.search(
        r"(\d+) near-duplicate pairs in (\d+) near-duplicate groups \((\d+) across splits; (\d+) val and (\d+) test images",
        audited,
    )
    assert summary, audited
    n_pairs, n_groups, across, val_leaks, test_leaks = map(int, summary.groups())
    assert n_pairs == len(pairs) and n_groups == len({row["group"] for row in pairs})
    assert across == len({row["group"] for row in pairs if row["split_a"] != row["split_b"]})
    assert (
        test_leaks
        == sum(row["split"] == "test" for row in leaks)
        == warned(trained, "test")
        == warned(reported, "test")
    )
    assert val_leaks == sum(row["split"] == "val" for row in leaks) == warned(trained, "val")
    planted = [
        row for row in pairs if "test" in (row["split_a"], row["split_b"]) and "_q60" in row["path_a"] + row["path_b"]
    ]
    assert len(planted) == PLANTED and test_leaks >= 1  # every planted copy is found, some in train (val: carved)
    group_of_pair = {frozenset((row["path_a"], row["path_b"])): row["group"] for row in pairs}
    for row in leaks:  # each leak is a pair of duplicates.csv, with that pair's group
        assert group_of_pair[frozenset((row["path"], row["train_twin"]))] == row["group"]
    page = (out / "audit.html").read_text(encoding="utf-8")
    heading = (
        f"{n_pairs} pairs in {n_groups} groups ({across} across splits; {val_leaks} val and {test_leaks} test images"
    )
    assert heading in page
    assert page.count('class="group leak"') == min(across, 100)  # every group across splits is marked, none other
