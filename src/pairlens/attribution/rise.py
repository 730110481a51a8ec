"""RISE (Petsiuk et al. 2018) on any scalar target, batched (seed 002, Appendix H.3).

    saliency(p) = 1 / (N * p_keep) * sum_n target(x * M_n + b * (1 - M_n)) * M_n(p)

Masks: a ``grid`` x ``grid`` binary grid whose cells are kept with probability ``p_keep``,
bilinearly upsampled to ``(grid + 1) * cell`` pixels (cell = ceil(H / grid)) and cropped to H x W
at a random shift in [0, cell) per mask and axis (the original RISE recipe). COCOA uses a 7 x 7
grid (4 x 4 for 32-pixel inputs), ``p_keep = 0.5``, 5000 masks and the blurred explicand as ``b``.

Masks are generated on the model's device, ``batch_size`` at a time, and each batch of masked
images goes through the target in one call: 5000 masks at 32 px are four forward passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from pairlens.validation import Annotated, Range

# input values (3 * H * W per image) per forward batch when batch_size is not given: 1365 masks
# at 32 px (5000 masks in 4 batches), 27 at 224 px; bounded so activations fit in a few GB
AUTO_BATCH_VALUES = 2**22


def default_grid(height: int, width: int) -> int:
    """COCOA's grid: 4 x 4 for inputs of at most 32 pixels, 7 x 7 otherwise."""
    return 4 if min(height, width) <= 32 else 7


def auto_batch_size(height: int, width: int, n_masks: int) -> int:
    return max(1, min(n_masks, AUTO_BATCH_VALUES // (3 * height * width)))


def rise_masks(
    n: int,
    size: tuple[int, int],
    grid: int | tuple[int, int] = 7,
    p_keep: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """``n`` RISE masks (n, H, W) with values in [0, 1] (1 keeps the input pixel)."""
    h, w = size
    gh, gw = (grid, grid) if isinstance(grid, int) else grid
    if gh < 1 or gw < 1:
        raise ValueError(f"grid must be positive; got {grid}")
    if not 0 < p_keep < 1:
        raise ValueError(f"p_keep must be in (0, 1); got {p_keep}")
    ch, cw = math.ceil(h / gh), math.ceil(w / gw)
    cells = (torch.rand(n, 1, gh, gw, generator=generator, device=device) < p_keep).float()
    up = F.interpolate(
        cells, size=((gh + 1) * ch, (gw + 1) * cw), mode="bilinear", align_corners=False
    )[:, 0]
    dy = torch.randint(0, ch, (n,), generator=generator, device=device)
    dx = torch.randint(0, cw, (n,), generator=generator, device=device)
    rows = dy[:, None] + torch.arange(h, device=device)
    cols = dx[:, None] + torch.arange(w, device=device)
    index = torch.arange(n, device=device)[:, None, None]
    return up[index, rows[:, :, None], cols[:, None, :]].clamp_(0.0, 1.0)


@torch.no_grad()
def rise_maps(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    baseline: Tensor,
    n_masks: Annotated[int, Range(1)] = 5000,
    grid: int | tuple[int, int] | None = None,
    p_keep: Annotated[float, Range(0, 1, lo_open=True)] = 0.5,
    batch_size: Annotated[int, Range(1)] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """RISE saliency of one explicand ``x`` (1, 3, H, W) against ``baseline`` (1, 3, H, W).

    ``score_fn`` maps (N, 3, H, W) to (N,) or, for several targets sharing the same masked images,
    (N, K). Returns (K, H, W) maps (K = 1 for a scalar target).
    """
    if x.dim() != 4 or len(x) != 1:
        raise ValueError(f"rise_maps explains one image (1, 3, H, W); got {tuple(x.shape)}")
    if n_masks < 1:
        raise ValueError(f"n_masks must be positive; got {n_masks}")
    h, w = x.shape[-2:]
    grid = grid or default_grid(h, w)
    batch_size = batch_size or auto_batch_size(h, w, n_masks)
    total: Tensor | None = None
    for start in range(0, n_masks, batch_size):
        n = min(batch_size, n_masks - start)
        masks = rise_masks(n, (h, w), grid, p_keep, generator, x.device)
        m = masks[:, None]
        scores = score_fn(x * m + baseline * (1 - m)).float()
        scores = scores[:, None] if scores.dim() == 1 else scores
        part = scores.T @ masks.reshape(n, h * w)  # (K, H*W)
        total = part if total is None else total + part
    assert total is not None
    return (total / (n_masks * p_keep)).reshape(-1, h, w)
