"""The segmentation half of the learner contract check, for plugin authors' CI.

:func:`vlprompt.learners.testing.check_learner` checks a learner on the classification path (a tiny random
CLIP). A learner that declares ``"segmentation"`` in its ``tasks`` must also work when a vision-language
segmentation model hosts it; :func:`check_segmentation_learner` checks that on a tiny random CLIPSeg through
the real host module (:class:`~vlprompt.modules.segmentation.PromptSegmenter`), so it lives here, above the
learners layer. Use both in a plugin's tests::

    from vlprompt.learners.testing import check_learner
    from vlprompt.modules.testing import check_segmentation_learner

    check_learner(MyLearner)
    check_segmentation_learner(MyLearner)   # only if MyLearner.tasks includes "segmentation"
"""

from __future__ import annotations

import logging

import torch

from vlprompt.backbones.base import VLBackbone
from vlprompt.learners.base import PromptLearner
from vlprompt.learners.testing import tiny_vlsm
from vlprompt.metrics.segmentation import dice_bce_loss, weight_decay_groups
from vlprompt.modules.segmentation import PromptSegmenter

__all__ = ["check_segmentation_learner"]

log = logging.getLogger(__name__)

#: per-image prompts of the check: repeated phrases (learners see each unique prompt once per batch) and one
#: with a full stop, as a dataset with ``stop_at_end`` writes it
CHECK_PROMPTS = ("a round polyp", "a dark lesion", "a round polyp", "the left ventricle.")


def check_segmentation_learner(learner_cls: type, *, init_kwargs: dict | None = None,
                               backbone: VLBackbone | None = None, steps: int = 2) -> None:
    """Check that ``learner_cls`` works on the segmentation track; raise AssertionError naming what failed.

    Checks: ``"segmentation"`` is among its ``tasks``; the host module accepts it; mask logits of four random
    images (one prompt each) have shape ``[4, H, W]`` and are finite; the Dice + BCE loss is finite; a
    trainable learner receives non-zero gradients and its learned state changes under ``steps`` AdamW steps
    (a learner with nothing to train has no learned state); the backbone never requires gradients and its
    tensors do not change; evaluation is deterministic.

    Args:
        learner_cls: the learner class (as registered).
        init_kwargs: constructor arguments (default: none).
        backbone: a frozen segmentation backbone (default: :func:`vlprompt.learners.testing.tiny_vlsm`).
        steps: optimisation steps for the training checks.
    """
    name = getattr(learner_cls, "__name__", repr(learner_cls))
    assert isinstance(learner_cls, type) and issubclass(learner_cls, PromptLearner), (
        f"{name} is not a subclass of vlprompt.learners.PromptLearner")
    assert "segmentation" in tuple(learner_cls.tasks), (
        f"{name}.tasks = {tuple(learner_cls.tasks)!r} does not declare 'segmentation'; add it (tasks = "
        "('classification', 'segmentation')) or do not run the segmentation check")
    backbone = backbone if backbone is not None else tiny_vlsm()
    frozen = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = PromptSegmenter(backbone, learner_cls(**dict(init_kwargs or {})), overlays=0)
        size = backbone.preprocess.image_size
        gen = torch.Generator().manual_seed(0)
        images = torch.rand(len(CHECK_PROMPTS), 3, size, size, generator=gen)
        masks = (torch.rand(len(CHECK_PROMPTS), size, size, generator=gen) > 0.7).float()
        prompts = list(CHECK_PROMPTS)
        learner = module.learner
        learner.train()
        state = learner.learned_state()
        if learner.trainable:
            assert state, f"{name} is trainable but learned_state() is empty: nothing would be saved"
            before = {k: v.detach().clone() for k, v in state.items()}
            assert any(p.requires_grad for p in learner.parameters()), (
                f"{name} is trainable but none of its parameters requires a gradient, so no learned parameter "
                "received a gradient")
            opt = torch.optim.AdamW(weight_decay_groups(learner, learner.optimizer_groups(), 0.01), lr=1e-2)
            for step in range(steps):
                opt.zero_grad()
                logits = module.mask_logits(images, prompts)
                assert logits.shape == (len(prompts), size, size), (
                    f"{name}: mask logits of shape {tuple(logits.shape)}, expected {(len(prompts), size, size)}")
                loss = dice_bce_loss(logits, masks)
                assert torch.isfinite(loss), f"{name}: the segmentation loss is {float(loss)} at step {step}"
                loss.backward()
                learner.transform_gradients()
                grads = [p.grad for p in learner.parameters() if p.requires_grad]
                assert any(g is not None and bool(g.abs().sum() > 0) for g in grads), (
                    f"{name}: no learned parameter received a gradient from the mask loss")
                opt.step()
            after = learner.learned_state()
            assert any(not torch.equal(before[k], after[k].detach()) for k in before), (
                f"{name}: {steps} optimisation step(s) changed no learned tensor")
        else:
            assert not any(p.requires_grad for p in learner.parameters()), (
                f"{name}.trainable is False but it has parameters that require gradients")
        learner.eval()
        with torch.no_grad():
            first = module.mask_logits(images, prompts)
            again = module.mask_logits(images, prompts)
        assert torch.isfinite(first).all(), f"{name}: non-finite mask logits in evaluation"
        assert torch.allclose(first, again, rtol=1e-5, atol=1e-6), f"{name}: evaluation is not deterministic"
    assert not any(p.requires_grad for p in backbone.parameters()), "the backbone must stay frozen"
    changed = [k for k, v in backbone.state_dict().items() if not torch.equal(v, frozen[k])]
    assert not changed, f"{name} changed backbone tensors: {changed[:3]}"
    log.info("%s passed the segmentation contract check", name)
