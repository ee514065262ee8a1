"""Test-time adaptation protocol: each test image is seen alone, at its raw resolution, with no training.

TPT (Shu et al. 2022, Sec. 4) evaluates natural distribution shifts (ImageNet-A, -V2, -R, -Sketch, with the
200-class label spaces of -A and -R) and cross-dataset generalisation (the 10 fine-grained sets). Here the
protocol's ``dataset`` fixes the class names a loaded prompt was trained on (``source`` space), and each
of ``targets`` is tested among its own classes (optionally restricted to ``classnames``). Images are served
as float ``[3, H, W]`` in ``[0, 1]`` without resizing: the test-time learner builds its own views (view 0 is
the test-transformed original), and plain learners see the same original.
"""

from __future__ import annotations

import difflib
import random

from vlprompt.data.base import ClassificationSource, DataError
from vlprompt.data.transforms import build_transform
from vlprompt.protocols.base2new import ClassificationProtocol, Relabel


def subset_labels(classnames: list[str], subset: list[str], *, where: str) -> list[int]:
    """Labels (in ``classnames`` order) of the names in ``subset``; unknown names are an error naming them."""
    index = {c: i for i, c in enumerate(classnames)}
    unknown = [c for c in subset if c not in index]
    if unknown:
        hints = [f"{c!r} (did you mean {difflib.get_close_matches(c, classnames, n=1)[0]!r}?)" if difflib.get_close_matches(c, classnames, n=1) else repr(c) for c in unknown[:5]]
        raise DataError(
            f"label subset: {len(unknown)} of {len(subset)} class names are not classes of {where} "
            f"({len(classnames)} classes): {', '.join(hints)}{' ...' if len(unknown) > 5 else ''}. Use the dataset's "
            "own class names (`vlprompt data check` lists them) or drop `classnames`."
        )
    if len(set(subset)) != len(subset):
        raise DataError(f"label subset for {where} repeats class names: give each class once")
    return sorted(index[c] for c in subset)


class TestTimeProtocol(ClassificationProtocol):
    """Episodic test-time evaluation on ``targets`` (default: the ``dataset``'s own test split).

    Args:
        dataset: source of the class names prompts were trained on (``source`` space; also the test set
            when ``targets`` is empty).
        targets: test sets, each evaluated among its own classes (e.g. toy shifts, ImageNet variants).
        classnames: optional label subset applied to every target (names must be the targets' classes).
        images_per_set: test images drawn per target (``None``: all); the draw is fixed by ``subset_seed``.
        subset_seed: seed of that draw (independent of the run seed, so seeds see the same images).
        eval_batch_size: images per loader batch (1 for real images of different sizes).
    """

    __test__ = False
    name = "test_time"
    train_space = "source"

    def __init__(
        self,
        dataset: ClassificationSource,
        *,
        targets: list[ClassificationSource] | None = None,
        classnames: list[str] | None = None,
        images_per_set: int | None = None,
        subset_seed: int = 0,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        seed: int | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(dataset, shots=None, seed=seed, eval_batch_size=eval_batch_size, num_workers=num_workers,
                         augment="none", cache_dir=cache_dir)
        if images_per_set is not None and images_per_set < 1:
            raise DataError(f"images_per_set={images_per_set} must be a positive number of test images or null (all)")
        self.targets = list(targets or [])
        self.classnames_subset = list(classnames) if classnames else None
        self.images_per_set = images_per_set
        self.subset_seed = subset_seed
        names = [self._set_name(t) for t in self.targets] or [self._set_name(dataset)]
        if len(set(names)) != len(names) or "source" in names:
            raise DataError(f"test set names must be unique and differ from 'source': {names}")
        self._names = names
        for target in self.targets or [dataset]:  # a bad label subset fails before any work
            if self.classnames_subset:
                subset_labels(target.classnames, self.classnames_subset, where=self._set_name(target))

    @staticmethod
    def _set_name(source: ClassificationSource) -> str:
        ident = source.identity()
        style = ident.get("test_style")
        return source.name + (f"-{style}" if style else "")

    def _sources(self) -> list[ClassificationSource]:
        return self.targets or [self.dataset]

    @property
    def label_spaces(self) -> dict[str, list[int]]:
        spaces = {"source": list(range(len(self.dataset.classnames)))}
        for name, source in zip(self._names, self._sources()):
            if self.classnames_subset:
                spaces[name] = subset_labels(source.classnames, self.classnames_subset, where=name)
            else:
                spaces[name] = list(range(len(source.classnames)))
        return spaces

    def space_source(self, space: str) -> ClassificationSource:
        return self.dataset if space == "source" else self._sources()[self._names.index(space)]

    @property
    def val_sets(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        return ()

    @property
    def test_sets(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        return tuple((n, n) for n in self._names)

    def _dataset(self, split: str, space: str, shots: int | None, train: bool, source: ClassificationSource | None = None):
        source = self.space_source(space)
        idx = self._indices(split, space, None, source)
        if not idx:
            raise DataError(f"split {split!r} of {source.name} has no images of the {space!r} classes")
        if self.images_per_set is not None and self.images_per_set < len(idx):
            idx = sorted(random.Random(self.subset_seed).sample(idx, self.images_per_set))
        mapping = {orig: new for new, orig in enumerate(self.label_spaces[space])}
        return Relabel(source.dataset(split, idx, build_transform(None, train=False)), mapping)

    def val_dataloader(self):
        return []

    def identity(self) -> dict:
        out = super().identity()
        out.update({
            "targets": [t.identity() for t in self.targets], "classnames": self.classnames_subset,
            "images_per_set": self.images_per_set, "subset_seed": self.subset_seed,
        })
        return out
