"""Perturbation methods for pairs (seed 000, §III-B): Conditional and Pairwise Occlusion.

Occluded pixels are set to ``fill`` (0 by default) in model-input space. All occluded images go
through the model ``batch_size`` images at a time without autograd (None:
:func:`pairlens.runtime.default_batch_size`), and the embedding of each unaltered image is
computed once. Masks are built by broadcasting, never one by one in Python.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pairlens.methods.common import pair_embeddings, pair_generators, scaled
from pairlens.methods.registry import PairMaps, register_method
from pairlens.models.similarity import SimilarityModel
from pairlens.progress import track
from pairlens.runtime import resolve_batch_size
from pairlens.validation import Annotated, Ordered, Range


def _windows(size: int, window: int, stride: int) -> list[int]:
    if window >= size:
        return [0]
    return list(range(0, size - window + 1, stride))


def box_masks(top: Tensor, left: Tensor, height: Tensor, width: Tensor, h: int, w: int) -> Tensor:
    """Boolean masks (n, h, w), True inside the box ``[top, top + height) x [left, left + width)``
    of each row (all arguments (n,) integer tensors on one device)."""
    rows = torch.arange(h, device=top.device)
    cols = torch.arange(w, device=top.device)
    inside_r = (rows >= top[:, None]) & (rows < (top + height)[:, None])  # (n, h)
    inside_c = (cols >= left[:, None]) & (cols < (left + width)[:, None])  # (n, w)
    return inside_r[:, :, None] & inside_c[:, None, :]


def windows_to_pixels(grid: Tensor, window: int, stride: int, size: tuple[int, int]) -> Tensor:
    """Window values (B, n_h, n_w) to a (B, H, W) map, each value placed at its window's centre.

    Pixels between centres are interpolated bilinearly, pixels beyond the outermost centres take
    the nearest value. (A plain resize of the window grid to the image, as in the paper's code,
    stretches the map towards the borders by up to half a window.)
    """
    b, n_h, n_w = grid.shape
    coords = []
    for n, side in ((n_h, size[0]), (n_w, size[1])):
        t = (torch.arange(side, device=grid.device, dtype=grid.dtype) - (window - 1) / 2) / stride
        coords.append(2 * t.clamp(0, n - 1) / max(n - 1, 1) - 1)
    gy, gx = torch.meshgrid(coords[0], coords[1], indexing="ij")
    sample = torch.stack([gx, gy], -1).expand(b, -1, -1, -1)
    return F.grid_sample(grid[:, None], sample, mode="bilinear", align_corners=True)[:, 0]


@register_method(
    "conditional-occlusion",
    section="§III-B1",
    summary="Slide a square over one image while the other stays whole; map = similarity drop",
    family="perturbation",
)
@torch.no_grad()
def conditional_occlusion(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    *,
    window: Annotated[int, Range(1)] | None = None,
    stride: Annotated[int, Range(1)] | None = None,
    fill: Annotated[float, Range()] = 0.0,
    batch_size: Annotated[int, Range(1)] | None = None,
) -> PairMaps:
    """Conditional Occlusion: occlude one image with a sliding square while the other is whole.

    The value of a window position is ``s - s_occluded`` (base similarity minus the similarity of
    the occluded image with the other, unaltered image); the grid of window values is upsampled
    bilinearly to the input size with each value at its window's centre
    (:func:`windows_to_pixels`). Defaults are the paper's window 64 and stride 8 for 224-px
    inputs, scaled proportionally to the shorter image side for other sizes (8 and 1 at 28 px).
    """
    b, _, h, w = x1.shape
    side = min(h, w)
    window = window or scaled(64, side)
    stride = stride or scaled(8, side)
    batch_size = resolve_batch_size(batch_size, x1)
    rows, cols = _windows(h, window, stride), _windows(w, window, stride)
    top = torch.tensor(rows, device=x1.device).repeat_interleave(len(cols))
    left = torch.tensor(cols, device=x1.device).repeat(len(rows))
    size = torch.full_like(top, window)
    masks = box_masks(top, left, size, size, h, w)[:, None]  # (n, 1, h, w), True = occluded
    z1, z2 = pair_embeddings(model, x1, x2, batch_size)
    base = model.embedding_similarity(z1, z2)
    n = len(masks)
    maps = []
    for tower, x, z_other in ((1, x1, z2), (2, x2, z1)):
        if model.fixed_tower == tower:  # a fixed target: nothing to occlude
            maps.append(torch.zeros(b, h, w, device=x1.device))
            continue
        drops = torch.empty(b * n, device=x1.device)
        steps = range(0, b * n, batch_size)  # (pair, window) flattened, in batches
        for k in track(steps, desc="conditional-occlusion"):
            idx = torch.arange(k, min(k + batch_size, b * n), device=x1.device)
            pair, win = idx // n, idx % n
            z_occ = model.embed(x[pair].masked_fill(masks[win], fill), tower)
            pairs = (z_occ, z_other[pair]) if tower == 1 else (z_other[pair], z_occ)
            drops[idx] = base[pair] - model.embedding_similarity(*pairs)
        maps.append(windows_to_pixels(drops.view(b, len(rows), len(cols)), window, stride, (h, w)))
    return PairMaps(maps[0], maps[1], base)


def random_rectangles(
    n: int,
    h: int,
    w: int,
    area: tuple[float, float],
    ratio: tuple[float, float],
    gen: torch.Generator,
    device: torch.device | str = "cpu",
) -> Tensor:
    """``n`` boolean masks (n, h, w) on ``device``, True inside a random rectangle (the draws are
    made with the CPU generator ``gen``).

    As torchvision's ``RandomErasing``: area uniform in ``area`` (fraction of the image), aspect
    ratio (height / width) log-uniform in ``ratio``, position uniform; a rectangle that does not
    fit is re-drawn, and after 10 tries clipped to the image.
    """
    u = torch.rand(n, 13, generator=gen).double().to(device)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    r = torch.exp(log_lo + (log_hi - log_lo) * u[:, 10:11])  # (n, 1)
    a = (area[0] + (area[1] - area[0]) * u[:, :10]) * (h * w)  # (n, 10 tries)
    rh, rw = torch.round(torch.sqrt(a * r)), torch.round(torch.sqrt(a / r))
    fits = (rh <= h) & (rw <= w)
    # the first try that fits, else the last one (clipped below)
    first = torch.where(fits.any(1), fits.int().argmax(1), 9)
    rh = rh.gather(1, first[:, None])[:, 0].clamp(1, h)
    rw = rw.gather(1, first[:, None])[:, 0].clamp(1, w)
    top = torch.floor(u[:, 11] * (h - rh + 1))
    left = torch.floor(u[:, 12] * (w - rw + 1))
    return box_masks(top.long(), left.long(), rh.long(), rw.long(), h, w)


@register_method(
    "pairwise-occlusion",
    section="§III-B2",
    summary="Occlude random rectangles in both images at once; softmax of drops credits one side",
    family="perturbation",
    deterministic=False,
    pairs_only=True,  # erases both images at once and credits one of them
)
@torch.no_grad()
def pairwise_occlusion(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    *,
    n_samples: Annotated[int, Range(1)] = 100,
    area: Annotated[tuple[float, float], Range(0, 1, lo_open=True), Ordered()] = (0.1, 0.3),
    ratio: Annotated[tuple[float, float], Range(0, lo_open=True), Ordered()] = (1.0, 1.5),
    temperature: Annotated[float, Range(0, lo_open=True)] = 1.0,
    fill: Annotated[float, Range()] = 0.0,
    batch_size: Annotated[int, Range(1)] | None = None,
    seed: Annotated[int, Range(0)] | None = 0,
) -> PairMaps:
    """Pairwise Occlusion (seed 000, §III-B2): ``n_samples`` pairs of random rectangles erased
    simultaneously.

    Sample i erases rectangle r1_i from x1 and r2_i from x2 (area 10-30 %, aspect 1-1.5). Its weight
    is ``softmax_i((s - s_i) / temperature)`` over the samples; ``temperature=1`` is the authors'
    code (explain-cl ``methods.py``, ``pairwise_occlusion``: ``F.softmax(baseline - sims)``). The
    weight goes to the erased region of the image whose occluded embedding has the lower L2 norm
    (the region likely held highly activated features). Regions are tracked by their masks, never
    by looking for zero pixels. Maps are the sums of the weights (the code divides each map by its
    maximum, which changes no ranking).

    Similarity drops are small numbers (cosine differences of a few hundredths), so with
    ``temperature=1`` the softmax is close to uniform and the map is mostly a count of how often
    each pixel was erased; a lower temperature (e.g. 0.01) lets the drops decide (docs/methods.md
    shows the measurement).

    Rectangles are drawn per pair from :func:`~pairlens.methods.common.pair_generators`, so a
    pair's map does not depend on its batch. ``batch_size``: images per forward pass (None:
    :func:`pairlens.runtime.default_batch_size`), ``batch_size // 2`` samples (at least one).

    Raises:
        ValueError: ``n_samples < 1``, ``temperature <= 0`` or ``batch_size < 1``.
    """
    if n_samples < 1:
        raise ValueError("n_samples must be >= 1")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch_size = resolve_batch_size(batch_size, x1)
    b, _, h, w = x1.shape
    gens = pair_generators(seed, x1, x2)
    per_chunk = max(1, batch_size // 2)  # two occluded images per sample
    z1, z2 = pair_embeddings(model, x1, x2, batch_size)
    base = model.embedding_similarity(z1, z2)
    total = b * n_samples
    m1, m2 = [], []
    for g in gens:  # pair-major: pair i, sample k at i*n+k
        m1.append(random_rectangles(n_samples, h, w, area, ratio, g))
        m2.append(random_rectangles(n_samples, h, w, area, ratio, g))
    m1 = torch.cat(m1).to(x1.device)
    m2 = torch.cat(m2).to(x1.device)
    sims = torch.empty(total, device=x1.device)
    norm1, norm2 = torch.empty_like(sims), torch.empty_like(sims)
    for k in track(range(0, total, per_chunk), desc="pairwise-occlusion"):
        idx = torch.arange(k, min(k + per_chunk, total), device=x1.device)
        pair = idx // n_samples
        o1 = x1[pair].masked_fill(m1[idx, None], fill)
        o2 = x2[pair].masked_fill(m2[idx, None], fill)
        za, zb = model.embed_pair(o1, o2, check=False)
        sims[idx] = model.embedding_similarity(za, zb)
        norm1[idx], norm2[idx] = za.norm(dim=1), zb.norm(dim=1)
    drops = (base.repeat_interleave(n_samples) - sims).view(b, n_samples)
    weight = torch.softmax(drops / temperature, dim=1)
    to_first = (norm1 < norm2).view(b, n_samples)
    m1, m2 = m1.view(b, n_samples, h, w), m2.view(b, n_samples, h, w)
    maps1 = torch.einsum("bn,bnhw->bhw", weight * to_first, m1.float())
    maps2 = torch.einsum("bn,bnhw->bhw", weight * ~to_first, m2.float())
    return PairMaps(maps1, maps2, base)
