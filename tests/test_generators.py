"""Generator plugins and the generated-view cache (DiffTPT)."""

from __future__ import annotations

import json

import pytest
import torch

from vlprompt.learners import registry
from vlprompt.generators.base import GeneratedViews, GeneratorError, image_key
from vlprompt.generators.sd_image_variations import SDImageVariations
from vlprompt.generators.testing import JitterGenerator
from vlprompt.learners.difftpt import DiffTPT
from vlprompt.learners.testing import tiny_clip


def test_generators_are_listed():
    assert "sd_image_variations" in registry.get_registry("generators").names()


def test_missing_or_incomplete_folder_names_the_layout(tmp_path):
    with pytest.raises(GeneratorError, match="does not exist.*model_index.json.*huggingface-cli download"):
        SDImageVariations(str(tmp_path / "nope"))
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text("{}")
    (tmp_path / "sd" / "unet").mkdir()
    (tmp_path / "sd" / "unet" / "config.json").write_text("{}")
    with pytest.raises(GeneratorError, match=r"unet/ has no weights.*vae/config.json is missing"):
        SDImageVariations(str(tmp_path / "sd"))


def test_cache_hits_and_regenerates_truncated_entries(tmp_path, caplog):
    gen = JitterGenerator()
    cache = GeneratedViews(gen, tmp_path)
    image = torch.rand(3, 16, 16)
    a = cache.get(image, 3)
    b = cache.get(image, 3)
    assert gen.calls == 1 and torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == (3, 3, 16, 16)
    path = cache.path(image, 3)
    path.write_bytes(path.read_bytes()[:50])  # truncated entry
    c = cache.get(image, 3)
    assert gen.calls == 2 and torch.equal(a, c)  # regenerated (same seed -> same views), not reused or crashed
    assert "unreadable" in caplog.text
    assert GeneratedViews(JitterGenerator(sigma=0.1), tmp_path).folder != cache.folder  # settings are in the key
    assert image_key(image) != image_key(image.flip(-1))


def test_difftpt_uses_generated_views(tmp_path):
    backbone = tiny_clip()
    gen = JitterGenerator()
    learner = DiffTPT(generator=gen, views=9, generated=7, steps=2, cache_dir=str(tmp_path), filter="generated", similarity="features")
    learner.setup(backbone, ["red shape", "blue shape", "green shape"])
    views = learner.build_views(torch.rand(3, 40, 40))
    assert views.shape == (16, 3, 32, 32)
    opt = learner.make_optimizer(list(learner.tunable_parameters().values()))
    out = learner.adapt(views, opt)
    assert out.selected.numel() == int((1 + 8 + int(7 * 0.8)) * 0.3)
    assert learner.tta_settings()["generator"] == gen.identity()


def _tiny_pipeline(folder):
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionImageVariationPipeline, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=4,
    )
    vae = AutoencoderKL(
        block_out_channels=[16, 32], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=8, sample_size=16,
    )
    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        intermediate_size=37, patch_size=4,
    ))
    pipe = StableDiffusionImageVariationPipeline(
        vae=vae, image_encoder=enc, unet=unet, scheduler=PNDMScheduler(skip_prk_steps=True), safety_checker=None,
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32), requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder))


def test_sd_image_variations_on_a_tiny_random_pipeline(tmp_path):
    folder = tmp_path / "sd"
    _tiny_pipeline(folder)
    gen = SDImageVariations(str(folder), num_inference_steps=2, batch=2)
    assert json.dumps(gen.identity())
    cache = GeneratedViews(gen, tmp_path / "cache")
    image = torch.rand(3, 24, 24)
    views = cache.get(image, 3)
    assert views.shape == (3, 3, 16, 16) and views.dtype == torch.uint8
    assert torch.equal(cache.load(image, 3), views)
