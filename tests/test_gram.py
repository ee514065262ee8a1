"""GRAM (Li et al., ICCV 2023): the wrapper learner, its regulator, artifacts and the gradient hook."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlprompt.runs.driver import run_experiment

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUICK = str(CONFIGS / "quickstart.yaml")


def _fast(tmp_path: Path, config: str, epochs: int, *extra: str) -> list[str]:
    return [
        "--config", QUICK, "--config", str(CONFIGS / "learners" / config), "--seeds", "[1]",
        "--trainer.max_epochs", str(epochs), "--data.init_args.batch_size", "8",
        "--results_dir", str(tmp_path / "results"), "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--data.init_args.dataset.init_args.per_class", "[4, 2, 4]", "--data.init_args.shots", "4",
        "--model.warmup_epochs", "0", *extra,
    ]


def _prompts(tmp_path: Path) -> dict[str, torch.Tensor]:
    files = sorted(tmp_path.rglob("prompts.safetensors"))
    assert files, "fit saved no prompts"
    return load_file(str(files[0]))


def test_gram_identity_trains_exactly_like_coop(tmp_path) -> None:
    a = run_experiment("fit", _fast(tmp_path / "coop", "coop/ctx4_init.yaml", 1))
    b = run_experiment("fit", _fast(tmp_path / "gram", "gram/coop_ctx4_init.yaml", 1))
    assert a is not None and b is not None and b["learner"] == "gram"
    pa, pb = _prompts(tmp_path / "coop"), _prompts(tmp_path / "gram")
    assert set(pa) == set(pb) == {"ctx"}
    assert torch.equal(pa["ctx"], pb["ctx"])


def test_gram_vpt_fit_end_to_end(tmp_path) -> None:
    result = run_experiment("fit", _fast(tmp_path, "gram/vpt_shallow.yaml", 1))
    assert result is not None and result["learner"] == "gram"
    assert set(_prompts(tmp_path)) == {"visual.shallow"}


# ------------------------------------------------------------------------------------------- unit tests (tiny CLIP)
import json  # noqa: E402
import random  # noqa: E402

from vlprompt.learners.base import LearnerError  # noqa: E402
from vlprompt.learners.coop import CoOp  # noqa: E402
from vlprompt.learners.gram import GRAM  # noqa: E402
from vlprompt.learners.gram.artifact import load_artifact, save_artifact  # noqa: E402
from vlprompt.learners.gram.regulator import identity_regulator, regulate  # noqa: E402
from vlprompt.learners.vpt import VPT  # noqa: E402
from vlprompt.learners.zero_shot import ZeroShot  # noqa: E402
from vlprompt.learners.gram.corpus import caption_rows, encode_corpus, MetaError
from vlprompt.learners.gram.meta import attention_for, TaskHead, adapt, meta_train, task_loss
from vlprompt.learners.gram.tasks import hierarchical_clusters, sample_task
from vlprompt.learners.testing import DEFAULT_CLASSNAMES, tiny_clip  # noqa: E402

NAMES = list(DEFAULT_CLASSNAMES[:2])


@pytest.fixture(scope="module")
def backbone():
    return tiny_clip()


def _small_cfg(out: Path, **inner) -> dict:
    return {
        "inner": {"class_path": "coop", "init_args": {"n_ctx": 2, **inner}}, "corpus": {"source": "toyworld", "size": 48},
        "clusters": {"coarse": 2, "fine": 3}, "tasks": {"n_way": 2, "support_shots": 1, "query_shots": 2, "per_step": 1},
        "meta": {"steps": 2, "inner_steps": 1, "inner_lr": 0.1, "regulator_lr": 0.1}, "out": str(out), "seed": 3,
    }


@pytest.fixture(scope="module")
def artifact(backbone, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("meta") / "gram.safetensors"
    card = meta_train(_small_cfg(out), backbone=backbone)
    assert card["cluster_stats"]["pairs"] == 48 and card["cluster_stats"]["coarse_clusters"] == 2
    assert len(card["history"]) == 2 and card["sha256"]
    return out


def test_regulator_identity_is_exact_and_gates_elementwise() -> None:
    g = torch.randn(3, 5)
    assert torch.equal(regulate(g, torch.zeros(3)), g)
    w = torch.tensor([0.0, 0.0, -50.0])
    assert torch.allclose(regulate(g, w), torch.zeros_like(g), atol=1e-12)  # the gate can switch a tensor off
    w = torch.tensor([1.0, -1.0, 0.5])
    out = regulate(g, w)
    assert out.shape == g.shape and torch.all(out.sign() * g.sign() >= 0)  # a gate in (0, 2) never flips a sign
    with pytest.raises(ValueError):
        regulate(g, torch.zeros(2))


def test_inner_loop_meta_gradient_matches_finite_differences(backbone) -> None:
    torch.manual_seed(0)
    learner = CoOp(n_ctx=2)
    learner.setup(backbone, NAMES)
    learner.train()
    head = TaskHead(learner)
    xs, xq = torch.nn.functional.normalize(torch.randn(4, backbone.embed_dim), dim=-1), torch.nn.functional.normalize(
        torch.randn(4, backbone.embed_dim), dim=-1)
    ys, yq = torch.tensor([0, 1, 0, 1]), torch.tensor([1, 0, 1, 0])
    qnames = list(DEFAULT_CLASSNAMES[2:4])
    theta = {k: v.clone() for k, v in learner.learned_state().items()}
    phi = {"ctx": torch.tensor([0.3, -0.2, 0.1])}

    def meta_loss(th, ph) -> torch.Tensor:
        adapted = adapt(head, th, ph, NAMES, xs, ys, steps=2, lr=0.5, first_order=False)
        return task_loss(head, adapted, qnames, xq, yq)

    with attention_for(first_order=False):
        th = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
        ph = {k: v.clone().requires_grad_(True) for k, v in phi.items()}
        loss = meta_loss(th, ph)
        g_th, g_ph = torch.autograd.grad(loss, [th["ctx"], ph["ctx"]])
        torch.manual_seed(1)
        for direction, grad, which in ((torch.randn_like(theta["ctx"]), g_th, "theta"), (torch.randn(3), g_ph, "phi")):
            direction = direction / direction.norm()
            eps = 1e-3

            def f(s: float) -> float:
                with torch.no_grad():
                    if which == "theta":
                        return float(meta_loss({"ctx": theta["ctx"] + s * eps * direction}, phi))
                    return float(meta_loss(theta, {"ctx": phi["ctx"] + s * eps * direction}))

            fd = (8 * (f(1) - f(-1)) - (f(2) - f(-2))) / (12 * eps)  # fourth-order central difference
            analytic = float((grad * direction).sum())
            assert abs(fd - analytic) <= 0.02 * abs(analytic) + 1e-3, (which, fd, analytic)


def test_artifact_round_trip_and_gram_uses_it(backbone, artifact) -> None:
    art = load_artifact(artifact)
    assert set(art.init) == set(art.regulator) == {"ctx"} and art.inner_class.endswith("CoOp")
    assert art.inner_config["n_ctx"] == 2 and art.provenance["cluster_stats"]["pairs"] == 48
    learner = GRAM(CoOp(n_ctx=2), meta=str(artifact))
    learner.setup(backbone, NAMES)
    assert torch.equal(learner.learned_state()["ctx"], art.init["ctx"])
    assert torch.equal(learner.regulator["ctx"], art.regulator["ctx"])
    assert learner.text_features().shape == (2, backbone.embed_dim)
    # the hook regulates the gradient in place
    ctx = dict(learner.inner.named_parameters())["ctx"]
    g = torch.randn_like(ctx)
    ctx.grad = g.clone()
    learner.transform_gradients()
    assert torch.allclose(ctx.grad, regulate(g, art.regulator["ctx"]))
    assert not torch.equal(art.regulator["ctx"], torch.zeros(3))  # meta-training moved the regulator


def test_mismatched_or_corrupted_artifact_is_refused(backbone, artifact, tmp_path) -> None:
    with pytest.raises(LearnerError, match="n_ctx"):
        GRAM(CoOp(n_ctx=3), meta=str(artifact)).setup(backbone, NAMES)
    with pytest.raises(LearnerError, match="inner learner"):
        GRAM(VPT(n_ctx=2, prompt_depth=1), meta=str(artifact)).setup(backbone, NAMES)

    class Other:
        class info:  # noqa: N801
            @staticmethod
            def to_dict():
                return {"name": "openclip", "model": "ViT-B-16", "pretrained": "openai", "checkpoint_sha256": "ab"}

    art = load_artifact(artifact)
    other = tmp_path / "other.safetensors"
    coop = CoOp(n_ctx=2)
    coop.setup(backbone, NAMES)
    save_artifact(other, init=art.init, regulator=art.regulator, backbone=Other, inner=coop, provenance={})
    with pytest.raises(LearnerError, match="backbone"):
        GRAM(CoOp(n_ctx=2), meta=str(other)).setup(backbone, NAMES)
    raw = bytearray(artifact.read_bytes())
    flipped = tmp_path / "flipped.safetensors"
    raw[-3] ^= 0xFF  # a tensor byte
    flipped.write_bytes(bytes(raw))
    with pytest.raises(LearnerError, match="corrupted"):
        GRAM(CoOp(n_ctx=2), meta=str(flipped)).setup(backbone, NAMES)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(artifact.read_bytes()[:40])
    with pytest.raises(LearnerError, match="not a readable safetensors"):
        GRAM(CoOp(n_ctx=2), meta=str(truncated)).setup(backbone, NAMES)
    with pytest.raises(LearnerError, match="does not exist"):
        GRAM(CoOp(n_ctx=2), meta=str(tmp_path / "missing.safetensors"))


def test_gram_refuses_itself_and_learners_with_nothing_to_tune(backbone) -> None:
    with pytest.raises(LearnerError, match="wrap itself"):
        GRAM(GRAM(CoOp(n_ctx=2)))
    with pytest.raises(LearnerError, match="nothing to tune"):
        GRAM(ZeroShot())
    with pytest.raises(LearnerError, match="nothing to tune"):
        GRAM(VPT(n_ctx=0)).setup(backbone, NAMES)  # VPT without prompts is zero-shot CLIP


def _write_pairs(tmp_path: Path, n: int) -> Path:
    from PIL import Image

    rows = []
    for i in range(n):
        Image.new("RGB", (40, 36), color=(i * 20 % 255, 80, 200 - i * 10 % 200)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,a {'red' if i % 2 else 'blue'} square number {i}")
    path = tmp_path / "pairs.csv"
    path.write_text("image,caption\n" + "\n".join(rows) + "\n")
    return path


def test_caption_file_corpus_and_its_bad_inputs(backbone, tmp_path) -> None:
    csv_path = _write_pairs(tmp_path, 8)
    corpus = encode_corpus(backbone, {"source": "captions", "path": str(csv_path)}, seed=1, keep_images=False, chunk=3)
    assert corpus.image_features.shape == (8, backbone.embed_dim) and len(corpus.captions) == 8
    assert corpus.get_images([0, 5]).shape == (2, 3, 32, 32)
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"img": f"{i}.png", "text": f"caption {i}"}) for i in range(3)))
    assert len(list(caption_rows(jsonl, image_column="img", caption_column="text"))) == 3
    with pytest.raises(MetaError, match="no column 'caption'"):
        list(caption_rows(jsonl, image_column="img"))
    empty = tmp_path / "empty.csv"
    empty.write_text("image,caption\n")
    with pytest.raises(MetaError, match="empty"):
        list(caption_rows(empty))
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 50)
    with pytest.raises(MetaError, match="unreadable"):
        list(caption_rows(binary))
    with pytest.raises(MetaError, match="does not exist"):
        list(caption_rows(tmp_path / "nope.csv"))
    with pytest.raises(MetaError, match="fewer than clusters"):
        hierarchical_clusters(corpus, coarse=3, fine=3, seed=1)


def test_tasks_take_support_and_query_from_different_pseudo_domains(backbone) -> None:
    corpus = encode_corpus(backbone, {"source": "toyworld", "size": 48}, seed=2, keep_images=False)
    h = hierarchical_clusters(corpus, coarse=2, fine=3, seed=2)
    assert sum(h.stats["coarse_sizes"]) == 48 and h.stats["fine_clusters"] <= 6
    task = sample_task(h, n_way=2, support_shots=2, query_shots=3, rng=random.Random(0))
    assert len(task.support) == 4 and len(task.query) == 6 and task.query_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert {int(h.coarse[i]) for i in task.support}.isdisjoint({int(h.coarse[i]) for i in task.query})
    assert task.support_names == [h.names[int(h.fine[task.support[0]])], h.names[int(h.fine[task.support[2]])]]


def test_meta_train_cli_refuses_bad_config(tmp_path) -> None:
    from vlprompt.cli.meta import meta_main as main

    cfg = tmp_path / "m.yaml"
    cfg.write_text("inner: {class_path: zero_shot}\nout: x.safetensors\nbackbone: {class_path: toyclip}\n")
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert main(["--config", str(cfg)]) == 2


def test_shipped_toy_artifact_is_intact() -> None:
    from vlprompt.backbones.open_clip import file_sha256

    path = Path(__file__).resolve().parents[1] / "vlprompt" / "learners" / "gram" / "assets" / "gram_coop_toy.safetensors"
    card = json.loads(Path(str(path) + ".json").read_text())
    assert file_sha256(path) == card["sha256"]
    art = load_artifact(path)
    assert art.inner_class == "vlprompt.learners.coop.CoOp" and art.inner_config["n_ctx"] == 4
    assert art.backbone["model"] == "vlprompt-toyclip" and art.backbone["checkpoint_sha256"] and tuple(art.init["ctx"].shape)[0] == 4


def _write_shards(tmp_path, n_shards: int, per_shard: int) -> str:
    import io

    import webdataset as wds
    from PIL import Image

    for s in range(n_shards):
        with wds.TarWriter(str(tmp_path / f"pairs-{s:03d}.tar")) as sink:
            for i in range(per_shard):
                k = s * per_shard + i
                buf = io.BytesIO()
                Image.new("RGB", (40, 30), color=(k * 23 % 255, 90, 200 - k * 7 % 200)).save(buf, format="PNG")
                sink.write({"__key__": f"{k:05d}", "png": buf.getvalue(), "txt": f"a {'red' if k % 2 else 'blue'} square {k}"})
    return str(tmp_path / f"pairs-{{000..{n_shards - 1:03d}}}.tar")


def test_webdataset_corpus_streams_shards_and_spills_images_to_disk(backbone, tmp_path) -> None:
    pytest.importorskip("webdataset")
    urls = _write_shards(tmp_path, 2, 5)
    src = {"source": "webdataset", "urls": urls, "spill_dir": str(tmp_path)}
    corpus = encode_corpus(backbone, src, seed=1, keep_images=True, chunk=3)
    assert len(corpus) == 10 and corpus.captions[0] == "a blue square 0" and corpus.captions[-1] == "a red square 9"
    images = corpus.get_images([0, 9])
    assert images.shape == (2, 3, 32, 32) and 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    # the same pixels as the caption-file reader gives for the same image
    from PIL import Image

    from vlprompt.learners.gram.corpus import _pil_input
    expected = _pil_input(Image.new("RGB", (40, 30), color=(9 * 23 % 255, 90, 200 - 9 * 7 % 200)), 32)
    assert torch.allclose(images[1], (expected * 255).round() / 255, atol=1e-6)
    limited = encode_corpus(backbone, {**src, "size": 4}, seed=1, keep_images=False)
    assert len(limited) == 4 and limited.images is None
    with pytest.raises(MetaError, match="keep_images=False"):
        limited.get_images([0])


def test_webdataset_corpus_bad_inputs(backbone, tmp_path) -> None:
    pytest.importorskip("webdataset")
    urls = _write_shards(tmp_path, 1, 3)
    with pytest.raises(MetaError, match="does not exist"):
        encode_corpus(backbone, {"source": "webdataset", "urls": str(tmp_path / "nope-{000..001}.tar")}, seed=1, keep_images=False)
    with pytest.raises(MetaError, match="needs corpus.urls"):
        encode_corpus(backbone, {"source": "webdataset"}, seed=1, keep_images=False)
    with pytest.raises(MetaError, match="set corpus.caption_key"):
        encode_corpus(backbone, {"source": "webdataset", "urls": urls, "caption_key": "json"}, seed=1, keep_images=False)
    with pytest.raises(MetaError, match="set corpus.image_key"):
        encode_corpus(backbone, {"source": "webdataset", "urls": urls, "image_key": "jpg"}, seed=1, keep_images=False)


def test_gram_meta_trains_and_wraps_a_multimodal_learner(backbone, tmp_path) -> None:
    """MaPLe (text prompts coupled to visual prompts) as the inner learner: meta-training sees images, the
    artifact loads into ``gram(maple)`` and a fine-tuning step regulates its gradients."""
    cfg = _small_cfg(tmp_path / "gram_maple.safetensors")
    cfg["inner"] = {"class_path": "maple", "init_args": {"n_ctx": 2, "prompt_depth": 2}}
    card = meta_train(cfg, backbone=backbone)
    assert len(card["history"]) == 2
    from vlprompt.learners.maple import MaPLe

    learner = GRAM(inner=MaPLe(n_ctx=2, prompt_depth=2), meta=str(tmp_path / "gram_maple.safetensors"))
    learner.setup(backbone, NAMES)
    learner.train()
    before = {k: v.clone() for k, v in learner.learned_state().items()}
    images = torch.rand(2, 3, backbone.preprocess.image_size, backbone.preprocess.image_size)
    loss = torch.nn.functional.cross_entropy(learner(images), torch.tensor([0, 1]))
    loss.backward()
    learner.transform_gradients()
    opt = torch.optim.SGD([p for p in learner.parameters() if p.requires_grad], lr=0.1)
    opt.step()
    after = learner.learned_state()
    assert set(after) == set(before) and any(not torch.equal(before[k], after[k]) for k in after)
