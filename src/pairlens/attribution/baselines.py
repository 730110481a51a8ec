"""Attribution baselines: the blurred explicand used by COCOA (seed 002, Appendix H.3)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

BLUR_KERNEL = 21
BLUR_SIGMA = 5.0

Baseline = None | float | Tensor | Callable[[Tensor], Tensor]


def blur(x: Tensor, kernel_size: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> Tensor:
    """Gaussian blur of a (B, 3, H, W) batch in model-input space (reflect padding, as
    torchvision's ``GaussianBlur``). Blurring commutes with per-channel normalisation, so blurring
    normalised inputs equals normalising blurred pixels. For images smaller than the kernel the
    kernel shrinks to the largest odd size reflect padding allows (2 * min(H, W) - 1)."""
    from torchvision.transforms.functional import gaussian_blur  # lazy: torchvision is slow

    h, w = x.shape[-2:]
    k = min(int(kernel_size), 2 * min(h, w) - 1)
    k = k if k % 2 == 1 else k - 1
    if k < 3:
        return x.clone()
    return gaussian_blur(x, [k, k], [float(sigma), float(sigma)])


def resolve_baseline(baseline: Baseline, x: Tensor) -> Tensor:
    """The baseline batch (B, 3, H, W) for inputs ``x``: ``None`` is the default Gaussian blur
    (kernel 21, sigma 5), a number fills every pixel, a tensor is broadcast to ``x``'s shape, a
    callable is applied to ``x``."""
    if baseline is None:
        out = blur(x)
    elif callable(baseline) and not isinstance(baseline, Tensor):
        out = baseline(x)
    elif isinstance(baseline, (int, float)):
        out = torch.full_like(x, float(baseline))
    elif isinstance(baseline, Tensor):
        out = baseline
    else:
        raise TypeError(
            f"baseline must be None, a number, a tensor or a callable; got {baseline!r}"
        )
    out = torch.as_tensor(out).to(x.device, x.dtype)
    if out.dim() == 3:
        out = out.unsqueeze(0)
    try:
        out = out.expand_as(x)
    except RuntimeError:
        raise ValueError(
            f"baseline of shape {tuple(out.shape)} does not match inputs {tuple(x.shape)}"
        ) from None
    if not bool(torch.isfinite(out).all()):
        raise ValueError("baseline contains NaN or infinite values")
    return out.contiguous()
