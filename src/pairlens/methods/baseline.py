"""The random-map baseline (the floor the papers compare against).

Not a method of seed 000's §III: a control. Every pixel of each map is an independent uniform
draw in [0, 1) from the pair's own generator (:func:`~pairlens.methods.common.pair_generators`,
seeded from ``seed`` and the pair's pixels, on the CPU so CPU and CUDA agree): a pair gets the
same maps alone or in any batch, and different pairs get different maps. The maps carry no
information about the model, so faithfulness metrics of this method measure chance level.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pairlens.methods.common import pair_generators
from pairlens.methods.registry import PairMaps, register_method
from pairlens.models.similarity import SimilarityModel
from pairlens.validation import Annotated, Range


@register_method(
    "random",
    section="baseline",
    summary="Uniform random maps (seeded per pair): the chance-level floor for the metrics",
    family="baseline",
    deterministic=False,
)
def random_maps(
    model: SimilarityModel, x1: Tensor, x2: Tensor, *, seed: Annotated[int, Range(0)] | None = 0
) -> PairMaps:
    """Two (B, H, W) maps of independent U[0, 1) values, pair k's drawn from its own generator
    (image 1's map first); ``seed=None`` draws fresh maps on every call."""
    _, _, h, w = x1.shape
    maps = torch.stack([torch.rand((2, h, w), generator=g) for g in pair_generators(seed, x1, x2)])
    maps = maps.to(x1.device)
    return PairMaps(maps[:, 0], maps[:, 1])
