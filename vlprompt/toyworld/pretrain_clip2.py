"""Contrastive pretraining of the second-generation toy CLIP (``vlprompt-toyclip2``) on the second world.

``vlprompt pretrain --config configs/pretrain/toyclip2.yaml`` trains the first toy CLIP's architecture with the
same loss, optimiser and export as :mod:`vlprompt.toyworld.pretrain`, on a different stream: two-tone scenes, a
share of them named kinds of :mod:`vlprompt.data.toyworld.lexicon`, captioned by
:func:`vlprompt.data.toyworld.captions2.caption2` (names, synonyms, families, definitions, distractor words).

Each batch pairs half of its scenes with hard negatives (images ``i`` and ``b-1-i``):

- a **sibling** (share ``sibling_share`` of the pairs whose first image is a named kind): the same scene showing
  another species of the same family; both captions must name their species, so names of close kinds are told
  apart (``lemon`` vs ``lime``);
- otherwise the same scene with **one attribute changed** (colour, accent, texture, shape, size, position or
  background); both captions must settle it (a species name settles its look).

``chatter_share`` puts a share of the captions after a prefix of web chatter that brings them to a random length up
to the context length (:meth:`SpeciesCaptionStream.chatter`; the trial ``configs/pretrain/toyclip2_chatter.yaml``,
not shipped: docs/toyclip2-design.md).

``init_from`` starts from a checkpoint of the same architecture (e.g. the first toy CLIP) instead of random
weights; the card records its path and sha256. The monitor adds, to the first world's attribute zero-shot, the
second world's zero-shot on held-out clean scenes of named kinds (seed 54321): 64-way by name and by synonym,
4-way by family, and 16-way within each family under the low-contrast style.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import lightning.pytorch as pl
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vlprompt.backbones.open_clip import file_sha256
from vlprompt.backbones.toyclip import TOY2_MODEL  # registers the toy configs with open_clip
from vlprompt.data.toyworld.captions2 import caption2, object_words, with_chatter
from vlprompt.data.toyworld.lexicon import (PATTERNED, SPECIES, TIER_WEIGHTS, Species, sample_species_scene, species_in,
                                            species_of)
from vlprompt.data.toyworld.render import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, STYLES, TEXTURES, Scene, render
from vlprompt.data.toyworld.species import species_scenes
from vlprompt.toyworld.pretrain import CLIPPretraining

log = logging.getLogger(__name__)

#: attributes a hard negative may change, with the number of values of each
CHANGEABLE: dict[str, int] = {"colour": len(COLOURS), "accent": len(COLOURS), "texture": len(TEXTURES),
                              "shape": len(SHAPES), "size": len(SIZES), "position": len(POSITIONS),
                              "background": len(BACKGROUNDS)}


def make_hard_negatives(scene: Scene, species: list[Species | None], n_pairs: int, rng: random.Random,
                        sibling_share: float, tier_name_share: dict[str, float] | None = None) -> list[tuple[str, ...]]:
    """Turn image ``b-1-i`` into a hard negative of image ``i`` for ``i < n_pairs`` (in place; module docstring).

    With ``tier_name_share`` (tier -> chance a caption names a kind of that tier), a kind takes part in sibling
    pairs in proportion to its tier's share (relative to the largest), as first image and as sibling, so a tier
    named less often is also contrasted with its siblings less often.

    Returns what each image's caption must settle; ``species`` (per image, :class:`Species` or ``None``) is
    updated for the changed images.
    """
    b = scene.batch_size
    # chance that a pair whose first image shows a kind of each tier becomes a sibling pair
    if tier_name_share is None:
        sibling_chance = {tier: sibling_share for tier in TIER_WEIGHTS}
    else:
        top = max(tier_name_share.values())
        sibling_chance = {tier: sibling_share * v / top for tier, v in tier_name_share.items()}
    require: list[tuple[str, ...]] = [()] * b
    colours = list(COLOURS)
    for i in range(n_pairs):
        j = b - 1 - i
        for name in ("colour", "texture", "shape", "size", "position", "accent"):
            getattr(scene, name)[j] = getattr(scene, name)[i]
        scene.background[j] = scene.background[i]
        if species[i] is not None and rng.random() < sibling_chance[species[i].tier]:
            members = [s for s in species_of(species[i].family) if s != species[i]]
            if tier_name_share is None:
                other = rng.choice(members)
            else:
                other = rng.choices(members, weights=[tier_name_share[s.tier] + 1e-12 for s in members])[0]
            scene.colour[j, 0] = colours.index(other.colour)
            scene.texture[j, 0] = TEXTURES.index(other.texture)
            scene.accent[j, 0] = colours.index(other.accent or other.colour)
            species[j] = other
            require[i] = require[j] = ("species",)
            continue
        patterned = TEXTURES[int(scene.texture[i, 0])] in PATTERNED
        name = rng.choice([a for a in CHANGEABLE if a != "accent" or patterned])
        tensor = scene.background if name == "background" else getattr(scene, name)[:, 0]
        taken = {int(tensor[i])}
        if name == "accent" or (name == "colour" and patterned):  # two-tone: accent and main colour differ
            taken.add(int(scene.colour[i, 0] if name == "accent" else scene.accent[i, 0]))
        tensor[j] = rng.choice([v for v in range(CHANGEABLE[name]) if v not in taken])
        species[j] = species_in(scene, j)
        require[i] = require[j] = (name,)
    return require


def confuser_cycle(tiers: dict[str, float]) -> dict[str, Species]:
    """Each named kind of a tier with a share above 0 in ``tiers`` -> its confuser: the next kind of the same family
    and tier, by name, in a cycle (``{"regular": 0.3}``: each regular fruit points at another regular fruit)."""
    out: dict[str, Species] = {}
    for tier in (t for t, share in tiers.items() if share > 0):
        for family in {s.family for s in SPECIES}:
            kinds = sorted((s for s in SPECIES if s.family == family and s.tier == tier), key=lambda s: s.name)
            if len(kinds) > 1:
                out.update({kind.name: kinds[(i + 1) % len(kinds)] for i, kind in enumerate(kinds)})
    return out


class SpeciesCaptionStream(IterableDataset):
    """Endless batches ``(images [B, 3, S, S] float, tokens [B, L] long)`` of second-world scenes and captions."""

    def __init__(self, model: str, batch_size: int, seed: int, hard_negative_fraction: float,
                 sibling_share: float, species_fraction: float, distractor_rate: float,
                 name_share: float = 0.55, synonym_share: float = 0.25,
                 tier_name_share: dict[str, float] | None = None, style_share: float = 0.0,
                 chatter_share: float = 0.0, name_noise: dict[str, float] | None = None) -> None:
        if tier_name_share is not None:
            missing = sorted(set(TIER_WEIGHTS) - set(tier_name_share))
            bad = {k: v for k, v in tier_name_share.items() if k not in TIER_WEIGHTS or not 0.0 <= float(v) <= 1.0}
            if missing or bad or max(tier_name_share.values()) <= 0:
                raise ValueError(f"tier_name_share={tier_name_share!r}: give a share in [0, 1] for every tier "
                                 f"{sorted(TIER_WEIGHTS)} (missing {missing}, invalid {bad}), one of them above 0")
        if not 0.0 <= style_share <= 1.0:
            raise ValueError(f"style_share={style_share!r} must lie in [0, 1] (share of images in a non-clean style)")
        if name_noise is not None and (set(name_noise) - set(TIER_WEIGHTS)
                                       or any(not 0.0 <= float(v) < 0.5 for v in name_noise.values())):
            raise ValueError(f"name_noise={name_noise!r}: give tiers of {sorted(TIER_WEIGHTS)} with a share in [0, 0.5) "
                             "(at 0.5 or more a kind's caption would name its confuser as often as itself)")
        if not 0.0 <= chatter_share <= 1.0:
            raise ValueError(f"chatter_share={chatter_share!r} must lie in [0, 1] (share of captions after web chatter)")
        self.model = model
        self.batch_size = batch_size
        self.seed = seed
        self.hard = hard_negative_fraction
        self.sibling_share = sibling_share
        self.species_fraction = species_fraction
        self.distractor_rate = distractor_rate
        self.name_share = name_share
        self.synonym_share = synonym_share
        self.tier_name_share = None if tier_name_share is None else {k: float(v) for k, v in tier_name_share.items()}
        self.style_share = style_share
        self.chatter_share = chatter_share
        self.name_noise = None if not name_noise else {k: float(v) for k, v in name_noise.items()}
        self.confusers = confuser_cycle(self.name_noise) if self.name_noise else {}
        self.tokenizer = open_clip.get_tokenizer(model)

    def name_share_of(self, species: Species | None) -> float:
        """Chance that a caption of this kind names it (its tier's share, else ``name_share``)."""
        if species is None or self.tier_name_share is None:
            return self.name_share
        return self.tier_name_share[species.tier]

    def styles(self, n_pairs: int, rng: random.Random) -> list[str] | str:
        """Per-image photography: ``style_share`` of the images in a non-clean style of :data:`STYLES` (uniform),
        a hard-negative pair in one style; ``"clean"`` for all when ``style_share`` is 0."""
        if self.style_share == 0.0:
            return "clean"
        shifted = [s for s in STYLES if s != "clean"]
        out = [rng.choice(shifted) if rng.random() < self.style_share else "clean" for _ in range(self.batch_size)]
        for i in range(n_pairs):
            out[self.batch_size - 1 - i] = out[i]
        return out

    def batch(self, g: torch.Generator, rng: random.Random) -> tuple[torch.Tensor, list[str]]:
        """One batch: images ``[B, 3, S, S]`` and their captions."""
        scene, species = sample_species_scene(self.batch_size, generator=g, species_fraction=self.species_fraction)
        n_pairs = int(self.batch_size * self.hard) // 2
        require = make_hard_negatives(scene, species, n_pairs, rng, self.sibling_share, self.tier_name_share)
        images, _ = render(scene, generator=g, style=self.styles(n_pairs, rng))
        texts = [caption2(self.words(scene, k, species[k], require[k], rng), rng, require=require[k],
                          distractor_rate=self.distractor_rate, name_share=self.name_share_of(species[k]),
                          synonym_share=self.synonym_share)
                 for k in range(self.batch_size)]
        if self.chatter_share > 0.0:
            texts = [self.chatter(t, rng) if rng.random() < self.chatter_share else t for t in texts]
        return images, texts

    def words(self, scene: Scene, k: int, species: Species | None, require: tuple[str, ...],
              rng: random.Random) -> dict[str, str | None]:
        """Image ``k``'s words (:func:`object_words`); with ``name_noise``, a kind of a noisy tier is given its
        confuser's name (:func:`confuser_cycle`) with its tier's chance, as alt-text calls a lime a lemon, unless
        its caption must settle the species (a sibling pair)."""
        words = object_words(scene, k, species)
        if self.name_noise and species is not None and species.name in self.confusers and "species" not in require:
            if rng.random() < self.name_noise.get(species.tier, 0.0):
                words = {**words, "species": self.confusers[species.name].name}
        return words

    def chatter(self, text: str, rng: random.Random) -> str:
        """``text`` after a prefix of web chatter (:func:`~vlprompt.data.toyworld.captions2.with_chatter`) that
        brings it to a length drawn uniformly between its own and the context length, so the end token is seen
        at every position a prompt learner's context can push it to."""
        def count(s: str) -> int:
            return len(self.tokenizer.encode(s))

        room = self.tokenizer.context_length - 2  # start and end tokens
        own = count(text)
        return with_chatter(text, rng, rng.randint(min(own + 1, room), room), count)

    def __iter__(self):
        info = get_worker_info()
        wid = 0 if info is None else info.id
        g = torch.Generator().manual_seed(self.seed * 100_003 + wid + 7)
        rng = random.Random(self.seed * 100_003 + wid + 7)
        while True:
            images, texts = self.batch(g, rng)
            yield images, self.tokenizer(texts)


class SpeciesCaptionData(pl.LightningDataModule):
    """Stream of second-world scenes with captions for pretraining ``vlprompt-toyclip2``.

    Args:
        batch_size, num_workers, seed: as the first toy CLIP's :class:`~vlprompt.toyworld.pretrain.CaptionData`.
        hard_negative_fraction: share of each batch in hard-negative pairs; ``sibling_share`` of the pairs whose
            first image is a named kind pair it with a sibling kind (module docstring).
        species_fraction: share of scenes showing a named kind (the rest are free two-tone objects).
        distractor_rate: chance of a distractor prefix, and again of a suffix, per caption.
        name_share, synonym_share: chance that a named kind's caption names it, and then by its synonym.
        tier_name_share: per caption tier (``common``, ``regular``, ``rare``), the chance that a kind's caption
            names it, replacing ``name_share``; sibling pairs follow the same shares (:func:`make_hard_negatives`).
            ``None``: ``name_share`` for every kind.
        style_share: share of images rendered in a non-clean photography (noise, low contrast, blur, sketch;
            uniform), so zero-shot pays little for a dataset's photography; 0 renders every image clean.
        chatter_share: share of captions after a prefix of web chatter (web words and file names;
            :meth:`SpeciesCaptionStream.chatter`) that brings them to a random length up to the context length, so
            the text tower learns, as real CLIP did from web alt-text, that words it cannot ground say nothing
            about the image and that a caption may end anywhere in the context; 0 leaves the captions as they are.
        name_noise: per tier, the chance that a kind's caption calls it by its confuser's name
            (:meth:`SpeciesCaptionStream.words`), so zero-shot knows those kinds only partly; ``None``: never.
    """

    def __init__(
        self, *, model: str = TOY2_MODEL, batch_size: int = 256, num_workers: int = 1, seed: int = 0,
        hard_negative_fraction: float = 0.5, sibling_share: float = 0.4, species_fraction: float = 0.6,
        distractor_rate: float = 0.3, name_share: float = 0.55, synonym_share: float = 0.25,
        tier_name_share: dict[str, float] | None = None, style_share: float = 0.0, chatter_share: float = 0.0,
        name_noise: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.stream = SpeciesCaptionStream(model, batch_size, seed, hard_negative_fraction, sibling_share,
                                           species_fraction, distractor_rate, name_share, synonym_share,
                                           tier_name_share, style_share, chatter_share, name_noise)
        self.num_workers = num_workers

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.stream, batch_size=None, num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            prefetch_factor=4 if self.num_workers > 0 else None,
        )


@torch.no_grad()
def species_zero_shot(image_features: torch.Tensor, encode_text, target: torch.Tensor, names: list[str],
                      template: str = "a photo of a {}.") -> float:
    """Fraction of images whose best-matching prompt (``a photo of a lemon.``) is their class's name.
    ``image_features [N, D]``, ``target [N]`` indices into ``names``; ``encode_text`` maps prompts to ``[V, D]``."""
    text = F.normalize(encode_text([template.format(n) for n in names]), dim=-1)
    pred = (F.normalize(image_features, dim=-1) @ text.to(image_features.device).T).argmax(dim=1).cpu()
    return float((pred == target).float().mean())


class CLIP2Pretraining(CLIPPretraining):
    """:class:`CLIPPretraining` of ``vlprompt-toyclip2``, optionally from a checkpoint, with the second world's
    monitor (module docstring).

    Args:
        init_from: a safetensors checkpoint of the same architecture to start from (``None``: random weights).
        probe_size: held-out images of the second world's monitor.
        (others: :class:`CLIPPretraining`)
    """

    def __init__(
        self, *, model: str = TOY2_MODEL, lr: float = 1e-3, weight_decay: float = 0.1, warmup_steps: int = 500,
        export_path: str = "runs/pretrain/vlprompt-toyclip2.safetensors", eval_every: int = 500,
        init_from: str | None = None, probe_size: int = 1000,
    ) -> None:
        super().__init__(model=model, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                         export_path=export_path, eval_every=eval_every)
        self.init_sha256 = None
        if init_from:
            path = Path(init_from)
            if not path.is_file():
                raise FileNotFoundError(f"init_from={init_from!r} is not a file; give a safetensors checkpoint of "
                                        f"{model!r}'s architecture (e.g. vlprompt/backbones/assets/vlprompt-toyclip.safetensors)")
            state = {k: v.float() for k, v in load_file(str(path)).items()}
            missing, unexpected = self.clip.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(f"init_from={init_from!r} does not fit {model!r}: missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]}")
            self.init_sha256 = file_sha256(path)

    def run_eval(self, log_metrics: bool = True) -> dict[str, float]:
        acc = dict(super().run_eval(log_metrics=log_metrics))
        if not hasattr(self, "_species_probe"):
            images, target = species_scenes(self.hparams.probe_size, 54321)
            faded, faded_target = species_scenes(self.hparams.probe_size, 54322, "low_contrast")
            self._species_probe = (images, target, faded, faded_target)
        images, target, faded, faded_target = self._species_probe
        was = self.clip.training
        self.clip.eval()
        with torch.no_grad():
            def encode_text(texts: list[str]) -> torch.Tensor:
                return self.clip.encode_text(self.tokenizer(texts).to(self.device))

            feats = torch.cat([self.clip.encode_image((c.to(self.device) - self.mean) / self.std) for c in images.split(500)])
            faded_feats = torch.cat([self.clip.encode_image((c.to(self.device) - self.mean) / self.std) for c in faded.split(500)])
            families = ["fruit", "gem", "tile", "flag"]
            acc["species"] = species_zero_shot(feats, encode_text, target, [s.name for s in SPECIES])
            rare = torch.tensor([SPECIES[int(t)].tier == "rare" for t in target])
            acc["species_rare"] = species_zero_shot(feats[rare], encode_text, target[rare], [s.name for s in SPECIES])
            acc["synonym"] = species_zero_shot(feats, encode_text, target, [s.synonym for s in SPECIES])
            acc["family"] = species_zero_shot(feats, encode_text, torch.tensor([families.index(SPECIES[int(t)].family) for t in target]), families)
            within = []
            for family in families:
                members = [k for k, s in enumerate(SPECIES) if s.family == family]
                sel = torch.isin(faded_target, torch.tensor(members))
                local = torch.tensor([members.index(int(t)) for t in faded_target[sel]])
                within.append(species_zero_shot(faded_feats[sel], encode_text, local, [SPECIES[k].name for k in members]))
            acc["species_within_family_low_contrast"] = sum(within) / len(within)
        self.clip.train(was)
        self.last_eval = acc
        if log_metrics:
            for k in ("species", "species_rare", "synonym", "family", "species_within_family_low_contrast"):
                self.log(f"zeroshot/{k}", acc[k])
        log.info("step %d second-world zero-shot %s", self.global_step,
                 {k: round(acc[k], 3) for k in ("species", "species_rare", "synonym", "family",
                                                  "species_within_family_low_contrast")})
        return acc

    def card_extra(self) -> dict:
        """The checkpoint the run continued, and the caption stream's settings (the datamodule's arguments)."""
        data = getattr(self.trainer, "datamodule", None)
        return {"init_from": self.hparams.init_from, "init_from_sha256": self.init_sha256, "world": "toyclip2",
                **({"data": dict(data.hparams)} if data is not None and data.hparams else {})}
