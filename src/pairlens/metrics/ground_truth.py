"""Ground-truth metrics: does a pair explanation point at the region the similarity depends on?

On data whose right answer is known (the ``composites`` benchmark, :mod:`pairlens.data.composites`:
two scenes sharing exactly one object, the shared object's mask in each scene), each map of a pair
is scored against its image's mask, and the two scores are averaged:

* **pointing game** ``PG`` (Zhang et al., *Top-down neural attention by excitation backprop*,
  ECCV 2016 / IJCV 2018): 1 if the map's maximum lies inside the mask, else 0. We use no
  tolerance margin (Zhang et al. allow 15 px at 224 px; our objects are small and exact). When the
  maximum is attained at several pixels, the score is the **fraction of those maxima inside the
  mask** (Quantus' ``PointingGame`` counts a hit if *any* of them is inside, which gives a constant
  map a hit whenever the mask is not empty; here a constant map scores the mask's area fraction,
  i.e. chance);
* **energy-based pointing game** ``EPG`` (Wang et al., *Score-CAM*, CVPRW 2020): the fraction of
  the map's total mass inside the mask, ``Σ_{mask} m / Σ m``. Score-CAM scores non-negative CAM
  maps; PairLens maps may have any offset or sign, so each map is first min-max normalised to
  [0, 1] (:func:`pairlens.metrics.faithfulness.minmax`, our choice: an offset is not energy). A
  constant map (no energy after normalisation) gives NaN (skipped).

Chance level: a map that ignores the image scores the mask's area fraction on average in both
metrics (a few per cent on composites), which is what the ``random`` baseline measures.

Both metrics are NaN for an empty mask. Pair scores are the mean of the two images' scores
(``PG`` is then 0, 0.5 or 1 for maps with a single maximum); ``PG1``/``PG2``/``EPG1``/``EPG2`` are
the per-image values. No model is run: these metrics cost nothing beyond the explanation.

* **pair energy pointing game** ``PEPG`` (our extension of EPG to correspondences, asked for by
  issue 13 for "correspondence methods: mass on the (object in image 1, object in image 2)
  block"): both images are cut into the same ``g x g`` regions (the grid of ``PI`` / ``PD``,
  default 7 x 7); the pair relevance ``R`` (B, g*g, g*g) is re-binned onto it (sums conserved) and
  its positive part is weighed by ``f1[i] f2[j]``, the fraction of region i of image 1 and of
  region j of image 2 inside the shared object's mask:
  ``PEPG = sum_ij f1[i] f2[j] R+[i, j] / sum_ij R+[i, j]``. A first-order explanation (two maps,
  no ``R``) is scored through the outer product of its min-max normalised maps (what two
  separate maps can express), for which ``PEPG`` is the product of the two region-level energy
  pointing games; so a correspondence method beats first-order methods on PEPG only by matching
  the object *to* the object. Chance (a relevance that ignores the images) is the product of the
  two mask area fractions. NaN for an empty mask or no positive relevance.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pairlens.methods.common import check_grid_fits, regrid, regrid_pairs
from pairlens.metrics.faithfulness import minmax

GROUND_TRUTH_METRICS = ("PG", "EPG", "PEPG")


def _check(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    maps = torch.as_tensor(maps).float()
    masks = torch.as_tensor(masks).to(maps.device).bool()
    if maps.dim() != 3 or tuple(masks.shape) != tuple(maps.shape):
        raise ValueError(f"maps and masks must both be (B, H, W); got {tuple(maps.shape)} and "
                         f"{tuple(masks.shape)}")
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("a map contains NaN or infinite values")
    return maps.flatten(1), masks.flatten(1)


def pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    """Pointing game of (B, H, W) maps against (B, H, W) boolean masks: (B,) float in [0, 1].

    1 when the maximum of the map is inside the mask, 0 when outside; with several maximal pixels,
    the fraction of them inside. NaN for an empty mask. Raises ``ValueError`` on shape mismatch or
    non-finite maps.
    """
    flat, inside = _check(maps, masks)
    at_max = flat == flat.amax(dim=1, keepdim=True)
    hits = (at_max & inside).sum(1).float() / at_max.sum(1).float()
    return torch.where(inside.any(1), hits, torch.full_like(hits, math.nan))


def energy_pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    """Energy-based pointing game: (B,) fraction of the min-max normalised map's mass inside the
    mask, in [0, 1]. NaN for an empty mask or a constant map. Raises like :func:`pointing_game`."""
    flat, inside = _check(maps, masks)
    energy = minmax(flat)
    total = energy.sum(1)
    frac = (energy * inside).sum(1) / total.clamp_min(torch.finfo(total.dtype).tiny)
    ok = inside.any(1) & (total > 0)
    return torch.where(ok, frac, torch.full_like(frac, math.nan))


def ground_truth_scores(map1: Tensor, map2: Tensor, mask1: Tensor, mask2: Tensor
                        ) -> dict[str, Tensor]:
    """``PG``, ``EPG`` (means over the two images) and the per-image ``PG1``, ``PG2``, ``EPG1``,
    ``EPG2`` of a batch of pairs, each (B,)."""
    out = {
        "PG1": pointing_game(map1, mask1), "PG2": pointing_game(map2, mask2),
        "EPG1": energy_pointing_game(map1, mask1), "EPG2": energy_pointing_game(map2, mask2),
    }
    out["PG"] = (out["PG1"] + out["PG2"]) / 2
    out["EPG"] = (out["EPG1"] + out["EPG2"]) / 2
    return out


def pair_energy_pointing_game(
    masks: tuple[Tensor, Tensor],
    relevance: Tensor | None = None,
    grids: tuple[tuple[int, int], tuple[int, int]] | None = None,
    maps: tuple[Tensor, Tensor] | None = None,
    grid: int = 7,
) -> Tensor:
    """Pair energy pointing game (module docstring): (B,) share in [0, 1] of the positive pair
    relevance on the (object of image 1) x (object of image 2) block, on a ``grid x grid``
    region grid.

    Args:
        masks: the shared object's (B, H, W) boolean masks in image 1 and image 2.
        relevance: (B, h1*w1, h2*w2) pair relevance on ``grids`` (a correspondence); or None and
            ``maps``: the two (B, H, W) maps of a first-order explanation, scored through the
            outer product of their min-max normalised region sums.
        grid: regions per side of the common grid.

    Raises:
        ValueError: neither ``relevance`` (with ``grids``) nor ``maps``; shapes that do not match;
            a ``grid`` finer than the pixels; non-finite values.
    """
    m1, m2 = (torch.as_tensor(m).bool() for m in masks)
    if m1.dim() != 3 or m1.shape != m2.shape:
        raise ValueError(f"masks must both be (B, H, W); got {tuple(m1.shape)}, {tuple(m2.shape)}")
    size = tuple(m1.shape[-2:])
    g = (int(grid), int(grid))
    check_grid_fits(g, size, "the pair energy pointing game's grid")
    area = regrid(torch.ones(size, device=m1.device), g).flatten()
    f1 = regrid(m1.float(), g).flatten(1) / area  # (B, g*g) fraction of each region in the mask
    f2 = regrid(m2.float(), g).flatten(1) / area
    if relevance is not None:
        if grids is None:
            raise ValueError("a pair relevance needs its grids ((h1, w1), (h2, w2))")
        rel = torch.as_tensor(relevance).float().to(m1.device)
        if rel.dim() != 3 or rel.shape[0] != m1.shape[0]:
            raise ValueError(f"relevance must be (B, h1*w1, h2*w2) with B={m1.shape[0]}; "
                             f"got {tuple(rel.shape)}")
        if not bool(torch.isfinite(rel).all()):
            raise ValueError("the pair relevance contains NaN or infinite values")
        pos = regrid_pairs(rel, grids, (g, g)).clamp_min(0)
        inside = torch.einsum("bi,bij,bj->b", f1, pos, f2)
        total = pos.sum((1, 2))
    elif maps is not None:
        e1, e2 = (_check(m, mk)[0] for m, mk in zip(maps, (m1, m2), strict=True))
        r1 = regrid(minmax(e1).view(-1, *size), g).flatten(1)
        r2 = regrid(minmax(e2).view(-1, *size), g).flatten(1)
        inside = (r1 * f1).sum(1) * (r2 * f2).sum(1)
        total = r1.sum(1) * r2.sum(1)
    else:
        raise ValueError("pass a pair relevance (with its grids) or the two maps")
    frac = inside / total.clamp_min(torch.finfo(total.dtype).tiny)
    ok = m1.flatten(1).any(1) & m2.flatten(1).any(1) & (total > 0)
    return torch.where(ok, frac, torch.full_like(frac, math.nan))
