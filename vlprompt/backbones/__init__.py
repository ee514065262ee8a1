"""Frozen vision-language backbones behind one narrow interface."""

from vlprompt.backbones.base import BackboneError, BackboneInfo, PreprocessConfig, VLBackbone
from vlprompt.backbones.open_clip import OpenCLIPBackbone
from vlprompt.backbones.toyclip import ToyCLIP, ToyCLIP2

__all__ = ["BackboneError", "BackboneInfo", "PreprocessConfig", "VLBackbone", "OpenCLIPBackbone", "ToyCLIP", "ToyCLIP2"]
