"""Image-file data sources: shared machinery, the CoOp split-JSON reader, and a user's own image folder.

:class:`ImageListSource` holds, per split, a list of image files and their labels; it gives protocols cheap
``labels(split)``, a PIL-based :class:`ImageFileDataset`, missing-file checks and a one-pass image
verification (:meth:`ImageListSource.verify_images`) that ``on_corrupt="skip"`` uses to drop unreadable
images before any label is handed out, so indices never shift. Nothing is ever written into a data root.

:class:`ImageFolderDataset` reads ``root/<class folder>/...`` with an optional class-names file and either
a split file in the CoOp JSON format or a deterministic per-class split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import posixpath
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PureWindowsPath
from typing import Literal, NamedTuple

import torch
from PIL import Image
from torch.utils.data import Dataset

from vlprompt.data.base import ClassificationSource, DataError
from vlprompt.data.transforms import build_transform

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: file name endings (lower case) taken as images when a folder is scanned
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
_SHOW = 5  # how many offending entries an error message lists


class CorruptImage(NamedTuple):
    """An image that could not be decoded: its index in the split, its path and the decoder's error."""

    index: int
    path: str
    error: str


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_relative_path(rel: object, *, where: str) -> str:
    """``rel`` normalised, if it is a relative path that stays inside its image folder; else :class:`DataError`.

    Absolute paths, drive letters and ``..`` components that leave the folder are always rejected.
    ``where`` names the file and entry for the message.
    """
    if not isinstance(rel, str) or not rel.strip():
        raise DataError(f"{where}: image path {rel!r} is not a non-empty string; fix the entry (a path relative "
                        f"to the image folder, e.g. 'Forest/Forest_1.jpg')")
    posix = rel.replace("\\", "/")
    if posix.startswith("/") or os.path.isabs(rel) or PureWindowsPath(rel).drive:
        raise DataError(f"{where}: image path {rel!r} is absolute; split entries must be relative to the image "
                        f"folder: fix or remove the entry")
    norm = posixpath.normpath(posix)
    if norm in (".", "..") or norm.startswith("../"):
        raise DataError(f"{where}: image path {rel!r} leaves the image folder (via '..'); paths outside the "
                        f"dataset are never read: fix or remove the entry")
    return norm


def read_split_json(path: Path) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """Items per split and class names of a split file in the CoOp JSON format.

    The format is ``{"train"|"val"|"test": [[relative_path, label, classname], ...]}``. Labels must be the
    integers ``0..C-1``, each with one class name and each class name with one label; paths must stay
    inside the image folder. Every violation is a :class:`DataError` naming the file and the entries.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"split file {path} is not valid JSON ({exc}); replace it with an intact copy") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"split file {path} is not UTF-8 text ({exc}); replace it with an intact copy") from exc
    if not isinstance(data, dict):
        raise DataError(f"split file {path} holds a {type(data).__name__}, expected an object with the keys "
                        f"'train', 'val' and 'test' (CoOp split format)")
    absent = [s for s in SPLITS if not isinstance(data.get(s), list)]
    if absent:
        raise DataError(f"split file {path} has no list for split(s) {absent} (keys found: {sorted(data)}); each of "
                        f"'train', 'val' and 'test' must map to [[relative_path, label, classname], ...]")
    items: dict[str, list[tuple[str, int]]] = {}
    label_names: dict[int, tuple[str, str]] = {}  # label -> (name, where first seen)
    name_labels: dict[str, tuple[int, str]] = {}
    conflicts: list[str] = []
    for split in SPLITS:
        rows: list[tuple[str, int]] = []
        for i, entry in enumerate(data[split]):
            where = f"split file {path}, {split}[{i}]"
            if (not isinstance(entry, (list, tuple)) or len(entry) != 3 or isinstance(entry[1], bool)
                    or not isinstance(entry[1], int) or not isinstance(entry[2], str)):
                raise DataError(f"{where}: entry {entry!r} is not [relative_path, integer label, class name]; "
                                f"fix the entry")
            rel, label, name = entry
            if label < 0:
                raise DataError(f"{where}: label {label} is negative; labels must be 0..C-1")
            rel = safe_relative_path(rel, where=where)
            seen = f"{split}[{i}] {rel!r}"
            if label in label_names and label_names[label][0] != name:
                conflicts.append(f"label {label} is {label_names[label][0]!r} at {label_names[label][1]} but "
                                 f"{name!r} at {seen}")
            if name in name_labels and name_labels[name][0] != label:
                conflicts.append(f"class {name!r} has label {name_labels[name][0]} at {name_labels[name][1]} but "
                                 f"{label} at {seen}")
            label_names.setdefault(label, (name, seen))
            name_labels.setdefault(name, (label, seen))
            rows.append((rel, label))
        items[split] = rows
    if conflicts:
        shown = "; ".join(conflicts[:_SHOW])
        raise DataError(f"split file {path} has {len(conflicts)} contradictory label/class-name entr"
                        f"{'y' if len(conflicts) == 1 else 'ies'} (each label needs exactly one class name and "
                        f"each class name one label): {shown}. Fix the entries or use the official split file")
    if not label_names:
        raise DataError(f"split file {path} lists no images; use a split file with entries")
    num_classes = max(label_names) + 1
    gaps = [y for y in range(num_classes) if y not in label_names]
    if gaps:
        raise DataError(f"split file {path}: labels must be 0..{num_classes - 1} without gaps, but "
                        f"{len(gaps)} label(s) never occur (first: {gaps[:_SHOW]}); renumber the labels")
    return items, [label_names[y][0] for y in range(num_classes)]


def load_rgb(path: str) -> Image.Image:
    """The image at ``path`` decoded with PIL and converted to RGB."""
    with Image.open(path) as im:
        return im.convert("RGB")


def decode_error(path: str) -> str | None:
    """``None`` when the whole image decodes, else the error text."""
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as exc:  # noqa: BLE001 - any decoder failure makes the file unusable
        return f"{type(exc).__name__}: {exc}"
    return None


class ImageFileDataset(Dataset):
    """``(image, label)`` pairs read from image files: PIL, converted to RGB, then ``transform``.

    Without a transform the image becomes a float tensor ``[3, H, W]`` in ``[0, 1]``. An image that fails
    to decode raises :class:`DataError` naming the file and the fixes.
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int], transform: Callable | None = None, *,
                 source: str = "dataset") -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = list(paths)
        self.labels = [int(y) for y in labels]
        self.transform = transform if transform is not None else build_transform(None, train=False)
        self.source = source

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.paths[i]
        try:
            image = load_rgb(path)
        except Exception as exc:  # noqa: BLE001 - reported with the file name
            raise DataError(
                f"{self.source}: cannot decode image {path} ({type(exc).__name__}: {exc}). Replace the file with an "
                f"intact copy, or build the dataset with on_corrupt='skip' to drop unreadable images; `vlprompt data "
                f"check {self.source} --root DIR --decode` lists every unreadable image"
            ) from exc
        return self.transform(image), self.labels[i]


class ImageListSource(ClassificationSource):
    """A classification source over image files listed per split (shared by the real-data sources).

    Subclasses read their listing and call :meth:`_set_items`. ``card`` is the dataset card that tells
    users where to get the data.
    """

    card: str = "the dataset index datasets/README.md"
    #: human name used in messages (the registry name when empty)
    title: str = ""
    #: the splits this source has (test-only sources override it)
    splits: tuple[str, ...] = SPLITS

    def _set_items(self, items: dict[str, list[tuple[str, int]]], classnames: list[str], *, image_root: Path,
                   listing: str, on_corrupt: str, check_files: bool) -> None:
        """Store the items (paths relative to ``image_root``), check files, and drop unreadable ones in skip mode."""
        if on_corrupt not in ("fail", "skip"):
            raise DataError(f"{self._who}: on_corrupt={on_corrupt!r} must be 'fail' (stop at an unreadable image) or "
                            f"'skip' (decode every image once at start-up and drop unreadable ones)")
        self.on_corrupt = on_corrupt
        self._classnames = list(classnames)
        self._paths: dict[str, list[str]] = {}
        self._labels: dict[str, list[int]] = {}
        for split in self.splits:
            rows = items.get(split, [])
            self._paths[split] = [str(image_root / rel) for rel, _ in rows]
            self._labels[split] = [int(y) for _, y in rows]
        self._warn_duplicates(listing)
        if check_files:
            missing = self.missing_files()
            if missing:
                total = len(set(p for s in self.splits for p in self._paths[s]))
                raise DataError(
                    f"{self._who}: {len(missing)} of {total} images listed in {listing} are missing under "
                    f"{image_root} (first: {', '.join(missing[:_SHOW])}). Complete the download as described in "
                    f"{self.card}, use a split file that matches your images, or pass check_files=False to defer "
                    f"the error to the first read"
                )
        self.skipped = 0
        self.skipped_by_split: dict[str, int] = {s: 0 for s in self.splits}
        if on_corrupt == "skip":
            self._drop_unreadable()

    def _warn_duplicates(self, listing: str) -> None:
        """Warn about images listed in two splits (a split that repeats another's list, as ImageNet's test = val,
        is not counted)."""
        seen: dict[str, str] = {}
        clashes: list[str] = []
        done: list[list[str]] = []
        for split in self.splits:
            paths = self._paths[split]
            if any(paths == other for other in done):
                continue
            done.append(paths)
            for p in paths:
                if p in seen and seen[p] != split:
                    clashes.append(f"{p} ({seen[p]} and {split})")
                seen.setdefault(p, split)
        if clashes:
            log.warning("%s: %d image(s) listed in %s appear in more than one split (first: %s); evaluation may "
                        "include training images", self._who, len(clashes), listing, ", ".join(clashes[:_SHOW]))

    def _drop_unreadable(self) -> None:
        bad_paths: dict[str, str] = {}
        for split in self.splits:
            for bad in self.verify_images(split, known=bad_paths):
                bad_paths[bad.path] = bad.error
            keep = [i for i, p in enumerate(self._paths[split]) if p not in bad_paths]
            dropped = len(self._paths[split]) - len(keep)
            if dropped:
                self._paths[split] = [self._paths[split][i] for i in keep]
                self._labels[split] = [self._labels[split][i] for i in keep]
                self.skipped_by_split[split] = dropped
        self.skipped = len(bad_paths)
        if bad_paths:
            first = next(iter(bad_paths.items()))
            log.warning("%s: skipped %d unreadable image(s) (on_corrupt='skip'; per split: %s; first: %s: %s)",
                        self._who, self.skipped, self.skipped_by_split, first[0], first[1])

    @property
    def _who(self) -> str:
        return self.title or self.name

    # ------------------------------------------------------------------ ClassificationSource
    @property
    def classnames(self) -> list[str]:
        return list(self._classnames)

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise DataError(f"{self.name} has no split {split!r}; its splits are {list(self.splits)}")

    def labels(self, split: str) -> list[int]:
        self._check_split(split)
        return list(self._labels[split])

    def paths(self, split: str) -> list[str]:
        """Image paths of a split, in item order."""
        self._check_split(split)
        return list(self._paths[split])

    def dataset(self, split: str, indices: Sequence[int] | None = None,
                transform: Callable | None = None) -> ImageFileDataset:
        self._check_split(split)
        paths, labels = self._paths[split], self._labels[split]
        if indices is not None:
            idx = [int(i) for i in indices]
            bad = [i for i in idx if not 0 <= i < len(paths)]
            if bad:
                raise DataError(f"{self._who}: indices {bad[:_SHOW]} are out of range for split {split!r} "
                                f"({len(paths)} images); a stale few-shot cache? clear $VLPROMPT_CACHE")
            paths, labels = [paths[i] for i in idx], [labels[i] for i in idx]
        return ImageFileDataset(paths, labels, transform, source=self.name)

    # ------------------------------------------------------------------ checks
    def missing_files(self, split: str | None = None) -> list[str]:
        """Listed images that are not files, in listing order (all splits when ``split`` is ``None``)."""
        splits = self.splits if split is None else (split,)
        out: list[str] = []
        seen: set[str] = set()
        for s in splits:
            self._check_split(s)
            for p in self._paths[s]:
                if p not in seen:
                    seen.add(p)
                    if not os.path.isfile(p):
                        out.append(p)
        return out

    def verify_images(self, split: str, *, workers: int | None = None,
                      known: dict[str, str] | None = None) -> list[CorruptImage]:
        """Decode every image of ``split`` once; the ones that fail, in item order.

        ``known`` maps paths already found unreadable to their error (they are not decoded again).
        """
        self._check_split(split)
        known = known or {}
        paths = self._paths[split]
        todo = sorted({p for p in paths if p not in known})
        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            errors = dict(zip(todo, pool.map(decode_error, todo, chunksize=64)))
        errors.update(known)
        return [CorruptImage(i, p, errors[p]) for i, p in enumerate(paths) if errors.get(p) is not None]

    def split_sizes(self) -> dict[str, int]:
        """Number of images per split."""
        return {s: len(self._paths[s]) for s in self.splits}


def _hidden(name: str) -> bool:
    return name.startswith(".")


def scan_images(folder: Path, *, recursive: bool) -> list[str]:
    """Sorted image paths (relative to ``folder``, posix) with an :data:`IMAGE_EXTENSIONS` ending."""
    found: list[str] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
            rel_dir = os.path.relpath(dirpath, folder)
            for f in filenames:
                if not _hidden(f) and f.lower().endswith(IMAGE_EXTENSIONS):
                    found.append(f if rel_dir == "." else posixpath.join(Path(rel_dir).as_posix(), f))
    else:
        with os.scandir(folder) as it:
            found = [e.name for e in it if not _hidden(e.name) and e.name.lower().endswith(IMAGE_EXTENSIONS)
                     and e.is_file()]
    return sorted(found)


def class_folders(folder: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``folder``."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not _hidden(e.name))


def key_name_lines(text: str, *, path: Path, key: str, fix: str) -> list[tuple[int, str, str]]:
    """``(line number, key, name)`` of each non-empty line ``<key> <name>``; a malformed line is an error."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{path}, line {n}: {line!r} is not '<{key}> <class name>'; {fix}")
        rows.append((n, parts[0], parts[1].strip()))
    return rows


def read_classnames_file(path: Path) -> dict[str, str]:
    """Folder -> class name, from lines ``<folder> <class name>`` or a JSON object ``{folder: name}``."""
    if not path.is_file():
        raise DataError(f"class-names file {path} does not exist; pass an existing file (lines '<folder> <class "
                        f"name>' or a JSON object {{folder: name}}) or leave classnames_file unset")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"class-names file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as "
                        f"UTF-8 with lines '<folder> <class name>'") from exc
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"class-names file {path} is not valid JSON ({exc}); fix it or use lines "
                            f"'<folder> <class name>'") from exc
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.strip()
                                                 for k, v in data.items()):
            raise DataError(f"class-names file {path} must be a JSON object mapping folder names to non-empty "
                            f"class names")
        if not data:
            raise DataError(f"class-names file {path} is an empty JSON object; map each folder to its class name")
        return {k: v.strip() for k, v in data.items()}
    mapping: dict[str, str] = {}
    for n, folder, name in key_name_lines(text, path=path, key="folder", fix="fix the line"):
        if folder in mapping and mapping[folder] != name.strip():
            raise DataError(f"class-names file {path}, line {n}: folder {folder!r} is named {mapping[folder]!r} and "
                            f"{name.strip()!r}; keep one line per folder")
        mapping[folder] = name.strip()
    if not mapping:
        raise DataError(f"class-names file {path} is empty; add lines '<folder> <class name>'")
    return mapping


def split_counts(n: int, ratio: Sequence[float]) -> list[int]:
    """Sizes of the train/val/test parts of ``n`` items by ``ratio`` (largest remainder, ties to earlier parts)."""
    exact = [n * r for r in ratio]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(ratio)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[: n - sum(counts)]:
        counts[k] += 1
    return counts


class ImageFolderDataset(ImageListSource):
    """A user's own images: ``root/<class folder>/**/<image>``, one sub-folder per class.

    Labels follow the sorted folder names. Class names are the folder names, or come from
    ``classnames_file`` (lines ``<folder> <class name>`` or JSON ``{folder: name}``). With ``split_file``
    (CoOp JSON format, paths relative to ``root``) labels and class names come from that file. Without it,
    each class's sorted file list is shuffled with ``random.Random(split_seed)`` (classes in label order)
    and cut by ``split_ratio`` (largest remainder), so the split is the same on every machine.

    Args:
        root: folder with one sub-folder per class.
        classnames_file: optional folder -> class-name mapping (not together with ``split_file``).
        split_file: optional split in the CoOp JSON format.
        split_ratio: train/val/test fractions (sum 1) of each class without a split file.
        split_seed: seed of the per-class shuffle.
        name: the dataset's name in caches and results.
        on_corrupt: ``fail`` (error at an unreadable image) or ``skip`` (decode all once, drop unreadable).
        check_files: check at start-up that every listed image exists.
    """

    family = "image folder"

    card = "the dataset index datasets/README.md"

    def __init__(
        self,
        root: str,
        *,
        classnames_file: str | None = None,
        split_file: str | None = None,
        split_ratio: tuple[float, float, float] = (0.5, 0.2, 0.3),
        split_seed: int = 0,
        name: str = "image_folder",
        on_corrupt: Literal["fail", "skip"] = "fail",
        check_files: bool = True,
    ) -> None:
        self.name = name
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"{name}: image folder {self.root} does not exist; pass root= a folder with one "
                            f"sub-folder of images per class (see {self.card}, section 'Your own data')")
        self.classnames_file = Path(classnames_file).expanduser() if classnames_file else None
        self.split_file = Path(split_file).expanduser() if split_file else None
        self.split_ratio = tuple(float(r) for r in split_ratio)
        self.split_seed = int(split_seed)
        if self.split_file is not None:
            if self.classnames_file is not None:
                raise DataError(f"{name}: pass either split_file ({self.split_file}) or classnames_file "
                                f"({self.classnames_file}), not both: a split file already names every class")
            if not self.split_file.is_file():
                raise DataError(f"{name}: split file {self.split_file} does not exist; pass an existing CoOp-format "
                                f"split JSON or leave split_file unset for a split by split_ratio")
            items, classnames = read_split_json(self.split_file)
            listing = str(self.split_file)
        else:
            items, classnames = self._scan()
            listing = f"the class folders of {self.root}"
        self._set_items(items, classnames, image_root=self.root, listing=listing, on_corrupt=on_corrupt,
                        check_files=check_files)

    def _scan(self) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
        ratio = self.split_ratio
        if len(ratio) != 3 or min(ratio) < 0 or abs(sum(ratio) - 1.0) > 1e-6:
            raise DataError(f"{self._who}: split_ratio={ratio} must be three non-negative fractions (train, val, "
                            f"test) that sum to 1, e.g. (0.5, 0.2, 0.3)")
        folders = class_folders(self.root)
        if not folders:
            raise DataError(f"{self._who}: {self.root} has no sub-folders; put each class's images in its own "
                            f"sub-folder (root/<class>/<image>)")
        if self.classnames_file is not None:
            mapping = read_classnames_file(self.classnames_file)
            unnamed = [f for f in folders if f not in mapping]
            if unnamed:
                raise DataError(f"{self._who}: class-names file {self.classnames_file} names no class for "
                                f"{len(unnamed)} folder(s) of {self.root} (first: {unnamed[:_SHOW]}); add a line "
                                f"'<folder> <class name>' for each")
            unused = sorted(set(mapping) - set(folders))
            if unused:
                log.warning("%s: class-names file %s names %d folder(s) absent from %s (first: %s)", self._who,
                            self.classnames_file, len(unused), self.root, unused[:_SHOW])
            classnames = [mapping[f] for f in folders]
        else:
            classnames = list(folders)
        dupes = sorted({c for c in classnames if classnames.count(c) > 1})
        if dupes:
            clash = {c: [f for f, n in zip(folders, classnames) if n == c] for c in dupes[:_SHOW]}
            raise DataError(f"{self._who}: several folders share a class name ({clash}); give each folder its own "
                            f"name in {self.classnames_file or 'the class-names file'}")
        rng = random.Random(self.split_seed)
        items: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
        for label, folder in enumerate(folders):
            files = [posixpath.join(folder, f) for f in scan_images(self.root / folder, recursive=True)]
            if not files:
                raise DataError(f"{self._who}: class folder {self.root / folder} has no images (endings "
                                f"{', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
            rng.shuffle(files)
            counts = split_counts(len(files), ratio)
            empty = [s for s, r, c in zip(SPLITS, ratio, counts) if r > 0 and c == 0]
            if empty:
                raise DataError(f"{self._who}: class folder {self.root / folder} has only {len(files)} image(s): "
                                f"split_ratio={ratio} leaves none for {empty}; add images, change split_ratio or "
                                f"pass a split_file")
            start = 0
            for split, c in zip(SPLITS, counts):
                items[split].extend((f, label) for f in sorted(files[start:start + c]))
                start += c
        return items, classnames

    def identity(self) -> dict:
        ident = {
            "name": self.name,
            "kind": "image_folder",
            "root": str(self.root),
            "num_classes": len(self._classnames),
            "sizes": self.split_sizes(),
            "skipped": self.skipped,
        }
        if self.split_file is not None:
            ident.update(split_file=str(self.split_file), split_sha256=sha256_file(self.split_file))
        else:
            ident.update(split_ratio=list(self.split_ratio), split_seed=self.split_seed,
                         classnames_sha256=sha256_file(self.classnames_file) if self.classnames_file else None)
        return ident

