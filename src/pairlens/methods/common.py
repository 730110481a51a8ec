"""Small helpers shared by several methods (no model plumbing here)."""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
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


def pair_generators(seed: int | None, x1: Tensor, x2: Tensor) -> list[torch.Generator]:
    """One CPU generator per pair, seeded from ``seed`` and the pair's own pixels.

    Pair k's generator depends only on ``seed`` and the bytes of ``x1[k]`` and ``x2[k]`` (as
    float32 on the CPU; a BLAKE2b hash), so the noise a stochastic method draws for a pair is the
    same whether the pair is explained alone or at any position of any batch, different pairs get
    different noise, and CPU and CUDA runs draw the same numbers. ``seed=None`` gives every pair a
    fresh random seed (non-reproducible). Draw from the generators on the CPU and move the result
    to the model's device.
    """
    if x1.shape[0] != x2.shape[0]:
        raise ValueError("x1 and x2 must hold the same number of pairs")
    gens = []
    if seed is None:
        for _ in range(x1.shape[0]):
            g = torch.Generator()
            g.seed()
            gens.append(g)
        return gens
    a = x1.detach().to("cpu", torch.float32).contiguous().numpy()
    b = x2.detach().to("cpu", torch.float32).contiguous().numpy()
    for k in range(a.shape[0]):
        h = hashlib.blake2b(digest_size=8)
        h.update(np.int64(seed).tobytes())
        h.update(np.asarray(a[k].shape, dtype=np.int64).tobytes())
        h.update(a[k].tobytes())
        h.update(b[k].tobytes())
        gens.append(torch.Generator().manual_seed(int.from_bytes(h.digest(), "little") >> 1))
    return gens


NoiseScale = Literal["divide", "multiply"]


def noise_sigma(x: Tensor, level: float, scale: NoiseScale = "divide") -> Tensor:
    """Standard deviation (B, 1, 1, 1) of SmoothGrad-style Gaussian noise for each image of ``x``.

    * ``"divide"``: ``level / (max - min)``, as the seed-000 authors' code computes it
      (explain-cl ``methods.py``, ``smooth_grad`` and ``create_mixed_images``:
      ``sigma = 0.15 / (torch.max(img1) - torch.min(img1))``);
    * ``"multiply"``: ``level * (max - min)``, the definition of Smilkov et al. (2017), whose noise
      level is ``sigma / (max - min)``.

    The two agree when the image spans a range of 1 (unnormalised [0, 1] inputs, as the SimCLRv2
    models of the paper take). For mean/std-normalised inputs (range about 4 to 5) ``"divide"``
    gives a noise level of ``level / (max - min)**2``, about 15 to 25 times weaker.
    """
    flat = x.flatten(1)
    span = flat.amax(1) - flat.amin(1)
    if scale == "divide":
        sigma = level / span.clamp_min(torch.finfo(flat.dtype).tiny)
        sigma = torch.where(span > 0, sigma, torch.zeros_like(sigma))
    elif scale == "multiply":
        sigma = level * span
    else:
        raise ValueError(f"noise_scale must be 'divide' or 'multiply', got {scale!r}")
    return sigma.view(-1, 1, 1, 1)
