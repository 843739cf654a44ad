"""Train/val/test splits that are stratified per class and never move an image once decided.

A split stored in the cache (``train/``, ``val/``, ``test/`` folders or a CSV column) always
wins. The rest is decided here, class by class:

- images without a stored split get train/val/test in the ``--split`` shares;
- when the stored splits have no val (``train/`` + ``validation/`` has one, ``train/`` +
  ``test/`` or ``train/`` alone has not), val is carved out of the stored train images in
  the share val / (train + val);
- when nothing ends up in test, there is no test split: metrics and the report use val.

An image is its content: splits are decided and remembered per content hash, so byte-identical
copies always share a split (a copy of a stored image goes where the stored one is), and a
renamed or moved file keeps its split. Within a class, undecided contents are taken in the
order of a hash of their content hash and each goes to the split furthest below its share of
the class, with a share of at least one image for val and test from a class's third image
on: a class of 4 or more images always has a val and (where test is drawn) a test image, and
every split is within about one image of its share. A group of near-duplicates is placed as
one and counts as the images it holds, largest groups first (see :func:`fill_quotas`): a
split then misses its share of a class by at most the class's largest group, and a class of
4 or more images in at least 3 groups (a single image is a group of one) still gets a val
and a test image.

Decisions are remembered with the images (:mod:`pipeline.training.split_memory`: one file in
the data root that every cache of those images shares), one assignment per set of ``--split``
fractions, so adding images only places the new ones: old images never move, and a run with
other fractions neither moves them nor forgets the first assignment. Only ``train`` (and
``save_run``) write the file; ``audit`` and ``load_split`` read it. No stateless rule can do
both, since a split that depends on the image alone cannot guarantee a 12-image class any val
image. Without the file (deleted, or no folder that can be written) the same rule replays from
scratch, which is the same result as long as no image was added in between: nothing in it
depends on a cache's features, since near-duplicate twins are found in pixels.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from features_cache.reader import FeatureCache
from pipeline.errors import PipelineError
from pipeline.health.leakage import MAX_IMAGES
from pipeline.health.pixels import Thumbnails
from pipeline.training.split_memory import SplitMemory

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
# From a class's third image on, each held-out split with a share is owed at least one image.
MIN_CLASS_FOR_HELD_OUT = 3
# From a class's fourth image on, a held-out split with a share that groups left empty gets a group moved into it.
MIN_CLASS_WITH_HELD_OUT = 4


def path_unit(path: str, salt: str = "") -> float:
    """A uniform number in [0, 1) decided only by ``salt`` and the relative POSIX ``path``."""
    digest = hashlib.blake2b(f"{salt}\0{path}".encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``--split 0.7,0.15,0.15`` as checked train, val and test shares."""
    try:
        fractions = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise PipelineError(f"--split {text}: not three numbers; use e.g. --split 0.7,0.15,0.15") from None
    return check_fractions(fractions)


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if (
        len(fractions) != 3
        or not all(np.isfinite(f) and f >= 0 for f in fractions)
        or abs(sum(fractions) - 1) > 1e-6
        or fractions[0] <= 0
    ):
        raise PipelineError(
            f"split fractions {','.join(map(str, fractions))} are not train,val,test shares summing to 1; "
            "use e.g. --split 0.7,0.15,0.15"
        )
    return (float(fractions[0]), float(fractions[1]), float(fractions[2]))


@dataclasses.dataclass
class SplitPlan:
    """Every row's split, and the sentences that say how they were decided."""

    splits: np.ndarray
    notes: list[str]

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    @property
    def held_out(self) -> tuple[str, ...]:
        """The splits metrics are reported on: val, and test when there is one."""
        return tuple(split for split in ("val", "test") if len(self.rows(split)))


def fill_quotas(
    undecided: Sequence[str],
    decided: Sequence[str],
    fractions: tuple[float, float, float],
    sizes: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """Place the ``undecided`` keys of one class given the splits of the images already ``decided``.

    A key stands for ``sizes[key]`` images (a near-duplicate group placed as one; 1 when not
    given) and counts as that many. Groups go first, largest first, each to the split furthest
    below its share of the whole class; then single images in key-hash order, each to the split
    furthest below its share of the images placed so far, itself included (at least one image
    for val and test from a class's third image on). Without groups this is the rule splits
    were always made by, so the same images keep their splits.
    """
    sizes = sizes or {}
    counts = dict.fromkeys(SPLITS, 0)
    for split in decided:
        counts[split] += 1
    share = dict(zip(SPLITS, fractions))
    candidates = [split for split in SPLITS if share[split] > 0]
    placed, target = {}, {}
    whole = len(decided) + sum(sizes.get(key, 1) for key in undecided)
    for key in sorted(undecided, key=lambda k: (-sizes.get(k, 1), path_unit(k), k)):
        total = whole if sizes.get(key, 1) > 1 else sum(counts.values()) + 1
        target = {split: share[split] * total for split in SPLITS}
        if total >= MIN_CLASS_FOR_HELD_OUT:
            for split in ("val", "test"):
                if share[split] > 0:
                    target[split] = max(target[split], 1.0)
        best = max(candidates, key=lambda split: (target[split] - counts[split], share[split], -SPLITS.index(split)))
        counts[best] += sizes.get(key, 1)
        placed[key] = best
    if sum(counts.values()) >= MIN_CLASS_WITH_HELD_OUT:
        _owe_held_out(placed, counts, target, sizes, [split for split in ("val", "test") if share[split] > 0])
    return placed


def _owe_held_out(
    placed: dict[str, str], counts: dict[str, int], target: dict[str, float], sizes: Mapping[str, int], owed: list[str]
) -> None:
    """Where groups left a held-out split in ``owed`` empty, move into it the smallest placed group
    whose split keeps an image (from the split furthest over its target first)."""
    for split in owed:
        if counts[split]:
            continue
        movable = [k for k, s in placed.items() if s != split and counts[s] > sizes.get(k, 1)]
        if not movable:
            continue
        key = min(movable, key=lambda k: (sizes.get(k, 1), target[placed[k]] - counts[placed[k]], path_unit(k), k))
        counts[placed[key]] -= sizes.get(key, 1)
        counts[split] += sizes.get(key, 1)
        placed[key] = split


def plan_splits(
    paths: Sequence[str],
    labels: np.ndarray,
    stored_splits: Sequence[str],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    remembered: dict[str, str] | None = None,
    keys: Sequence[str] | None = None,
    twins: Sequence[Sequence[str]] = (),
    require_train: bool = True,
) -> tuple[SplitPlan, dict[str, str]]:
    """Each row's split, and the decisions to remember (every split not stored in the cache).

    ``keys`` identify each row's content (the cache's content hashes; the paths when not
    given): rows with one key are one image and get one split, and ``remembered`` and the
    decisions are keyed by them. ``twins`` are groups of keys of near-duplicate images: an
    undecided twin goes where a decided one of its group is, and undecided groups are placed
    as one.
    """
    train, val, test = check_fractions(fractions)
    keys = list(paths) if keys is None else [str(k) for k in keys]
    if not (len(paths) == len(labels) == len(stored_splits) == len(keys)):
        raise ValueError("paths, labels, stored_splits and keys must have the same length")
    remembered = remembered or {}
    stored = np.array([str(s) for s in stored_splits], dtype=object)
    splits = stored.copy()
    present = {s for s in stored.tolist() if s}
    notes = []
    groups: list[tuple[bool, np.ndarray, tuple[float, float, float]]] = []  # (carving val, rows, shares)
    unsplit = np.flatnonzero(stored == "")
    if len(unsplit):
        groups.append((False, unsplit, (train, val, test)))
        notes.append(
            f"{len(unsplit)} images without a stored split: train/val/test {train:g}/{val:g}/{test:g} per class"
        )
    if present:
        notes.insert(
            0, "stored splits: " + ", ".join(f"{s} {int(np.sum(stored == s))}" for s in SPLITS if s in present)
        )
    if require_train and present and "train" not in present and not len(unsplit):
        raise PipelineError(
            "the cache's stored splits hold no train images; add a train/ folder or train rows to the CSV"
        )
    if present and "val" not in present:
        carve = np.flatnonzero(stored == "train")
        share = val / (train + val) if val > 0 else DEFAULT_FRACTIONS[1] / sum(DEFAULT_FRACTIONS[:2])
        groups.append((True, carve, (1 - share, share, 0.0)))
        notes.append(f"no stored val split: val carved out of stored train, {share:.0%} of each class")
    fixed, straddling = _stored_by_key(keys, stored)
    if straddling:
        notes.append(
            f"warning: {straddling} images have byte-identical copies in another stored split; scores on those copies "
            "are not on unseen images: keep each image in one split folder (or CSV split)"
        )
    twin_of = {key: min(group) for group in twins for key in group}  # each twin's group leader
    decisions: dict[str, str] = {}
    # Val is carved out of stored train first, so that unsplit copies of a carved image follow it.
    for carving, rows, shares in sorted(groups, key=lambda group: not group[0]):
        allowed = {split for split, s in zip(SPLITS, shares) if s > 0}
        for label in np.unique(labels[rows]):
            images = Counter(keys[r] for r in rows[labels[rows] == label])  # rows per content key
            members = list(images)
            known = {**remembered, **decisions} if carving else {**remembered, **fixed, **decisions}
            known.update(_twin_splits(members, twin_of, known))
            kept = {k: known[k] for k in members if known.get(k) in allowed}
            sizes = Counter()  # each undecided group's leader stands for all its images in this class
            for k in members:
                if k not in kept:
                    sizes[twin_of.get(k, k)] += images[k]
            decided = [split for k, split in kept.items() for _ in range(images[k])]
            placed = fill_quotas(list(sizes), decided, shares, sizes)
            decisions.update({**kept, **{k: placed[twin_of.get(k, k)] for k in members if k not in kept}})
    for row, key in enumerate(keys):
        if not stored[row] or (stored[row] == "train" and "val" not in present):
            splits[row] = decisions.get(key, splits[row])
    if not np.any(splits == "test"):
        notes.append("no test split: metrics and the report use val")
    return SplitPlan(splits, notes), decisions


def _twin_splits(members: Sequence[str], twin_of: dict[str, str], known: dict[str, str]) -> dict[str, str]:
    """Undecided ``members`` whose near-duplicate twin is decided: the twin's split (the first decided one)."""
    decided_group: dict[str, str] = {}
    for key, split in known.items():
        if key in twin_of:
            decided_group.setdefault(twin_of[key], split)
    return {k: decided_group[twin_of[k]] for k in members if k not in known and twin_of.get(k) in decided_group}


def _stored_by_key(keys: Sequence[str], stored: np.ndarray) -> tuple[dict[str, str], int]:
    """The split each stored content must keep (its copies follow it), and how many stored rows
    share their content with a row stored in another split (these cannot be moved: stored splits win)."""
    seen: dict[str, set[str]] = {}
    for key, split in zip(keys, stored.tolist()):
        if split:
            seen.setdefault(key, set()).add(split)
    fixed = {key: ("train" if "train" in found else sorted(found)[0]) for key, found in seen.items()}
    straddling = sum(1 for key, split in zip(keys, stored.tolist()) if split and len(seen[key]) > 1)
    return fixed, straddling


def near_duplicate_twins(thumbnails: Thumbnails, keys: Sequence[str]) -> list[list[str]]:
    """Content keys of near-duplicate groups found in pixels alone (re-encoded, resized, cropped copies),
    so that every cache of the same images finds the same twins; a group of one content is left out."""
    from pipeline.health import duplicates

    if len(keys) > MAX_IMAGES or len(keys) < 2:
        return []
    pairs = duplicates.near_duplicates(None, list(keys), thumbnails)
    groups = duplicates.groups(pairs, len(keys))
    return [sorted({keys[i] for i in group}) for group in groups if len({keys[i] for i in group}) > 1]


def plan_cache_splits(
    cache: FeatureCache,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    check_leakage: bool = False,
    remember: bool = True,
    for_training: bool | None = None,
) -> SplitPlan:
    """Every row's split (see this module's rules), checked for training; ``remember`` writes new
    decisions beside the cache (``train`` does; ``audit`` and ``load_split`` only read).

    Training needs images of every class and a val split; a missing test split is allowed.
    ``check_leakage`` adds a warning note per held-out split with near-duplicates in train
    (it reads every feature once more). ``for_training`` (default: ``remember``, as ``train`` does)
    makes a split with no train or val images an error; readers (``audit``, ``load_split``) get the
    splits as they are, e.g. a cache whose images are all in a stored test split.
    """
    for_training = remember if for_training is None else for_training
    if len(cache.class_names) < 2:
        raise PipelineError(
            f"{cache.path}: only {len(cache.class_names)} class ({', '.join(cache.class_names)}); "
            "a classifier needs at least 2 class folders; add another class and run extract again"
        )
    keys = [record.content_hash for record in cache.records()]
    memory = SplitMemory.of(cache.path, cache.data_root, dict(zip(cache.paths, keys)))
    remembered, memory_notes = memory.read(fractions)
    undecided = any(key not in remembered for key, split in zip(keys, cache.splits) if not split)
    thumbnails = Thumbnails(cache.data_root, cache.paths)
    twins = near_duplicate_twins(thumbnails, keys) if undecided else []  # only new images are placed by their twins
    plan, decisions = plan_splits(
        cache.paths,
        cache.labels,
        cache.splits,
        fractions,
        remembered,
        keys=keys,
        twins=twins,
        require_train=for_training,
    )
    plan.notes.extend(memory_notes)
    others = memory.other_fractions(fractions)
    if not remembered and others and decisions:
        shown = "; ".join(",".join(f"{f:g}" for f in item) for item in others)
        plan.notes.append(
            f"--split {','.join(f'{f:g}' for f in fractions)} splits the images anew (metrics are not comparable with "
            f"runs on {shown}, whose splits stay remembered for them)"
        )
    if decisions and remember:
        plan.notes.append(memory.write(fractions, {**remembered, **decisions}))
    if check_leakage:
        from pipeline.health.leakage import leakage_notes

        plan.notes.extend(leakage_notes(cache, plan.splits, thumbnails=thumbnails))
    if not for_training:
        return plan
    for split in ("train", "val"):
        if len(plan.rows(split)) == 0:
            raise PipelineError(
                f"{cache.path}: the {split} split has no images ({len(cache)} in total, "
                f"{'; '.join(plan.notes)}); add images to the classes"
            )
    missing = sorted(set(range(len(cache.class_names))) - set(cache.labels[plan.rows("train")].tolist()))
    if missing:
        names = ", ".join(cache.class_names[m] for m in missing)
        raise PipelineError(f"{cache.path}: class {names} has no training images; add images to it or remove the class")
    return plan
