"""The embedded toy-world diffusion generator (``toy_diffusion``): shipped weights, pretraining, SDEdit, DiffTPT."""

from __future__ import annotations

import json

import pytest
import torch

from vlprompt.learners import registry
from vlprompt.data.atomic import sha256_file
from vlprompt.cli.pretrain import pretrain_main
from vlprompt.generators.base import GeneratedViews, GeneratorError
from vlprompt.generators.toydiffusion import TOY_DIFFUSION, ToyDiffusion, card_path, from_model_space, load_toy_diffusion, to_model_space
from vlprompt.learners.difftpt import DiffTPT
from vlprompt.toyworld.pretrain_diffusion import diffusion_loss
from vlprompt.toyworld.toydiffusion_report import rmse, scenes


def test_listed_and_shipped_with_a_matching_card():
    assert "toy_diffusion" in registry.get_registry("generators").names()
    card = json.loads(card_path(TOY_DIFFUSION).read_text())
    assert card["sha256"] == sha256_file(TOY_DIFFUSION) and card["bytes"] == TOY_DIFFUSION.stat().st_size
    assert card["command"].startswith("vlprompt pretrain --config configs/pretrain/toydiffusion.yaml")
    assert TOY_DIFFUSION.stat().st_size < 20 * 2**20
    unet, sched, config = load_toy_diffusion(check_sha256=True)
    assert config["patch"] == 2 and sched["num_train_timesteps"] == 1000
    assert all(p.dtype == torch.float32 for p in unet.parameters())


def test_corrupt_weights_fail_the_sha256_check(tmp_path):
    for suffix in (".safetensors", ".json", ".card.json"):
        src = str(TOY_DIFFUSION).removesuffix(".safetensors") + suffix
        (tmp_path / ("w" + suffix)).write_bytes(open(src, "rb").read())
    with open(tmp_path / "w.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\1\2\3")
    with pytest.raises(GeneratorError, match="sha256.*card"):
        load_toy_diffusion(tmp_path / "w.safetensors", check_sha256=True)
    with pytest.raises(GeneratorError, match="configs/pretrain/toydiffusion.yaml"):
        ToyDiffusion(str(tmp_path / "missing.safetensors"))


def test_bad_settings_fail_before_loading():
    with pytest.raises(GeneratorError, match="strength"):
        ToyDiffusion(strength=0)
    with pytest.raises(GeneratorError, match="runs no denoising step"):
        ToyDiffusion(strength=0.1, num_inference_steps=5)


def test_model_space_round_trip():
    x = torch.rand(2, 3, 48, 48)
    z = to_model_space(x, 2)
    assert z.shape == (2, 12, 24, 24) and z.min() >= -1 and z.max() <= 1
    assert torch.allclose(from_model_space(z, 2), x, atol=1e-6)


def test_diffusion_loss_is_the_noise_mse():
    a, b = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    assert diffusion_loss(a, b).item() == pytest.approx(1.0) and diffusion_loss(b, b).item() == 0


def test_variations_shapes_determinism_and_change():
    gen = ToyDiffusion(num_inference_steps=4, strength=0.5)
    images, _, _ = scenes(1, "clean", 0)
    image = images[0]
    a = gen.generate(image, 3, seed=5)
    assert a.shape == (3, 3, 48, 48) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, gen.generate(image, 3, seed=5))  # same seed, same views
    assert not torch.equal(a, gen.generate(image, 3, seed=6))
    assert not torch.allclose(a[0], a[1])  # each view has its own noise
    assert torch.allclose(gen.variations(image[None], 3, seed=5)[0], a)
    assert gen.generate((image * 255).round().to(torch.uint8), 2, seed=1).shape == (2, 3, 48, 48)
    assert gen.generate(torch.rand(3, 40, 40), 2, seed=1).shape == (2, 3, 40, 40)  # back to the input size
    assert (rmse(a, image[None].expand_as(a)) > 0.01).all()
    assert gen.identity()["weights"] == sha256_file(TOY_DIFFUSION)
    assert ToyDiffusion(strength=0.6).identity() != gen.identity()  # settings are in the cache key


def test_difftpt_end_to_end_with_the_embedded_generator(tmp_path):
    from vlprompt.backbones.toyclip import ToyCLIP

    images, _, labels = scenes(1, "noise", 3)
    gen = ToyDiffusion(num_inference_steps=4, strength=0.5)
    learner = DiffTPT(generator=gen, views=8, generated=6, steps=2, cache_dir=str(tmp_path))
    backbone = ToyCLIP()
    names = [f"class {i}" for i in range(24)]
    learner.setup(backbone, names)
    for image in images[:2]:
        views = learner.build_views(image)
        assert views.shape[0] == 8 + 6
        opt = learner.make_optimizer(list(learner.tunable_parameters().values()))
        out = learner.adapt(views, opt)
        assert out.selected.numel() == int((1 + int(13 * 0.8)) * 0.3)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2  # generated once per image, cached
    cache = GeneratedViews(gen, tmp_path)
    assert cache.load(images[0], 6) is not None
    assert learner.tta_settings()["generator"]["name"] == "toy_diffusion"


def test_pretrain_config_selects_the_diffusion_model(repo, tmp_path, monkeypatch):
    monkeypatch.chdir(repo)
    out = tmp_path / "d.safetensors"
    pretrain_main([
        "--config", "configs/pretrain/toydiffusion.yaml", "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
        "--model.init_args.block_out_channels", "[16, 32]", "--model.init_args.norm_num_groups", "8",
        "--data.init_args.batch_size", "4", "--model.init_args.export_path", str(out),
    ])
    card = json.loads(card_path(out).read_text())
    assert card["steps"] == 2 and card["samples"] == 8 and card["sha256"] == sha256_file(out)
    views = ToyDiffusion(str(out), strength=0.5, num_inference_steps=2).generate(torch.rand(3, 48, 48), 2, seed=0)
    assert views.shape == (2, 3, 48, 48)
