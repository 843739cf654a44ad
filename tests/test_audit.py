"""``pipeline audit``: planted duplicates across splits, wrong labels and far-off images are found,
and the review page's manifest relabels and excludes without extracting anything again."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from image_factory import photo
from PIL import Image

from features_cache.reader import FeatureCache
from pipeline.analysis.audit import head_estimator, run_audit
from pipeline.cli import main
from pipeline.demo_data import CLASS_NAMES, write_digits
from pipeline.errors import PipelineError
from pipeline.extraction.extract import ExtractOptions, run_extract
from pipeline.health import balance, duplicates, labels, outliers

PER_CLASS = 40
PLANTED_PER_CLASS = 2
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    """Digits in train/ and test/ folders: 2 images of every class moved into the next class's folder,
    and 6 test images copied into train (3 byte-for-byte, 3 re-encoded as JPEG)."""
    root = tmp_path_factory.mktemp("audit")
    source = write_digits(root / "source", per_class=PER_CLASS)
    data = root / "digits"
    wrong, copies = set(), set()
    for number, name in enumerate(CLASS_NAMES):
        for k, image in enumerate(sorted((source / name).iterdir())):
            split = "test" if k % 4 == 0 else "train"
            label = CLASS_NAMES[(number + 1) % 10] if k in (1, 2) else name
            target = data / split / label / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, target)
            if label != name:
                wrong.add(f"{split}/{label}/{image.name}")
            if split == "test" and k in (4, 8) and number < 3:
                copy = data / "train" / name / f"copy-{image.stem}.{'png' if k == 4 else 'jpg'}"
                if k == 4:
                    shutil.copy(image, copy)
                else:
                    Image.open(image).convert("RGB").save(copy, quality=75)
                copies.add(f"train/{name}/{copy.name}")
    foreign = set()
    for j, name in enumerate(("one", "five", "seven")):  # files of no class: colour photos among the scans
        photo(96, 72, seed=900 + j).save(data / "train" / name / f"foreign{j}.jpg")
        foreign.add(f"train/{name}/foreign{j}.jpg")
    cache = root / "digits.h5"
    run_extract(ExtractOptions(data=str(data), cache=str(cache), weights="none", image_size=32))
    return {"root": root, "data": data, "cache": cache, "wrong": wrong, "copies": copies, "foreign": foreign}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_health_report_finds_planted_problems(planted, tmp_path, capsys):
    out = tmp_path / "health"
    assert main(["audit", str(planted["cache"]), "--out", str(out), "--show", "30"]) == 0
    printed = capsys.readouterr().out
    summary = next(line for line in printed.splitlines() if "near-duplicate groups" in line)
    assert summary.endswith("likely label errors") and "across splits" in summary

    pairs = read_csv(out / "duplicates.csv")
    assert list(pairs[0]) == ["path_a", "path_b", "similarity", "split_a", "split_b", "group"]
    found = {row[key] for row in pairs for key in ("path_a", "path_b")}
    assert planted["copies"] <= found, planted["copies"] - found
    for row in pairs:
        if {row["path_a"], row["path_b"]} & planted["copies"]:
            assert row["split_a"] != row["split_b"] and "test" in (row["split_a"], row["split_b"])  # leakage
    assert len(pairs) <= 3 * len(planted["copies"])  # no flood of false pairs

    issues = read_csv(out / "label_issues.csv")
    assert [int(row["rank"]) for row in issues] == list(range(1, len(issues) + 1))
    top = {row["path"] for row in issues[: 2 * len(planted["wrong"])]}
    assert len(top & planted["wrong"]) >= 0.8 * len(planted["wrong"])
    flagged = {row["path"] for row in issues if row["flagged"] == "1"}
    assert len(flagged & planted["wrong"]) >= 0.6 * len(planted["wrong"])
    assert len(flagged - planted["wrong"]) <= len(planted["wrong"])

    classes = read_csv(out / "classes.csv")
    assert [row["class"] for row in classes] == sorted(CLASS_NAMES) and list(classes[0]) == ["class", "all", "test", "train", "val"]
    found_outliers = read_csv(out / "outliers.csv")
    assert list(found_outliers[0]) == ["rank", "path", "split", "label", "knn_distance", "robust_z", "reason"]
    top = found_outliers[0]
    others = sum(row["given"] == top["label"] for row in read_csv(out / "label_issues.csv")) - 1
    assert f"farther from its 5 nearest images than {others} of the other {others} {top['label']} images" in top["reason"]
    assert {row["path"] for row in found_outliers[:3]} == planted["foreign"]  # the most isolated are the wrong files
    assert len(found_outliers) <= 2 * len(planted["foreign"])
    page = (out / "audit.html").read_text(encoding="utf-8")
    assert page.count('class="group leak"') >= len(planted["copies"]) and "Download manifest" in page


def test_train_and_report_warn_when_test_images_are_in_train(planted, tmp_path, capsys):
    capsys.readouterr()
    assert main(["train", str(planted["cache"]), "--head", "logreg", "--runs-dir", str(tmp_path), "--name", "lr"]) == 0
    assert "test images have a near-duplicate in train" in capsys.readouterr().out
    assert main(["report", "lr", "--runs-dir", str(tmp_path)]) == 0
    assert "test images have a near-duplicate in train" in capsys.readouterr().out


def render_with_choices(page: Path, choices: dict[str, str], profile: Path) -> str:
    """The page's own script run in headless Chromium with ``choices`` (path -> class, or '-' to exclude)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed; `make setup` installs it (or `sudo apt-get install chromium`)"
    fragment = "review=" + ";".join(f"{path}|{choice}" for path, choice in choices.items())
    result = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", f"{page.as_uri()}#{fragment}"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return result.stdout


def test_the_review_loop_fixes_labels_without_extracting_again(planted, tmp_path, capsys):
    """audit -> choices on the page -> its manifest saved in the data root -> extract -> train."""
    work = tmp_path / "copy"
    shutil.copytree(planted["data"], work / "digits")
    cache = work / "digits.h5"
    run_extract(ExtractOptions(data=str(work / "digits"), cache=str(cache), weights="none", image_size=32))
    assert main(["audit", str(cache), "--out", str(work / "health")]) == 0
    relabel = sorted(planted["wrong"])[:3]
    exclude = sorted(planted["copies"])[:2]
    choices = {path: path.split("/")[-1] for path in []}
    for path in relabel:
        number = CLASS_NAMES.index(path.split("/")[1])
        choices[path] = CLASS_NAMES[(number - 1) % 10]  # its true class
    choices.update(dict.fromkeys(exclude, "-"))
    dom = render_with_choices(work / "health" / "audit.html", choices, tmp_path / "profile")
    manifest = dom.split('<pre id="manifest">', 1)[1].split("</pre>", 1)[0]
    manifest = manifest.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    (work / "digits" / "review.csv").write_text(manifest, encoding="utf-8")
    rows = list(csv.DictReader(manifest.splitlines()))
    with FeatureCache(cache) as before:
        assert len(rows) == len(before) - len(exclude)

    capsys.readouterr()
    assert main(["extract", str(work / "digits" / "review.csv"), "--cache", str(cache), "--weights", "none", "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "0 extracted" in out and f"{len(exclude)} removed" in out, out
    with FeatureCache(cache) as after:
        label_of = {p: after.class_names[k] for p, k in zip(after.paths, after.labels)}
        assert not set(exclude) & set(label_of)
        for path in relabel:
            assert label_of[path] == choices[path]
        assert set(after.splits) == {"train", "test"}
    assert main(["train", str(cache), "--head", "logreg", "--runs-dir", str(work / "runs")]) == 0


def test_alike_wrong_files_in_several_classes_cannot_vouch_for_one_another():
    """Three classes of 60 codes, and four codes of one foreign kind filed under the classes."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (4, 64))
    codes = np.concatenate([c + rng.normal(0, 0.3, (60, 64)) for c in centres[:3]] + [centres[3] + rng.normal(0, 0.3, (4, 64))])
    labels_of = np.concatenate([np.repeat(np.arange(3), 60), [0, 1, 2, 0]])
    scores = outliers.class_knn_distance(outliers.raw_unit_rows(codes.astype(np.float32)), labels_of)
    z = outliers.class_relative_z(scores, labels_of)
    assert set(np.flatnonzero(z > outliers.Z_THRESHOLD)) == {180, 181, 182, 183}


def test_a_photo_and_its_copies_vouch_once_for_a_foreign_file():
    """A foreign code next to one photo that has 4 copies: counted once, the copies cannot fill its 5 neighbours."""
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 1, (2, 64))
    codes = np.concatenate([c + rng.normal(0, 0.3, (60, 64)) for c in centres])
    photo = centres[0] + rng.normal(0, 0.9, 64)  # an unusual photo of class 0, with 4 copies
    foreign = photo + rng.normal(0, 0.05, 64)
    codes = np.concatenate([codes, np.repeat(photo[None], 5, axis=0), foreign[None]]).astype(np.float32)
    labels_of = np.concatenate([np.repeat([0, 1], 60), np.zeros(6, np.int64)])
    alone = np.arange(len(codes))
    grouped = alone.copy()
    grouped[120:125] = 120
    unit = outliers.raw_unit_rows(codes)
    z_grouped = outliers.class_relative_z(outliers.class_knn_distance(unit, labels_of, groups=grouped), labels_of)
    z_alone = outliers.class_relative_z(outliers.class_knn_distance(unit, labels_of, groups=alone), labels_of)
    assert z_grouped[125] > outliers.Z_THRESHOLD > z_alone[125]


def test_confident_learning_by_the_book():
    """Thresholds are per-class mean self-confidence; an image counts for the passing class with the largest p."""
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8], [0.45, 0.55]])
    given = np.array([0, 0, 1, 1, 0])
    np.testing.assert_allclose(labels.thresholds(probabilities, given), [(0.9 + 0.8 + 0.45) / 3, 0.75])
    assert labels.confident_labels(probabilities, given).tolist() == [0, 0, -1, 1, -1]  # rows 2 and 4 pass no threshold
    assert labels.label_issues(probabilities, given).tolist() == [False, False, False, False, False]
    given[3] = 0  # [0.2, 0.8] labelled 0: p1 = 0.8 passes class 1's threshold
    assert labels.label_issues(probabilities, given)[3]


def test_the_joint_counts_the_errors_and_the_ranking_picks_them():
    """As many flags as the confident joint's off-diagonal, given to the lowest-ranked images."""
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8], [0.45, 0.55], [0.1, 0.9]])
    given = np.array([0, 0, 1, 1, 0, 0])  # row 5 passes class 1's threshold: one off-diagonal entry
    assert labels.label_issues(probabilities, given).sum() == 1
    scores = labels.ranking_scores(probabilities, given, "self_confidence")
    assert labels.lowest_flagged(probabilities, given, scores).tolist() == [False, False, False, False, False, True]
    scores[4] = -1.0  # a ranking that puts row 4 first moves the one flag there
    assert labels.lowest_flagged(probabilities, given, scores).tolist() == [False, False, False, False, True, False]


def test_an_image_confidently_in_no_class_counts_when_its_own_class_rates_it_below_outsiders():
    """Off the diagonal, or p[given] below the mean p its class gets on the other classes' images."""
    probabilities = np.array([[0.9, 0.1, 0.0], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.0, 0.3, 0.7],
                              [0.02, 0.5, 0.48]])
    given = np.array([0, 0, 1, 1, 2, 2, 0])  # row 6: labelled 0, passes no class's threshold
    assert labels.confident_labels(probabilities, given)[6] == -1
    np.testing.assert_allclose(labels.non_member_means(probabilities, given), [0.1, 1.1 / 5, 0.78 / 5])
    assert labels.label_issues(probabilities, given).tolist() == [False] * 6 + [True]  # 0.02 < 0.1
    probabilities[6] = [0.12, 0.5, 0.38]  # above what class 0 gets on outsiders: not counted
    assert not labels.label_issues(probabilities, given).any()
    assert labels.non_member_means(probabilities[:2], given[:2])[0] == -np.inf  # every image in class 0: nothing to compare


def test_the_audit_logreg_is_in_units_of_the_datas_own_scale():
    """All codes scaled by one factor get the same out-of-fold probabilities; a pooling setting is refused."""
    rng = np.random.default_rng(0)
    X = np.abs(np.concatenate([rng.normal(m, 1.0, (30, 16)) for m in (0.0, 2.0, 4.0)])).astype(np.float32)
    y = np.repeat(np.arange(3), 30)
    estimator = head_estimator("logreg", {})
    plain = labels.out_of_fold_probabilities(X, y, estimator, 3, 0)
    scaled = labels.out_of_fold_probabilities(X * np.float32(7.0), y, estimator, 3, 0)
    np.testing.assert_allclose(plain, scaled, atol=0.02)  # to the solver's tolerance
    assert head_estimator("logreg", {"C": 0.5}).get_params()["votingclassifier__logreg__C"] == 0.5
    tiny = np.r_[0:4, 30:34, 60:64]  # 6 training images a fold: fewer than the neighbours a large set gets
    assert labels.out_of_fold_probabilities(X[tiny], y[tiny], head_estimator("logreg", {}, len(tiny)), 2, 0).shape == (12, 3)
    with pytest.raises(PipelineError, match="--set pooling"):
        head_estimator("logreg", {"pooling": "max"})


def test_log_codes_keep_a_few_large_channels_from_deciding():
    """Two classes told apart by 30 ordinary channels, and 2 channels 50x larger that say nothing about the
    class (as a few channels of post-ReLU codes are): the log codes classify far better than raw ones."""
    from sklearn.pipeline import Pipeline

    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 60)
    ordinary = np.abs(rng.normal(1.0 + 0.4 * y[:, None], 0.5, (120, 30)))
    loud = 50.0 * rng.lognormal(0.0, 0.3, (120, 2))
    X = np.concatenate([loud, ordinary], axis=1).astype(np.float32)
    estimator = labels.unit_row_estimator()
    raw = Pipeline(estimator.steps[1:])  # the same views without the log
    accuracy = {
        name: float(np.mean(labels.out_of_fold_probabilities(X, y, model, 5, 0).argmax(axis=1) == y))
        for name, model in (("log", estimator), ("raw", raw))
    }
    assert accuracy["log"] > 0.8 and accuracy["log"] > accuracy["raw"] + 0.15, accuracy


def test_the_neighbour_weights_are_inverse_cosine_distances():
    """Euclidean distances d between unit rows become 1 / (1 - cosine); an exact match outweighs everything."""
    a, b = np.array([1.0, 0.0]), np.array([0.6, 0.8])  # cosine 0.6
    distance = np.linalg.norm(a - b)
    np.testing.assert_allclose(labels.inverse_cosine_distance(np.array([[distance, 2.0]])), [[1 / 0.4, 1 / 2.0]])
    assert labels.inverse_cosine_distance(np.array([[0.0, 0.5], [0.5, 1.0]])).tolist() == [[1.0, 0.0], [8.0, 2.0]]


def test_one_line_for_every_class_too_small_to_measure():
    names = [f"c{k}" for k in range(10)]
    labels_of = np.repeat(np.arange(10), 24)
    splits = (["train"] * 16 + ["val"] * 4 + ["test"] * 4) * 10
    lines = balance.warnings(balance.counts(labels_of, splits, names))
    assert len(lines) == 2 and lines[1].startswith("10 of 10 classes have fewer than 5 test images")
    assert all(f"c{k} 4" in lines[1] for k in range(10))


def test_duplicate_groups_and_the_split_flag():
    unit = np.eye(6, dtype=np.float32)
    unit[1] = unit[0]
    unit[2] = unit[0]
    unit[4] = unit[3]
    pairs = duplicates.similar_pairs(unit, 0.9)
    assert duplicates.groups(pairs, 6) == [[0, 1, 2], [3, 4]]
    assert duplicates.spans_splits([0, 1], ["train", "test"]) and not duplicates.spans_splits([3, 4], ["", "", "", "a", "a", ""])


def test_audit_refuses_bad_settings(planted, capsys):
    cache = planted["cache"]
    assert main(["audit", str(cache), "--folds", "50"]) == 2
    err = capsys.readouterr().err
    assert "fewer than --folds 50" in err and "pass --folds" in err
    assert main(["audit", str(cache), "--head", "forest"]) == 2
    assert "unknown head 'forest'" in capsys.readouterr().err
    assert main(["audit", str(cache), "--set", "depth=3"]) == 2
    assert "no setting 'depth'" in capsys.readouterr().err
    assert main(["audit", str(cache), "--threshold", "1.5"]) == 2
    assert "--threshold 1.5" in capsys.readouterr().err
    assert main(["audit", str(cache.with_name("missing.h5"))]) == 2
    assert "no such cache" in capsys.readouterr().err
    result = run_audit(cache, folds=4, ranking="margin")
    assert np.all(np.diff(result.margin[result.order]) >= 0)


def test_large_classes_fold_in_bundles_that_keep_copies_whole():
    """Images without copies are bundled within their class (few groups for the grouped splitter to place);
    copies keep their group, and small classes keep every image on its own."""
    from sklearn.model_selection import StratifiedGroupKFold

    rng = np.random.default_rng(0)
    y = np.concatenate([rng.integers(0, 4, 4000), np.full(30, 4)])
    groups = np.arange(len(y))
    groups[1:4] = 0  # a photo with three copies
    bundled = labels.bundled_groups(y, groups, 5, seed=0)
    assert len(set(bundled[:4])) == 1 and len(np.unique(bundled)) < 500
    assert len(np.unique(bundled[y == 4])) == 30  # 30 images: fewer than 5 folds x 20 bundles
    assert all(len(np.unique(y[bundled == b])) == 1 for b in np.unique(bundled[4:]))  # a bundle holds one class
    for _, held_out in StratifiedGroupKFold(5, shuffle=True, random_state=0).split(y, y, bundled):
        share = np.bincount(y[held_out], minlength=5) / np.bincount(y, minlength=5)
        np.testing.assert_allclose(share, 0.2, atol=0.03)
