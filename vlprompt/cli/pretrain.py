"""``vlprompt pretrain --config ...``: pretrain a toy model (toy CLIP, toy VLSM, toy diffusion) with LightningCLI."""

from __future__ import annotations

import os
import warnings

import lightning.pytorch as pl
import yaml
from lightning.pytorch.cli import LightningCLI

from vlprompt.toyworld.pretrain import CaptionData, CLIPPretraining


def _pretrain_selects_classes(args: list[str]) -> bool:
    """Whether a ``--config`` file of ``vlprompt pretrain`` names its model class (``model: {class_path: ...}``)."""
    for i, a in enumerate(args):
        path = args[i + 1] if a == "--config" and i + 1 < len(args) else a.split("=", 1)[1] if a.startswith("--config=") else None
        if path and os.path.isfile(path):
            with open(path) as fh:
                cfg = yaml.safe_load(fh) or {}
            if isinstance(cfg.get("model"), dict) and "class_path" in cfg["model"]:
                return True
    return any(a.startswith("--model.class_path") or a.startswith("--model=") for a in args)


def pretrain_main(args: list[str]) -> None:
    """``vlprompt pretrain``: LightningCLI (fit) over the model and data the config names.

    A config whose ``model``/``data`` give a ``class_path`` (e.g. ``configs/pretrain/toyvlsm.yaml``: the toy VLSM)
    selects any LightningModule/LightningDataModule; otherwise the toy CLIP's :class:`CLIPPretraining` and
    :class:`CaptionData` (``configs/pretrain/toyclip.yaml``).
    """
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended", category=UserWarning)
    if _pretrain_selects_classes(args):
        LightningCLI(
            pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
            args=["fit", *args], save_config_callback=None, parser_kwargs={"fit": {"prog": "vlprompt pretrain"}},
        )
        return
    LightningCLI(
        CLIPPretraining, CaptionData, args=["fit", *args], save_config_callback=None,
        parser_kwargs={"fit": {"prog": "vlprompt pretrain"}},
    )
