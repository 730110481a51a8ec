"""Small helpers shared by several methods (no model plumbing here)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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


def generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (a fresh random seed when None)."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def noise_sigma(x: Tensor, level: float) -> Tensor:
    """SmoothGrad noise standard deviation per image: ``level * (max - min)``, shape (B,1,1,1)."""
    flat = x.flatten(1)
    return (level * (flat.amax(1) - flat.amin(1))).view(-1, 1, 1, 1)
