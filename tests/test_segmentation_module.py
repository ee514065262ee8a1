"""Segmentation track: loss and metrics (pure functions vs the reference's formulas), optimiser groups, task
checks, paired text features of instance-conditioned learners, the Lightning module and the protocol run through
the same `run_experiment` machinery as classification, and the contract (one step + eval) of every learner that
declares segmentation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from seg_fakes import FakeSegSource, fake_vlsm
from torch import nn
from torch.utils.data import default_collate

from vlprompt.backbones.base import BackboneError
from vlprompt.learners.base import LearnerError
from vlprompt.learners.cocoop import CoCoOp
from vlprompt.learners.coop import CoOp
from vlprompt.learners.tmml import TMML
from vlprompt.modules.segmentation import PromptSegmenter
from vlprompt.learners.registry import get_registry
from vlprompt.metrics.segmentation import (
    SegmentationScores,
    bce_loss,
    binary_iou,
    dice_bce_loss,
    dice_loss,
    dice_per_sample,
    weight_decay_groups,
)
from vlprompt.learners.testing import tiny_clip, torch_threads

try:  # the CLIPSeg adapter's tiny random VLSM, once merged; the fake VLSM otherwise
    from vlprompt.learners.testing import tiny_vlsm as _tiny_vlsm
except ImportError:  # pragma: no cover - before the adapter lands
    _tiny_vlsm = None


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def _monai_dice_ce(logits, masks, lambda_dice=1.0, lambda_ce=0.2, smooth=1e-5):
    """The reference's loss (MONAI DiceCELoss(sigmoid=True), batch=False), written out for the test."""
    p = torch.sigmoid(logits).flatten(1)
    m = masks.flatten(1)
    dice = 1 - (2 * (p * m).sum(1) + smooth) / (p.sum(1) + m.sum(1) + smooth)
    return lambda_dice * dice.mean() + lambda_ce * F.binary_cross_entropy_with_logits(logits, masks)


# ------------------------------------------------------------------------------------ loss and metrics


def test_loss_equals_reference_dice_ce_on_nonempty_masks() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 9, 7, generator=g) * 3
    masks = (torch.rand(5, 9, 7, generator=g) > 0.6).float()
    masks[:, 0, 0] = 1  # no empty mask
    assert torch.allclose(dice_bce_loss(logits, masks), _monai_dice_ce(logits, masks), atol=1e-6)
    assert torch.allclose(dice_bce_loss(logits, masks, lambda_dice=0.5, lambda_ce=2.0),
                          _monai_dice_ce(logits, masks, 0.5, 2.0), atol=1e-6)
    assert torch.allclose(bce_loss(logits, masks), F.binary_cross_entropy_with_logits(logits, masks))
    # per sample, not over the batch: one sample's Dice does not depend on the other samples' sizes
    one = dice_loss(logits[:1], masks[:1])
    both = dice_loss(torch.cat([logits[:1], logits[:1]]), torch.cat([masks[:1], masks[:1]]))
    assert torch.allclose(one, both)


def test_loss_on_soft_targets_equals_monai() -> None:
    """TuneVLSeg trains on ``mask / 255`` (soft for JPEG masks): dice_bce_loss equals MONAI 1.4.0's
    ``DiceCELoss(sigmoid=True, lambda_dice, lambda_ce)`` on soft targets. The values were computed by MONAI on this
    very case (torch 2.14.1, CPU) in the scratch environment of tests/fixtures/tunevlseg_reference/make_fixtures.py:
    ``DiceCELoss(...)(logits, soft)`` with the tensors below, shape ``[3, 1, 12, 10]``."""
    g = torch.Generator().manual_seed(3034)
    logits = torch.randn(3, 1, 12, 10, generator=g) * 2
    soft = torch.rand(3, 1, 12, 10, generator=g)
    soft[:, :, :4] = 0.0
    soft[:, :, -3:] = 1.0
    assert float(logits.sum()) == pytest.approx(-58.28424835205078) and float(soft.sum()) == pytest.approx(172.25059509277344)
    for (ld, lc), monai in (((1.0, 0.2), 0.7760831117630005), ((0.5, 2.0), 2.5639827251434326)):
        ours = dice_bce_loss(logits[:, 0], soft[:, 0], lambda_dice=ld, lambda_ce=lc)
        assert float(ours) == pytest.approx(monai, rel=1e-6, abs=1e-6)
    # the intersection is sum(p * m): smp 0.6's sum(min(p, m)) would give 0.7146 here
    p_, m_ = torch.sigmoid(logits[:, 0]).flatten(1), soft[:, 0].flatten(1)
    by_hand = (1 - (2 * (p_ * m_).sum(1) + 1e-5) / (p_.sum(1) + m_.sum(1) + 1e-5)).mean()
    torch.testing.assert_close(dice_loss(logits[:, 0], soft[:, 0]), by_hand)


def test_loss_on_empty_mask_is_bce_only_and_gradients_flow() -> None:
    logits = torch.full((1, 4, 4), 2.0, requires_grad=True)
    masks = torch.zeros(1, 4, 4)
    assert float(dice_loss(logits, masks)) == 0.0  # smp: documented difference from MONAI
    loss = dice_bce_loss(logits, masks)
    assert torch.allclose(loss, 0.2 * F.binary_cross_entropy_with_logits(logits, masks))
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        dice_bce_loss(torch.zeros(2, 4, 4), torch.zeros(2, 1, 4, 4))


def test_dice_per_sample_and_iou_by_hand() -> None:
    logits = torch.full((3, 4, 4), -5.0)
    masks = torch.zeros(3, 4, 4)
    masks[0, :2] = 1  # 8 pixels
    logits[0, :1] = 5  # 4 predicted, all inside: dice 2*4/(4+8) = 2/3
    logits[1, 0, 0] = 5  # empty mask, one false positive: dice 0
    # sample 2: empty prediction of an empty mask: 1 (reference zero_division=1)
    dice = dice_per_sample(logits, masks)
    assert torch.allclose(dice, torch.tensor([2 / 3, 0.0, 1.0]))
    # dataset-level IoU: intersection 4, union 8 + 1 = 9
    assert abs(float(binary_iou(logits, masks)) - 4 / 9) < 1e-6
    # threshold 0.5 on the probability: logit 0 (p = 0.5) counts as foreground for Dice
    assert float(dice_per_sample(torch.zeros(1, 2, 2), torch.ones(1, 2, 2))[0]) == 1.0


def test_streamed_scores_equal_one_shot() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 6, 6, generator=g)
    masks = (torch.rand(7, 6, 6, generator=g) > 0.5).float()
    scores = SegmentationScores()
    for chunk in range(0, 7, 3):
        scores.update(logits[chunk:chunk + 3], masks[chunk:chunk + 3])
    out = scores.compute()
    assert abs(out["dice"] - 100 * float(dice_per_sample(logits, masks).mean())) < 1e-4
    assert abs(out["iou"] - 100 * float(binary_iou(logits, masks))) < 1e-4
    scores.reset()
    with pytest.raises(ValueError):
        scores.compute()


def test_weight_decay_groups_follow_the_reference_rule() -> None:
    class Learner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ctx = nn.Parameter(torch.zeros(4, 8))
            self.proj = nn.Linear(8, 8)
            self.norm = nn.LayerNorm(8)
            self.emb = nn.Embedding(3, 8)
            self.in_proj_weight = nn.Parameter(torch.zeros(8, 8))

    m = Learner()
    groups = weight_decay_groups(m, [{"params": [m.ctx, m.proj.weight, m.proj.bias, m.norm.weight], "lr_scale": 2.0},
                                     {"params": [m.emb.weight, m.in_proj_weight]}], 0.05)
    decayed = [p for g in groups if g["weight_decay"] == 0.05 for p in g["params"]]
    plain = [p for g in groups if g["weight_decay"] == 0.0 for p in g["params"]]
    assert {id(p) for p in decayed} == {id(m.proj.weight), id(m.in_proj_weight)}
    assert {id(p) for p in plain} == {id(m.ctx), id(m.proj.bias), id(m.norm.weight), id(m.emb.weight)}
    assert all(g["lr_scale"] == 2.0 for g in groups if any(p is m.ctx or p is m.proj.weight for p in g["params"]))


# ------------------------------------------------------------------------------------ task checks


def test_task_checks_come_before_training() -> None:
    from vlprompt.learners.gram import GRAM
    from vlprompt.learners.tpt import TPT

    for cls in (TPT, GRAM):
        assert "segmentation" not in cls.tasks
    with pytest.raises(LearnerError, match="serves \\['classification'\\], not 'segmentation'"):
        PromptSegmenter(fake_vlsm(), TPT())
    with pytest.raises(BackboneError, match="serves \\['classification'\\]"):
        PromptSegmenter(tiny_clip(), CoOp())
    with pytest.raises(LearnerError, match="class_specific: false"):
        PromptSegmenter(fake_vlsm(), CoOp(class_specific=True))


# ------------------------------------------------------------------------------------ paired text features


def _batch(n: int = 4) -> dict:
    bb = fake_vlsm()
    ds = FakeSegSource().dataset("train", preprocess=bb.preprocess)
    return default_collate([ds[i] for i in range(n)])


@pytest.mark.parametrize("cls", [CoCoOp, TMML])
def test_paired_text_features_equal_the_classifier_prompts(cls) -> None:
    torch.manual_seed(0)
    bb = fake_vlsm()
    learner = cls()
    learner.setup(bb, ["red circle", "blue square", "green triangle"])
    for p in learner.parameters():  # move away from the zero-initialised meta-nets
        if p.requires_grad:
            p.data.add_(0.1 * torch.randn_like(p))
    images = _batch()["image"]
    index = torch.tensor([2, 0, 0, 1])
    with torch.no_grad():
        feats = learner.encode_images(images)
        paired = learner.paired_text_features(feats, index)
        if cls is CoCoOp:
            from vlprompt.learners.prompts.conditional import encode_conditioned_prompts

            full = encode_conditioned_prompts(bb, learner.prompts, learner.conditioned_context(feats), chunk_size=64)
        else:
            full = learner.prompted_text_features(feats[:, 1:])
    assert paired.shape == (4, bb.embed_dim)
    assert torch.allclose(paired, full[torch.arange(4), index], atol=1e-5)


# ------------------------------------------------------------------------------------ module


def test_module_keeps_best_validation_dice_prompts() -> None:
    module = PromptSegmenter(fake_vlsm(), CoOp())
    best = {k: torch.full_like(v, 0.5) for k, v in module.learner.learned_state().items()}
    module.best = {"dice": 80.0, "epoch": 1, "state": best}
    module.on_fit_end()
    assert all(torch.equal(v, best[k]) for k, v in module.learner.learned_state().items())
    module.keep_best = False
    assert module.result_fields() == {"checkpoint_selection": "last epoch"}


def test_host_module_chosen_by_protocol(tmp_path: Path) -> None:
    from vlprompt.runs.config import host_classes
    from vlprompt.modules.classification import PromptClassifier
    from vlprompt.protocols.segmentation import SegmentationProtocol

    assert host_classes(["--config", "configs/quickstart.yaml"])[0] is PromptClassifier
    assert host_classes(["--data", "segmentation"]) == (PromptSegmenter, SegmentationProtocol)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  class_path: segmentation\n")
    assert host_classes(["--config", str(cfg)])[0] is PromptSegmenter
    assert host_classes(["--config", str(cfg), "--data", "base2new"])[0] is PromptClassifier


def _config(tmp_path: Path, learner: str, epochs: int = 2, backbone: str = "class_path: seg_fakes.FakeVLSM") -> Path:
    cfg = tmp_path / "seg.yaml"
    cfg.write_text(f"""
model:
  backbone:
    {backbone}
  learner:
    class_path: {learner}
  overlays: 2
data:
  class_path: segmentation
  init_args:
    dataset:
      class_path: seg_fakes.FakeSegSource
    batch_size: 4
trainer:
  max_epochs: {epochs}
  default_root_dir: {tmp_path / 'runs'}
""")
    return cfg


def test_fit_writes_result_with_dice_iou_overlays_and_selection(tmp_path: Path, capsys) -> None:
    from vlprompt.runs.driver import run_experiment

    result = run_experiment("fit", ["--config", str(_config(tmp_path, "coop")), "--seeds", "[1,2]",
                                    "--results_dir", str(tmp_path / "results")])
    assert set(result["summary"]) >= {"dice", "dice_std", "iou", "iou_std"}
    out = capsys.readouterr().out
    assert "dice" in out and "iou" in out
    assert result["protocol"] == "segmentation" and result["learner"] == "coop"
    assert result["checkpoint_selection"].startswith("best validation Dice")
    for row in result["per_seed"]:
        assert 1 <= row["selected_epoch"] <= 2 and 0 <= row["metrics"]["dice"] <= 100
        assert len(row["artifacts"]["overlays"]) == 2
    overlays = [a for k, a in result["artifacts"].items() if k.endswith("/overlays")]
    assert len(overlays) == 2 and all(len(a["paths"]) == len(a["sha256"]) == 2 for a in overlays)
    assert all(Path(p).is_file() and h for a in overlays for p, h in zip(a["paths"], a["sha256"]))
    from PIL import Image

    with Image.open(overlays[0]["paths"][0]) as im:
        assert im.width == 3 * im.height  # image | ground truth | prediction
    saved = json.loads(Path(result["_path"]).read_text())
    assert saved["per_seed"][0]["prompts_sha256"]
    # the saved prompts evaluate to the reported test metrics (same machinery as classification)
    test = run_experiment("test", ["--config", str(_config(tmp_path, "coop")), "--seeds", "[1]",
                                   "--results_dir", str(tmp_path / "results"),
                                   "--prompts", result["per_seed"][0]["prompts"]], show_summary=False)
    assert test["per_seed"][0]["metrics"] == result["per_seed"][0]["metrics"]


# ------------------------------------------------------------------------------------ contract


SEG_LEARNERS = [i for i in get_registry("learners").entries() if "segmentation" in getattr(i.obj, "tasks", ())]


def _vlsm():
    return _tiny_vlsm() if _tiny_vlsm is not None else fake_vlsm()


@pytest.mark.parametrize("info", SEG_LEARNERS, ids=[i.name for i in SEG_LEARNERS])
def test_every_segmentation_learner_trains_one_step_and_evaluates(info) -> None:
    torch.manual_seed(0)
    bb = _vlsm()
    module = PromptSegmenter(bb, info.obj())
    batch = _batch()
    batch["image"] = F.interpolate(batch["image"], size=bb.preprocess.image_size)
    batch["mask"] = F.interpolate(batch["mask"], size=bb.preprocess.image_size)
    module.learner.train()
    if module.learner.trainable:
        before = {k: v.clone() for k, v in module.learner.learned_state().items()}
        opt = torch.optim.AdamW(weight_decay_groups(module.learner, module.learner.optimizer_groups(), 0.01), lr=1e-2)
        _, _, loss = module._step(batch)
        assert torch.isfinite(loss)
        loss.backward()
        module.learner.transform_gradients()
        opt.step()
        after = module.learner.learned_state()
        assert any(not torch.equal(before[k], after[k]) for k in before), f"{info.name}: a step changed nothing"
    module.learner.eval()
    with torch.no_grad():
        logits = module.mask_logits(batch["image"], list(batch["prompt"]))
    size = bb.preprocess.image_size
    assert logits.shape == (4, size, size) and torch.isfinite(logits).all()
    assert not any(p.requires_grad for p in bb.parameters())


# ------------------------------------------------------------------------------------ leaderboard


def test_segmentation_leaderboard_table(tmp_path: Path) -> None:
    import csv

    from vlprompt.leaderboards.build import build_leaderboards
    from vlprompt.metrics import summarize_seeds
    from vlprompt.runs.results import SCHEMA

    root = tmp_path / "results"
    for learner, dice in (("coop", [60.0, 64.0, 62.0]), ("zero_shot", [40.0, 40.0, 40.0])):
        per_seed = [{"dice": d, "iou": d - 10} for d in dice]
        result = {
            "schema": SCHEMA, "protocol": "segmentation", "benchmark": "toy", "dataset": "toy_seg", "learner": learner,
            "learner_config": {}, "backbone": {"name": "clipseg", "model": "toyvlsm", "pretrained": "embedded",
                                               "checkpoint_sha256": "ab" * 32, "precision": "fp32"},
            "data": {"name": "toy_seg"}, "shots": None, "seeds": [1, 2, 3],
            "per_seed": [{"seed": i + 1, "metrics": m} for i, m in enumerate(per_seed)],
            "summary": summarize_seeds(per_seed), "config": {}, "command": f"vlprompt fit --model.learner {learner}",
            "versions": {"vlprompt": "0.1.0"}, "device": "cpu", "wall_seconds": 1.0,
            "created": "2026-12-02T01:00:00.000+00:00", "git": {"commit": None, "dirty": None},
        }
        path = root / "segmentation/toy/toy_seg" / f"{learner}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
    out = tmp_path / "lb"
    build_leaderboards(root, out)
    text = (out / "segmentation/toy/README.md").read_text()
    assert ("| learner | backbone | shots | seeds | Dice | Dice 95% CI | IoU | IoU 95% CI | vs next-higher row | "
            "train s/image | test s/image | peak RSS (MiB) | trainable params | device |") in text
    assert "62.00 ± 2.00" in text and "52.00 ± 2.00" in text and "40.00 ± 0.00" in text
    assert "best-validation-Dice" in text and "top-1 accuracy" not in text
    with open(out / "segmentation/toy/results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[0]["dice"]) == pytest.approx(62.0) and float(rows[0]["iou_std"]) == pytest.approx(2.0)


def test_overlay_panels_and_wandb_masks() -> None:
    import numpy as np

    from vlprompt.modules.overlays import overlay_panels
    from vlprompt.modules.overlays import wandb_mask_images

    image = torch.zeros(3, 8, 8)
    mask = torch.zeros(8, 8)
    mask[:4] = 1
    prob = torch.zeros(8, 8)
    prob[:, :4] = 0.9
    pic = np.asarray(overlay_panels(image, mask, prob))
    k = pic.shape[0] // 8
    assert pic.shape[1] == 3 * pic.shape[0]
    assert tuple(pic[0, 0]) == (0, 0, 0)  # the plain image
    assert pic[0, 8 * k, 1] > 0 and pic[-1, 8 * k, 1] == 0  # ground truth (top half) tinted green
    assert pic[-1, 16 * k, 0] > 0 and pic[-1, 24 * k - 1, 0] == 0  # prediction (left half) tinted red
    images = wandb_mask_images([{"image": image, "mask": mask, "prob": prob, "prompt": "a polyp", "name": "x.png"}])
    assert len(images) == 1 and set(images[0]._masks) == {"ground_truth", "prediction"}


@pytest.mark.parametrize("learner", ["cocoop", "zero_shot"])
def test_fit_on_the_tiny_clipseg(tmp_path: Path, learner: str) -> None:
    """The same run through the real CLIPSeg adapter (tiny random weights): instance-conditioned and untrained."""
    from vlprompt.runs.driver import run_experiment
    from vlprompt.learners.testing import tiny_vlsm_folder

    backbone = f"class_path: clipseg\n    init_args:\n      pretrained: {tiny_vlsm_folder()}"
    result = run_experiment("fit", ["--config", str(_config(tmp_path, learner, epochs=1, backbone=backbone)),
                                    "--seeds", "[1]", "--results_dir", str(tmp_path / "results")], show_summary=False)
    row = result["per_seed"][0]
    assert 0 <= row["metrics"]["dice"] <= 100 and 0 <= row["metrics"]["iou"] <= 100
    assert result["backbone"]["name"] and len(row["artifacts"]["overlays"]) == 2
    assert ("checkpoint_selection" in result) == (learner != "zero_shot")


def test_checkpoint_keeps_best_state_for_resume(tmp_path: Path) -> None:
    """A resumed seed continues with the best epoch seen before the kill (checkpoint loaded weights_only)."""
    module = PromptSegmenter(fake_vlsm(), CoOp())
    best = {k: torch.full_like(v, 0.25) for k, v in module.learner.learned_state().items()}
    module.best = {"dice": 55.5, "epoch": 3, "state": best}
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    assert not any(k.startswith("backbone.") for k in ckpt["state_dict"])
    torch.save(ckpt, tmp_path / "last.ckpt")
    loaded = torch.load(tmp_path / "last.ckpt", weights_only=True)
    fresh = PromptSegmenter(fake_vlsm(), CoOp())
    fresh.on_load_checkpoint(loaded)
    assert fresh.best["dice"] == 55.5 and fresh.best["epoch"] == 3
    assert all(torch.equal(fresh.best["state"][k], best[k]) for k in best)


SEG_YAMLS = ["protocols/segmentation.yaml", "learners/coop/tunevlseg.yaml", "learners/cocoop/tunevlseg.yaml",
             "learners/vpt/tunevlseg.yaml", "learners/maple/tunevlseg.yaml", "learners/shared_separate/tunevlseg.yaml",
             "learners/shared_attention/tunevlseg.yaml", "learners/zero_shot/segmentation.yaml",
             "datasets/toy_seg.yaml", "datasets/kvasir_seg_release.yaml"]
#: TuneVLSeg's decoder branch per learner config (None: off; COOPCLIPSeg never applies it)
SEG_BRANCH = {"learners/coop/tunevlseg.yaml": None, "learners/cocoop/tunevlseg.yaml": None,
              "learners/vpt/tunevlseg.yaml": "add", "learners/maple/tunevlseg.yaml": "residual",
              "learners/shared_separate/tunevlseg.yaml": "residual", "learners/shared_attention/tunevlseg.yaml": "residual"}


@pytest.mark.parametrize("name", SEG_YAMLS)
def test_segmentation_yamls_parse_on_top_of_the_seg_quickstart(name: str, monkeypatch) -> None:
    from vlprompt.runs.config import build_cli, VlpromptCLI

    monkeypatch.setattr(VlpromptCLI, "instantiate_classes", lambda self: None)
    repo = Path(__file__).resolve().parents[1]
    c = build_cli("fit", ["--config", str(repo / "configs/seg_quickstart.yaml"), "--config", str(repo / "configs" / name)])
    assert c.config.data.class_path == "vlprompt.protocols.segmentation.SegmentationProtocol"
    assert c.config.model.learner.class_path.count(".") >= 1
    assert c.config.model.lr == 2e-4 and c.config.model.lambda_ce == 0.2
    if name in SEG_BRANCH:
        branch = c.config.model.decoder_branch
        assert (branch and branch["mix"]) == SEG_BRANCH[name]
        assert branch is None or (branch["kernel_size"], branch["residual_ratio"]) == (5, 0.5)


def test_training_set_is_told_each_epoch(tmp_path: Path) -> None:
    """prompt_index -1 draws prompts per (seed, epoch, item): the module calls the training set's set_epoch."""
    import lightning.pytorch as pl

    from vlprompt.protocols.segmentation import SegmentationProtocol

    data = SegmentationProtocol(FakeSegSource(), batch_size=4, seed=1)
    module = PromptSegmenter(fake_vlsm(), CoOp(), overlays=0, task=data.task)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    assert trainer.train_dataloader.dataset.dataset.epochs == [0, 1]
    assert module.best["epoch"] in (0, 1) and module.best["dice"] is not None


# ------------------------------------------------------------------------------------ TuneVLSeg's decoder branch


def test_decoder_branch_is_tunevlseg_formula() -> None:
    """e = conv5x5_replicate(bilinear_up(z)); residual: (1 - r) y + r e with r starting at 0.5; add: y + e."""
    from vlprompt.modules.segmentation import DecoderBranch

    g = torch.Generator().manual_seed(5)
    z, y = torch.randn(2, 3, 5, 5, generator=g), torch.randn(2, 1, 20, 20, generator=g)
    res = DecoderBranch(3, 4, kernel_size=5, residual_ratio=0.5, mix="residual")
    up = F.interpolate(z, size=(20, 20), mode="bilinear", align_corners=False)
    e = F.conv2d(F.pad(up, (2, 2, 2, 2), mode="replicate"), res.conv.weight, res.conv.bias)
    assert float(res.ratio.detach()) == 0.5 and res.conv.weight.shape == (1, 3, 5, 5)
    torch.testing.assert_close(res(z, y), 0.5 * y + 0.5 * e)
    with torch.no_grad():
        res.ratio.fill_(0.2)
    torch.testing.assert_close(res(z, y), 0.8 * y + 0.2 * e)
    add = DecoderBranch(3, 4, mix="add")
    add.conv.load_state_dict(res.conv.state_dict())
    torch.testing.assert_close(add(z, y), y + e)
    assert sorted(n for n, _ in add.named_parameters()) == ["conv.bias", "conv.weight"]  # no unused ratio


def test_decoder_branch_options_are_checked() -> None:
    from vlprompt.modules.segmentation import DecoderBranch, make_decoder_branch

    with pytest.raises(ValueError, match="mix='sum'"):
        DecoderBranch(3, 4, mix="sum")
    with pytest.raises(ValueError, match="kernel_size=4 must be an odd"):
        DecoderBranch(3, 4, kernel_size=4)
    vlsm = _tiny_vlsm()
    with pytest.raises(ValueError, match=r"unknown keys \['ratio'\]"):
        make_decoder_branch(vlsm, {"ratio": 0.5})
    with pytest.raises(ValueError, match="FakeVLSM does not expose"):
        make_decoder_branch(fake_vlsm(), {})
    branch = make_decoder_branch(vlsm, {"mix": "add"})
    assert branch.conv.in_channels == vlsm.decoder_width and branch.stride == vlsm.decoder_stride


def test_decoder_branch_trains_with_the_learner_and_is_saved(tmp_path: Path) -> None:
    opts = {"kernel_size": 5, "residual_ratio": 0.5, "mix": "residual"}
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    masks = (torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    torch.manual_seed(0)
    plain = PromptSegmenter(_tiny_vlsm(), CoOp(n_ctx=2, ctx_init=None), overlays=0)
    torch.manual_seed(0)
    module = PromptSegmenter(_tiny_vlsm(), CoOp(n_ctx=2, ctx_init=None), overlays=0, decoder_branch=opts)
    assert torch.equal(plain.learner.ctx, module.learner.ctx)
    logits = module.mask_logits(images, ["a cat.", "a dog."])
    assert not torch.allclose(logits, plain.mask_logits(images, ["a cat.", "a dog."]))
    dice_bce_loss(logits, masks).backward()
    branch = dict(module.decoder_branch.named_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in branch.values())
    opt = module.configure_optimizers()["optimizer"]
    grouped = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert grouped[id(branch["conv.weight"])] == module.weight_decay and grouped[id(branch["ratio"])] == 0.0
    assert id(module.learner.ctx) in grouped
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    assert {k for k in ckpt["state_dict"] if k.startswith("decoder_branch.")} == {
        "decoder_branch.conv.weight", "decoder_branch.conv.bias", "decoder_branch.ratio"}
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert trainable == module.learner.ctx.numel() + sum(p.numel() for p in branch.values())
    with torch.no_grad():
        module.decoder_branch.ratio.fill_(0.3)
    report = module.seed_report(tmp_path)
    assert report["artifacts"]["decoder_branch"] == str(tmp_path / "decoder_branch.safetensors")
    fresh = PromptSegmenter(_tiny_vlsm(), CoOp(n_ctx=2, ctx_init=None), overlays=0, decoder_branch=opts)
    fresh.load_extra_learned(tmp_path)
    assert float(fresh.decoder_branch.ratio.detach()) == pytest.approx(0.3)
    assert torch.equal(fresh.decoder_branch.conv.weight, module.decoder_branch.conv.weight)
    with pytest.raises(LearnerError, match="decoder_branch.safetensors' does not exist"):
        fresh.load_extra_learned(tmp_path / "elsewhere")
    other = PromptSegmenter(_tiny_vlsm(), CoOp(n_ctx=2, ctx_init=None), overlays=0,
                            decoder_branch={**opts, "kernel_size": 3})
    with pytest.raises(LearnerError, match="does not hold this decoder_branch's tensors"):
        other.load_extra_learned(tmp_path)
    plain.load_extra_learned(tmp_path / "elsewhere")  # no branch: nothing to load


def test_step_trains_on_the_soft_target_and_scores_the_mask() -> None:
    """With the protocol's soft_targets the batch carries ``target`` (mask / 255): the loss uses it, the metrics the
    binary mask."""
    module = PromptSegmenter(fake_vlsm(), CoOp(n_ctx=2, ctx_init=None), overlays=0)
    g = torch.Generator().manual_seed(4)
    images = torch.rand(2, 3, 32, 32, generator=g)
    masks = (torch.rand(2, 1, 32, 32, generator=g) > 0.5).float()
    soft = masks * 0.9 + 0.05
    batch = {"image": images, "mask": masks, "prompt": ["a cat.", "a dog."]}
    logits, scored, loss = module._step({**batch, "target": soft})
    assert torch.equal(scored, masks[:, 0])
    torch.testing.assert_close(loss, dice_bce_loss(logits, soft[:, 0]))
    assert not torch.allclose(loss, module._step(batch)[2])
