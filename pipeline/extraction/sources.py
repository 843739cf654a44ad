"""Finding the labelled images: a folder of class folders (optionally split) or a CSV manifest.

Walking a folder follows symbolic links to files and to folders, but never into a folder
that is already part of the walk (``cat/self -> .`` or ``dog/up -> ..`` would repeat or
relabel every image) and never to the same file twice (links and hard links are
deduplicated by the file they reach, the first path in sorted order wins). What was left
out, and why, is reported with the other skipped files. File and folder names that are
not valid UTF-8 cannot be stored in the cache's UTF-8 path list: they are skipped and
reported (with their bytes escaped) so the file can be renamed. Only dot-files and
dot-folders are hidden; every other name is read or reported.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
from pathlib import Path

from pipeline.errors import PipelineError

SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
IMAGE_EXTENSIONS = {
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp",
}
# Files that sit beside photos but are never images; anything else in a class folder is tried.
NOT_IMAGE_EXTENSIONS = {".txt", ".md", ".csv", ".json", ".xml", ".yaml", ".yml", ".ini", ".db", ".log", ".py"}
# The first bytes of image formats: a DATA argument that starts with one is an image, not a manifest.
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


@dataclasses.dataclass(frozen=True)
class ImageEntry:
    """One labelled image: its path relative to the data root (POSIX, UTF-8), class and split."""

    path: str
    label: str
    split: str


@dataclasses.dataclass(frozen=True)
class LeftOut:
    """A path the walk did not take as an image, and why (a loop, a duplicate, an unstorable name)."""

    path: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What a data source holds: the root that paths are relative to, its images, and how it was read."""

    root: Path
    kind: str
    entries: list[ImageEntry]
    left_out: list[LeftOut] = dataclasses.field(default_factory=list)
    reading: str = ""

    @property
    def class_names(self) -> list[str]:
        return sorted({entry.label for entry in self.entries})

    def absolute(self, entry: ImageEntry) -> str:
        return os.path.join(self.root, entry.path)


def printable(name: str) -> str:
    """A name as UTF-8 text: bytes that are not valid UTF-8 shown as ``\\xNN`` escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def is_utf8(name: str) -> bool:
    """Whether ``name`` can be stored as UTF-8 text; raises when only the locale stands in the way.

    Under an ASCII locale with UTF-8 mode off (``LC_ALL=C PYTHONUTF8=0``) Python cannot decode a
    valid UTF-8 name such as ``café``: calling it invalid would leave the folder out for no fault
    of its own.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        try:
            os.fsencode(name).decode("utf-8")
        except UnicodeDecodeError:
            return False
        raise PipelineError(
            f"{printable(name)}: Python reads file names as {sys.getfilesystemencoding()} in this locale, so it "
            "cannot read this UTF-8 name; run with PYTHONUTF8=1 or a UTF-8 locale (e.g. LC_ALL=C.UTF-8)"
        ) from None
    return True


class Walk:
    """One walk over a data set: the folders and files already taken, and what was left out.

    Shared by every class folder of a data set, so a link from one class into another class,
    or into the data root, is seen as a repeat rather than as more images.
    """

    def __init__(self) -> None:
        self.folders: set[tuple[int, int]] = set()
        self.files: dict[tuple[int, int], str] = {}
        self.left_out: list[LeftOut] = []

    def claim_folder(self, folder: str | os.PathLike) -> bool:
        """Take ``folder`` (links followed) into the walk; False when it already is part of it."""
        try:
            info = os.stat(folder)
        except OSError:
            return False
        key = (info.st_dev, info.st_ino)
        if key in self.folders:
            return False
        self.folders.add(key)
        return True

    def files_under(self, folder: Path, shown_as: str) -> list[str]:
        """Every file under ``folder`` that might be an image, relative to it, sorted; ``shown_as`` prefixes reports."""
        found = []
        for directory, subdirs, files in os.walk(folder, followlinks=True):
            relative = os.path.relpath(directory, folder)
            kept_dirs = []
            for name in sorted(d for d in subdirs if not _is_hidden(d)):
                path = os.path.join(directory, name)
                shown = _join(shown_as, relative, name)
                if not is_utf8(name):
                    self.left_out.append(LeftOut(printable(shown), "folder name is not valid UTF-8; rename it"))
                elif not self.claim_folder(path):
                    if os.path.islink(path):
                        self.left_out.append(LeftOut(shown, f"link to a folder already in the data ({os.readlink(path)}); not followed"))
                else:
                    kept_dirs.append(name)
            subdirs[:] = kept_dirs
            for name in sorted(files):
                if _is_hidden(name) or Path(name).suffix.lower() in NOT_IMAGE_EXTENSIONS:
                    continue
                shown = _join(shown_as, relative, name)
                if not is_utf8(name):
                    self.left_out.append(LeftOut(printable(shown), "file name is not valid UTF-8; rename it"))
                    continue
                try:
                    info = os.stat(os.path.join(directory, name))
                except OSError:
                    self.left_out.append(LeftOut(shown, "broken link or unreadable file; fix or remove it"))
                    continue
                key = (info.st_dev, info.st_ino)
                if key in self.files:
                    self.left_out.append(LeftOut(shown, f"the same file as {self.files[key]}; taken once"))
                    continue
                self.files[key] = shown
                found.append(name if relative == "." else os.path.join(relative, name))
        return [path.replace(os.sep, "/") for path in found]


def _join(*parts: str) -> str:
    return "/".join(part.replace(os.sep, "/") for part in parts if part and part != ".")


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
    """Dot-files and dot-folders only: ``__background__/`` or ``__init__.png`` are data like any other name."""
    return name.startswith(".")


def candidate_files(folder: Path) -> list[str]:
    """Every file under ``folder`` that might be an image, relative to it, sorted; no loops, no repeats."""
    walk = Walk()
    walk.claim_folder(folder)
    return walk.files_under(Path(folder), "")


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p.name))


def _holds_folders(folder: Path) -> bool:
    return any(True for _ in _subfolders(folder))


def _split_groups(root: Path, top: list[Path]) -> tuple[list[tuple[Path, str]], str]:
    """The (folder, split) groups of the data and a sentence saying which reading was taken.

    ``train/``, ``val/`` (``validation/``) and ``test/`` are splits only when they hold
    class folders and no ordinary class folder sits beside them; ``bus/ car/ train/`` with
    images inside is three classes.
    """
    named = [p for p in top if p.name.lower() in SPLIT_FOLDERS]
    others = [p for p in top if p.name.lower() not in SPLIT_FOLDERS]
    if not named or not any(_holds_folders(p) for p in named):
        return [(root, "")], f"class folders: {', '.join(p.name for p in top)}"
    if others:
        raise PipelineError(
            f"{root}: split folders ({', '.join(p.name for p in named)}) and other folders beside them "
            f"({', '.join(p.name for p in others)}); move those into the split folders or out of {root}"
        )
    flat = [p.name for p in named if not _holds_folders(p)]
    if flat:
        raise PipelineError(
            f"{root}: split folder {', '.join(flat)} holds no class folders; put its images in one folder per class"
        )
    splits = [(p, SPLIT_FOLDERS[p.name.lower()]) for p in named]
    return splits, f"split folders: {', '.join(f'{p.name} ({split})' for p, split in splits)}"


def _from_folder(root: Path) -> Dataset:
    walk = Walk()
    walk.claim_folder(root)
    top = _storable(walk, root, _subfolders(root))
    groups, reading = _split_groups(root, top)
    class_dirs: list[tuple[Path, str]] = []
    for group_dir, split in groups:
        if group_dir != root and not walk.claim_folder(group_dir):
            walk.left_out.append(LeftOut(group_dir.name, "link to a folder already in the data; not followed"))
            continue
        classes = _storable(walk, root, _subfolders(group_dir)) if group_dir != root else top
        if not classes:
            raise PipelineError(f"{group_dir}: no class folders; put each class's images in a folder named after the class")
        # Every class folder joins the walk before any is walked: a link into another class is a repeat.
        for class_dir in classes:
            if walk.claim_folder(class_dir):
                class_dirs.append((class_dir, split))
            else:
                shown = os.path.relpath(class_dir, root).replace(os.sep, "/")
                walk.left_out.append(LeftOut(shown, "link to a folder already in the data; not followed"))
    entries = []
    for class_dir, split in class_dirs:
        prefix = os.path.relpath(class_dir, root).replace(os.sep, "/")
        files = walk.files_under(class_dir, prefix)
        if not files and not any(item.path.startswith(prefix + "/") for item in walk.left_out):
            raise PipelineError(f"{class_dir}: class folder is empty; add images to it or remove it")
        entries.extend(ImageEntry(f"{prefix}/{name}", class_dir.name, split) for name in files)
    entries.sort(key=lambda entry: entry.path)
    return Dataset(root=root.resolve(), kind="folder", entries=entries, left_out=walk.left_out, reading=reading)


def _storable(walk: Walk, root: Path, folders: list[Path]) -> list[Path]:
    """``folders`` whose names can be stored; the others are reported."""
    kept = []
    for folder in folders:
        if is_utf8(folder.name):
            kept.append(folder)
        else:
            shown = printable(os.path.relpath(folder, root))
            walk.left_out.append(LeftOut(shown, "folder name is not valid UTF-8; rename it"))
    return kept


def _looks_like_image(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
    except OSError:
        return False
    return head.startswith(IMAGE_MAGIC)


def _from_csv(manifest: Path) -> Dataset:
    if _looks_like_image(manifest):
        raise PipelineError(
            f"{manifest}: is an image file; DATA is a folder of class folders or a CSV manifest (path,label[,split]); "
            "to classify single images, use `python -m pipeline predict RUN IMAGES`"
        )
    root = manifest.resolve().parent
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except UnicodeDecodeError:
        raise PipelineError(f"{manifest}: the CSV manifest is not UTF-8 text; save it as UTF-8") from None
    except (OSError, csv.Error) as error:
        raise PipelineError(f"{manifest}: cannot read the CSV manifest ({error}); fix the file") from None
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
        if any("\0" in cell for cell in row):
            raise PipelineError(f"{manifest}:{line}: the row holds a NUL byte; fix or remove the row")
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
    return Dataset(root=root, kind="csv", entries=entries, reading=f"CSV manifest: {len(entries)} rows")
