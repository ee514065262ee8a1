"""Transfer protocols: train on a source dataset, evaluate on target datasets with their own classes.

Cross-dataset transfer (CoCoOp, Zhou et al. CVPR 2022, Sec. 4.2): train with K shots of all ImageNet
classes, test on the other datasets. Domain generalisation (Sec. 4.3): the targets are ImageNet-V2,
-Sketch, -A and -R. Each target is evaluated on its full test split among its own class names; the result
reports each target's accuracy and their mean.
"""

from __future__ import annotations

from vlprompt.data.base import ClassificationSource, DataError
from vlprompt.protocols.base2new import UNLABELED_SPACE, ClassificationProtocol


class Transfer(ClassificationProtocol):
    """Train on ``dataset`` (K shots of every class), test on ``dataset`` and on each of ``targets``.

    Args:
        dataset: the source (e.g. ``imagenet``).
        targets: target datasets (each tested among its own classes).
        (other arguments as :class:`ClassificationProtocol`)
    """

    name = "transfer"
    train_space = "source"

    def __init__(self, dataset: ClassificationSource, targets: list[ClassificationSource], **kwargs) -> None:
        super().__init__(dataset, **kwargs)
        if not targets:
            raise DataError("targets is empty: give at least one target dataset (e.g. the ImageNet variants)")
        names = [self._target_name(i, t) for i, t in enumerate(targets)]
        if len(set(names)) != len(names) or "source" in names:
            raise DataError(f"target names must be unique and differ from 'source': {names}")
        self.targets = targets
        self._names = names

    @staticmethod
    def _target_name(i: int, target: ClassificationSource) -> str:
        ident = target.identity()
        style = ident.get("test_style")
        return f"{target.name}" + (f"-{style}" if style and style != ident.get("style") else "")

    @property
    def label_spaces(self) -> dict[str, list[int]]:
        spaces = {"source": list(range(len(self.dataset.classnames)))}
        for name, target in zip(self._names, self.targets):
            spaces[name] = list(range(len(target.classnames)))
        return spaces

    def space_source(self, space: str) -> ClassificationSource:
        return self.dataset if space == "source" else self.targets[self._names.index(space)]

    @property
    def val_sets(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        return (("source", "source"),)

    @property
    def test_sets(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        return (("source", "source"), *((n, n) for n in self._names))

    def _dataset(self, split: str, space: str, shots: int | None, train: bool, source: ClassificationSource | None = None):
        if space in ("source", UNLABELED_SPACE):
            return super()._dataset(split, space, shots, train)
        return super()._dataset(split, space, None, train, source=self.space_source(space))

    def identity(self) -> dict:
        out = super().identity()
        out["targets"] = [t.identity() for t in self.targets]
        return out
