"""Training strategies: how a backbone and its head are trained, one module each.

Each module's `fit(ctx: TrainContext) -> Fitted` trains and returns the classifier (at the
model's size, test-time flip included) and its validation probabilities. `choose` picks one:

* `scratch`: no pretrained weights; the whole network, end to end on images;
* `frozen_head`: pretrained, no fine-tuning; heads on cached pooled features;
* `cached_fine_tune`: pretrained, fine-tuning, the backbone has a `tune_from` cut; heads, then
  the layers after the cut on cached maps;
* `image_fine_tune`: pretrained, fine-tuning, no cut; heads, then the top over images.
"""

from __future__ import annotations

from collections.abc import Callable

from pizzactl.train.context import TrainContext
from pizzactl.train.strategies import cached_fine_tune, frozen_head, image_fine_tune, scratch
from pizzactl.train.strategies.common import Fitted

STRATEGIES: dict[str, Callable[[TrainContext], Fitted]] = {
    "scratch": scratch.fit,
    "frozen_head": frozen_head.fit,
    "cached_fine_tune": cached_fine_tune.fit,
    "image_fine_tune": image_fine_tune.fit,
}


def choose(ctx: TrainContext) -> str:
    """The strategy for this run's backbone and fine-tuning choice."""
    if not ctx.backbone.pretrained:
        return "scratch"
    if ctx.fine_tune_epochs <= 0:
        return "frozen_head"
    return "cached_fine_tune" if ctx.tune_from else "image_fine_tune"


__all__ = ["STRATEGIES", "Fitted", "choose"]
