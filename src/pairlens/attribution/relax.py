"""RELAX (Wickstrøm et al. 2022) on any scalar target: similarity-weighted masks and their
uncertainty.

With masks M_n (RISE-style, :func:`pairlens.attribution.rise.rise_masks`) and scores
s_n = target(x * M_n + b * (1 - M_n)):

    importance(p)  = sum_n s_n M_n(p) / sum_n M_n(p)                 (mask-weighted mean)
    uncertainty(p) = sum_n M_n(p) (s_n - importance(p))^2 / sum_n M_n(p)   (weighted variance)

which is what the reference implementation's running (Welford) estimator converges to, with the
variance divided by the total weight. With :class:`pairlens.corpus.targets.LabelFree` (cosine) as
the
target this is RELAX itself; with a corpus target it is "RELAX for COCOA". RELAX's own choices are
3000 masks on a 7 x 7 grid with p_keep 0.5 and a zero baseline; PairLens defaults to the same
masks and, like its other methods, the blurred explicand as baseline (``baseline=0`` for RELAX's).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pairlens.attribution.rise import auto_batch_size, default_grid, rise_masks
from pairlens.validation import Annotated, Range


@torch.no_grad()
def relax_maps(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    baseline: Tensor,
    n_masks: Annotated[int, Range(1)] = 3000,
    grid: int | tuple[int, int] | None = None,
    p_keep: Annotated[float, Range(0, 1, lo_open=True)] = 0.5,
    batch_size: Annotated[int, Range(1)] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Importance and uncertainty maps, each (H, W), of one explicand ``x`` (1, 3, H, W)."""
    if x.dim() != 4 or len(x) != 1:
        raise ValueError(f"relax_maps explains one image (1, 3, H, W); got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    grid = grid or default_grid(h, w)
    batch_size = batch_size or auto_batch_size(h, w, n_masks)
    weight = torch.zeros(h * w, dtype=torch.float64, device=x.device)
    first = torch.zeros_like(weight)
    second = torch.zeros_like(weight)
    for start in range(0, n_masks, batch_size):
        n = min(batch_size, n_masks - start)
        masks = rise_masks(n, (h, w), grid, p_keep, generator, x.device)
        m = masks[:, None]
        s = score_fn(x * m + baseline * (1 - m)).double().reshape(n)
        flat = masks.reshape(n, h * w).double()
        weight += flat.sum(dim=0)
        first += s @ flat
        second += (s * s) @ flat
    weight = weight.clamp_min(1e-10)
    importance = first / weight
    uncertainty = (second / weight - importance**2).clamp_min(0.0)
    return importance.float().reshape(h, w), uncertainty.float().reshape(h, w)
