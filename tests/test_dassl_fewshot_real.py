"""Few-shot draws equal Dassl's on a real CoOp split; CuPL descriptions load for real class names."""

from __future__ import annotations

import json
import random
from collections import defaultdict

import torch

from vlprompt.data.coop import EuroSAT
from vlprompt.learners.zero_shot import ZeroShot
from vlprompt.protocols.base2new import BaseToNew, sample_few_shot


def _dassl_generate_fewshot(items: list[tuple[str, int, str]], num_shots: int) -> list[tuple[str, int, str]]:
    """Dassl's DatasetBase.generate_fewshot_dataset, written from its documented behaviour: group by label in
    order of appearance, then random.sample(items, num_shots) per group with the global random module
    (keep all items when a group is smaller)."""
    tracker: dict[int, list] = defaultdict(list)
    for item in items:
        tracker[item[1]].append(item)
    out = []
    for _, group in tracker.items():
        out.extend(random.sample(group, num_shots) if len(group) >= num_shots else group)
    return out


def test_shots_match_dassl_on_the_eurosat_split(shared_data) -> None:
    split = json.loads((shared_data / "eurosat" / "split_zhou_EuroSAT.json").read_text())
    for seed in (1, 2, 3):
        random.seed(seed)  # Dassl's set_random_seed, then train shots, then val shots (min(K, 4))
        want_train = _dassl_generate_fewshot([tuple(x) for x in split["train"]], 16)
        want_val = _dassl_generate_fewshot([tuple(x) for x in split["val"]], 4)
        rng = random.Random(seed)
        got_train = sample_few_shot([x[1] for x in split["train"]], 16, rng)
        got_val = sample_few_shot([x[1] for x in split["val"]], 4, rng, keep_all_if_short=True)
        assert [split["train"][i][0] for i in got_train] == [x[0] for x in want_train]
        assert [split["val"][i][0] for i in got_val] == [x[0] for x in want_val]


def test_protocol_draws_the_dassl_images(shared_data, tmp_path) -> None:
    source = EuroSAT(root=str(shared_data))
    dm = BaseToNew(source, shots=4, seed=2, cache_dir=str(tmp_path))
    split = json.loads((shared_data / "eurosat" / "split_zhou_EuroSAT.json").read_text())
    random.seed(2)
    want = [x[0] for x in _dassl_generate_fewshot([tuple(x) for x in split["train"]], 4) if x[1] < 5]
    got = [source.paths("train")[i] for i in dm._indices("train", "base", 4)]
    assert [g.split("/2750/")[-1] for g in got] == want
    assert not any(p.is_relative_to(shared_data) for p in tmp_path.rglob("*"))


def test_cupl_descriptions_cover_the_eurosat_classes(shared_data) -> None:
    from vlprompt.learners.testing import tiny_clip

    source = EuroSAT(root=str(shared_data))
    zs = ZeroShot(descriptions=str(shared_data / "cupl_prompts" / "CuPL_prompts_eurosat.json"))
    zs.setup(tiny_clip(), source.classnames)
    with torch.no_grad():
        feats = zs.text_features()
    assert feats.shape[0] == 10 and torch.allclose(feats.norm(dim=-1), torch.ones(10), atol=1e-5)
    plain = ZeroShot()
    plain.setup(tiny_clip(), source.classnames)
    assert not torch.allclose(feats, plain.text_features())
