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
    n_steps: int = 50,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
) -> Tensor:
    """Raw IG attributions (B, 3, H, W) of ``target`` for a batch sharing one target direction."""
    ig = _captum().IntegratedGradients(target)
    with torch.enable_grad():
        out = ig.attribute(
            x.detach(),
            baselines=baseline.detach(),
            n_steps=int(n_steps),
            method=method,
            internal_batch_size=internal_batch_size or max(1, int(n_steps)) * len(x),
        )
    return out.detach()


def gradient_shap(
    target: Any,
    x: Tensor,
    baseline: Tensor,
    n_samples: int = 50,
    stdevs: float = 0.2,
) -> Tensor:
    """Raw GradientSHAP attributions (1, 3, H, W) of one explicand against its own baseline(s).

    captum draws each sample's baseline at random from the given baseline tensor, so one explicand
    is attributed at a time (a batch would mix the explicands' blurred baselines)."""
    gs = _captum().GradientShap(target)
    with torch.enable_grad():
        out = gs.attribute(
            x.detach(), baselines=baseline.detach(), n_samples=int(n_samples), stdevs=float(stdevs)
        )
    return out.detach()
