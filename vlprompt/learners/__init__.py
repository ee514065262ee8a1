"""Prompt learners and the plugin API: everything a third-party learner needs, importable from here.

The contract (:class:`PromptLearner`, :class:`LearnerError`, :data:`FAMILIES`), the backbone interface it
receives (:class:`VLBackbone`), the shared prompt machinery (:mod:`vlprompt.learners.prompts`), the plugin
registry (:mod:`vlprompt.learners.registry`) and, for a plugin's own tests, :mod:`vlprompt.learners.testing`
(not imported here: it builds a tiny CLIP). The built-in learners live in their own folders
(``vlprompt.learners.coop`` ...) and may be subclassed.
"""

from vlprompt.backbones.base import BackboneError, VLBackbone
from vlprompt.learners.base import FAMILIES, LearnerError, PromptLearner, cosine_logits
from vlprompt.learners.prompts.conditional import (
    encode_conditioned_prompts,
    encode_paired_prompts,
)
from vlprompt.learners.prompts.layers import (
    ClassPrompts,
    ClassTokenPosition,
    DeepPrompts,
    context_from_words,
    random_context,
    template_features,
    text_features,
)
from vlprompt.learners.prompts.tta import TestTimeMethod, TTAError, TTAStep
from vlprompt.learners.prompts.vl_layers import PromptConfigError, VisualPrompts
from vlprompt.learners.registry import RegistryError, get_registry, resolve_class_path
from vlprompt.learners.wrapper import WrappedLearner

__all__ = [
    "FAMILIES", "BackboneError", "ClassPrompts", "ClassTokenPosition", "DeepPrompts", "LearnerError",
    "PromptConfigError", "PromptLearner", "RegistryError", "TTAError", "TTAStep", "TestTimeMethod", "VLBackbone",
    "VisualPrompts", "WrappedLearner", "context_from_words", "cosine_logits", "encode_conditioned_prompts",
    "encode_paired_prompts", "get_registry", "random_context", "resolve_class_path", "template_features",
    "text_features",
]
