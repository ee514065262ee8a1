"""The embedded toy CLIP: an open_clip architecture pretrained by vlprompt on the toy world.

It ships inside the package (``assets/``) and loads through :class:`OpenCLIPBackbone` like any real CLIP:
the model config is registered with open_clip and the weights are a local ``pretrained`` file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import open_clip

from vlprompt.backbones.base import BackboneError
from vlprompt.backbones.open_clip import OpenCLIPBackbone, Precision

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
TOY_MODEL = "vlprompt-toyclip"
TOY_CHECKPOINT = ASSETS / "vlprompt-toyclip.safetensors"
TOY_CARD = ASSETS / "vlprompt-toyclip.card.json"

open_clip.add_model_config(ASSETS)


def embedded_checkpoint() -> Path:
    """Path of the shipped checkpoint; a clear error if the package was installed without it."""
    if not TOY_CHECKPOINT.is_file():
        raise BackboneError(
            f"the embedded toy CLIP checkpoint {str(TOY_CHECKPOINT)!r} is missing. Reinstall vlprompt, or rebuild "
            "it with `vlprompt pretrain --config configs/pretrain/toyclip.yaml`."
        )
    return TOY_CHECKPOINT


def embedded_card() -> dict:
    """The shipped checkpoint's card: command, sha256, training facts and measured accuracies."""
    return json.loads(TOY_CARD.read_text()) if TOY_CARD.is_file() else {}


class ToyCLIP(OpenCLIPBackbone):
    """The embedded toy CLIP (48 px, ViT with patch 6, 8.4M parameters), frozen.

    Args:
        pretrained: ``embedded`` for the shipped checkpoint, a local file, or ``None`` for random weights.
        precision: weight dtype (``bf16`` ~3.5x faster on CPU).
    """

    def __init__(self, pretrained: str | None = "embedded", *, precision: Precision = "fp32") -> None:
        path = str(embedded_checkpoint()) if pretrained == "embedded" else pretrained
        super().__init__(TOY_MODEL, path, precision=precision)


#: the second-generation toy CLIP (same architecture and size; pretrained on the second world's captions:
#: named kinds, synonyms, families, two-tone looks, distractor words). See docs/toyclip2-design.md.
TOY2_MODEL = "vlprompt-toyclip2"
TOY2_CHECKPOINT = ASSETS / "vlprompt-toyclip2.safetensors"
TOY2_CARD = ASSETS / "vlprompt-toyclip2.card.json"


def embedded_checkpoint2() -> Path:
    """Path of the shipped second-generation checkpoint; a clear error if the package was installed without it."""
    if not TOY2_CHECKPOINT.is_file():
        raise BackboneError(
            f"the second-generation toy CLIP checkpoint {str(TOY2_CHECKPOINT)!r} is missing. Reinstall vlprompt, "
            "or rebuild it with `vlprompt pretrain --config configs/pretrain/toyclip2.yaml` and then "
            "`vlprompt pretrain --config configs/pretrain/toyclip2_stage2.yaml` (docs/toyclip2-design.md)"
            ", or pass pretrained: /path/to/vlprompt-toyclip2.safetensors; the first toy CLIP is the backbone "
            "`toyclip`."
        )
    return TOY2_CHECKPOINT


class ToyCLIP2(OpenCLIPBackbone):
    """The second-generation toy CLIP (``vlprompt-toyclip2``: the first one's architecture, 48 px, 8.4M
    parameters), frozen. Its class names are the named kinds of ``vlprompt.data.toyworld.lexicon``.

    Args:
        pretrained: ``embedded`` for the shipped checkpoint, a local file, or ``None`` for random weights.
        precision: weight dtype (``bf16`` ~3.5x faster on CPU).
    """

    def __init__(self, pretrained: str | None = "embedded", *, precision: Precision = "fp32") -> None:
        path = str(embedded_checkpoint2()) if pretrained == "embedded" else pretrained
        super().__init__(TOY2_MODEL, path, precision=precision)
