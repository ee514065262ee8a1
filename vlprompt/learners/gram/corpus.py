"""GRAM meta-training, step 1: the corpus of image-text pairs, encoded by the frozen backbone.

Sources: the embedded toy world, a CSV / JSON-lines file of ``image path, caption``, or webdataset shards (their
images spill to a memory-mapped file, :class:`ImageSpill`). See :mod:`vlprompt.learners.gram.meta`.
"""

from __future__ import annotations

import atexit
import csv
import json
import logging
import os
import random
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import center_crop, pil_to_tensor, resize

from vlprompt.data.toyworld.captions import caption, scene_attributes
from vlprompt.data.toyworld.render import STYLES, render, sample_scene

log = logging.getLogger(__name__)


class MetaError(ValueError):
    """Bad meta-training input; the message names the value and the fix."""


def toy_corpus(size: int, *, image_size: int, seed: int, chunk: int = 64) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Chunks ``(images [b, 3, S, S] in [0, 1], captions)`` of rendered toy-world scenes, styles mixed per chunk."""
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    done = 0
    while done < size:
        b = min(chunk, size - done)
        scene = sample_scene(b, generator=g)
        images, _ = render(scene, generator=g, style=rng.choice(STYLES), image_size=image_size)
        yield images, [caption(scene_attributes(scene, k), rng) for k in range(b)]
        done += b


def _pil_input(im, image_size: int) -> torch.Tensor:
    """A PIL image as a model input ``[3, S, S]`` in ``[0, 1]``: shorter side resized to ``S``, centre crop."""
    img = pil_to_tensor(im.convert("RGB")).float() / 255.0
    return center_crop(resize(img, image_size, antialias=True), [image_size, image_size])


def _load_image(path: Path, image_size: int) -> torch.Tensor:
    try:
        with Image.open(path) as im:
            return _pil_input(im, image_size)
    except (OSError, ValueError) as exc:
        raise MetaError(f"cannot read image {str(path)!r} ({exc}); fix or remove its row") from exc


def _shard_urls(urls: str | list[str]) -> list[str]:
    """Expand brace patterns (``cc3m-{000000..000009}.tar``) and check that local shards exist before any work."""
    try:
        import braceexpand  # deferred: optional (the meta extra), only for shard patterns
    except ImportError as exc:
        raise MetaError('corpus.urls brace patterns need braceexpand: pip install "vlprompt[meta]"') from exc
    patterns = [urls] if isinstance(urls, str) else list(urls)
    out = [u for pat in patterns for u in braceexpand.braceexpand(str(pat))]
    if not out:
        raise MetaError("corpus.urls is empty: give webdataset shard paths, e.g. shards/cc3m-{000000..000009}.tar")
    missing = [u for u in out if "://" not in u and not u.startswith("pipe:") and not Path(u).is_file()]
    if missing:
        raise MetaError(f"webdataset shard {missing[0]!r} does not exist ({len(missing)} of {len(out)} shards missing); "
                        "check corpus.urls")
    return out


def webdataset_pairs(urls: str | list[str], *, image_key: str = "jpg;jpeg;png;webp", caption_key: str = "txt",
                     image_size: int, limit: int | None = None) -> Iterator[tuple[torch.Tensor, str]]:
    """Stream ``(image [3, S, S] in [0, 1], caption)`` from webdataset shards (``image_key`` may list alternatives
    separated by ``;``). The first sample's keys are checked before any work; a sample missing them is an error
    naming its key and shard."""
    try:
        import webdataset as wds  # deferred: optional dependency (the meta extra)
    except ImportError as exc:
        raise MetaError("corpus.source 'webdataset' needs the webdataset package: pip install \"vlprompt[meta]\"") from exc
    shards = _shard_urls(urls)
    wanted = [k.strip().lower() for k in image_key.split(";") if k.strip()]
    stream = wds.WebDataset(shards, shardshuffle=False, empty_check=False).decode("pil")
    n = 0
    try:
        for sample in stream:
            keys = {k.lower(): k for k in sample if not k.startswith("__")}
            img_k = next((keys[k] for k in wanted if k in keys), None)
            cap_k = keys.get(caption_key.lower())
            if img_k is None or cap_k is None:
                col = "image_key" if img_k is None else "caption_key"
                raise MetaError(
                    f"webdataset sample {sample.get('__key__')!r} in {sample.get('__url__')!r} has no "
                    f"{image_key if img_k is None else caption_key!r} entry (it holds {sorted(keys)}); set corpus.{col}"
                )
            cap = sample[cap_k]
            cap = cap.decode("utf-8") if isinstance(cap, bytes) else str(cap)
            yield _pil_input(sample[img_k], image_size), cap.strip()
            n += 1
            if limit is not None and n >= limit:
                return
    except (OSError, ValueError) as exc:
        if isinstance(exc, MetaError):
            raise
        raise MetaError(f"webdataset shards {shards[0]!r}...: unreadable ({exc})") from exc
    if n == 0:
        raise MetaError(f"webdataset shards {shards[0]!r}... hold no samples")


class ImageSpill:
    """Append-only uint8 image store on disk, memory-mapped when read (``[N, 3, S, S]``); deleted at exit."""

    def __init__(self, image_size: int, directory: str | Path | None = None) -> None:
        fd, name = tempfile.mkstemp(prefix="vlprompt-corpus-", suffix=".u8", dir=directory)
        os.close(fd)
        self.path = Path(name)
        atexit.register(self.path.unlink, missing_ok=True)
        self.image_size = image_size
        self.count = 0

    def append(self, images: torch.Tensor) -> None:
        """Add images ``[b, 3, S, S]`` in ``[0, 1]``."""
        with self.path.open("ab") as fh:
            fh.write((images * 255).round().to(torch.uint8).contiguous().numpy().tobytes())
        self.count += int(images.shape[0])

    def tensor(self) -> torch.Tensor:
        """The stored images as a memory-mapped uint8 tensor ``[N, 3, S, S]`` (pages are read on access)."""
        s = self.image_size
        flat = torch.from_file(str(self.path), shared=False, size=self.count * 3 * s * s, dtype=torch.uint8)
        return flat.view(self.count, 3, s, s)


def caption_rows(path: str | Path, *, image_column: str = "image", caption_column: str = "caption") -> Iterator[tuple[Path, str]]:
    """Stream ``(image path, caption)`` from a CSV (header row) or JSON-lines file; paths are relative to the file.

    The file and its columns are checked on the first row, before any work.
    """
    path = Path(path)
    if not path.is_file():
        raise MetaError(f"corpus file {str(path)!r} does not exist")
    jsonl = path.suffix.lower() in {".jsonl", ".json", ".ndjson"}
    try:
        fh = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise MetaError(f"corpus file {str(path)!r} is unreadable ({exc})") from exc
    n = 0
    with fh:
        try:
            if jsonl:
                rows: Iterator[dict] = (json.loads(line) for line in fh if line.strip())
            else:
                rows = csv.DictReader(fh)
            for i, row in enumerate(rows):
                if not isinstance(row, dict):
                    raise MetaError(f"{str(path)!r} line {i + 1} is not a JSON object")
                for col in (image_column, caption_column):
                    if col not in row:
                        raise MetaError(
                            f"corpus file {str(path)!r} has no column {col!r} (columns: {sorted(row)}); set "
                            f"corpus.image_column / corpus.caption_column"
                        )
                n += 1
                yield (path.parent / str(row[image_column])), str(row[caption_column])
        except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
            raise MetaError(f"corpus file {str(path)!r} is unreadable ({exc}); expected CSV with a header or JSON lines") from exc
    if n == 0:
        raise MetaError(f"corpus file {str(path)!r} is empty: it needs image-caption rows")


@dataclass
class Corpus:
    """Encoded pairs: features ``[N, D]`` (L2-normalised), captions, and a way to get images back."""

    image_features: torch.Tensor
    text_features: torch.Tensor
    captions: list[str]
    images: torch.Tensor | None = None  # uint8 [N, 3, S, S] (toy world)
    paths: list[Path] = field(default_factory=list)  # (caption files: images are re-read on demand)
    image_size: int = 0

    def __len__(self) -> int:
        return len(self.captions)

    def get_images(self, idx: list[int]) -> torch.Tensor:
        if self.images is not None:
            return self.images[idx].float() / 255.0
        if not self.paths:
            raise MetaError("this corpus was encoded without keeping its images (keep_images=False)")
        return torch.stack([_load_image(self.paths[i], self.image_size) for i in idx])


@torch.no_grad()
def encode_corpus(backbone, source: dict, *, seed: int, keep_images: bool, chunk: int = 64) -> Corpus:
    """Encode a corpus config in chunks: ``{source: toyworld, size}``, ``{source: captions, path, image_column,
    caption_column}`` or ``{source: webdataset, urls, image_key, caption_key, size (optional limit), spill_dir}``."""
    size = backbone.preprocess.image_size
    kind = source.get("source", "toyworld")
    img_f, txt_f, caps, imgs, paths = [], [], [], [], []
    if kind == "toyworld":
        chunks = toy_corpus(int(source.get("size", 256)), image_size=size, seed=seed, chunk=chunk)
    elif kind == "captions":
        rows = caption_rows(source["path"], image_column=source.get("image_column", "image"),
                            caption_column=source.get("caption_column", "caption"))

        def _chunks() -> Iterator[tuple[torch.Tensor, list[str]]]:
            buf: list[tuple[Path, str]] = []
            for row in rows:
                buf.append(row)
                if len(buf) == chunk:
                    paths.extend(p for p, _ in buf)
                    yield torch.stack([_load_image(p, size) for p, _ in buf]), [c for _, c in buf]
                    buf = []
            if buf:
                paths.extend(p for p, _ in buf)
                yield torch.stack([_load_image(p, size) for p, _ in buf]), [c for _, c in buf]

        chunks = _chunks()
    elif kind == "webdataset":
        if "urls" not in source:
            raise MetaError("corpus.source 'webdataset' needs corpus.urls (shard paths, e.g. shards/cc3m-{000000..000009}.tar)")
        pairs = webdataset_pairs(source["urls"], image_key=source.get("image_key", "jpg;jpeg;png;webp"),
                                 caption_key=source.get("caption_key", "txt"), image_size=size,
                                 limit=int(source["size"]) if source.get("size") is not None else None)

        def _wds_chunks() -> Iterator[tuple[torch.Tensor, list[str]]]:
            buf: list[tuple[torch.Tensor, str]] = []
            for pair in pairs:
                buf.append(pair)
                if len(buf) == chunk:
                    yield torch.stack([i for i, _ in buf]), [c for _, c in buf]
                    buf = []
            if buf:
                yield torch.stack([i for i, _ in buf]), [c for _, c in buf]

        chunks = _wds_chunks()
    else:
        raise MetaError(f"corpus.source={kind!r} is unknown; use 'toyworld', 'captions' (CSV / JSON lines) or 'webdataset'")
    spill = ImageSpill(size, source.get("spill_dir")) if keep_images and kind == "webdataset" else None
    for images, captions in chunks:
        img_f.append(F.normalize(backbone.encode_image(images).float(), dim=-1))
        txt_f.append(F.normalize(backbone.encode_text(backbone.tokenize(captions)).float(), dim=-1))
        caps.extend(captions)
        if keep_images and kind == "toyworld":
            imgs.append((images * 255).round().to(torch.uint8))
        if spill is not None:
            spill.append(images)
    stored = torch.cat(imgs) if imgs else (spill.tensor() if spill is not None else None)
    if kind == "webdataset" and spill is None:
        log.info("webdataset corpus: images not kept (the inner learner reads image features only)")
    return Corpus(torch.cat(img_f), torch.cat(txt_f), caps, stored, paths, size)
