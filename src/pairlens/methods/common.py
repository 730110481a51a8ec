"""Small helpers shared by several methods (no model plumbing here)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from pairlens.methods.registry import PairMaps
from pairlens.runtime import resolve_batch_size


def saliency(x: Tensor, grad: Tensor) -> Tensor:
    """Pixel map (B, H, W): max over channels of |x * grad| (seed 000, §III-A)."""
    return (x * grad).abs().amax(dim=1)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, h, w) maps to (B, H, W) by bilinear interpolation."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]


def scaled(value: int, side: int, reference: int = 224) -> int:
    """A pixel size defined for 224-px inputs, scaled to an image side of ``side`` pixels."""
    return max(1, round(value * side / reference))


def generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (a fresh random seed when None). Draw on the CPU and
    move the result to the model's device, so that CPU and CUDA runs use the same random numbers
    (``benchmarks/device_check.py`` compares them)."""
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def noise_sigma(x: Tensor, level: float) -> Tensor:
    """SmoothGrad noise standard deviation per image: ``level * (max - min)``, shape (B,1,1,1)."""
    flat = x.flatten(1)
    return (level * (flat.amax(1) - flat.amin(1))).view(-1, 1, 1, 1)


def by_pairs(
    fn: Callable[[Tensor, Tensor], PairMaps],
    x1: Tensor,
    x2: Tensor,
    batch_size: int | None,
    grad: bool,
) -> PairMaps:
    """``fn`` applied to chunks of pairs so that at most ``batch_size`` images (both images of
    ``batch_size // 2`` pairs, at least one pair) go through the model per forward pass.

    ``batch_size=None`` is :func:`pairlens.runtime.default_batch_size` for the device and image
    size (``grad``: whether ``fn`` keeps an autograd graph). Pairs are independent, so the maps
    are the same for any ``batch_size``; the results of the chunks are concatenated."""
    b = x1.shape[0]
    per = max(1, resolve_batch_size(batch_size, x1, grad) // 2)
    if per >= b:
        return fn(x1, x2)
    parts = [fn(x1[i : i + per], x2[i : i + per]) for i in range(0, b, per)]
    score = None if parts[0].score is None else torch.cat([p.score for p in parts])
    return PairMaps(torch.cat([p.map1 for p in parts]), torch.cat([p.map2 for p in parts]), score)


@torch.no_grad()
def pair_scores(model, x1: Tensor, x2: Tensor, batch_size: int | None = None) -> Tensor:
    """The model's similarity (B,) of the unaltered pairs, ``batch_size`` images per forward pass
    (both images of a pair in one pass; None: the device-aware default)."""

    def run(a: Tensor, c: Tensor) -> PairMaps:
        z = model.embed(torch.cat([a, c]))
        s = model.embedding_similarity(z[: len(a)], z[len(a) :])
        return PairMaps(s, s, s)

    return by_pairs(run, x1, x2, batch_size, grad=False).score
