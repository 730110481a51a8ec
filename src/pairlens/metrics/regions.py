"""Region-wise insertion and deletion for pairs (patches of a fixed grid or SLIC superpixels).

Pixel-wise deletion removes scattered pixels long before it removes a whole object, and a model
can lose its similarity to the scattered holes themselves; region games remove (or insert)
contiguous regions instead, so a method that marks the right *region* is not punished for the
order of pixels inside it.

Conventions (PairLens's; the games themselves are those of :mod:`pairlens.metrics.faithfulness`):

* regions: ``"grid"``, square cells of ``size`` pixels (the last row / column of cells may be
  narrower), or ``"slic"``, superpixels of ``skimage.segmentation.slic`` on the image in [0, 1]
  pixel space with ``n_segments = ceil(H/size) * ceil(W/size)``, ``compactness=10``,
  ``start_label=0``; default ``size`` is an eighth of the shorter side (28 px at 224, 4 px at 32);
* a region's score is the mean of the map over its pixels; regions are ranked by score,
  descending, ties broken by region label; pixels inside a region keep the flat-index order;
* ``N = ceil(H/size) * ceil(W/size)`` steps (one grid cell per step on a grid that divides the
  image); at step ``k`` the altered set is the shortest prefix of ranked regions covering at least
  ``k/N`` of the image, so every image and both images of a pair have ``N + 1`` scores even when
  SLIC returns another number of segments;
* deletion sets the altered pixels to 0 in model-input space, insertion copies them from the
  original over a Gaussian blur (kernel 11, sigma 5); AUC by the trapezoid rule on ``k/N``.

Names: ``RSI``, ``RSD`` (simultaneous), ``RCI``, ``RCD`` (conditional, both directions averaged).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

Regions = Literal["grid", "slic"]
REGION_METRICS = ("RSI", "RSD", "RCI", "RCD")


def default_region_size(height: int, width: int) -> int:
    """An eighth of the shorter side (>= 1): 28 px for 224 px inputs, 4 px for 32 px inputs."""
    return max(1, round(min(height, width) / 8))


def region_steps(height: int, width: int, size: int) -> int:
    """``N = ceil(H/size) * ceil(W/size)``."""
    return math.ceil(height / size) * math.ceil(width / size)


def grid_labels(n: int, height: int, width: int, size: int) -> Tensor:
    """(n, H, W) labels of square cells of ``size`` pixels, numbered row-major."""
    rows = torch.arange(height) // size
    cols = torch.arange(width) // size
    lab = rows[:, None] * math.ceil(width / size) + cols[None, :]
    return lab.expand(n, height, width).clone()


def slic_labels(images01: Tensor, size: int) -> Tensor:
    """(n, H, W) SLIC superpixel labels of images in [0, 1] (n, 3, H, W)."""
    from skimage.segmentation import slic

    n, _, h, w = images01.shape
    segments = region_steps(h, w, size)
    arr = images01.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().double().numpy()
    out = [slic(a, n_segments=segments, compactness=10.0, start_label=0, channel_axis=-1)
           for a in arr]
    return torch.from_numpy(np.stack(out).astype(np.int64))


def region_labels(images01: Tensor, kind: Regions, size: int) -> Tensor:
    """Region labels (n, H, W) of ``kind`` ("grid" or "slic") with region side ``size``."""
    n, _, h, w = images01.shape
    if size < 1:
        raise ValueError(f"region size must be >= 1 pixel, got {size}")
    if kind == "grid":
        return grid_labels(n, h, w, size)
    if kind == "slic":
        return slic_labels(images01, size)
    raise ValueError(f"regions must be 'grid' or 'slic', got {kind!r}")


def region_ranks_and_counts(maps: Tensor, labels: Tensor, n_steps: int) -> tuple[Tensor, Tensor]:
    """Pixel ranks (M, H*W) from region ranks, and the number of altered pixels (M, N+1) per step.

    Region order: mean map value descending, ties by label; pixels in a region by flat index.
    ``counts[:, k]`` is the size of the shortest prefix of ranked regions covering at least
    ``ceil(k * H*W / N)`` pixels (0 at ``k = 0``, ``H*W`` at ``k = N``).
    """
    m = maps.shape[0]
    hw = maps[0].numel()
    flat = maps.flatten(1).double().cpu()
    lab = labels.flatten(1).cpu()
    ranks = torch.empty((m, hw), dtype=torch.long)
    counts = torch.empty((m, n_steps + 1), dtype=torch.long)
    targets = torch.tensor([math.ceil(k * hw / n_steps) for k in range(n_steps + 1)])
    positions = torch.arange(hw)
    for i in range(m):
        _, inverse = torch.unique(lab[i], return_inverse=True)
        r = int(inverse.max()) + 1
        size = torch.bincount(inverse, minlength=r)
        mean = torch.zeros(r, dtype=torch.float64).index_add_(0, inverse, flat[i]) / size
        region_order = torch.sort(-mean, stable=True).indices  # ties: lower label first
        region_rank = torch.empty_like(region_order)
        region_rank[region_order] = torch.arange(r)
        order = torch.sort(region_rank[inverse] * hw + positions).indices
        ranks[i, order] = positions
        bounds = size[region_order].cumsum(0)
        idx = torch.searchsorted(bounds, targets).clamp(max=r - 1)
        counts[i] = torch.where(targets > 0, bounds[idx], torch.zeros_like(targets))
    return ranks, counts
