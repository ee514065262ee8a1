"""Issue 29, segmentation: NSD and HD95 against hand-computed cases, their streaming means, and the text-ignored
controls (empty and shuffled prompts) recorded beside the real prompts' scores."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from seg_fakes import FakeSegSource, fake_vlsm

from vlprompt.data.base import DataError
from vlprompt.leaderboards.select import shots_cell
from vlprompt.learners.base import LearnerError
from vlprompt.learners.coop import CoOp
from vlprompt.metrics.segmentation import SegmentationScores, boundary_scores
from vlprompt.modules.segmentation import PromptSegmenter
from vlprompt.protocols.segmentation import SegmentationProtocol, nested_subset_indices


def logits_of(masks: torch.Tensor) -> torch.Tensor:
    """Mask logits whose thresholded prediction is exactly ``masks``."""
    return (masks * 2 - 1) * 10.0


def test_boundary_scores_hand_computed_cases() -> None:
    pred, gt = torch.zeros(5, 20, 20), torch.zeros(5, 20, 20)
    pred[0, 5, 5], gt[0, 5, 10] = 1, 1                      # two single pixels 5 px apart: every distance is 5
    pred[1, 4:12, 4:12], gt[1, 4:12, 6:14] = 1, 1            # 8 x 8 squares shifted 2 px: no boundary pixel > 2 px
    gt[2, 3:6, 3:6] = 1                                      # nothing predicted, something there
    pred[3, 2:9, 2:9], gt[3, 2:9, 2:9] = 1, 1                # identical
    # sample 4: both empty
    nsd, hd = boundary_scores(logits_of(pred), gt, tolerance_px=2.0)
    assert nsd.tolist() == [0.0, 1.0, 0.0, 1.0, 1.0]
    assert hd[[0, 1, 3, 4]].tolist() == [5.0, 2.0, 0.0, 0.0]
    assert hd[2].item() == pytest.approx(math.hypot(20, 20))  # one side empty: the image diagonal
    nsd5, _ = boundary_scores(logits_of(pred[:1]), gt[:1], tolerance_px=5.0)
    assert nsd5.item() == 1.0                                 # 5 px apart is within a 5 px tolerance
    nsd1, hd100 = boundary_scores(logits_of(pred[1:2]), gt[1:2], tolerance_px=1.0, percentile=100)
    assert 0.0 < nsd1.item() < 1.0 and hd100.item() == 2.0


def test_nsd_of_a_shifted_rectangle_counts_the_boundary_pixels_out_of_tolerance() -> None:
    """A 6 x 10 rectangle (rows 5-10) against itself shifted down 3 px (rows 8-13), tolerance 2. Each boundary
    has 28 pixels (2 rows of 10, 2 x 4 more on the vertical edges). Ground truth: row 5 is 3 px from the other
    boundary (out), row 10 is 2 px from row 8 (in), the vertical-edge pixels of rows 6-9 are at 2, 1, 0, 0 px (in):
    18 of 28 within tolerance; the shifted mask mirrors it (row 13 out). NSD = 36 / 56; HD95 = 3."""
    gt = torch.zeros(1, 30, 30)
    gt[0, 5:11, 5:15] = 1
    pred = gt.roll(3, dims=1)
    nsd, hd = boundary_scores(logits_of(pred), gt, tolerance_px=2.0)
    assert nsd.item() == pytest.approx(36 / 56, abs=1e-6)
    assert hd.item() == 3.0


def test_boundary_scores_reject_bad_arguments() -> None:
    x = torch.zeros(1, 8, 8)
    with pytest.raises(ValueError, match="tolerance_px"):
        boundary_scores(x, x, tolerance_px=-1)
    with pytest.raises(ValueError, match="same shape"):
        boundary_scores(x, torch.zeros(1, 8, 9))


def test_streaming_scores_equal_the_per_sample_means() -> None:
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(6, 24, 24)
    for i in range(6):
        y, x = (int(v) for v in torch.randint(0, 12, (2,), generator=g))
        masks[i, y:y + 8, x:x + 10] = 1
    logits = torch.stack([logits_of(masks[i].roll(i % 3, dims=1)) for i in range(6)])
    scores = SegmentationScores(boundary=True, tolerance_px=1.0)
    scores.update(logits[:4], masks[:4])
    scores.update(logits[4:], masks[4:])
    out = scores.compute()
    nsd, hd = boundary_scores(logits, masks, tolerance_px=1.0)
    assert out["nsd"] == pytest.approx(100 * float(nsd.mean()))
    assert out["hd95"] == pytest.approx(float(hd.mean()))
    plain = SegmentationScores()
    assert plain.update(logits, masks).shape == (6,)
    assert set(plain.compute()) == {"dice", "iou"}  # without ``boundary``: Dice / IoU only


def _evaluate(module: PromptSegmenter, tmp_path: Path, stage: str = "test") -> dict[str, float]:
    data = SegmentationProtocol(FakeSegSource(), batch_size=4, seed=1)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    (trainer.test if stage == "test" else trainer.validate)(module, datamodule=data)
    return module.eval_results[stage]


def test_text_controls_are_scored_beside_the_real_prompts(tmp_path: Path) -> None:
    data = SegmentationProtocol(FakeSegSource(), batch_size=4, seed=1)
    module = PromptSegmenter(fake_vlsm(), CoOp(), overlays=0, task=data.task, text_controls=["empty", "shuffled"])
    out = _evaluate(module, tmp_path)
    for key in ("dice", "iou", "nsd", "hd95", "dice_text_empty", "iou_text_empty", "dice_text_shuffled",
                "iou_text_shuffled", "text_shuffled_changed"):
        assert key in out, key
    # the fake source alternates two phrases, so every shuffled prompt differs from the image's own
    assert out["text_shuffled_changed"] == 100.0
    assert out["dice_text_empty"] != out["dice"]

    # the controls use the same images: the empty control equals a plain run whose every prompt is ""
    plain = PromptSegmenter(fake_vlsm(), CoOp(), overlays=0, task=data.task, boundary_metrics=False)
    plain.learner.set_learned_state(module.learner.learned_state())
    images = torch.stack([FakeSegSource().dataset("test", preprocess=None)[i]["image"] for i in range(4)])
    with torch.no_grad():
        empty = plain.mask_logits(images, [""] * 4)
    assert torch.isfinite(empty).all()


def test_without_controls_nothing_extra_is_recorded_and_validation_stays_cheap(tmp_path: Path) -> None:
    data = SegmentationProtocol(FakeSegSource(), batch_size=4, seed=1)
    module = PromptSegmenter(fake_vlsm(), CoOp(), overlays=0, task=data.task, boundary_metrics=False)
    out = _evaluate(module, tmp_path)
    assert set(out) == {"dice", "iou"}
    module = PromptSegmenter(fake_vlsm(), CoOp(), overlays=0, task=data.task, text_controls=["empty"])
    assert set(_evaluate(module, tmp_path, "val")) == {"dice", "iou"}  # NSD / HD95 / controls: test split only


def test_unknown_text_control_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown \\['blank'\\]"):
        PromptSegmenter(fake_vlsm(), CoOp(), text_controls=["blank"])


# ------------------------------------------------------------------------------------ label fractions


def test_label_fractions_are_nested_draws_of_one_seeded_permutation() -> None:
    n = 37
    draws = {f: nested_subset_indices(n, f, seed=3) for f in (0.1, 0.25, 0.5)}
    assert [len(draws[f]) for f in (0.1, 0.25, 0.5)] == [4, 10, 19]  # ceil(3.7), ceil(9.25), ceil(18.5)
    assert set(draws[0.1]) <= set(draws[0.25]) <= set(draws[0.5])
    assert nested_subset_indices(n, 1.0, seed=3) is None              # all images
    assert nested_subset_indices(n, 0.1, seed=4) != draws[0.1]        # the seed draws
    assert nested_subset_indices(10, 0.3, seed=3) == nested_subset_indices(10, 0.3, seed=3)
    with pytest.raises(DataError, match="label_fraction=1.5"):
        nested_subset_indices(n, 1.5, seed=3)


def test_label_fraction_trains_on_its_share_and_is_recorded(tmp_path: Path) -> None:
    data = SegmentationProtocol(FakeSegSource(), batch_size=4, seed=1, label_fraction=0.25)
    module = PromptSegmenter(fake_vlsm(), CoOp(), overlays=0, task=data.task, boundary_metrics=False)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    assert len(trainer.train_dataloader.dataset) == 2 and data.shots == 2   # ceil(0.25 * 8)
    assert data.identity()["label_fraction"] == 0.25
    result = {"shots": 2, "config": {"data": {"init_args": {"label_fraction": 0.25}}}}
    assert shots_cell(result) == "2 (25%)" and shots_cell({"shots": None}) == "all"
    with pytest.raises(DataError, match="set one of them"):
        SegmentationProtocol(FakeSegSource(), shots=4, label_fraction=0.5)
    with pytest.raises(DataError, match="label_fraction=0"):
        SegmentationProtocol(FakeSegSource(), label_fraction=0)


def test_fit_without_validation_is_refused_before_the_first_step(tmp_path: Path) -> None:
    data = SegmentationProtocol(FakeSegSource(), batch_size=4, seed=1)
    module = PromptSegmenter(fake_vlsm(), CoOp(), overlays=0, task=data.task)
    trainer = pl.Trainer(max_epochs=2, check_val_every_n_epoch=1000, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(LearnerError, match="check_val_every_n_epoch 1"):
        trainer.fit(module, datamodule=data)
    assert module.best["epoch"] is None  # nothing trained
