"""ROAD for pairs: RemOve And Debias (Rong et al., ICML 2022) with noisy linear imputation.

Pixel-removal metrics with a fill value (insertion / deletion's zeros or blur) leak the shape of
the removed set: the model sees *where* pixels were removed, and a scattered set of removed pixels
can change the similarity more than a contiguous one of the same size, whatever the pixels held.
ROAD replaces removed pixels by *noisy linear imputation*, so that the removed set is hard to
detect, and measures the model at fixed fractions of removed pixels, without retraining.

Conventions (the authors' code, ``tleemann/road_evaluation``, checked at ``road/imputations.py``
``NoisyLinearImputer`` and ``road/imputed_dataset.py`` ``ImputedDataset``):

* every removed pixel takes the weighted mean of its 8 neighbours (weight 1/6 for the 4 direct
  neighbours, 1/12 for the diagonal ones; neighbours outside the image are dropped and the weights
  of the others renormalised), removed neighbours being unknowns of the same sparse linear system;
  known pixels keep their value; then Gaussian noise with standard deviation ``noise = 0.01`` is
  added to the imputed pixels. Imputation happens in [0, 1] pixel space, before the model's
  mean/std normalisation (as ``run_road`` applies ``transform_test`` after imputing);
* the map is min-max normalised and a fixed field of ``1e-4 * N(0, 1)`` values (one field for all
  images, from ``seed``) is added before ranking, so ties are broken at random but identically for
  every image (``ImputedDataset.random_v``);
* MoRF at fraction ``p`` removes the ``floor(p * H * W)`` most relevant pixels. LeRF at ``p``
  removes the ``floor(p * H * W)`` *least* relevant pixels (the reference code's LeRF at ``th_p``
  removes all but the ``th_p`` most relevant, i.e. our LeRF at ``1 - th_p``; with the symmetric
  default fractions 0.1 ... 0.9 both give the same mean).

Pair versions: simultaneous (both images imputed at the same fraction with their own maps,
similarity of the two: ``SMoRF``, ``SLeRF``) and conditional (one image imputed, the other whole,
both directions averaged: ``CMoRF``, ``CLeRF``). The score of a pair is the mean similarity over
the fractions (a curve's mean height): lower is better for MoRF, higher for LeRF.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from pairlens.metrics.faithfulness import minmax, pixel_ranks
from pairlens.models.similarity import SimilarityModel

ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ROAD_NOISE = 0.01
TIE_NOISE = 1e-4
# (row offset, column offset, weight): ROAD's neighbour weights (direct 1/6, diagonal 1/12)
NEIGHBOURS = tuple(
    (dy, dx, 1 / 12 if dy and dx else 1 / 6)
    for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx
)


def linear_impute(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Noise-free linear imputation of the ``removed`` pixels of one image.

    Args:
        image: (C, H, W) float array.
        removed: (H, W) bool array, True where the pixel is to be imputed.

    Returns:
        (C, H, W) float64 array: known pixels unchanged, each removed pixel equal to the weighted
        mean of its in-image neighbours (:data:`NEIGHBOURS`), solved jointly for all removed
        pixels with ``scipy.sparse.linalg.spsolve``.

    Raises:
        ValueError: every pixel is removed (nothing to impute from).
    """
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import spsolve

    c, h, w = image.shape
    flat = image.reshape(c, -1).astype(np.float64)
    unknown = np.flatnonzero(removed.reshape(-1))
    out = flat.copy()
    if len(unknown) == 0:
        return out.reshape(c, h, w)
    if len(unknown) == h * w:
        raise ValueError("cannot impute an image whose every pixel is removed")
    var = np.full(h * w, -1, dtype=np.int64)
    var[unknown] = np.arange(len(unknown))
    rows_u, cols_u = np.divmod(unknown, w)
    diag = np.zeros(len(unknown))
    rhs = np.zeros((len(unknown), c))
    ri, ci, vals = [np.arange(len(unknown))], [np.arange(len(unknown))], []
    for dy, dx, weight in NEIGHBOURS:
        r, q = rows_u + dy, cols_u + dx
        inside = (r >= 0) & (r < h) & (q >= 0) & (q < w)
        diag[inside] += weight
        who = np.flatnonzero(inside)
        nb = r[inside] * w + q[inside]
        is_var = var[nb] >= 0
        ri.append(who[is_var])
        ci.append(var[nb[is_var]])
        vals.append(np.full(int(is_var.sum()), -weight))
        rhs[who[~is_var]] += weight * flat[:, nb[~is_var]].T
    vals.insert(0, diag)
    a = csc_matrix((np.concatenate(vals), (np.concatenate(ri), np.concatenate(ci))),
                   shape=(len(unknown), len(unknown)))
    solved = spsolve(a, rhs)
    out[:, unknown] = np.asarray(solved).reshape(len(unknown), c).T
    return out.reshape(c, h, w)


def removal_masks(ranks: Tensor, fraction: float, order: str) -> Tensor:
    """(M, H*W) bool: the pixels removed at ``fraction`` in ``order`` ("MoRF" or "LeRF") given
    pixel ranks (0 = most relevant)."""
    n = ranks.shape[1]
    k = int(math.floor(fraction * n))
    return ranks < k if order == "MoRF" else ranks >= n - k


@torch.no_grad()
def road_curves(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    map1: Tensor,
    map2: Tensor,
    fractions: Sequence[float] = ROAD_FRACTIONS,
    noise: float = ROAD_NOISE,
    seed: int | None = 0,
    batch_size: int = 128,
    z1: Tensor | None = None,
    z2: Tensor | None = None,
) -> dict[str, Tensor]:
    """ROAD curves (B, F) of the pairs ``(x1[i], x2[i])`` at the removal ``fractions``.

    Returns ``SMoRF``, ``SLeRF`` (simultaneous), ``CMoRF``, ``CLeRF`` (conditional, the mean of
    the two directions) and the one-sided ``CMoRF1``/``CMoRF2``/``CLeRF1``/``CLeRF2``. Imputation
    noise is drawn per pair from :func:`~pairlens.methods.common.pair_generators`, so a pair's
    curve does not depend on its batch. ``batch_size`` images per forward pass.

    Raises:
        ValueError: a fraction outside (0, 1) or a negative ``noise``.
    """
    from pairlens.methods.common import pair_generators

    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0 < f < 1 for f in fractions):
        raise ValueError(f"ROAD fractions must lie in (0, 1), got {fractions}")
    if noise < 0:
        raise ValueError(f"ROAD noise must be >= 0, got {noise}")
    b, _, h, w = x1.shape
    images = torch.cat([x1, x2])
    field = torch.randn((h, w), generator=torch.Generator().manual_seed(int(seed or 0)))
    maps = torch.cat([map1, map2]).detach().float().cpu()
    ranks = pixel_ranks(minmax(maps) + TIE_NOISE * field)
    pixels = torch.cat([model.denormalize(x1, 1), model.denormalize(x2, 2)])  # per tower
    pix = pixels.detach().cpu().double().numpy()
    gens = pair_generators(seed, x1, x2)
    orders = ("MoRF", "LeRF")
    altered = torch.empty((len(orders), len(fractions), 2 * b, *images.shape[1:]))
    for oi, order in enumerate(orders):
        for fi, f in enumerate(fractions):
            removed = removal_masks(ranks, f, order).view(2 * b, h, w).numpy()
            for pair in range(b):
                for img in (pair, b + pair):
                    filled = torch.from_numpy(linear_impute(pix[img], removed[img])).float()
                    eps = torch.randn(filled.shape, generator=gens[pair]) * noise
                    keep = torch.from_numpy(~removed[img])
                    altered[oi, fi, img] = torch.where(keep, filled, filled + eps)
    altered = altered.to(images.device, images.dtype)
    altered[:, :, :b] = model.normalize(altered[:, :, :b], 1)  # image 1: tower 1's space
    altered[:, :, b:] = model.normalize(altered[:, :, b:], 2)
    flat = altered.flatten(0, 2)
    second = (torch.arange(2 * b, device=images.device) >= b).repeat(len(orders) * len(fractions))
    emb = torch.cat([model.embed_mixed(chunk, flags) for chunk, flags in
                     zip(flat.split(batch_size), second.split(batch_size), strict=True)])
    emb = emb.view(len(orders), len(fractions), 2 * b, -1)
    if z1 is None or z2 is None:
        z1, z2 = model.embed_pair(x1, x2)
    sim = model.embedding_similarity
    out: dict[str, Tensor] = {}
    for oi, order in enumerate(orders):
        e1, e2 = emb[oi, :, :b], emb[oi, :, b:]  # (F, B, D)
        f = len(fractions)
        simultaneous = sim(e1.flatten(0, 1), e2.flatten(0, 1)).view(f, b).T
        one = sim(e1.flatten(0, 1), z2.repeat(f, 1)).view(f, b).T
        two = sim(z1.repeat(f, 1), e2.flatten(0, 1)).view(f, b).T
        out[f"S{order}"] = simultaneous
        out[f"C{order}1"], out[f"C{order}2"] = one, two
        out[f"C{order}"] = (one + two) / 2
    return out
