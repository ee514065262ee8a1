"""``vlprompt data check NAME --root DIR [--strict] [--decode]``: is a dataset laid out and complete?

:func:`check_dataset` builds the registered source without stopping at the first problem and reports:
the layout (the source's own errors), class count and split sizes against the expected values when the
split file is the official one (or the dataset has no split file to verify), the split checksum, missing
images and, with ``decode``, images that fail to decode. Every problem says how to fix it. Nothing is
written into the data root.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from vlprompt.data.base import DataError
from vlprompt.data.coop import expected_stats
from vlprompt.data.folder import ImageListSource, decode_error
from vlprompt.data.progress import progress
from vlprompt.data.progress import progress as bar
from vlprompt.data.seg_dataset import mask_value_problem, prompt_keys, read_image
from vlprompt.learners.registry import get_registry

log = logging.getLogger(__name__)

_SHOW = 5


@dataclass
class CheckReport:
    """Outcome of :func:`check_dataset`: ``ok`` when there are no ``problems``; ``warnings`` do not fail it."""

    name: str
    root: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"name": self.name, "root": self.root, "ok": self.ok, "problems": self.problems,
                "warnings": self.warnings, "facts": self.facts}


class WarningCollector(logging.Handler):
    """Collects the messages of warning (and worse) records, e.g. of the data loggers while a source is built."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _build(source_cls: type, root: str, *, strict: bool) -> tuple[object, list[str]]:
    """The source built without start-up file checks, and the warnings it logged."""
    params = inspect.signature(source_cls.__init__).parameters
    kwargs = {k: v for k, v in (("strict_checksum", strict), ("check_files", False), ("on_corrupt", "fail"))
              if k in params}
    return _build_with(source_cls, root, kwargs)


def split_overlaps(source: ImageListSource) -> str | None:
    """The problem when one image is listed in two splits (a test image seen in training inflates every
    number measured on it), or None."""
    seen: dict[str, str] = {}
    clashes: list[str] = []
    for split in source.splits:
        for p in source.paths(split):
            key = os.path.normpath(str(p))
            first = seen.setdefault(key, split)
            if first != split:
                clashes.append(f"{p} ({first} and {split})")
    if not clashes:
        return None
    return (f"the splits overlap: {len(clashes)} image(s) are listed in two splits (first: "
            f"{', '.join(clashes[:_SHOW])}); training images in val/test inflate every result. Fix the split file so "
            "that train, val and test are disjoint")


def check_dataset(name: str, root: str, *, strict: bool = False, decode: bool = False,
                  source_cls: type | None = None) -> CheckReport:
    """Check the dataset registered as ``name`` (or ``source_cls``) under the data root ``root``.

    Args:
        name: registry name (``eurosat``...); also the key of the expected sizes.
        root: the data root passed to the source.
        strict: a split file that differs from the official one is a problem (else a warning).
        decode: decode every image once and report the unreadable ones (slow on large datasets).
        source_cls: the source class to use instead of the registry's.
    """
    report = CheckReport(name=name, root=str(root))
    if source_cls is None:
        source_cls = get_registry("datasets").get(name)
    report.facts["class"] = f"{source_cls.__module__}.{source_cls.__qualname__}"
    init_params = inspect.signature(source_cls.__init__).parameters
    if "root" not in init_params and len([p for p in init_params.values() if p.kind == p.POSITIONAL_OR_KEYWORD]) < 2:
        report.facts["files"] = f"{name} is generated in memory (no files, no --root needed): nothing to check"
        return report
    if getattr(source_cls, "task", "classification") == "segmentation":
        return check_segmentation(report, source_cls, root, strict=strict, decode=decode)
    try:
        source, logged = _build(source_cls, root, strict=strict)
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    report.warnings.extend(logged)
    ident = source.identity()
    sizes = source.split_sizes() if isinstance(source, ImageListSource) else {}
    report.facts.update(classes=len(source.classnames), sizes=sizes)
    for key in ("split_file", "split_sha256", "official_split", "classnames_file", "classnames_official"):
        if key in ident:
            report.facts[key] = ident[key]
    expected = expected_stats(name)
    official = ident.get("official_split")
    if official is None and getattr(source, "split_filename", ""):
        report.warnings.append(f"no official sha256 is known for {source.split_filename}, so the split file cannot "
                               f"be verified; its sizes are compared with the reported ones")
    if expected is not None:
        report.facts["expected"] = {"classes": expected["classes"], "sizes": expected["sizes"],
                                    "from": expected["sizes_from"]}
        if official is False:
            report.facts["compared"] = "not compared: the split file is not the official one"
        else:
            _compare(report, source, expected, sizes, verified=official is True)
    if not isinstance(source, ImageListSource):
        return report
    overlap = split_overlaps(source)
    if overlap:
        report.problems.append(overlap)
    missing = source.missing_files()
    report.facts["missing_files"] = len(missing)
    if missing:
        report.problems.append(
            f"{len(missing)} listed image(s) are missing under {getattr(source, 'image_root', root)} (first: "
            f"{', '.join(missing[:_SHOW])}): complete the download as described in {source.card}, or use a split "
            f"file that matches your images")
    if decode:
        _decode(report, source, skip=set(missing))
    return report


def _compare(report: CheckReport, source, expected: dict, sizes: dict, *, verified: bool) -> None:
    how = "the official split file" if verified else expected["sizes_from"]
    report.facts["compared"] = f"class count and split sizes against {how}"
    if len(source.classnames) != expected["classes"]:
        report.problems.append(
            f"{len(source.classnames)} classes, expected {expected['classes']} ({how}): use the complete dataset and "
            f"the official split/class files as described in {source.card}")
    for split, n in expected["sizes"].items():
        if sizes.get(split) != n:
            report.problems.append(
                f"split {split!r} has {sizes.get(split)} images, expected {n} ({how}): an incomplete download or a "
                f"different split file; see {source.card}")


def _decode(report: CheckReport, source: ImageListSource, *, skip: set[str]) -> None:
    bad: dict[str, str] = {}
    done: list[list[str]] = []
    decoded = 0
    for split in progress(source.splits, desc="decoding images (per split)", unit="split"):
        paths = source.paths(split)
        if any(paths == other for other in done):
            continue
        done.append(paths)
        known = {p: "missing" for p in skip} | bad
        decoded += len({p for p in paths if p not in known})
        for item in source.verify_images(split, known=known):
            if item.path not in skip:
                bad.setdefault(item.path, item.error)
    report.facts["decoded"] = decoded
    report.facts["unreadable"] = len(bad)
    if bad:
        first = "; ".join(f"{p}: {e}" for p, e in list(bad.items())[:_SHOW])
        report.problems.append(
            f"{len(bad)} image(s) cannot be decoded (first: {first}): replace them with intact copies from the "
            f"original archive, or build the dataset with on_corrupt='skip' to drop them")


# --------------------------------------------------------------------------- pre-flight check of a run
def _cheap_image_error(path: str) -> str | None:
    """``None`` when ``path`` looks like an intact image, else why not: the file exists and is not empty, PIL
    recognises its header, and a JPEG / PNG ends with its end marker (a truncated download fails here)."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with Image.open(path) as im:
            fmt = im.format
        with open(path, "rb") as fh:
            fh.seek(max(0, size - 64))
            tail = fh.read()
    except Exception as exc:  # noqa: BLE001 - any failure makes the file unusable
        return f"{type(exc).__name__}: {exc}"
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        return "truncated JPEG (no end-of-image marker)"
    if fmt == "PNG" and b"IEND" not in tail:
        return "truncated PNG (no IEND chunk)"
    return None


def preflight_images(sources, *, full: bool = False, progress: bool = False) -> None:
    """Check every image file of every split of ``sources`` before a run trains anything.

    Cheap by default (header and end marker of each file, see :func:`_cheap_image_error`); ``full=True``
    decodes every image. Sources without image files (the toy world) are skipped. Raises
    :class:`~vlprompt.data.base.DataError` naming the first unreadable files and the fixes.
    """
    paths: dict[str, str] = {}
    for source in sources:
        if not isinstance(source, ImageListSource):
            continue
        for split in source.splits:
            for p in source.paths(split):
                paths.setdefault(p, source.name)
    if not paths:
        return
    check = decode_error if full else _cheap_image_error
    todo = sorted(paths)
    bad: list[tuple[str, str]] = []
    iterator = todo
    if progress:
        iterator = bar(todo, desc=f"checking images ({'full decode' if full else 'headers'})", unit="img")
    for p in iterator:
        error = check(p) if os.path.isfile(p) else "missing"
        if error is not None:
            bad.append((p, error))
    if bad:
        first = "; ".join(f"{p}: {e}" for p, e in bad[:_SHOW])
        name = paths[bad[0][0]]
        raise DataError(
            f"{len(bad)} of {len(todo)} image(s) this run reads are unreadable (first: {first}); nothing has been "
            f"trained yet. Replace them with intact copies, or build the dataset with on_corrupt='skip'; "
            f"`vlprompt data check {name} --root DIR --decode` lists them all; --check_images none skips this check"
        )
    log.info("checked %d image(s) (%s)", len(todo), "full decode" if full else "headers")


# --------------------------------------------------------------------------- segmentation
def check_segmentation(report: CheckReport, source_cls: type, root: str, *, strict: bool = False,
                       decode: bool = False) -> CheckReport:
    """Check a file-backed segmentation source: layout and annotations (the source's own errors), every image
    paired with existing mask(s) of its size, every mask binary (decoded: masks are small), empty masks counted
    per split, split sizes against the published ones (a warning, a problem with ``strict``), prompt keys, and
    with ``decode`` every image decoded once. Nothing is written into the data root."""
    params = inspect.signature(source_cls.__init__).parameters
    kwargs = {"check_files": False} if "check_files" in params else {}
    try:
        source, logged = _build_with(source_cls, root, kwargs)
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    report.warnings.extend(logged)
    sizes = {split: source.size(split) for split in source.records}
    report.facts["sizes"] = sizes
    published = getattr(source, "published_sizes", None)
    if published:
        report.facts["expected"] = published
        for split, n in published.items():
            if split == "from" or n is None or sizes.get(split) == n:
                continue
            msg = (f"split {split!r} has {sizes.get(split)} records, expected {n} ({published['from']}): a subset or "
                   f"different annotation files; numbers on it are not comparable with published ones (see "
                   f"{source.card})")
            (report.problems if strict else report.warnings).append(msg)
    keys = sorted({k for recs in source.records.values() for r in recs for k in prompt_keys(r.prompts)},
                  key=lambda k: int(k[1:]))
    report.facts["prompt_keys"] = keys
    file_problems = source.file_problems(sizes=True)
    report.facts["unpaired_or_mismatched"] = len(file_problems)
    report.problems.extend(file_problems[:_SHOW])
    if len(file_problems) > _SHOW:
        report.problems.append(f"... and {len(file_problems) - _SHOW} more file problem(s) like the above")
    empty: dict[str, int] = {}
    not_binary: list[str] = []
    unreadable: list[str] = []
    for split, records in source.records.items():
        empty[split] = 0
        for rec in progress(records, desc=f"checking masks ({split})", unit="img"):
            if not rec.image.is_file() or not rec.masks or not all(m.is_file() for m in rec.masks):
                continue
            union = None
            for m in rec.masks:
                try:
                    with Image.open(m) as im:
                        grey = np.asarray(im.convert("L"))
                except Exception as exc:  # noqa: BLE001
                    unreadable.append(f"{m}: {type(exc).__name__}: {exc}")
                    continue
                problem = mask_value_problem(grey)
                if problem is not None:
                    not_binary.append(f"{m}: {problem}")
                    continue
                union = grey if union is None else np.maximum(union, grey)
            if union is not None and not (union >= 128).any():
                empty[split] += 1
            if decode:
                try:
                    read_image(rec.image)
                except DataError as exc:
                    unreadable.append(str(exc))
    report.facts["empty_masks"] = empty
    report.facts["non_binary_masks"] = len(not_binary)
    report.facts["unreadable"] = len(unreadable)
    if not_binary:
        report.problems.append(f"{len(not_binary)} mask(s) are not binary 0/255 (first: {'; '.join(not_binary[:_SHOW])})")
    if unreadable:
        report.problems.append(f"{len(unreadable)} file(s) cannot be decoded (first: {'; '.join(unreadable[:_SHOW])}): "
                               f"replace them with intact copies")
    return report


def _build_with(source_cls: type, root: str, kwargs: dict) -> tuple[object, list[str]]:
    """``source_cls(root, **kwargs)`` and the warnings it logged under ``vlprompt.data`` (kept off the console)."""
    logger = logging.getLogger("vlprompt.data")
    handler, propagate, level = WarningCollector(), logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    try:
        source = source_cls(root, **kwargs)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        logger.setLevel(level)
    return source, handler.messages


