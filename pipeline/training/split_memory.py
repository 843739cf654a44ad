"""Where split decisions are remembered, so that every cache of the same images splits them alike.

The memory lives with the images: ``DATA_ROOT/.pipeline-splits.json`` (a dot file, which
``extract`` never reads as an image), keyed by content hash, one assignment per set of
``--split`` fractions. Every cache made from that data root (any image size, layer,
backbone, view, or a later extract with more images) reads and extends the same decisions.

Memories written before it sit beside each cache (``CACHE.splits.json``, keyed by content or,
version 1, by path). They keep working: their decisions are adopted where the shared memory
has none. Where the two disagree the shared one wins and a note says how many images moved;
the old file is then brought in line, so the note is given once. Where the data root cannot
be written (a read-only folder), decisions go beside the cache as before.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

from features_cache import atomic

SPLITS = ("train", "val", "test")
MEMORY_VERSION = 2  # 1: one assignment, keyed by path
SHARED_NAME = ".pipeline-splits.json"


def memory_path(cache_path: str | os.PathLike) -> Path:
    """The older place of a cache's split decisions: ``CACHE.splits.json`` beside it."""
    cache_path = Path(cache_path)
    return cache_path.with_name(cache_path.name + ".splits.json")


def shared_memory_path(data_root: str | os.PathLike) -> Path | None:
    """The split memory every cache of the images under ``data_root`` shares; None without a data root folder."""
    root = Path(data_root)
    return root / SHARED_NAME if str(data_root) and root.is_dir() else None


def same_fractions(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(round(float(x), 9) == round(float(y), 9) for x, y in zip(a, b))


def assignments(path: Path, key_of_path: dict[str, str] | None = None) -> list[dict]:
    """Every remembered assignment ``{"fractions": [...], "splits": {content key: split}}``.

    A version-1 file (one assignment keyed by path) is read through ``key_of_path``; paths the
    cache no longer holds are dropped. A missing or damaged file has none.
    """
    try:
        payload = json.loads(path.read_text(encoding="utf-8", errors="surrogateescape"))
    except (OSError, ValueError):
        return []
    if not isinstance(payload, dict):
        return []
    if payload.get("version") == 1 and isinstance(payload.get("splits"), dict):
        mapping = key_of_path or {}
        by_key = {mapping[p]: s for p, s in payload["splits"].items() if p in mapping}
        payload = {"assignments": [{"fractions": payload.get("fractions", []), "splits": by_key}]}
    elif payload.get("version") != MEMORY_VERSION:
        return []
    found = []
    for item in payload.get("assignments") or []:
        if isinstance(item, dict) and isinstance(item.get("splits"), dict) and isinstance(item.get("fractions"), list):
            splits = {str(k): str(s) for k, s in item["splits"].items() if s in SPLITS}
            found.append({"fractions": item["fractions"], "splits": splits})
    return found


def read_memory(path: Path, fractions: Sequence[float], key_of_path: dict[str, str] | None = None) -> dict[str, str]:
    """Decisions remembered for these ``fractions``, by content key; none when the file is missing or damaged."""
    for item in assignments(path, key_of_path):
        if same_fractions(item["fractions"], fractions):
            return item["splits"]
    return {}


def write_memory(
    path: Path, fractions: Sequence[float], decisions: dict[str, str], key_of_path: dict[str, str] | None = None
) -> str | None:
    """Remember ``decisions`` for ``fractions`` atomically, keeping the assignments of other fractions;
    returns a warning instead of failing where the folder is read-only."""
    others = [item for item in assignments(path, key_of_path) if not same_fractions(item["fractions"], fractions)]
    mine = {"fractions": [float(f) for f in fractions], "splits": dict(sorted(decisions.items()))}
    payload = {"version": MEMORY_VERSION, "assignments": [*others, mine]}
    text = json.dumps(payload, ensure_ascii=False, indent=0)
    try:
        if path.exists() and path.read_text(encoding="utf-8", errors="surrogateescape") == text:
            return None
        atomic.write_text(path, text, errors="surrogateescape")
    except OSError as error:
        return f"could not remember the splits in {path} ({error.strerror or error}); adding images later may move some"
    return None


@dataclasses.dataclass
class SplitMemory:
    """The shared memory of a cache's data root, with the older one beside the cache read too."""

    shared: Path | None
    legacy: Path
    key_of_path: dict[str, str]

    @classmethod
    def of(
        cls, cache_path: str | os.PathLike, data_root: str | os.PathLike, key_of_path: dict[str, str]
    ) -> SplitMemory:
        return cls(shared_memory_path(data_root), memory_path(cache_path), key_of_path)

    def read(self, fractions: Sequence[float]) -> tuple[dict[str, str], list[str]]:
        """The decisions for ``fractions`` (shared first, older ones where it has none), and a note
        where the older memory disagrees."""
        shared = read_memory(self.shared, fractions, self.key_of_path) if self.shared else {}
        older = read_memory(self.legacy, fractions, self.key_of_path)
        moved = sum(1 for key, split in older.items() if key in shared and shared[key] != split)
        notes = []
        if moved:
            notes.append(
                f"{moved} images have other splits in {self.legacy} than in {self.shared}, which every cache of these "
                "images shares: the shared splits are used, so runs trained on this cache before were scored on other "
                "val/test images than runs from now on"
            )
        return {**older, **shared}, notes

    def other_fractions(self, fractions: Sequence[float]) -> list[list[float]]:
        """The other ``--split`` fractions remembered for these images."""
        found: list[list[float]] = []
        for path in (self.shared, self.legacy):
            for item in assignments(path, self.key_of_path) if path else []:
                if not same_fractions(item["fractions"], fractions) and not any(
                    same_fractions(item["fractions"], seen) for seen in found
                ):
                    found.append(item["fractions"])
        return found

    def write(self, fractions: Sequence[float], decisions: dict[str, str]) -> str:
        """Remember ``decisions`` in the shared memory (beside the cache where the data root is read-only);
        an older memory beside the cache is brought in line. Returns the note to show."""
        if self.shared is not None and write_memory(self.shared, fractions, decisions, self.key_of_path) is None:
            if self.legacy.exists():
                write_memory(self.legacy, fractions, decisions, self.key_of_path)
            return f"decided splits remembered in {self.shared}"
        warning = write_memory(self.legacy, fractions, decisions, self.key_of_path)
        return warning or f"decided splits remembered in {self.legacy} (the data root cannot be written)"
