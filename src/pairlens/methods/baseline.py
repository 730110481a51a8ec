"""The random-map baseline (the floor the papers compare against).

Not a method of seed 000's §III: a control. Every pixel of each map is an independent uniform
draw in [0, 1) from a generator seeded with ``seed`` (on the CPU, so CPU and CUDA agree); the maps
do not depend on the images, so faithfulness metrics of this method measure chance level.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pairlens.methods.registry import PairMaps, register_method
from pairlens.models.similarity import SimilarityModel
from pairlens.validation import Annotated, Range


@register_method(
    "random",
    section="baseline",
    summary="Uniform random maps (seeded): the chance-level floor for the metrics",
    family="baseline",
)
def random_maps(
    model: SimilarityModel, x1: Tensor, x2: Tensor, *, seed: Annotated[int, Range(0)] = 0
) -> PairMaps:
    """Two (B, H, W) maps of independent U[0, 1) values, drawn with ``seed``."""
    b, _, h, w = x1.shape
    gen = torch.Generator().manual_seed(int(seed))
    maps = torch.rand((2, b, h, w), generator=gen).to(x1.device)
    return PairMaps(maps[0], maps[1])
