"""Finding the labelled images: a folder of class folders (optionally split) or a CSV manifest."""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

from pipeline.errors import PipelineError

SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
IMAGE_EXTENSIONS = {
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp",
}
# Files that sit beside photos but are never images; anything else in a class folder is tried.
NOT_IMAGE_EXTENSIONS = {".txt", ".md", ".csv", ".json", ".xml", ".yaml", ".yml", ".ini", ".db", ".log", ".py"}


@dataclasses.dataclass(frozen=True)
class ImageEntry:
    """One labelled image: its path relative to the data root (POSIX, UTF-8), class and split."""

    path: str
    label: str
    split: str


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What a data source holds: the root that paths are relative to, and its images."""

    root: Path
    kind: str
    entries: list[ImageEntry]

    @property
    def class_names(self) -> list[str]:
        return sorted({entry.label for entry in self.entries})

    def absolute(self, entry: ImageEntry) -> str:
        return os.path.join(self.root, entry.path)


def discover(source: str | os.PathLike) -> Dataset:
    """Read a folder of class folders or a ``path,label[,split]`` CSV; refuse unusable data."""
    source = Path(source)
    if not source.exists():
        raise PipelineError(f"{source}: no such folder or CSV file; pass the folder that holds one folder per class")
    dataset = _from_csv(source) if source.is_file() else _from_folder(source)
    if not dataset.entries:
        raise PipelineError(f"{source}: no images found; it should hold one folder per class with images inside")
    if len(dataset.class_names) < 2:
        raise PipelineError(
            f"{source}: only one class ({dataset.class_names[0]}) found; a classifier needs at least two class folders"
        )
    return dataset


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


def candidate_files(folder: Path) -> list[str]:
    """Every file under ``folder`` that might be an image, relative to it, in sorted order."""
    found = []
    for directory, subdirs, files in os.walk(folder, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if not _is_hidden(d))
        relative = os.path.relpath(directory, folder)
        for name in sorted(files):
            if _is_hidden(name) or Path(name).suffix.lower() in NOT_IMAGE_EXTENSIONS:
                continue
            found.append(name if relative == "." else os.path.join(relative, name))
    return [path.replace(os.sep, "/") for path in found]


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p.name))


def _from_folder(root: Path) -> Dataset:
    split_dirs = {p: SPLIT_FOLDERS[p.name.lower()] for p in _class_folders(root) if p.name.lower() in SPLIT_FOLDERS}
    groups = split_dirs.items() if split_dirs else [(root, "")]
    entries = []
    for group_dir, split in groups:
        class_dirs = _class_folders(group_dir)
        if not class_dirs:
            raise PipelineError(f"{group_dir}: no class folders; put each class's images in a folder named after the class")
        for class_dir in class_dirs:
            files = candidate_files(class_dir)
            if not files:
                raise PipelineError(f"{class_dir}: class folder is empty; add images to it or remove it")
            prefix = os.path.relpath(class_dir, root).replace(os.sep, "/")
            entries.extend(ImageEntry(f"{prefix}/{name}", class_dir.name, split) for name in files)
    entries.sort(key=lambda entry: entry.path)
    return Dataset(root=root.resolve(), kind="folder", entries=entries)


def _from_csv(manifest: Path) -> Dataset:
    root = manifest.resolve().parent
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as error:
        raise PipelineError(f"{manifest}: cannot read the CSV manifest ({error}); save it as UTF-8 text") from None
    if rows and [cell.strip().lower() for cell in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
        first_line = 2
    else:
        first_line = 1
    entries = []
    seen = set()
    for line, row in enumerate(rows, start=first_line):
        if not row or not "".join(row).strip():
            continue
        if len(row) not in (2, 3) or not row[0].strip() or not row[1].strip():
            raise PipelineError(f"{manifest}:{line}: expected `path,label[,split]`, got {row!r}; fix or remove the row")
        split = row[2].strip().lower() if len(row) == 3 else ""
        if split and split not in SPLIT_FOLDERS:
            raise PipelineError(f"{manifest}:{line}: unknown split {row[2]!r}; use train, val or test, or leave it empty")
        path = os.path.normpath(row[0].strip()).replace(os.sep, "/")
        if path in seen:
            raise PipelineError(f"{manifest}:{line}: {path} is listed twice; keep one row per image")
        seen.add(path)
        entries.append(ImageEntry(path, row[1].strip(), SPLIT_FOLDERS.get(split, "")))
    entries.sort(key=lambda entry: entry.path)
    return Dataset(root=root, kind="csv", entries=entries)
