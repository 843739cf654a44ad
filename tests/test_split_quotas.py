"""Split quotas count images, not groups: property checks of ``plan_splits`` over random class sizes,
near-duplicate group sizes, fractions and seeds (a seeded loop of random cases)."""

from __future__ import annotations

import numpy as np

from pipeline.training.splits import SPLITS, fill_quotas, plan_splits

FRACTIONS = [(0.7, 0.15, 0.15), (0.5, 0.25, 0.25), (0.8, 0.2, 0.0), (0.6, 0.2, 0.2)]
GROUP_SIZES = [1] * 8 + [2, 3, 4, 6, 12]  # mostly single images, some near-duplicate groups


def random_case(seed: int) -> tuple[list[str], np.ndarray, list[list[str]], tuple[float, float, float]]:
    """Keys, labels, twin groups and fractions: 1 to 3 classes of 1 to 40 images in random groups."""
    rng = np.random.default_rng(seed)
    keys, labels, twins = [], [], []
    for label in range(int(rng.integers(1, 4))):
        size, made = int(rng.integers(1, 41)), 0
        while made < size:
            group = [f"s{seed}-c{label}-k{made + i}" for i in range(min(size - made, int(rng.choice(GROUP_SIZES))))]
            keys += group
            labels += [label] * len(group)
            made += len(group)
            if len(group) > 1:
                twins.append(group)
    return keys, np.array(labels), twins, FRACTIONS[seed % len(FRACTIONS)]


def test_every_class_gets_its_shares_in_images_whatever_its_groups():
    for seed in range(400):
        keys, labels, twins, fractions = random_case(seed)
        plan, _ = plan_splits(keys, labels, [""] * len(keys), fractions, twins=twins)
        split_of = dict(zip(keys, plan.splits.tolist()))
        assert all(len({split_of[k] for k in group}) == 1 for group in twins), seed  # a group stays together
        for label in np.unique(labels):
            mine = labels == label
            size = int(mine.sum())
            groups = [len(group) for group in twins if labels[keys.index(group[0])] == label]
            units = size - sum(groups) + len(groups)  # groups, a single image being a group of one
            largest = max(groups, default=1)
            for split, share in zip(SPLITS, fractions):
                count = int(np.sum(plan.splits[mine] == split))
                # within one image of its share with no groups, within the largest group with them
                assert abs(count - share * size) <= largest, (seed, label, split, count, share * size, groups)
                if split != "train" and share > 0 and size >= 4 and units >= 3:
                    assert count >= 1, (seed, label, split, size, groups)


def test_one_group_of_six_among_twelve_leaves_two_val_and_two_test_images():
    for seed in range(20):
        keys = [f"{seed}-{i}" for i in range(12)]
        plan, _ = plan_splits(keys, np.zeros(12, dtype=int), [""] * 12, twins=[keys[:6]])
        counts = {split: int(np.sum(plan.splits == split)) for split in SPLITS}
        assert counts == {"train": 8, "val": 2, "test": 2}, (seed, counts)
        assert len(set(plan.splits[:6].tolist())) == 1


def test_a_group_counts_as_its_images_and_decided_images_count_too():
    placed = fill_quotas(["big", "a", "b"], ["train"] * 5, (0.7, 0.15, 0.15), sizes={"big": 4})
    assert placed["big"] == "train" and {placed["a"], placed["b"]} == {"val", "test"}


def test_without_groups_the_promise_of_the_readme_holds():
    """Every split within one image of its share, and a class of 4 or more has val and test images."""
    for size in range(1, 60):
        keys = [f"n{size}-{i}" for i in range(size)]
        plan, _ = plan_splits(keys, np.zeros(size, dtype=int), [""] * size)
        counts = {split: int(np.sum(plan.splits == split)) for split in SPLITS}
        shares = dict(zip(SPLITS, (0.7, 0.15, 0.15)))
        assert all(abs(counts[s] - shares[s] * size) <= 1.0 + 1e-9 for s in SPLITS), (size, counts)
        assert size < 4 or (counts["val"] >= 1 and counts["test"] >= 1), (size, counts)
