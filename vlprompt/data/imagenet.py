"""ImageNet and its domain-generalisation variants in the layout of CoOp's DATA.md.

Class names come from CoOp's ``classnames.txt`` (lines ``<wnid> <class name>``, in ImageNet order, which is
the sorted wnid order for the real file). Labels are positions in that file:

* :class:`ImageNet`: ``imagenet/images/{train,val}/<wnid>/*``; ``test`` is the validation set, as in CoOp
  (``val`` and ``test`` hold the same images).
* :class:`ImageNetV2`: ``imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/*``; the folder name is
  the 1000-way label.
* :class:`ImageNetSketch`: ``imagenet-sketch/images/<wnid>/*``; 1000-way labels.
* :class:`ImageNetA` / :class:`ImageNetR`: ``imagenet-adversarial/imagenet-a/<wnid>/*`` and
  ``imagenet-rendition/imagenet-r/<wnid>/*`` cover 200 classes. Label ``k`` is the k-th of the wnid folders
  present **in ImageNet order** (their order in ``classnames.txt``), and ``classnames[k]`` is that wnid's
  ImageNet class name; ``imagenet_indices[k]`` gives its 1000-way index. Using the folder-listing order, or
  the 1000-way index with 1000 class names, silently mislabels the data.

The variants are test-only. ``classnames.txt`` is looked for in the variant's folder (CoOp copies it there),
then in ``<root>/imagenet/``; ``classnames_file=`` overrides both. The data root is only ever read.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from vlprompt.data.base import DataError, resolve_data_root
from vlprompt.data.coop import known_splits, require_dir
from vlprompt.data.folder import ImageListSource, class_folders, key_name_lines, scan_images, sha256_file

log = logging.getLogger(__name__)

_SHOW = 5


def read_imagenet_classnames(path: Path) -> list[tuple[str, str]]:
    """``(wnid, class name)`` pairs of a CoOp ``classnames.txt`` in file order (ImageNet order)."""
    if not path.is_file():
        raise DataError(f"ImageNet class-name file {path} does not exist; copy CoOp's classnames.txt there (see "
                        f"datasets/imagenet.md) or pass classnames_file=")
    pairs: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    text = path.read_text(encoding="utf-8")
    for n, wnid, name in key_name_lines(text, path=path, key="wnid", fix="use CoOp's classnames.txt"):
        if wnid in seen:
            raise DataError(f"{path}, line {n}: wnid {wnid} already appears on line {seen[wnid]}; use CoOp's "
                            f"classnames.txt (one line per class)")
        seen[wnid] = n
        pairs.append((wnid, name))
    if not pairs:
        raise DataError(f"ImageNet class-name file {path} is empty; use CoOp's classnames.txt")
    return pairs


def classnames_content_sha256(pairs: Iterable[tuple[str, str]]) -> str:
    """sha256 of the parsed class-name list (independent of line endings and spacing)."""
    return hashlib.sha256("".join(f"{w} {n}\n" for w, n in pairs).encode()).hexdigest()


def subset_in_imagenet_order(present: Iterable[str], imagenet: list[tuple[str, str]], *,
                             where: str) -> tuple[list[str], list[str], list[int]]:
    """``(wnids, class names, 1000-way indices)`` of the wnid folders ``present``, in ImageNet order.

    Label ``k`` of a subset dataset (ImageNet-A/-R) is the k-th returned wnid. A folder that is not an
    ImageNet wnid is a :class:`DataError` (``where`` names the folder).
    """
    index = {w: i for i, (w, _) in enumerate(imagenet)}
    present = list(present)
    unknown = sorted(w for w in present if w not in index)
    if unknown:
        raise DataError(f"{where}: {len(unknown)} sub-folder(s) are not ImageNet wnids of the class-name file "
                        f"(first: {unknown[:_SHOW]}); remove them, or use CoOp's classnames.txt")
    order = sorted(set(present), key=index.__getitem__)
    return order, [imagenet[index[w]][1] for w in order], [index[w] for w in order]


class _ImageNetBase(ImageListSource):
    """Shared set-up: root checks, the class-name file and its provenance."""

    family = "imagenet"

    name: str = ""
    title: str = ""
    folder: str = ""

    def _setup_root(self, root: str | None) -> None:
        self.card = f"the dataset card datasets/{self.name}.md"
        self.root = resolve_data_root(root)
        self.dataset_dir = self.root / self.folder
        require_dir(self.root, source=self.title, what="the data root", root=self.root, card=self.card)
        require_dir(self.dataset_dir, source=self.title, what=f"the dataset folder '{self.folder}/'", root=self.root,
                    card=self.card)

    def _load_classnames(self, classnames_file: str | None) -> list[tuple[str, str]]:
        if classnames_file:
            path = Path(classnames_file).expanduser()
        else:
            candidates = [self.dataset_dir / "classnames.txt", self.root / "imagenet" / "classnames.txt"]
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                where = " or ".join(str(p) for p in dict.fromkeys(candidates))
                raise DataError(f"{self.title}: no classnames.txt at {where}. "
                                f"Copy CoOp's ImageNet classnames.txt (lines '<wnid> <class name>') there as described "
                                f"in {self.card}, or pass classnames_file=")
        pairs = read_imagenet_classnames(path)
        self.classnames_file = path
        self.classnames_sha256 = sha256_file(path)
        known = known_splits()["other_files"]["imagenet/classnames.txt"].get("content_sha256")
        self.classnames_official = classnames_content_sha256(pairs) == known if known else None
        if self.classnames_official is False:
            log.warning("%s: class names in %s differ from CoOp's ImageNet classnames.txt; text prompts (and "
                        "results) will differ from published ones. Use CoOp's file (see %s)", self.title, path,
                        self.card)
        return pairs

    def _scan_classes(self, folder: Path, wnids: list[str], labels: dict[str, int]) -> list[tuple[str, int]]:
        rows: list[tuple[str, int]] = []
        for wnid in wnids:
            rows.extend((posixpath.join(wnid, f), labels[wnid]) for f in scan_images(folder / wnid, recursive=False))
        return rows

    def _loose_files(self, folder: Path) -> None:
        loose = scan_images(folder, recursive=False)
        if loose:
            raise DataError(f"{self.title}: {folder} holds {len(loose)} image file(s) directly (first: "
                            f"{loose[:_SHOW]}); images must sit in one sub-folder per class (<wnid>/ or <label>/), "
                            f"see {self.card}")

    def identity(self) -> dict:
        return {
            "name": self.name,
            "kind": "imagenet",
            "root": str(self.root),
            "classnames_file": str(self.classnames_file),
            "classnames_sha256": self.classnames_sha256,
            "classnames_official": self.classnames_official,
            "num_classes": len(self._classnames),
            "sizes": self.split_sizes(),
            "skipped": self.skipped,
        }


class ImageNet(_ImageNetBase):
    """ImageNet (ILSVRC-2012) in CoOp layout; ``val`` and ``test`` are both the validation set, as in CoOp.

    Args:
        root: the DATA folder that contains ``imagenet/``.
        classnames_file: class-name file; default ``<root>/imagenet/classnames.txt``.
        on_corrupt: ``fail`` (an unreadable image stops the run) or ``skip`` (decode all images once at
            start-up, about 1.3M files, and drop unreadable ones).
    """

    name, title, folder = "imagenet", "ImageNet", "imagenet"

    def __init__(self, root: str | None = None, *, classnames_file: str | None = None,
                 on_corrupt: Literal["fail", "skip"] = "fail") -> None:
        self._setup_root(root)
        pairs = self._load_classnames(classnames_file)
        labels = {w: i for i, (w, _) in enumerate(pairs)}
        items: dict[str, list[tuple[str, int]]] = {}
        self.image_root = self.dataset_dir / "images"
        for split in ("train", "val"):
            folder = self.image_root / split
            require_dir(folder, source=self.title, what=f"the image folder 'imagenet/images/{split}/'", root=self.root,
                        card=self.card)
            self._loose_files(folder)
            present = class_folders(folder)
            wnids, _, _ = subset_in_imagenet_order(present, pairs, where=f"{self.title} {folder}")
            if len(wnids) < len(pairs):
                absent = [w for w, _ in pairs if w not in set(wnids)]
                log.warning("%s: %s has %d of the %d class folders (missing, first: %s); those classes have no %s "
                            "images", self.title, folder, len(wnids), len(pairs), absent[:_SHOW], split)
            items[split] = [(posixpath.join(split, rel), y) for rel, y in self._scan_classes(folder, wnids, labels)]
        items["test"] = list(items["val"])
        self._set_items(items, [n for _, n in pairs], image_root=self.image_root, listing=str(self.image_root),
                        on_corrupt=on_corrupt, check_files=False)


class _ImageNetTestSet(_ImageNetBase):
    """A test-only ImageNet variant (domain generalisation: train on ImageNet, test here)."""

    family = "imagenet variant (test only)"

    splits = ("test",)
    #: the image folder inside ``folder``
    image_subdir: str = ""

    def __init__(self, root: str | None = None, *, classnames_file: str | None = None,
                 on_corrupt: Literal["fail", "skip"] = "fail") -> None:
        self._setup_root(root)
        self.image_root = self.dataset_dir / self.image_subdir
        require_dir(self.image_root, source=self.title, what=f"the image folder '{self.folder}/{self.image_subdir}/'",
                    root=self.root, card=self.card)
        pairs = self._load_classnames(classnames_file)
        self._loose_files(self.image_root)
        rows, classnames = self._read(pairs)
        if not rows:
            raise DataError(f"{self.title}: no images found under {self.image_root}; lay out the data as described "
                            f"in {self.card}")
        self._set_items({"test": rows}, classnames, image_root=self.image_root, listing=str(self.image_root),
                        on_corrupt=on_corrupt, check_files=False)

    def _read(self, pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, int]], list[str]]:
        """All 1000 classes; one ``<wnid>/`` folder per class present."""
        folders = class_folders(self.image_root)
        wnids, _, _ = subset_in_imagenet_order(folders, pairs, where=f"{self.title} {self.image_root}")
        labels = {w: i for i, (w, _) in enumerate(pairs)}
        self.imagenet_indices = list(range(len(pairs)))
        self.wnids = [w for w, _ in pairs]
        if len(wnids) < len(pairs):
            log.warning("%s: %s has %d of the %d class folders", self.title, self.image_root, len(wnids), len(pairs))
        return self._scan_classes(self.image_root, wnids, labels), [n for _, n in pairs]

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise DataError(f"{self.title} ({self.name}) is a test-only dataset for domain generalisation; it has no "
                            f"{split!r} split. Train on imagenet and evaluate on the 'test' split of {self.name}")


class ImageNetV2(_ImageNetTestSet):
    """ImageNetV2 matched-frequency (Recht et al. 2019): 10,000 test images, folders ``0..999`` = 1000-way labels."""

    name, title, folder = "imagenet_v2", "ImageNetV2", "imagenetv2"
    image_subdir = "imagenetv2-matched-frequency-format-val"

    def _read(self, pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, int]], list[str]]:
        folders = class_folders(self.image_root)
        bad = [f for f in folders if not (f.isdigit() and str(int(f)) == f and int(f) < len(pairs))]
        if bad:
            raise DataError(f"{self.title}: {self.image_root} must hold folders named by the label "
                            f"0..{len(pairs) - 1}; "
                            f"found {len(bad)} other(s) (first: {bad[:_SHOW]}). Remove them (see {self.card})")
        if len(folders) < len(pairs):
            log.warning("%s: %s has %d of the %d label folders", self.title, self.image_root, len(folders), len(pairs))
        self.imagenet_indices = list(range(len(pairs)))
        self.wnids = [w for w, _ in pairs]
        rows: list[tuple[str, int]] = []
        for f in sorted(folders, key=int):
            rows.extend((posixpath.join(f, name), int(f)) for name in scan_images(self.image_root / f, recursive=False))
        return rows, [n for _, n in pairs]


class ImageNetSketch(_ImageNetTestSet):
    """ImageNet-Sketch (Wang et al. 2019): sketches of the 1000 ImageNet classes, 1000-way labels."""

    name, title, folder, image_subdir = "imagenet_sketch", "ImageNetSketch", "imagenet-sketch", "images"


class _ImageNetSubset(_ImageNetTestSet):
    """A variant covering a subset of the classes: labels index the present wnids in ImageNet order."""

    def _read(self, pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, int]], list[str]]:
        folders = class_folders(self.image_root)
        if not folders:
            raise DataError(f"{self.title}: {self.image_root} has no <wnid>/ sub-folders; lay out the data as "
                            f"described in {self.card}")
        wnids, names, indices = subset_in_imagenet_order(folders, pairs, where=f"{self.title} {self.image_root}")
        self.wnids = wnids
        self.imagenet_indices = indices
        labels = {w: k for k, w in enumerate(wnids)}
        return self._scan_classes(self.image_root, wnids, labels), names


class ImageNetA(_ImageNetSubset):
    """ImageNet-A (Hendrycks et al. 2021): 7,500 natural adversarial images of 200 ImageNet classes."""

    name, title, folder, image_subdir = "imagenet_a", "ImageNetA", "imagenet-adversarial", "imagenet-a"


class ImageNetR(_ImageNetSubset):
    """ImageNet-R (Hendrycks et al. 2021): 30,000 renditions (art, cartoons...) of 200 ImageNet classes."""

    name, title, folder, image_subdir = "imagenet_r", "ImageNetR", "imagenet-rendition", "imagenet-r"
