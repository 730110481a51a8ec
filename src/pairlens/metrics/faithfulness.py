"""Faithfulness metrics for pairs of explanations (seed 000, §IV-A and §IV-B).

Insertion / deletion (Petsiuk et al., RISE) and average drop / increase (Grad-CAM++) adapted to
pairs in two settings: *simultaneous* (both images altered with their own maps, similarity of the
two altered images: SI, SD, SAD) and *conditional* (one image altered, the other whole; both
directions averaged: CI, CD, CAD).

Conventions (DESIGN.md, "Exact conventions"):

* pixels are ranked by map value, descending; ties are broken by flat pixel index (row-major,
  lower index first);
* deletion starts from the image and sets the top ``k*L`` pixels (all channels) to 0 in
  model-input space; insertion starts from a Gaussian blur of the image (kernel 11, sigma 5,
  reflect padding, in model-input space) and copies the top ``k*L`` pixels from the original;
* ``N = ceil(H*W / L)`` steps give ``N + 1`` scores ``s_0 .. s_N`` (step 0 included) and
  ``AUC = (sum(s) - s_0/2 - s_N/2) / N`` (trapezoid rule on [0, 1]);
* the default step ``L`` is ``max(1, round(H*W / 224))``: 224 pixels for 224x224 inputs, so about
  224 steps for any image size;
* average drop / increase: each map is min-max normalised to [0, 1] (a constant map becomes all
  zeros) and multiplied into its image in model-input space; ``drop = max(0, s - s') / s`` over
  pairs with ``s > 0`` (other pairs give NaN and are counted as skipped), ``increase = 1[s' > s]``.

Similarities other than cosine (the model's ``similarity``; every score here is
``model.embedding_similarity``) follow these rules:

* insertion / deletion curves and their AUCs are in the similarity's own units, unscaled. Every
  supported similarity grows with similarity (``neg-l2`` is ``-||z1 - z2||``), so insertion stays
  higher-is-better and deletion lower-is-better; but dot-product or distance AUCs are comparable
  only between methods on the same model and pairs, never with cosine AUCs or across models;
* average drop of ``cosine``, ``dot`` and callables: the rule above (relative drop of a score
  whose zero means "unrelated"; pairs with ``s <= 0`` skipped);
* average drop of ``neg-l2`` (``s = -d <= 0``): ``max(0, s - s') / |s| = max(0, d' - d) / d``,
  the relative increase of the distance (the relative loss of closeness); only pairs with
  ``d = 0`` (identical embeddings) are skipped;
* average increase ``1[s' > s]`` needs no rule.

Speed: no autograd (inference mode); every altered image goes through the model exactly once and
is shared by the simultaneous and the conditional curves; the embedding of each unaltered image
is computed once (the conditional metrics never re-encode the fixed image); the blur is computed
once per call; altered images are built lazily from the precomputed pixel ranks, one vectorised
comparison per chunk, and embedded ``batch_size`` images at a time across steps and pairs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pairlens.models.similarity import SimilarityModel
from pairlens.runtime import resolve_batch_size

BLUR_KERNEL = 11
BLUR_SIGMA = 5.0
CURVE_METRICS = ("SI", "SD", "CI", "CD")
DROP_METRICS = ("SAD", "CAD", "SAI", "CAI")


def default_step(height: int, width: int) -> int:
    """Default number of pixels ``L`` added or removed per step: ``round(H*W / 224)`` (>= 1)."""
    return max(1, round(height * width / 224))


def n_steps(height: int, width: int, step: int) -> int:
    """``N = ceil(H*W / L)``."""
    return math.ceil(height * width / step)


def pixel_ranks(maps: Tensor) -> Tensor:
    """Rank (B, H*W) of every pixel: 0 for the most important one.

    Ranking is by map value, descending, ties broken by flat pixel index (the lower index first):
    a stable sort of the negated values.
    """
    flat = maps.flatten(1).float()
    order = torch.sort(-flat, dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    return ranks


def gaussian_blur(x: Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> Tensor:
    """Separable Gaussian blur of (B, C, H, W) images with reflect padding.

    The 1-D kernel is ``exp(-t^2 / (2 sigma^2))`` for ``t = -(k-1)/2 .. (k-1)/2``, normalised to
    sum 1 (as torchvision's ``gaussian_blur``). Images too small for reflect padding
    (a side <= k // 2) use replicate padding.
    """
    half = kernel // 2
    t = torch.arange(kernel, dtype=x.dtype, device=x.device) - (kernel - 1) / 2
    k1 = torch.exp(-(t**2) / (2 * sigma**2))
    k1 = k1 / k1.sum()
    c = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > half else "replicate"
    y = F.pad(x, (half, half, half, half), mode=mode)
    y = F.conv2d(y, k1.view(1, 1, 1, kernel).expand(c, 1, 1, kernel), groups=c)
    return F.conv2d(y, k1.view(1, 1, kernel, 1).expand(c, 1, kernel, 1), groups=c)


def auc(curves: Tensor) -> Tensor:
    """Area under (..., N+1) curves on [0, 1]: ``(sum(s) - s_0/2 - s_N/2) / N``."""
    n = curves.shape[-1] - 1
    return (curves.sum(-1) - curves[..., 0] / 2 - curves[..., -1] / 2) / n


def minmax(maps: Tensor) -> Tensor:
    """Each (H, W) map scaled to [0, 1]; a constant map becomes all zeros."""
    flat = maps.flatten(1).float()
    lo = flat.amin(1, keepdim=True)
    span = flat.amax(1, keepdim=True) - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(flat.dtype).tiny), 0.0)
    return out.view_as(maps)


def _altered_batches(
    images: Tensor, ranks: Tensor, blurred: Tensor | None, kinds: Sequence[str], counts: Tensor,
    batch_size: int,
) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Yield (kind index, image index, step index, altered images) in chunks of ``batch_size``.

    At step ``k`` image ``i`` has its ``counts[i, k]`` top-ranked pixels altered. Only the steps
    that differ from an unaltered image are produced: deletion steps 1..N and insertion steps
    0..N-1 (deletion step 0 and insertion step N are the image itself). The (kind, image, step)
    grid is flattened; each chunk is built by one comparison of the precomputed ranks with the
    steps' counts and one ``where``, without Python per step.
    """
    m, c, h, w = images.shape
    n = counts.shape[1] - 1
    device = images.device
    first = torch.tensor([1 if k == "deletion" else 0 for k in kinds], device=device)
    insertion = torch.tensor([k == "insertion" for k in kinds], device=device)
    total = len(kinds) * m * n
    for start in range(0, total, batch_size):
        idx = torch.arange(start, min(start + batch_size, total), device=device)
        kind_i, img_i, j = idx // (m * n), (idx // n) % m, idx % n
        k = j + first[kind_i]
        revealed = (ranks[img_i] < counts[img_i, k][:, None]).view(-1, 1, h, w)  # top pixels
        orig = images[img_i]
        if blurred is None:  # deletion only: the top pixels set to 0
            altered = orig.masked_fill(revealed, 0.0)
        else:  # insertion rows: original over the blur; deletion rows: 0 over the original
            ins = insertion[kind_i].view(-1, 1, 1, 1)
            altered = torch.where(revealed, torch.where(ins, orig, 0.0),
                                  torch.where(ins, blurred[img_i], orig))
        yield kind_i, img_i, k, altered


@torch.inference_mode()
def insertion_deletion_curves(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    map1: Tensor,
    map2: Tensor,
    step: int | None = None,
    kinds: Sequence[str] = ("insertion", "deletion"),
    batch_size: int | None = None,
    z1: Tensor | None = None,
    z2: Tensor | None = None,
    regions: tuple[Tensor, Tensor] | None = None,
    region_size: int | None = None,
) -> dict[str, Tensor]:
    """Similarity curves (B, N+1) of the insertion / deletion games (§IV-B).

    Returns, for each kind in ``kinds``, ``"S<kind>"`` (simultaneous: both images altered) and
    ``"C<kind>"`` (conditional: the mean of the two one-sided curves), keyed ``SI``, ``SD``, ``CI``,
    ``CD``, plus ``"CI1"``/``"CI2"`` (``CD1``/``CD2``): the curves with image 1 (image 2) altered.
    ``z1``, ``z2`` are the embeddings of the unaltered images if already known.

    With ``regions`` (labels (B, H, W) of image 1 and of image 2) the games alter whole regions
    (:mod:`pairlens.metrics.regions`, ``N = ceil(H/size) * ceil(W/size)`` steps for
    ``region_size``) instead of ``L`` pixels per step. ``batch_size``: images per forward pass
    (None: :func:`pairlens.runtime.default_batch_size`).
    """
    from pairlens.metrics.regions import region_ranks_and_counts, region_steps

    b, _, h, w = x1.shape
    batch_size = resolve_batch_size(batch_size, x1)
    images = torch.cat([x1, x2])
    maps = torch.cat([map1, map2]).to(images.device)
    if regions is None:
        step = int(step or default_step(h, w))
        if step < 1:
            raise ValueError("step L must be >= 1")
        n = n_steps(h, w, step)
        ranks = pixel_ranks(maps)
        counts = (torch.arange(n + 1, device=images.device) * step).clamp(max=h * w)
        counts = counts.expand(2 * b, -1)
    else:
        if not region_size or region_size < 1:
            raise ValueError("region games need region_size >= 1")
        n = region_steps(h, w, region_size)
        ranks, counts = region_ranks_and_counts(maps, torch.cat(list(regions)), n)
        ranks, counts = ranks.to(images.device), counts.to(images.device)
    if z1 is None or z2 is None:
        z1, z2 = model.embed_pair(x1, x2)
    z_orig = torch.cat([z1, z2])
    blurred = gaussian_blur(images) if "insertion" in kinds else None
    emb = torch.empty(len(kinds), 2 * b, n + 1, z_orig.shape[1], device=images.device,
                      dtype=z_orig.dtype)
    for kind_index, kind in enumerate(kinds):
        emb[kind_index, :, 0 if kind == "deletion" else n] = z_orig
    for kind_i, img_i, k, altered in _altered_batches(images, ranks, blurred, kinds, counts,
                                                      batch_size):
        emb[kind_i, img_i, k] = model.embed_mixed(altered, img_i >= b).to(emb.dtype)
    out: dict[str, Tensor] = {}
    for kind_index, kind in enumerate(kinds):
        letter = "I" if kind == "insertion" else "D"
        e1, e2 = emb[kind_index, :b], emb[kind_index, b:]  # (B, N+1, D)
        out[f"S{letter}"] = similarity(model, e1, e2)
        one = similarity(model, e1, z2[:, None].expand_as(e2))
        two = similarity(model, z1[:, None].expand_as(e1), e2)
        out[f"C{letter}1"], out[f"C{letter}2"] = one, two
        out[f"C{letter}"] = (one + two) / 2
    return out


@torch.inference_mode()
def average_drop_increase(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    map1: Tensor,
    map2: Tensor,
    batch_size: int | None = None,
    z1: Tensor | None = None,
    z2: Tensor | None = None,
) -> dict[str, Tensor]:
    """Average drop and increase, simultaneous and conditional (§IV-B), each (B,).

    ``SAD``: ``max(0, s - s') / s`` with ``s'`` the similarity of the two masked images; ``CAD``:
    the mean over the two directions of the same quantity with one image masked and the other
    whole. Both are NaN for pairs with ``s <= 0`` (skipped). For a ``neg-l2`` model
    (``s = -d``) the drop is ``max(0, s - s') / |s|``, the relative increase of the distance,
    and only pairs with ``s = 0`` are skipped (see the module docstring). ``SAI`` / ``CAI``:
    ``1[s' > s]`` (conditional: mean of the two directions, so 0, 0.5 or 1), defined for every
    pair. ``batch_size``: images per forward pass (None:
    :func:`pairlens.runtime.default_batch_size`).
    """
    b = x1.shape[0]
    batch_size = resolve_batch_size(batch_size, x1)
    images = torch.cat([x1, x2])
    if z1 is None or z2 is None:
        z1, z2 = model.embed_pair(x1, x2)
    weights = minmax(torch.cat([map1, map2]).to(images.device)).unsqueeze(1)
    second = torch.arange(2 * b, device=images.device) >= b
    zm = _embed(model, images * weights.to(images.dtype), second, batch_size)
    m1, m2 = zm[:b], zm[b:]
    s = similarity(model, z1, z2)
    s_sim = similarity(model, m1, m2)
    s_c1, s_c2 = similarity(model, m1, z2), similarity(model, z1, m2)
    distance = model.similarity_name == "neg-l2"
    valid = s != 0 if distance else s > 0

    def drop(s_new: Tensor) -> Tensor:
        value = (s - s_new).clamp_min(0) / s.abs()
        return torch.where(valid, value, torch.full_like(value, math.nan))

    return {
        "SAD": drop(s_sim),
        "CAD": (drop(s_c1) + drop(s_c2)) / 2,
        "SAI": (s_sim > s).float(),
        "CAI": ((s_c1 > s).float() + (s_c2 > s).float()) / 2,
    }


def _embed(model: SimilarityModel, x: Tensor, second: Tensor, batch_size: int) -> Tensor:
    """Embeddings of images ``x`` (rows flagged in ``second`` go through tower 2), batched."""
    return torch.cat(
        [model.embed_mixed(t, f) for t, f in zip(x.split(batch_size), second.split(batch_size),
                                                 strict=True)]
    )


def similarity(model: SimilarityModel, e1: Tensor, e2: Tensor) -> Tensor:
    """The model's similarity of embeddings (..., D) with any leading shape, shape (...)."""
    flat = model.embedding_similarity(e1.reshape(-1, e1.shape[-1]), e2.reshape(-1, e2.shape[-1]))
    return flat.view(e1.shape[:-1])
