"""Medical segmentation data: the medvlsm/TuneVLSeg layout, the original Kvasir-SEG and BUSI releases.

**medvlsm layout** (naamiinepal/medvlsm ``DATASETS.MD``, read by TuneVLSeg's ``ImageTextMaskDataset``)::

    <root>/<folder>/
    ├── images/                  # input images (any PIL format)
    ├── masks/                   # binary masks, 0 background / 255 foreground
    └── anns/{train,val,test}.json

Each annotation file is a JSON list of records ``{"img_name": ..., "mask_name": ..., "prompts": {"p0": "",
"p1": "polyp", ..., "p7": ["...", "..."]}}`` (other keys such as ``bbox``, ``cat``, ``segment_id`` are kept
but unused); names are relative to ``images/`` and ``masks/``. CAMUS keeps its images in per-split folders
(``images/train`` for train and val, ``images/test``), as TuneVLSeg's ``image_text_mask_camus.yaml``.

**Original releases**: :class:`KvasirSEGRelease` (``images/`` + ``masks/`` with equal names, optional MediaEval
2020 ``train.txt``/``val.txt`` id lists) and :class:`BUSIRelease` (``benign (N).png`` beside ``benign
(N)_mask.png``, sometimes ``_mask_1``/``_mask_2`` that are merged; ``normal`` images with empty masks; the
per-class folders of ``Dataset_BUSI_with_GT`` or flat ``images/`` + ``masks/`` folders). Their splits are
deterministic and documented on each class. ``vlprompt data convert`` writes any of these sources into the
medvlsm layout with generated prompts (:func:`vlprompt.data.medseg_prompts.generate_prompts`,
:func:`vlprompt.data.medseg_convert.convert_to_medvlsm`).

Nothing here ever writes into a data root: readers only read, and conversion refuses an output folder inside
the source dataset.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from vlprompt.backbones.base import PreprocessConfig
from vlprompt.data.atomic import sha256_file
from vlprompt.data.base import DataError, resolve_data_root
from vlprompt.data.medseg_prompts import PROMPT_SPECS
from vlprompt.data.seg_dataset import (
    SegmentationDataset,
    check_prompt_index,
    read_image,
    read_mask,
    validate_prompts,
)
from vlprompt.data.segmentation import SPLITS, SegmentationSource

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class SegRecord:
    """One (image, mask files, prompts) item of a file-backed source."""

    name: str  # identifier, e.g. the image file name
    image: Path
    masks: tuple[Path, ...]
    prompts: dict = field(default_factory=dict)
    category: str = ""  # e.g. BUSI benign/malignant/normal
    where: str = ""  # where it was read from (annotation file and record index), for errors


class FileLoader:
    """``loader(i) -> (RGB PIL image, uint8 grey mask)`` of record ``i`` (picklable, for loader workers); the grey
    values give both the binary mask and the soft target (:func:`~vlprompt.data.seg_dataset.prepare_pair`)."""

    def __init__(self, records: Sequence[SegRecord]) -> None:
        self.records = records

    def __call__(self, i: int) -> tuple[Image.Image, np.ndarray]:
        rec = self.records[i]
        image = read_image(rec.image)
        return image, read_mask(rec.masks, size=image.size, image=str(rec.image), grey=True)


def _inside(name: str) -> bool:
    """Whether the relative file name ``name`` stays inside its folder (no absolute path, no ``..``)."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or re.match(r"^[A-Za-z]:", name):
        return False
    return ".." not in PurePosixPath(os.path.normpath(str(p))).parts and not os.path.normpath(str(p)).startswith("..")


def _stable_bucket(*parts: object, buckets: int = 10) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode()) % buckets


class FileSegmentationSource(SegmentationSource):
    """A segmentation source whose items are image and mask files: records per split, shared checks.

    Subclasses fill ``self.records`` (split -> list of :class:`SegRecord`) and call :meth:`_finish`.
    """

    #: registry name (also the card ``datasets/<name>.md``)
    name: str = ""
    title: str = ""
    #: default TuneVLSeg prompt index of the protocol (TuneVLSeg's runs use p1)
    default_prompt_index: int = 1
    #: sizes published with the reference annotations: {"train": n, ..., "from": "source"}
    published_sizes: dict | None = None

    records: dict[str, list[SegRecord]]
    dataset_dir: Path
    stop_at_end: bool = False

    @property
    def card(self) -> str:
        return f"the dataset card datasets/{self.name}.md"

    # ------------------------------------------------------------------ ABC
    def size(self, split: str) -> int:
        return len(self._split(split))

    def _split(self, split: str) -> list[SegRecord]:
        if split not in self.records:
            raise KeyError(f"split {split!r} of {self.name}: known splits are {list(self.records)}")
        return self.records[split]

    def dataset(
        self,
        split: str,
        *,
        preprocess: PreprocessConfig | None,
        prompt_index: int = 0,
        prompt: str | None = None,
        augment: bool = False,
        seed: int = 0,
    ) -> SegmentationDataset:
        records = self._split(split)
        if prompt is None:
            check_prompt_index(records, prompt_index, where=f"{self.title or self.name} split {split!r}")

        return SegmentationDataset(records, FileLoader(records), preprocess=preprocess, prompt_index=prompt_index, prompt=prompt,
                                   augment=augment, seed=seed, stop_at_end=self.stop_at_end)

    def identity(self) -> dict:
        return {"name": self.name, "kind": type(self).__name__, "root": str(self.dataset_dir),
                "sizes": {s: len(r) for s, r in self.records.items()}, **self._identity_extra()}

    def _identity_extra(self) -> dict:
        return {}

    # ------------------------------------------------------------------ checks
    def file_problems(self, *, sizes: bool = True) -> list[str]:
        """Missing images or masks and (with ``sizes``) masks whose size differs from their image's (headers only)."""
        problems: list[str] = []
        for split, records in self.records.items():
            for rec in records:
                if not rec.image.is_file():
                    problems.append(f"image {rec.image} ({rec.where or split}) does not exist: restore it, or remove "
                                    f"its record from the annotations")
                    continue
                missing = [m for m in rec.masks if not m.is_file()]
                if missing or not rec.masks:
                    problems.append(f"mask {missing[0] if missing else '(none)'} for image {rec.image} "
                                    f"({rec.where or split}) does not exist: every image needs its mask; restore it "
                                    f"from the original archive (or fix mask_name)")
                    continue
                if sizes:
                    try:
                        with Image.open(rec.image) as im:
                            isize = im.size
                        for m in rec.masks:
                            with Image.open(m) as mk:
                                if mk.size != isize:
                                    problems.append(
                                        f"mask {m} is {mk.size[0]}x{mk.size[1]} px but its image {rec.image} is "
                                        f"{isize[0]}x{isize[1]}: a mask must have its image's size; export the mask at "
                                        f"the image size (or pair it with the right image)")
                    except Exception as exc:  # noqa: BLE001
                        problems.append(f"{rec.image} or its mask cannot be opened ({type(exc).__name__}: {exc}): "
                                        f"replace it with an intact copy")
        return problems

    def _finish(self, *, check_files: bool, check_masks: bool = False) -> None:
        for split in SPLITS:
            if not self.records.get(split):
                raise DataError(f"{self.title}: split {split!r} has no items under {self.dataset_dir}; see {self.card}")
        if check_files:
            problems = self.file_problems()
            if problems:
                more = f" (and {len(problems) - 1} more; `vlprompt data check {self.name} --root ...` lists all)" \
                    if len(problems) > 1 else ""
                raise DataError(f"{self.title}: {problems[0]}{more}")
            if check_masks:
                self.check_masks()

    def check_masks(self) -> None:
        """Decode every mask once; a :class:`DataError` names the first that is unreadable or not binary."""
        for records in self.records.values():
            for rec in records:
                read_mask(rec.masks, image=str(rec.image))

    def load_item(self, split: str, i: int) -> tuple[Image.Image, np.ndarray]:
        """Decoded image and boolean mask of item ``i`` of ``split`` (native size)."""
        rec = self._split(split)[i]
        image = read_image(rec.image)
        return image, read_mask(rec.masks, size=image.size, image=str(rec.image))


# ============================================================================ medvlsm layout
class MedVLSMDataset(FileSegmentationSource):
    """A dataset in the medvlsm/TuneVLSeg layout (``images/``, ``masks/``, ``anns/{train,val,test}.json``).

    Args:
        root: the DATA folder that holds ``<folder>/``; default ``$VLPROMPT_DATA``.
        folder: the dataset folder under ``root`` (default: the class's medvlsm folder name; ``""`` for the
            generic ``medvlsm`` source means ``root`` itself is the dataset folder).
        stop_at_end: append ``.`` to prompts (TuneVLSeg's ``insert_stop_at_last``, on in its experiments).
        check_files: at start-up, check that every image and mask exists and that sizes match (file headers).
        check_masks: with ``check_files``, also decode every mask once at start-up and refuse a non-binary one
            (before any training; masks are small); off, a bad mask fails when its item is read.
    """

    name = "medvlsm"
    title = "medvlsm layout"
    family = "segmentation (medvlsm layout)"
    folder = ""
    #: image/mask sub-folders per split when not ``images``/``masks`` (CAMUS)
    split_dirs: dict[str, tuple[str, str]] = {}

    def __init__(
        self,
        root: str | None = None,
        *,
        folder: str | None = None,
        stop_at_end: bool = False,
        check_files: bool = True,
        check_masks: bool = True,
    ) -> None:
        self.root = resolve_data_root(root)
        self.dataset_dir = self.root / (self.folder if folder is None else folder)
        self.stop_at_end = stop_at_end
        self._require_layout()
        self.anns_files = {split: self.dataset_dir / "anns" / f"{split}.json" for split in SPLITS}
        self.records = {split: self._read_anns(split) for split in SPLITS}
        self._finish(check_files=check_files, check_masks=check_masks)

    def _dirs(self, split: str) -> tuple[Path, Path]:
        img, msk = self.split_dirs.get(split, ("images", "masks"))
        return self.dataset_dir / img, self.dataset_dir / msk

    def _require_layout(self) -> None:
        d = self.dataset_dir
        if not d.is_dir():
            raise DataError(f"{self.title}: dataset folder {d} does not exist (root {self.root}, folder "
                            f"{self.folder!r}): lay the data out as described in {self.card}, or pass root=/folder= ")
        if not (d / "anns").is_dir():
            hint = ""
            if any(d.glob("*_mask*.png")) or any(d.rglob("*_mask.png")) or (d / "masks").is_dir():
                hint = (" It looks like an original release (images and masks, no annotations): read it with a "
                        "release reader (kvasir_seg_release, busi_release) or write the medvlsm layout with "
                        f"`vlprompt data convert <release> --root {self.root} --out DIR`.")
            raise DataError(f"{self.title}: no anns/ folder in {d}: the medvlsm layout needs anns/{{train,val,test}}.json "
                            f"(from naamiinepal/medvlsm data/<dataset>/anns, or `vlprompt data convert`).{hint}")
        for split in SPLITS:
            for sub in self._dirs(split):
                if not sub.is_dir():
                    raise DataError(f"{self.title}: expected the folder {sub} (medvlsm layout: images/, masks/, anns/); "
                                    f"see {self.card}")

    def _read_anns(self, split: str) -> list[SegRecord]:
        path = self.anns_files[split]
        if not path.is_file():
            raise DataError(f"{self.title}: annotation file {path} does not exist: the medvlsm layout needs "
                            f"anns/train.json, anns/val.json and anns/test.json (see {self.card})")
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise DataError(f"{self.title}: annotation file {path} is empty: it must be a JSON list of records "
                            f"{{img_name, mask_name, prompts}}; restore it or regenerate it with `vlprompt data convert`")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{self.title}: annotation file {path} is not valid JSON ({exc}): restore it from "
                            f"naamiinepal/medvlsm or regenerate it with `vlprompt data convert`") from exc
        if not isinstance(data, list):
            raise DataError(f"{self.title}: annotation file {path} must hold a JSON list of records, not "
                            f"{type(data).__name__}")
        if not data:
            raise DataError(f"{self.title}: annotation file {path} is empty (an empty list): split {split!r} needs at "
                            f"least one record {{img_name, mask_name, prompts}}")
        image_dir, mask_dir = self._dirs(split)
        records = []
        for i, rec in enumerate(data):
            where = f"{path} record {i}"
            if not isinstance(rec, Mapping):
                raise DataError(f"{where} is a {type(rec).__name__}, not an object {{img_name, mask_name, prompts}}")
            for key in ("img_name", "mask_name", "prompts"):
                if key not in rec:
                    raise DataError(f"{where} lacks {key!r} (records need img_name, mask_name and prompts): fix the "
                                    f"file or regenerate it with `vlprompt data convert`")
            img, msk = rec["img_name"], rec["mask_name"]
            for key, value in (("img_name", img), ("mask_name", msk)):
                if not isinstance(value, str) or not value:
                    raise DataError(f"{where}: {key} must be a non-empty file name, got {value!r}")
                if not _inside(value):
                    raise DataError(f"{where}: {key} {value!r} points outside "
                                    f"{'images/' if key == 'img_name' else 'masks/'} of {self.dataset_dir}: names must "
                                    f"be relative to those folders (no absolute path, no '..'); fix the annotation")
            prompts = validate_prompts(rec["prompts"], where=where)
            records.append(SegRecord(name=img, image=image_dir / img, masks=(mask_dir / msk,), prompts=prompts,
                                     where=where))
        return records

    def _identity_extra(self) -> dict:
        return {"anns_sha256": {s: sha256_file(p) for s, p in self.anns_files.items()}, "stop_at_end": self.stop_at_end}


_MEDVLSM = "naamiinepal/medvlsm@dc36a3a data/<folder>/anns (the files TuneVLSeg reads)"


class KvasirSEG(MedVLSMDataset):
    """Kvasir-SEG polyps (Jha et al., MMM 2020) in the medvlsm layout, folder ``kvasir_polyp``."""

    name, title, folder = "kvasir_seg", "Kvasir-SEG (medvlsm layout)", "kvasir_polyp"
    published_sizes = {"train": 800, "val": 100, "test": 100, "from": f"counted in {_MEDVLSM}"}


class BUSI(MedVLSMDataset):
    """BUSI breast ultrasound (Al-Dhabyani et al. 2020) in the medvlsm layout, folder ``busi`` (normal images
    included, with empty masks). The original release is read by ``busi_release``."""

    name, title, folder = "busi", "BUSI (medvlsm layout)", "busi"
    published_sizes = {"train": 624, "val": 78, "test": 78, "from": f"counted in {_MEDVLSM}"}


class ClinicDB(MedVLSMDataset):
    """CVC-ClinicDB polyps (Bernal et al. 2015) in the medvlsm layout, folder ``clinicdb_polyp``."""

    name, title, folder = "clinicdb", "CVC-ClinicDB (medvlsm layout)", "clinicdb_polyp"
    published_sizes = {"train": 490, "val": 61, "test": 61, "from": f"counted in {_MEDVLSM}"}


class BKAI(MedVLSMDataset):
    """BKAI-IGH NeoPolyp polyps (Ngoc Lan et al. 2021) in the medvlsm layout, folder ``bkai_polyp``."""

    name, title, folder = "bkai", "BKAI-IGH NeoPolyp (medvlsm layout)", "bkai_polyp"
    published_sizes = {"train": 800, "val": 100, "test": 100, "from": f"counted in {_MEDVLSM}"}


class ISIC2016(MedVLSMDataset):
    """ISIC-2016 skin lesions (Gutman et al. 2016) in the medvlsm layout, folder ``isic``."""

    name, title, folder = "isic2016", "ISIC-2016 (medvlsm layout)", "isic"
    published_sizes = {"train": 810, "val": 90, "test": 379, "from": f"counted in {_MEDVLSM}"}


class DFU2022(MedVLSMDataset):
    """DFUC-2022 diabetic foot ulcers (Kendrick et al. 2022) in the medvlsm layout, folder ``dfu``."""

    name, title, folder = "dfu2022", "DFU-2022 (medvlsm layout)", "dfu"
    published_sizes = {"train": 1600, "val": 200, "test": 200, "from": f"counted in {_MEDVLSM}"}


class CheXlocalize(MedVLSMDataset):
    """CheXlocalize chest X-ray pathologies (Saporta et al. 2022) in the medvlsm layout, folder ``chexlocalize``."""

    name, title, folder = "chexlocalize", "CheXlocalize (medvlsm layout)", "chexlocalize"
    published_sizes = {"train": 1279, "val": 446, "test": 452, "from": f"counted in {_MEDVLSM}"}


class CAMUS(MedVLSMDataset):
    """CAMUS echocardiography (Leclerc et al. 2019) in the medvlsm layout, folder ``camus``.

    Images and masks live in per-split folders (``images/train`` serves train and val, ``images/test``
    test), as TuneVLSeg's ``image_text_mask_camus.yaml``; ``mask_name`` carries the structure folder
    (``mask_1/...``, ``mask_2/...``, ``mask_3/...``).
    """

    name, title, folder = "camus", "CAMUS (medvlsm layout)", "camus"
    split_dirs = {"train": ("images/train", "masks/train"), "val": ("images/train", "masks/train"),
                  "test": ("images/test", "masks/test")}
    published_sizes = {"train": 4800, "val": 600, "test": 600,
                       "from": f"val/test counted in {_MEDVLSM}; train derived (its train.json is not in the snapshot "
                               "we read): 1,600 training images (patients 51-450; Adhikari et al., Synthetic Boost, "
                               "Sec. 2.2, naamiinepal/synthetic-boost@a0c3409 paper/revised_submission.tex) x 3 "
                               "structures, as in val/test; 1,600 + 200 val = the 1,800 images of camus/images/train "
                               "counted in naamiinepal/tunevlseg@7956bcd notebooks/TuneVLSeg_UMAP-Image.ipynb"}


# ============================================================================ original releases
def _find_dir(root: Path, folder: str | None, candidates: Sequence[str], *, what: str, card: str) -> Path:
    if folder is not None:
        d = root / folder
        if not d.is_dir():
            raise DataError(f"{what}: folder {d} does not exist: pass root= the DATA folder and folder= the dataset "
                            f"folder under it (see {card})")
        return d
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    if (root / "images").is_dir() or (root / "masks").is_dir():
        return root
    raise DataError(f"{what}: none of {', '.join(c + '/' for c in candidates)} exists under {root}: pass root= the DATA "
                    f"folder that holds it, or folder= its name (see {card})")


def _read_id_list(path: Path) -> list[str]:
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise DataError(f"id list {path} is empty: restore the MediaEval list, or delete it to use the default split")
    return [Path(i).stem if Path(i).suffix.lower() in IMAGE_EXTENSIONS else i for i in ids]


class KvasirSEGRelease(FileSegmentationSource):
    """The original Kvasir-SEG release: ``images/<id>.jpg`` with ``masks/<id>.jpg`` (JPEG masks, thresholded).

    Splits (deterministic, stable under subsets: an image's split depends on its id only):

    - with the MediaEval-2020 id lists (``splits_mediaeval2020/{train,val}.txt``, or ``train.txt``/``val.txt``
      in the dataset folder, or ``split_dir=``): **test** is the MediaEval ``val`` list; the MediaEval ``train``
      list is divided into **val** (ids with ``crc32(id) % 10 == 0``, about 10 %) and **train** (the rest).
      Listed ids without an image are skipped with a warning (subsets).
    - without lists: ``crc32("kvasir_seg/" + id) % 10`` gives test (0), val (1), train (2..9): about 80/10/10,
      the proportions of medvlsm's 800/100/100.

    Prompts: ``p0`` empty and ``p1`` ``polyp`` (medvlsm's p0/p1); ``vlprompt data convert`` generates p2..p9.
    Prompts p0/p1 equal those the conversion writes, so results on the release and on its conversion agree.
    """

    name, title = "kvasir_seg_release", "Kvasir-SEG (original release)"
    family = "segmentation (original release)"
    folder_candidates = ("kvasir_seg", "Kvasir-SEG", "kvasir-seg")

    def __init__(self, root: str | None = None, *, folder: str | None = None, split_dir: str | None = None,
                 use_split_lists: bool = True, check_files: bool = True, check_masks: bool = True) -> None:
        self.root = resolve_data_root(root)
        self.dataset_dir = _find_dir(self.root, folder, self.folder_candidates, what=self.title, card=self.card)
        images_dir, masks_dir = self.dataset_dir / "images", self.dataset_dir / "masks"
        for d in (images_dir, masks_dir):
            if not d.is_dir():
                raise DataError(f"{self.title}: expected the folder {d} (the release has images/ and masks/); see "
                                f"{self.card}")
        images = {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}
        masks = {p.stem: p for p in sorted(masks_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}
        if not images:
            raise DataError(f"{self.title}: no images in {images_dir}; see {self.card}")
        missing = sorted(set(images) - set(masks))
        if missing:
            raise DataError(f"{self.title}: image {images[missing[0]]} has no mask (expected {masks_dir}/{missing[0]}.jpg "
                            f"or another image extension; {len(missing)} image(s) without mask): every image needs a "
                            f"mask of the same name in masks/; restore it from the release archive")
        orphans = sorted(set(masks) - set(images))
        if orphans:
            log.warning("%s: %d mask(s) without image ignored (first: %s)", self.title, len(orphans), masks[orphans[0]])
        self.split_files = self._split_files(split_dir) if use_split_lists else {}
        assign = self._assign(sorted(images))
        self.records = {s: [] for s in SPLITS}
        for stem in sorted(images):
            split = assign.get(stem)
            if split is None:
                continue
            self.records[split].append(SegRecord(name=images[stem].name, image=images[stem], masks=(masks[stem],),
                                                 prompts={"p0": "", "p1": PROMPT_SPECS[self.name].p1()},
                                                 where=f"{images[stem]}"))
        self._finish(check_files=check_files, check_masks=check_masks)

    def _split_files(self, split_dir: str | None) -> dict[str, Path]:
        dirs = [Path(split_dir)] if split_dir else [self.dataset_dir / "splits_mediaeval2020", self.dataset_dir]
        for d in dirs:
            files = {"train": d / "train.txt", "val": d / "val.txt"}
            if all(f.is_file() for f in files.values()):
                return files
        if split_dir:
            raise DataError(f"{self.title}: split_dir {split_dir} lacks train.txt and val.txt (the MediaEval-2020 lists)")
        return {}

    def _assign(self, stems: list[str]) -> dict[str, str]:
        if not self.split_files:
            return {s: ("test", "val")[b] if b < 2 else "train"
                    for s in stems for b in [_stable_bucket("kvasir_seg", s)]}
        train_ids, test_ids = (_read_id_list(self.split_files[k]) for k in ("train", "val"))
        present = set(stems)
        out: dict[str, str] = {}
        for i in train_ids:
            if i in present:
                out[i] = "val" if zlib.crc32(i.encode()) % 10 == 0 else "train"
        for i in test_ids:
            if i in present:
                out[i] = "test"
        absent = len(set(train_ids) | set(test_ids)) - len(out)
        if absent:
            log.warning("%s: %d id(s) of the MediaEval lists have no image in %s (a subset of the release?); they are "
                        "skipped", self.title, absent, self.dataset_dir / "images")
        unlisted = present - set(out)
        if unlisted:
            log.warning("%s: %d image(s) are in neither MediaEval list and are not used (first: %s)", self.title,
                        len(unlisted), sorted(unlisted)[0])
        return out

    def _identity_extra(self) -> dict:
        return {"split_lists": {k: (str(p), sha256_file(p)) for k, p in self.split_files.items()},
                "split_rule": "mediaeval" if self.split_files else "crc32 80/10/10"}


_BUSI_MASK = re.compile(r"^(?P<image>.+)_mask(?:_(?P<k>\d+))?$")
_BUSI_CLASS = re.compile(r"^(benign|malignant|normal)\b", re.IGNORECASE)


class BUSIRelease(FileSegmentationSource):
    """The original BUSI release (Al-Dhabyani et al. 2020): ``<class> (N).png`` with ``<class> (N)_mask.png``.

    Every PNG under the dataset folder is read (per-class folders of ``Dataset_BUSI_with_GT`` or flat
    ``images/`` + ``masks/``); a file whose stem ends in ``_mask`` or ``_mask_<k>`` is a mask of the image with
    the stem before it; several masks of one image are merged (union). ``normal`` images have empty masks.
    File names keep their spaces. Splits: ``crc32("busi/" + image stem) % 10`` gives test (0), val (1), train
    (2..9), about 80/10/10 like medvlsm's 624/78/78, stable under subsets.

    Prompts: ``p0`` empty, ``p1`` ``breast tumor in the breast ultrasound image`` (``no breast tumor ...`` for
    normal images, as medvlsm's BUSI annotations name the absence); ``vlprompt data convert`` generates more.
    """

    name, title = "busi_release", "BUSI (original release)"
    family = "segmentation (original release)"
    folder_candidates = ("busi", "Dataset_BUSI_with_GT", "BUSI")

    def __init__(self, root: str | None = None, *, folder: str | None = None, check_files: bool = True,
                 check_masks: bool = True) -> None:
        self.root = resolve_data_root(root)
        self.dataset_dir = _find_dir(self.root, folder, self.folder_candidates, what=self.title, card=self.card)
        images: dict[str, Path] = {}
        masks: dict[str, list[tuple[int, Path]]] = {}
        for p in sorted(self.dataset_dir.rglob("*")):
            if p.suffix.lower() not in IMAGE_EXTENSIONS or not p.is_file():
                continue
            m = _BUSI_MASK.match(p.stem)
            if m:
                masks.setdefault(m.group("image"), []).append((int(m.group("k") or 0), p))
            else:
                if p.stem in images:
                    raise DataError(f"{self.title}: two images named {p.stem}: {images[p.stem]} and {p}; keep one")
                images[p.stem] = p
        if not images:
            raise DataError(f"{self.title}: no images under {self.dataset_dir}; see {self.card}")
        missing = sorted(set(images) - set(masks))
        if missing:
            raise DataError(f"{self.title}: image {images[missing[0]]} has no mask (expected "
                            f"'{missing[0]}_mask.png' beside it or in masks/; {len(missing)} image(s) without mask): "
                            f"restore the mask from the release archive")
        orphans = sorted(set(masks) - set(images))
        if orphans:
            raise DataError(f"{self.title}: mask {masks[orphans[0]][0][1]} has no image '{orphans[0]}.png' "
                            f"({len(orphans)} orphan mask(s)): restore the image or remove the mask")
        self.records = {s: [] for s in SPLITS}
        self.merged = 0
        for stem in sorted(images):
            category = (_BUSI_CLASS.match(stem).group(1).lower() if _BUSI_CLASS.match(stem) else "")
            files = tuple(p for _, p in sorted(masks[stem]))
            self.merged += len(files) > 1
            b = _stable_bucket("busi", stem)
            split = ("test", "val")[b] if b < 2 else "train"
            p1 = PROMPT_SPECS[self.name].p1(empty=category == "normal")
            self.records[split].append(SegRecord(name=images[stem].name, image=images[stem], masks=files,
                                                 prompts={"p0": "", "p1": p1}, category=category,
                                                 where=str(images[stem])))
        self._finish(check_files=check_files, check_masks=check_masks)

    def _identity_extra(self) -> dict:
        return {"split_rule": "crc32 80/10/10", "merged_masks": self.merged}




#: names that left this module in the 0.1 layout change (prompts and conversion), with their new module
MOVED_NAMES = {
    **dict.fromkeys(("PromptSpec", "SIZE_LIMITS", "mask_attributes", "generate_prompts"),
                    "vlprompt.data.medseg_prompts"),
    "convert_to_medvlsm": "vlprompt.data.medseg_convert",
}


def __getattr__(name: str):
    """``vlprompt.data.medseg.<name>`` of a name that moved: warn and return it from its new module."""
    if name not in MOVED_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"vlprompt.data.medseg.{name} is deprecated and will be removed in the next release; import "
                  f"{MOVED_NAMES[name]}.{name} instead", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(MOVED_NAMES[name]), name)
