"""GRAM meta artifacts: the meta-learned prompt initialisation and regulator in one safetensors file.

Tensors: ``init.<name>`` (the inner learner's ``learned_state()`` names) and ``regulator.<name>`` (``[3]``, see
:mod:`vlprompt.learners.gram.regulator`). Metadata (all strings): ``format``, ``backbone`` (JSON of the backbone's
identity), ``inner_class`` (import path), ``inner_config`` (JSON), ``shapes`` (JSON ``{name: shape}``),
``tensors_sha256`` (over the tensor bytes, checked on load: catches corruption a parser would miss) and
``provenance`` (JSON: config, command, corpus and cluster statistics, steps, time).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from vlprompt.data.atomic import save_safetensors
from vlprompt.learners.base import LearnerError, PromptLearner

FORMAT = "vlprompt.gram/1"
_BACKBONE_KEYS = ("name", "model", "pretrained", "checkpoint_sha256")


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of ``tensors`` in sorted name order."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def class_path(obj: object) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def learner_config(learner: PromptLearner) -> dict:
    """The learner's ``__init__`` keyword values read back from its attributes (JSON-serialisable ones only)."""
    out = {}
    for name in inspect.signature(type(learner).__init__).parameters:
        if name == "self" or not hasattr(learner, name):
            continue
        value = getattr(learner, name)
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[name] = value
    return out


def backbone_identity(backbone) -> dict:
    info = backbone.info.to_dict()
    return {k: info.get(k) for k in _BACKBONE_KEYS}


def same_backbone(a: dict, b: dict) -> bool:
    """Same weights: equal model and checkpoint sha256 when both are known (file paths differ between installs),
    else equal name, model and pretrained tag."""
    if a.get("checkpoint_sha256") and b.get("checkpoint_sha256"):
        return a.get("model") == b.get("model") and a["checkpoint_sha256"] == b["checkpoint_sha256"]
    return all(a.get(k) == b.get(k) for k in ("name", "model", "pretrained"))


@dataclass
class MetaArtifact:
    """What :func:`load_artifact` returns."""

    init: dict[str, torch.Tensor]
    regulator: dict[str, torch.Tensor]
    backbone: dict
    inner_class: str
    inner_config: dict
    provenance: dict = field(default_factory=dict)
    path: str = ""

    def check(self, backbone, inner: PromptLearner) -> None:
        """Refuse an artifact made for another backbone, inner learner or tensor shapes (e.g. another n_ctx)."""
        where = f"GRAM meta artifact {self.path!r}"
        mine = backbone_identity(backbone)
        if not same_backbone(self.backbone, mine):
            raise LearnerError(
                f"{where} was meta-trained on backbone {self.backbone} but this run uses {mine}. Meta-train one for "
                "this backbone (`vlprompt meta-train`) or use meta: null."
            )
        if self.inner_class != class_path(inner):
            raise LearnerError(
                f"{where} was meta-trained for inner learner {self.inner_class} but gram wraps {class_path(inner)}. "
                "Wrap the learner it was made for, or meta-train one for this learner."
            )
        own = {k: tuple(v.shape) for k, v in inner.learned_state().items()}
        saved = {k: tuple(v.shape) for k, v in self.init.items()}
        if own != saved:
            raise LearnerError(
                f"{where} holds tensors {saved} but the inner learner {class_path(inner)} (config "
                f"{learner_config(inner)}, artifact config {self.inner_config}) tunes {own}: another n_ctx, depth or "
                "number of classes? Use the inner config the artifact was meta-trained with."
            )


def save_artifact(
    path: str | Path,
    *,
    init: dict[str, torch.Tensor],
    regulator: dict[str, torch.Tensor],
    backbone,
    inner: PromptLearner,
    provenance: dict,
) -> Path:
    """Write a meta artifact atomically (temp file + ``os.replace``)."""
    tensors = {f"init.{k}": v.detach().cpu().float().contiguous() for k, v in init.items()}
    tensors.update({f"regulator.{k}": v.detach().cpu().float().contiguous() for k, v in regulator.items()})
    meta = {
        "format": FORMAT,
        "backbone": json.dumps(backbone_identity(backbone)),
        "inner_class": class_path(inner),
        "inner_config": json.dumps(learner_config(inner)),
        "shapes": json.dumps({k: list(v.shape) for k, v in init.items()}),
        "tensors_sha256": tensors_sha256(tensors),
        "provenance": json.dumps(provenance, default=str),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(tensors, path, metadata=meta)
    return path


def load_artifact(path: str | Path) -> MetaArtifact:
    """Read and verify a meta artifact; a missing, unreadable, foreign or corrupted file raises :class:`LearnerError`."""
    path = Path(path)
    if not path.is_file():
        raise LearnerError(f"GRAM meta artifact {str(path)!r} does not exist: give the path `vlprompt meta-train` wrote, or meta: null")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise LearnerError(f"GRAM meta artifact {str(path)!r} is not a readable safetensors file ({exc}); re-run `vlprompt meta-train`") from exc
    if meta.get("format") != FORMAT:
        raise LearnerError(f"{str(path)!r} is not a GRAM meta artifact (format {meta.get('format')!r}, expected {FORMAT!r})")
    if tensors_sha256(tensors) != meta.get("tensors_sha256"):
        raise LearnerError(f"GRAM meta artifact {str(path)!r} is corrupted: its tensors do not match the stored sha256; re-run `vlprompt meta-train`")
    try:
        art = MetaArtifact(
            init={k[5:]: v for k, v in tensors.items() if k.startswith("init.")},
            regulator={k[10:]: v for k, v in tensors.items() if k.startswith("regulator.")},
            backbone=json.loads(meta["backbone"]),
            inner_class=meta["inner_class"],
            inner_config=json.loads(meta["inner_config"]),
            provenance=json.loads(meta.get("provenance", "{}")),
            path=str(path),
        )
    except (KeyError, json.JSONDecodeError) as exc:
        raise LearnerError(f"GRAM meta artifact {str(path)!r} has damaged metadata ({exc}); re-run `vlprompt meta-train`") from exc
    if set(art.init) != set(art.regulator):
        raise LearnerError(f"GRAM meta artifact {str(path)!r} is inconsistent: init tensors {sorted(art.init)} vs regulator {sorted(art.regulator)}")
    return art
