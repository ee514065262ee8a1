"""``vlprompt import dassl``: checkpoints written by the reference code (Dassl's save_checkpoint layout, with the
reference's tensor names and shapes, built here) become vlprompt prompts; anything else is refused clearly."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from vlprompt import cli
from vlprompt.data.toyworld.datasets import ToyPatterns
from vlprompt.runs.driver import run_experiment
from vlprompt.learners.base import LearnerError
from vlprompt.learners.cocoop import CoCoOp
from vlprompt.learners.coop import CoOp
from vlprompt.learners.zero_shot import ZeroShot
from vlprompt.learners.reference_import import import_dassl, load_dassl_checkpoint
from vlprompt.learners.testing import tiny_clip, torch_threads

REPO = Path(__file__).resolve().parents[1]
NAMES = ["red circle", "blue square", "green triangle"]


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def _reference_state(learner: str, *, n_ctx: int = 4, width: int = 32, embed_dim: int = 32, n_cls: int = 3,
                     length: int = 32) -> dict[str, torch.Tensor]:
    """A prompt_learner state dict with the reference's names and shapes (KaiyangZhou/CoOp trainers/)."""
    g = torch.Generator().manual_seed(n_ctx + width)
    state = collections.OrderedDict(ctx=torch.randn(n_ctx, width, generator=g))
    if learner == "cocoop":
        hidden = embed_dim // 16
        state["meta_net.linear1.weight"] = torch.randn(hidden, embed_dim, generator=g)
        state["meta_net.linear1.bias"] = torch.randn(hidden, generator=g)
        state["meta_net.linear2.weight"] = torch.randn(width, hidden, generator=g)
        state["meta_net.linear2.bias"] = torch.randn(width, generator=g)
    state["token_prefix"] = torch.randn(n_cls, 1, width, generator=g)
    state["token_suffix"] = torch.randn(n_cls, length - 1 - n_ctx, width, generator=g)
    return state


def _save_dassl(path: Path, state: dict) -> Path:
    """The dict Dassl's save_checkpoint writes (scheduler without a warm-up wrapper: plain values)."""
    torch.save({"state_dict": state, "epoch": 10, "optimizer": {"state": {}, "param_groups": [{"lr": 0.002}]},
                "scheduler": {"last_epoch": 10}, "val_result": None}, path)
    return path


def _learner(cls, **kwargs):
    torch.manual_seed(0)
    learner = cls(**kwargs)
    learner.setup(tiny_clip(), NAMES)
    return learner


@pytest.mark.parametrize("cls", [CoOp, CoCoOp])
def test_reference_state_maps_to_learned_state(cls):
    learner = _learner(cls, n_ctx=4, ctx_init=None)
    state = _reference_state(cls.__name__.lower())
    mapped = learner.import_reference_state(state)
    assert set(mapped) == set(learner.learned_state())  # the frozen token buffers are dropped
    learner.set_learned_state(mapped)
    for k, v in learner.learned_state().items():
        assert torch.equal(v, state[k])


@pytest.mark.parametrize(("cls", "state", "match"), [
    (CoOp, _reference_state("cocoop"), r"not a CoOp checkpoint: it has unexpected tensors \['meta_net.linear1.bias'"),
    (CoCoOp, _reference_state("coop"), r"not a CoCoOp checkpoint: .* lacks \['meta_net.linear1.bias'"),
    (CoOp, _reference_state("coop", n_ctx=16), r"n_ctx=16 context vectors but this CoOp has n_ctx=4: set n_ctx: 16"),
    (CoCoOp, _reference_state("cocoop", n_ctx=16), r"n_ctx=16 context vectors but this CoCoOp has n_ctx=4"),
    (CoOp, _reference_state("coop", width=512), r"context width 512 differs from this backbone's text width 32"),
    (CoCoOp, _reference_state("cocoop", embed_dim=64),
     r"meta_net.linear1.weight has shape \(4, 64\), this CoCoOp expects \(2, 32\).*another CLIP"),
    (CoOp, {"ctx": torch.zeros(3, 4, 32)}, r"class-specific \[C, n_ctx, width\] \(3, 4, 32\) but this CoOp is unified"),
])
def test_mismatched_reference_state_is_refused(cls, state, match):
    learner = _learner(cls, n_ctx=4, ctx_init=None)
    before = {k: v.clone() for k, v in learner.learned_state().items()}
    with pytest.raises(LearnerError, match=match):
        learner.import_reference_state(state)
    assert all(torch.equal(v, before[k]) for k, v in learner.learned_state().items())


def test_default_hook_says_there_is_no_importer():
    learner = _learner(ZeroShot)
    with pytest.raises(LearnerError, match="ZeroShot has no reference-checkpoint importer"):
        learner.import_reference_state({"ctx": torch.zeros(4, 32)})


class Payload:  # any Python object a checkpoint could smuggle in
    def __init__(self) -> None:
        self.value = 1


@pytest.mark.parametrize(("obj", "match"), [
    ({"state_dict": {"ctx": torch.zeros(2)}, "scheduler": Payload()}, r"not a plain state dict: it pickles Python objects \[.*Payload"),
    (Payload(), r"not a plain state dict"),
    ([torch.zeros(2)], r"is list, not a Dassl checkpoint"),
    ({"state_dict": {"ctx": [1, 2]}}, r"is a dict with keys \['state_dict'\], not a Dassl checkpoint"),
    ({"epoch": 3}, r"not a Dassl checkpoint"),
])
def test_non_plain_checkpoints_are_refused(tmp_path, obj, match):
    path = tmp_path / "model.pth.tar-10"
    torch.save(obj, path)
    with pytest.raises(LearnerError, match=match):
        load_dassl_checkpoint(path)


def test_missing_and_non_torch_files(tmp_path):
    with pytest.raises(LearnerError, match="does not exist"):
        load_dassl_checkpoint(tmp_path / "nope.pth.tar-1")
    junk = tmp_path / "junk.pth.tar-1"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(LearnerError, match="not a plain state dict"):
        load_dassl_checkpoint(junk)


def test_module_prefix_is_removed(tmp_path):
    path = _save_dassl(tmp_path / "m.pth.tar-1", {"module.ctx": torch.ones(4, 32)})
    assert list(load_dassl_checkpoint(path)) == ["ctx"]


def test_import_command_then_vlprompt_test(tmp_path, capsys):
    """A CoOp checkpoint for the toy CLIP (width 128) on the quickstart's base classes is imported by the
    console command and evaluated by `vlprompt test --prompts`."""
    base = ToyPatterns().classnames[:6]
    state = _reference_state("coop", width=128, n_cls=6)
    ckpt = _save_dassl(tmp_path / "model.pth.tar-50", state)
    names = tmp_path / "classnames.txt"
    names.write_text("\n".join(base) + "\n")
    out = tmp_path / "prompts.safetensors"
    code = cli.main(["import", "dassl", str(ckpt), "--learner", "coop", "--config",
                     str(REPO / "configs/learners/coop/ctx4_init.yaml"), "--backbone-config",
                     str(REPO / "configs/backbones/toyclip.yaml"), "--classnames", str(names), "--out", str(out)])
    assert code == 0 and out.is_file()
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        assert torch.equal(f.get_tensor("ctx"), state["ctx"])
    assert meta["learner"] == "CoOp" and meta["reference"] == "dassl" and "ToyCLIP" in meta["backbone"]
    result = run_experiment("test", [
        "--config", str(REPO / "configs/quickstart.yaml"), "--seeds", "[1]", "--prompts", str(out),
        "--results_dir", str(tmp_path / "results"), "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--data.init_args.dataset.init_args.per_class", "[16, 4, 8]",
    ], show_summary=False)
    assert set(result["per_seed"][0]["metrics"]) == {"base", "new", "hm", "base_ece", "new_ece"}
    # wrong learner through the console: one-line error, exit code 2
    code = cli.main(["import", "dassl", str(ckpt), "--learner", "cocoop", "--backbone-config",
                     str(REPO / "configs/backbones/toyclip.yaml"), "--classnames", ",".join(base), "--out", str(tmp_path / "x.safetensors")])
    assert code == 2 and "not a CoCoOp checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_import_dassl_function_with_the_tiny_clip_backbone(tmp_path):
    ckpt = _save_dassl(tmp_path / "model.pth.tar-10", _reference_state("cocoop"))
    cfg = tmp_path / "backbone.yaml"
    cfg.write_text("model:\n  backbone:\n    class_path: vlprompt.learners.testing.tiny_clip\n")
    out = import_dassl(ckpt, learner="cocoop", classnames=NAMES, out=tmp_path / "p.safetensors", backbone_config=str(cfg))
    learner = _learner(CoCoOp)
    learner.load_prompts(out)
    assert torch.equal(learner.ctx.detach(), _reference_state("cocoop")["ctx"])
