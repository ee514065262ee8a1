"""``vlprompt generate``: make the generated views of every test image ahead of time (resumable).

Takes the same configs as ``vlprompt tta`` with a learner that has a generator (``difftpt``); images whose
views are already cached are skipped, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import logging

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from vlprompt.generators.base import GeneratorError
from vlprompt.runs.test_time import build_tta_cli

log = logging.getLogger(__name__)


def generate_main(argv: list[str]) -> int:
    """``vlprompt generate``: fill the generated-view cache of every test image (cached ones are skipped)."""
    cli = build_tta_cli(argv)
    cli.instantiate_classes()
    learner, data = cli.model.learner, cli.datamodule
    cache = getattr(learner, "generated_cache", None)
    n = int(getattr(learner, "generated", 0) or 0)
    if cache is None or n < 1:
        raise GeneratorError(
            f"{type(learner).__name__} generates no views: use a learner with a generator and generated > 0 "
            "(e.g. --config configs/learners/difftpt/sd.yaml)"
        )
    loaders = data.test_dataloader()
    total = sum(len(dl.dataset) for dl in loaders)
    made = skipped = 0
    columns = (TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("generate", total=total)
        for loader in loaders:
            for images, _ in loader:
                for image in images:
                    if cache.load(image, n) is not None:
                        skipped += 1
                    else:
                        cache.get(image, n)
                        made += 1
                    progress.advance(task)
    log.info("generated views for %d images, %d already cached, in %s", made, skipped, cache.folder)
    return 0
