"""A learner that wraps another one (TPT, GRAM): the forward pass and the learned tensors are the inner's.

Subclasses set :attr:`WrappedLearner.wrapped` (e.g. a property returning their ``learner`` / ``inner``
config argument) and add their own method on top; this class holds the delegation they share, once.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlprompt.learners.base import PromptLearner


class WrappedLearner(PromptLearner):
    """Delegates image encoding, text features, logits, tunable and learned tensors, the prompt record and the
    resource track to :attr:`wrapped`."""

    @property
    def wrapped(self) -> PromptLearner:
        raise NotImplementedError(f"{type(self).__name__} must say which learner it wraps")

    @property
    def modifies_image_encoder(self) -> bool:  # type: ignore[override]
        return bool(self.wrapped.modifies_image_encoder)

    @property
    def transfers_to_new_classes(self) -> bool:  # type: ignore[override]
        return bool(self.wrapped.transfers_to_new_classes)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.wrapped.encode_images(images)

    def text_features(self) -> torch.Tensor:
        return self.wrapped.text_features()

    def cached_text_features(self) -> torch.Tensor:
        return self.wrapped.cached_text_features()

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.wrapped.logits(image_features)

    def tunable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return self.wrapped.tunable_parameters()

    def learned_state(self) -> dict[str, torch.Tensor]:
        return self.wrapped.learned_state()

    def load_prompts(self, path: str | Path, *, check_classnames: bool = True) -> None:
        self.wrapped.load_prompts(path, check_classnames=check_classnames)

    def resource_track(self) -> tuple[str, ...]:
        """The wrapped learner's resources, then the wrapper's own (:attr:`resources`), without repeats."""
        return tuple(dict.fromkeys((*self.wrapped.resource_track(), *getattr(self, "resources", ()))))

    def prompt_record(self) -> dict:
        return {**self.wrapped.prompt_record(), "wrapped_by": type(self).__name__}

    def invalidate_text_cache(self) -> None:
        super().invalidate_text_cache()
        try:
            inner = self.wrapped
        except AttributeError:  # called by the base class before the wrapped learner is set
            return
        inner.invalidate_text_cache()
