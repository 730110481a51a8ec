"""Small helpers shared by several methods (no model plumbing here)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Literal

import numpy as np
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


def upsample_pair(e1: Tensor, e2: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """:func:`upsample` of the maps of images 1 and 2 (B, h, w) each; one interpolation for
    both when their grids agree (the same values: every map is interpolated on its own)."""
    if e1.shape != e2.shape or tuple(e1.shape[-2:]) == tuple(size):
        return upsample(e1, size), upsample(e2, size)
    up = upsample(torch.cat([e1, e2]), size)
    return up[: len(e1)], up[len(e1) :]


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
    check_noise_scale(scale)
    flat = x.flatten(1)
    span = flat.amax(1) - flat.amin(1)
    if scale == "divide":
        sigma = level / span.clamp_min(torch.finfo(flat.dtype).tiny)
        sigma = torch.where(span > 0, sigma, torch.zeros_like(sigma))
    else:
        sigma = level * span
    return sigma.view(-1, 1, 1, 1)


def check_noise_scale(scale: str) -> None:
    """Raise ``ValueError`` unless ``scale`` is ``"divide"`` or ``"multiply"``."""
    if scale not in ("divide", "multiply"):
        raise ValueError(f"noise_scale must be 'divide' or 'multiply', got {scale!r}")


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
def pair_embeddings(
    model, x1: Tensor, x2: Tensor, batch_size: int | None = None, check: bool = True
) -> tuple[Tensor, Tensor]:
    """Embeddings z1, z2 (B, D) of the unaltered pairs, at most ``batch_size`` images per forward
    pass (image 1 through tower 1, image 2 through tower 2; None: the device-aware default).
    With ``check``, raises like :meth:`~pairlens.models.similarity.SimilarityModel.embed_pair`
    for a non-finite or all-zero embedding."""
    per = max(1, resolve_batch_size(batch_size, x1) // 2)
    if per >= len(x1):
        return model.embed_pair(x1, x2, check=check)
    parts = [model.embed_pair(x1[i : i + per], x2[i : i + per], check=check)
             for i in range(0, len(x1), per)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def pair_scores(model, x1: Tensor, x2: Tensor, batch_size: int | None = None) -> Tensor:
    """The model's similarity (B,) of the unaltered pairs (see :func:`pair_embeddings`)."""
    return model.embedding_similarity(*pair_embeddings(model, x1, x2, batch_size))


# ---------------------------------------------------------------------- grids of regions
GridLike = int | tuple[int, int] | None


def as_grid(grid: GridLike | list[int], what: str = "grid") -> tuple[int, int] | None:
    """``None``, an int ``g`` (a g x g grid) or ``(rows, cols)`` as ``(rows, cols)``; raises
    ``ValueError`` for anything else (non-positive sizes included)."""
    if grid is None:
        return None
    if isinstance(grid, bool):
        raise ValueError(f"{what} must be an int or (rows, cols); got {grid!r}")
    if isinstance(grid, int):
        grid = (grid, grid)
    try:
        rows, cols = (int(v) for v in grid)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an int or (rows, cols); got {grid!r}") from None
    if rows < 1 or cols < 1:
        raise ValueError(f"{what} sizes must be >= 1; got {rows}x{cols}")
    return rows, cols


def check_grid_fits(grid: tuple[int, int], size: tuple[int, int], what: str = "grid") -> None:
    """Raise ``ValueError`` if ``grid`` (rows, cols) is finer than an image of ``size`` (H, W)
    pixels: every region must hold at least one pixel (finer regions would be empty or split
    pixels, and mean nothing)."""
    (rows, cols), (h, w) = grid, size
    if rows > h or cols > w:
        raise ValueError(f"{what} {rows}x{cols} is finer than the {h}x{w}-pixel image: every "
                         "region needs at least one pixel")


def area_matrix(n_from: int, n_to: int, device: torch.device | None = None) -> Tensor:
    """(n_to, n_from) matrix moving values from ``n_from`` equal intervals of [0, 1) to ``n_to``:
    entry (t, f) is the share of source interval f that lies in target interval t, so every
    column sums to 1 and totals are conserved (sum pooling when coarsening, an even split when
    refining)."""
    edges_from = torch.arange(n_from + 1, dtype=torch.float64) / n_from
    edges_to = torch.arange(n_to + 1, dtype=torch.float64) / n_to
    lo = torch.maximum(edges_to[:-1, None], edges_from[None, :-1])
    hi = torch.minimum(edges_to[1:, None], edges_from[None, 1:])
    share = (hi - lo).clamp(min=0) * n_from
    return share.float().to(device)


def regrid(values: Tensor, to: tuple[int, int]) -> Tensor:
    """Re-bin (..., h, w) values onto a ``to`` grid covering the same image, conserving sums
    (see :func:`area_matrix`); (..., rows, cols) out."""
    h, w = values.shape[-2:]
    if (h, w) == tuple(to):
        return values
    ph = area_matrix(h, to[0], values.device)
    pw = area_matrix(w, to[1], values.device)
    return torch.einsum("rh,...hw,cw->...rc", ph, values.float(), pw)


def regrid_pairs(relevance: Tensor, grids: tuple[tuple[int, int], tuple[int, int]],
                 to: tuple[tuple[int, int], tuple[int, int]]) -> Tensor:
    """Re-bin a (B, h1*w1, h2*w2) pair relevance onto grids ``to`` (sums conserved)."""
    (h1, w1), (h2, w2) = grids
    if tuple(map(tuple, grids)) == tuple(map(tuple, to)):
        return relevance
    b = relevance.shape[0]
    r = relevance.reshape(b, h1, w1, h2, w2)
    m1 = torch.kron(area_matrix(h1, to[0][0], r.device), area_matrix(w1, to[0][1], r.device))
    m2 = torch.kron(area_matrix(h2, to[1][0], r.device), area_matrix(w2, to[1][1], r.device))
    return torch.einsum("ti,bij,uj->btu", m1, r.reshape(b, h1 * w1, h2 * w2).float(), m2)


def cell_index(size: tuple[int, int], grid: tuple[int, int], device=None) -> Tensor:
    """(H, W) long tensor: the cell (row-major, 0 .. rows*cols-1) of a ``grid`` that holds each
    pixel's centre."""
    h, w = size
    rows = ((torch.arange(h, device=device) + 0.5) * grid[0] / h).long().clamp(max=grid[0] - 1)
    cols = ((torch.arange(w, device=device) + 0.5) * grid[1] / w).long().clamp(max=grid[1] - 1)
    return rows[:, None] * grid[1] + cols[None, :]
