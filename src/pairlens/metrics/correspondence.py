"""Correspondence faithfulness: removing region pairs in the order an explanation ranks them.

Both images are cut into the same ``g x g`` grid of regions (default 7 x 7). An *order* is a
sequence of region pairs ``(i_t, j_t)``, t = 1..n (n = g*g), each region used once per image; at
step t the regions ``A_t = {i_1..i_t}`` of image 1 and ``B_t = {j_1..j_t}`` of image 2 are removed:
replaced by the Gaussian blur of the image (kernel 11, sigma 5, the insertion metric's start;
``fill="zero"`` sets them to 0 in model-input space instead). Blur is the default because with a
constant fill both images converge to the same blank image, whose similarity to itself (1)
dominates the interaction below: on 12 augmented digits pairs (similarity 0.98) the interaction of
the fully removed pair was 2.08 with zero fill and 0.66 with blur, and with zero fill random maps
scored as well as the methods, with blur at chance (PI 0.19 against 0.21 for random pairing).
Three orders are compared on the same pair:

* the explanation's own: for a correspondence (a pair relevance ``R``, re-binned onto the grid by
  area), the region pair with the highest relevance, then the highest among the regions not yet
  removed, and so on (a greedy one-to-one matching); for first-order maps, which carry no pairing,
  the marginal order below;
* ``-marginal``: each image's regions by their own first-order importance (the row and column sums
  of ``R``, i.e. the explanation's own maps summed per region), paired rank by rank;
* ``-random``: a uniformly random one-to-one pairing (seeded per pair).

Every order removes one region of each image per step, so the curves are comparable. Two curves,
each N = n steps and N + 1 points, AUC as in :func:`pairlens.metrics.faithfulness.auc`:

* ``PD`` (pair deletion, lower is better): ``s_t = S(x1 - A_t, x2 - B_t)``, the similarity as the
  region pairs are removed (issue 15's definition). Removing a region of each image also removes
  everything that region shares with *all* regions of the other image, so ``PD`` is dominated by
  first-order importance: on a model whose similarity is a sum of matches (A, B) + (A', B'),
  removing (A, B') first drops it fastest, although that pair contributes nothing.
* ``PI`` (pair interaction, higher is better): ``I_t = S(x1, x2) - S(x1 - A_t, x2) -
  S(x1, x2 - B_t) + S(x1 - A_t, x2 - B_t)``, the interaction of the removed sets. For a bilinear
  similarity that is exactly a sum of region-pair terms, ``I_t = sum_{i in A_t, j in B_t} R[i, j]``:
  the true relevance of the removed block, so ``PI`` rewards an order that puts the pairs that
  really interact first, and only a correct correspondence beats its own marginals.

Both need only the two altered images per step (the four similarities reuse their embeddings), so
the cost is at most ``3 orders x 2 images x n steps`` forward passes per pair, without autograd
(an image removed in the same order under two orders is embedded once: for first-order maps the
own order is the marginal order, so 2 x 2 x n).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pairlens.methods.common import cell_index, check_grid_fits, regrid, regrid_pairs
from pairlens.methods.correspondence import pair_generators
from pairlens.metrics.faithfulness import auc, gaussian_blur
from pairlens.models.similarity import SimilarityModel
from pairlens.runtime import resolve_batch_size

PAIR_METRICS = ("PI", "PD")
#: the reference orders reported next to the explanation's own
REFERENCES = ("marginal", "random")
DEFAULT_GRID = 7
FILLS = ("blur", "zero")


def greedy_matching(relevance: Tensor) -> tuple[Tensor, Tensor]:
    """One-to-one pairing by descending relevance: repeatedly the highest ``R[i, j]`` among rows
    and columns not yet used (ties: lowest flat index). ``relevance`` (B, n, n) -> two (B, n)
    orders of regions."""
    r = relevance.detach().double().clone()
    b, n, _ = r.shape
    rows = torch.empty(b, n, dtype=torch.long, device=r.device)
    cols = torch.empty_like(rows)
    ar = torch.arange(b, device=r.device)
    for t in range(n):
        flat = r.flatten(1).argmax(1)
        i, j = flat // n, flat % n
        rows[:, t], cols[:, t] = i, j
        r[ar, i, :] = -torch.inf
        r[ar, :, j] = -torch.inf
    return rows, cols


def marginal_orders(m1: Tensor, m2: Tensor) -> tuple[Tensor, Tensor]:
    """Regions of each image by descending importance (B, n), ties by index."""
    return (torch.sort(-m1.double(), dim=1, stable=True).indices,
            torch.sort(-m2.double(), dim=1, stable=True).indices)


def random_orders(n: int, gens: Sequence[torch.Generator], device) -> tuple[Tensor, Tensor]:
    """A random one-to-one pairing per pair (two random permutations), drawn on the CPU."""
    p1 = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)
    p2 = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)
    return p1, p2


@torch.inference_mode()
def pair_removal_curves(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    maps: tuple[Tensor, Tensor],
    relevance: Tensor | None = None,
    grids: tuple[tuple[int, int], tuple[int, int]] | None = None,
    grid: int = DEFAULT_GRID,
    fill: str = "blur",
    seed: int | None = 0,
    batch_size: int | None = None,
    z1: Tensor | None = None,
    z2: Tensor | None = None,
) -> dict[str, Tensor]:
    """Pair deletion and pair interaction curves and AUCs (see the module docstring).

    Args:
        model: the similarity model.
        x1, x2: (B, 3, H, W) in model-input space.
        maps: the explanation's two (B, H, W) maps (for first-order explanations, the only input).
        relevance, grids: a correspondence's (B, h1*w1, h2*w2) relevance and its grids, if any.
        grid: regions per side of the evaluation grid.
        fill: ``"blur"`` (Gaussian blur, kernel 11, sigma 5, in model-input space, the insertion
            metric's start) or ``"zero"`` (0 in model-input space) for removed regions.
        seed: seeds the random pairing (per pair, from the seed and the pair's pixels).
        batch_size: images per forward pass (None: the device-aware default).
        z1, z2: embeddings of the unaltered images, if known.

    Returns:
        ``PD``, ``PI`` and their ``-marginal`` / ``-random`` references, each (B,), and the curves
        ``PD_curve``, ``PI_curve`` (B, n + 1) of the explanation's own order.

    Raises:
        ValueError: a bad ``grid`` (< 1, or finer than the pixels) or ``fill``.
    """
    batch_size = resolve_batch_size(batch_size, x1)
    if int(grid) < 1:
        raise ValueError(f"the pair-metric grid must be >= 1 regions per side; got {grid}")
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {', '.join(FILLS)}; got {fill!r}")
    g = (int(grid), int(grid))
    b, _, h, w = x1.shape
    check_grid_fits(g, (h, w), "the pair-metric grid")
    n = g[0] * g[1]
    device = x1.device
    if z1 is None or z2 is None:
        half = max(1, batch_size // 2)
        zs = [model.embed_pair(a, c) for a, c in zip(x1.split(half), x2.split(half), strict=True)]
        z1, z2 = torch.cat([z[0] for z in zs]), torch.cat([z[1] for z in zs])
    s0 = model.embedding_similarity(z1, z2)
    if relevance is not None and grids is not None:
        rel = regrid_pairs(relevance.to(device).float(), grids, (g, g))
        m1, m2 = rel.sum(2), rel.sum(1)
        own = greedy_matching(rel)
    else:
        m1 = regrid(maps[0].to(device).float(), g).flatten(1)
        m2 = regrid(maps[1].to(device).float(), g).flatten(1)
        own = None
    marginal = marginal_orders(m1, m2)
    orders = {"": own or marginal, "-marginal": marginal,
              "-random": random_orders(n, pair_generators(seed, x1, x2), device)}
    cells = cell_index((h, w), g, device)
    images = torch.cat([x1, x2])
    filled = gaussian_blur(images) if fill == "blur" else torch.zeros_like(images)
    # ranks[o, side * B + pair, region] = step at which the region is removed (0-based)
    ranks = torch.empty(len(orders), 2 * b, n, dtype=torch.long, device=device)
    steps = torch.arange(n, device=device).expand(b, n)
    for o, (p1, p2) in enumerate(orders.values()):
        ranks[o, :b].scatter_(1, p1, steps)
        ranks[o, b:].scatter_(1, p2, steps)
    emb = torch.empty(len(orders), 2 * b, n + 1, z1.shape[1], device=device, dtype=z1.dtype)
    emb[:, :, 0] = torch.cat([z1, z2])
    # an image removed in the same order as under an earlier order is embedded once (first-order
    # maps: the own order is the marginal order)
    copies: list[tuple[int, int, int]] = []  # (order, image, earlier order)
    jobs = []
    for o in range(len(orders)):
        for i in range(2 * b):
            same = next((q for q in range(o) if torch.equal(ranks[q, i], ranks[o, i])), None)
            if same is None:
                jobs.append((o, i))
            else:
                copies.append((o, i, same))
    # (job, step) rows in chunks of batch_size images, built by gathers (no Python loop per step)
    job_o = torch.tensor([o for o, _ in jobs], device=device, dtype=torch.long)
    job_i = torch.tensor([i for _, i in jobs], device=device, dtype=torch.long)
    total = len(jobs) * n
    for start in range(0, total, batch_size):
        idx = torch.arange(start, min(start + batch_size, total), device=device)
        o_idx, i_idx, t_idx = job_o[idx // n], job_i[idx // n], idx % n + 1
        removed = (ranks[o_idx, i_idx][:, cells] < t_idx[:, None, None]).unsqueeze(1)
        altered = torch.where(removed, filled[i_idx], images[i_idx])
        emb[o_idx, i_idx, t_idx] = model.embed_mixed(altered, i_idx >= b).to(emb.dtype)
    for o, i, same in copies:
        emb[o, i] = emb[same, i]
    out: dict[str, Tensor] = {}
    for o, suffix in enumerate(orders):
        e1, e2 = emb[o, :b], emb[o, b:]  # (B, n+1, D)
        sim = model.embedding_similarity
        both = sim(e1.flatten(0, 1), e2.flatten(0, 1)).view(b, n + 1)
        one = sim(e1.flatten(0, 1), z2.repeat_interleave(n + 1, 0)).view(b, n + 1)
        two = sim(z1.repeat_interleave(n + 1, 0), e2.flatten(0, 1)).view(b, n + 1)
        inter = s0[:, None] - one - two + both
        out[f"PD{suffix}"] = auc(both)
        out[f"PI{suffix}"] = auc(inter)
        if not suffix:
            out["PD_curve"], out["PI_curve"] = both, inter
    return out

