"""The CoOp downstream datasets (Zhou et al., IJCV 2022) in the layout of CoOp's DATA.md; ImageNet and its
variants are in :mod:`vlprompt.data.imagenet`.

``root`` is the DATA folder that holds one folder per dataset (``eurosat/``, ``caltech-101/``...). Each
dataset reads its ``split_zhou_<X>.json`` (``{"train"|"val"|"test": [[path, label, classname], ...]}``,
paths relative to the image folder); labels and class names come from that file, exactly as in CoOp.
FGVC-Aircraft reads the dataset's own ``variants.txt`` and ``images_variant_<split>.txt`` instead.

The split file's sha256 is compared with the official CoOp file (``known_splits.json``): a different file
(a cut-down or custom split) gives a warning, or an error with ``strict_checksum=True``, because numbers
on it are not comparable with published ones. The data root is only ever read.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Literal

from vlprompt.data.base import DataError, resolve_data_root
from vlprompt.data.folder import ImageListSource, read_split_json, safe_relative_path, sha256_file

log = logging.getLogger(__name__)

KNOWN_SPLITS_FILE = Path(__file__).with_name("known_splits.json")


@functools.lru_cache(maxsize=1)
def known_splits() -> dict:
    """The table of official split checksums and expected sizes (``vlprompt/data/known_splits.json``)."""
    return json.loads(KNOWN_SPLITS_FILE.read_text(encoding="utf-8"))


def official_sha256(split_filename: str) -> str | None:
    """sha256 of the official CoOp split file ``split_filename``, or ``None`` where it is not known."""
    return known_splits()["splits"].get(split_filename)


def expected_stats(name: str) -> dict | None:
    """Expected ``classes`` and split ``sizes`` of a dataset (counted from official files, or reported)."""
    return known_splits()["expected"].get(name)


def require_dir(path: Path, *, source: str, what: str, root: Path, card: str) -> None:
    """:class:`DataError` naming ``path`` and the dataset card when ``path`` is not a folder."""
    if path.is_dir():
        return
    if path == root:
        raise DataError(f"{source}: the data root {root} does not exist. Pass root= the DATA folder that contains "
                        f"the dataset folders (CoOp DATA.md layout); how to get and lay out the data: {card}")
    raise DataError(f"{source}: expected {what} at {path} (data root {root}) but it is not a folder. Lay out the data "
                    f"as described in {card} (CoOp DATA.md layout), or pass the right root=")


class CoOpSplitDataset(ImageListSource):
    """A dataset in the CoOp DATA.md layout: ``<root>/<folder>/<image_dir>/...`` plus a CoOp split file.

    Args:
        root: the DATA folder that contains ``<folder>/`` (e.g. the parent of ``eurosat/``); default ``$VLPROMPT_DATA``.
        split_file: split JSON to use; default ``<root>/<folder>/<split_filename>``.
        strict_checksum: a split file that differs from the official one is an error (else a warning).
        on_corrupt: ``fail`` (an unreadable image stops the run, naming the file) or ``skip`` (every image is
            decoded once when the dataset is built; unreadable ones are dropped and counted in ``skipped``).
        check_files: check at start-up that every listed image exists.
    """

    family = "coop split"

    #: registry name (also the card ``datasets/<name>.md``)
    name: str = ""
    #: human name of the dataset
    title: str = ""
    #: the dataset's folder under the DATA root
    folder: str = ""
    #: the image folder inside ``folder`` ("" for ``folder`` itself); split paths are relative to it
    image_dir: str = ""
    #: the official CoOp split file name
    split_filename: str = ""

    def __init__(
        self,
        root: str | None = None,
        *,
        split_file: str | None = None,
        strict_checksum: bool = False,
        on_corrupt: Literal["fail", "skip"] = "fail",
        check_files: bool = True,
    ) -> None:
        self.card = f"the dataset card datasets/{self.name}.md"
        self.root = resolve_data_root(root)
        self.dataset_dir = self.root / self.folder
        self.image_root = self.dataset_dir / self.image_dir if self.image_dir else self.dataset_dir
        self.strict_checksum = strict_checksum
        require_dir(self.root, source=self.title, what="the data root", root=self.root, card=self.card)
        require_dir(self.dataset_dir, source=self.title, what=f"the dataset folder '{self.folder}/'", root=self.root,
                    card=self.card)
        require_dir(self.image_root, source=self.title, what=f"the image folder '{self.folder}/{self.image_dir}/'",
                    root=self.root, card=self.card)
        self.split_file = Path(split_file).expanduser() if split_file else self._default_split_file()
        items, classnames, self.listing_files = self._read_listing()
        self.split_sha256 = self._listing_sha256()
        self.official_sha256 = official_sha256(self.split_filename) if self.split_filename else None
        self.official_split: bool | None = (None if self.official_sha256 is None
                                            else self.split_sha256 == self.official_sha256)
        self._check_official()
        listing = ", ".join(str(p) for p in self.listing_files)
        self._set_items(items, classnames, image_root=self.image_root, listing=listing, on_corrupt=on_corrupt,
                        check_files=check_files)

    # ------------------------------------------------------------------ reading
    def _default_split_file(self) -> Path | None:
        return self.dataset_dir / self.split_filename

    def _read_listing(self) -> tuple[dict[str, list[tuple[str, int]]], list[str], list[Path]]:
        """Items per split, class names, and the files they were read from."""
        path = self.split_file
        if path is not None and path != self._default_split_file() and not path.is_file():
            raise DataError(f"{self.title}: split file {path} (split_file=) does not exist; pass an existing split "
                            f"JSON, or leave split_file unset for {self.dataset_dir / self.split_filename}")
        if path is None or not path.is_file():
            raise DataError(
                f"{self.title}: split file {path} does not exist. Put the official CoOp {self.split_filename} in "
                f"{self.dataset_dir} as described in {self.card}, or pass split_file= an existing split JSON"
            )
        items, classnames = read_split_json(path)
        return items, classnames, [path]

    def _listing_sha256(self) -> str:
        if len(self.listing_files) == 1:
            return sha256_file(self.listing_files[0])
        combined = "".join(f"{p.name} {sha256_file(p)}\n" for p in self.listing_files)
        return hashlib.sha256(combined.encode()).hexdigest()

    def _check_official(self) -> None:
        if self.official_split is None:
            log.info("%s: no official checksum is known for %s; split file %s (sha256 %s) cannot be verified",
                     self.title, self.split_filename or "this dataset's split files", self.split_file,
                     self.split_sha256)
            return
        if self.official_split:
            return
        msg = (f"{self.title}: split file {self.split_file} (sha256 {self.split_sha256[:12]}...) differs from the "
               f"official CoOp {self.split_filename} (sha256 {self.official_sha256[:12]}...): results on it are not "
               f"comparable with published numbers. Use the official file (see {self.card})")
        if self.strict_checksum:
            raise DataError(msg + ", or pass strict_checksum=False if a custom split is intended")
        log.warning("%s; pass strict_checksum=True to make this an error", msg)

    def identity(self) -> dict:
        return {
            "name": self.name,
            "kind": "coop",
            "root": str(self.root),
            "split_file": str(self.split_file) if self.split_file else [str(p) for p in self.listing_files],
            "split_sha256": self.split_sha256,
            "official_split": self.official_split,
            "num_classes": len(self._classnames),
            "skipped": self.skipped,
        }


class EuroSAT(CoOpSplitDataset):
    """EuroSAT (Helber et al. 2019): 10 land-use classes, Sentinel-2 RGB 64x64 (CoOp: ``eurosat/2750``)."""

    name, title, folder, image_dir, split_filename = "eurosat", "EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json"


class Caltech101(CoOpSplitDataset):
    """Caltech-101 (Fei-Fei et al. 2004): 100 object classes in CoOp (no background/Faces_easy)."""

    name, title, folder, image_dir, split_filename = (
        "caltech101", "Caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json")


class OxfordPets(CoOpSplitDataset):
    """Oxford-IIIT Pets (Parkhi et al. 2012): 37 cat and dog breeds."""

    name, title, folder, image_dir, split_filename = (
        "oxford_pets", "OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json")


class DescribableTextures(CoOpSplitDataset):
    """DTD (Cimpoi et al. 2014): 47 texture classes."""

    name, title, folder, image_dir, split_filename = (
        "dtd", "DescribableTextures", "dtd", "images", "split_zhou_DescribableTextures.json")


class OxfordFlowers(CoOpSplitDataset):
    """Oxford Flowers 102 (Nilsback and Zisserman 2008): 102 flower species."""

    name, title, folder, image_dir, split_filename = (
        "oxford_flowers", "OxfordFlowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json")


class Food101(CoOpSplitDataset):
    """Food-101 (Bossard et al. 2014): 101 dishes."""

    name, title, folder, image_dir, split_filename = (
        "food101", "Food101", "food-101", "images", "split_zhou_Food101.json")


class StanfordCars(CoOpSplitDataset):
    """Stanford Cars (Krause et al. 2013): 196 car models; split paths start with ``cars_train/``/``cars_test/``."""

    name, title, folder, image_dir, split_filename = (
        "stanford_cars", "StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json")


class SUN397(CoOpSplitDataset):
    """SUN397 (Xiao et al. 2010): 397 scene categories."""

    name, title, folder, image_dir, split_filename = "sun397", "SUN397", "sun397", "SUN397", "split_zhou_SUN397.json"


class UCF101(CoOpSplitDataset):
    """UCF101 (Soomro et al. 2012): 101 actions, one middle frame per video (CoOp's ``UCF-101-midframes``)."""

    name, title, folder, image_dir, split_filename = (
        "ucf101", "UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json")


class FGVCAircraft(CoOpSplitDataset):
    """FGVC-Aircraft (Maji et al. 2013): 100 aircraft variants, read from the dataset's own split files.

    ``fgvc_aircraft/variants.txt`` lists the class names (label = line order) and
    ``images_variant_{train,val,test}.txt`` hold lines ``<image id> <variant name>`` for ``images/<id>.jpg``,
    as CoOp reads them. ``split_file`` may still point to a split JSON in the CoOp format instead.
    """

    name, title, folder, image_dir, split_filename = "fgvc_aircraft", "FGVCAircraft", "fgvc_aircraft", "images", ""
    variants_filename = "variants.txt"

    def _default_split_file(self) -> Path | None:
        return None

    def _read_listing(self) -> tuple[dict[str, list[tuple[str, int]]], list[str], list[Path]]:
        if self.split_file is not None:
            return super()._read_listing()
        variants = self.dataset_dir / self.variants_filename
        files = [variants] + [self.dataset_dir / f"images_variant_{s}.txt" for s in ("train", "val", "test")]
        absent = [str(p) for p in files if not p.is_file()]
        if absent:
            raise DataError(f"{self.title}: missing {', '.join(absent)}. Copy variants.txt and "
                            f"images_variant_{{train,val,test}}.txt from the FGVC-Aircraft archive's data/ folder into "
                            f"{self.dataset_dir} as described in {self.card}")
        classnames: list[str] = []
        for n, line in enumerate(variants.read_text(encoding="utf-8").splitlines(), 1):
            name = line.strip()
            if not name:
                continue
            if name in classnames:
                raise DataError(f"{self.title}: {variants}, line {n}: variant {name!r} is listed twice; keep one line "
                                f"per variant (use the original variants.txt)")
            classnames.append(name)
        if not classnames:
            raise DataError(f"{self.title}: {variants} lists no variants; use the original variants.txt")
        label_of = {c: i for i, c in enumerate(classnames)}
        items: dict[str, list[tuple[str, int]]] = {}
        for split, path in zip(("train", "val", "test"), files[1:]):
            rows: list[tuple[str, int]] = []
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                line = line.strip()
                if not line:
                    continue
                parts = line.split(" ", 1)
                if len(parts) != 2 or not parts[1].strip():
                    raise DataError(f"{self.title}: {path}, line {n}: {line!r} is not '<image id> <variant name>'; "
                                    f"fix the line or use the original file")
                image_id, variant = parts[0], parts[1].strip()
                if variant not in label_of:
                    raise DataError(f"{self.title}: {path}, line {n}: variant {variant!r} is not in {variants}; the "
                                    f"two files must come from the same FGVC-Aircraft release")
                rel = safe_relative_path(f"{image_id}.jpg", where=f"{path}, line {n}")
                rows.append((rel, label_of[variant]))
            items[split] = rows
        return items, classnames, files


#: registry name -> class, for the 10 CoOp datasets besides ImageNet
COOP_DATASETS: dict[str, type[CoOpSplitDataset]] = {
    c.name: c for c in (Caltech101, OxfordPets, StanfordCars, OxfordFlowers, Food101, FGVCAircraft, SUN397,
                        DescribableTextures, EuroSAT, UCF101)
}
