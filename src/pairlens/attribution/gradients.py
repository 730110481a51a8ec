"""Gradient attributions of a scalar target through captum (seed 002, Appendix H.3).

Integrated Gradients: 50 steps of captum's default Gauss-Legendre rule from the baseline (the
blurred explicand) to the explicand; completeness holds: the attributions sum to
``target(x) - target(baseline)`` up to the integration error (Appendix D, eq. D.3).
GradientSHAP: 50 samples, Gaussian input noise with standard deviation 0.2, baseline the blurred
explicand.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pairlens.validation import Annotated, Range

# input values per forward/backward batch when not given: 1365 images at 32 px, 27 at 224 px
AUTO_BATCH_VALUES = 2**22


def _auto_batch(x: Tensor) -> int:
    return max(1, AUTO_BATCH_VALUES // (3 * x.shape[-2] * x.shape[-1]))


def _captum() -> Any:
    try:
        import captum.attr as attr
    except ImportError as err:  # captum is a core dependency; keep the message helpful anyway
        raise ImportError(
            "integrated-gradients and gradient-shap need captum: pip install captum"
        ) from err
    return attr


def integrated_gradients(
    target: Any,
    x: Tensor,
    baseline: Tensor,
    n_steps: Annotated[int, Range(1)] = 50,
    method: str = "gausslegendre",
    internal_batch_size: Annotated[int, Range(1)] | None = None,
) -> Tensor:
    """Raw IG attributions (B, 3, H, W) of ``target`` for a batch sharing one target direction."""
    ig = _captum().IntegratedGradients(target)
    with torch.enable_grad():
        out = ig.attribute(
            x.detach(),
            baselines=baseline.detach(),
            n_steps=int(n_steps),
            method=method,
            internal_batch_size=internal_batch_size
            or max(len(x), min(int(n_steps) * len(x), _auto_batch(x))),
        )
    return out.detach()


def gradient_shap(
    target: Any,
    x: Tensor,
    baseline: Tensor,
    n_samples: Annotated[int, Range(1)] = 50,
    stdevs: Annotated[float, Range(0)] = 0.2,
    samples_batch_size: Annotated[int, Range(1)] | None = None,
) -> Tensor:
    """Raw GradientSHAP attributions (1, 3, H, W) of one explicand against its own baseline(s).

    captum draws each sample's baseline at random from the given baseline tensor, so one explicand
    is attributed at a time (a batch would mix the explicands' blurred baselines). The estimate is
    a mean over samples, so samples are processed ``samples_batch_size`` at a time (default: as
    many as fit the automatic batch budget) and the chunk means averaged with their sizes."""
    gs = _captum().GradientShap(target)
    n_samples = int(n_samples)
    chunk = max(1, int(samples_batch_size or _auto_batch(x)))
    total: Tensor | None = None
    with torch.enable_grad():
        for start in range(0, n_samples, chunk):
            n = min(chunk, n_samples - start)
            part = (
                gs.attribute(
                    x.detach(), baselines=baseline.detach(), n_samples=n, stdevs=float(stdevs)
                ).detach()
                * n
            )
            total = part if total is None else total + part
    assert total is not None
    return total / n_samples
