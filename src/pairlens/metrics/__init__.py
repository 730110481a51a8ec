"""Pair evaluation metrics (seed 000, §IV): :func:`evaluate` and the functions behind it.

Metric names: ``SI``, ``SD``, ``CI``, ``CD`` (insertion / deletion AUC, simultaneous and
conditional), ``SAD``, ``CAD`` (average drop), ``SAI``, ``CAI`` (average increase rates) and ``MS``
(maximum sensitivity, which needs the method), ``PG``, ``EPG`` (pointing game and energy-based
pointing game against ground-truth masks, :mod:`pairlens.metrics.ground_truth`). Arrows: higher is
better for SI, CI, SAI, CAI, PG, EPG; lower is better for SD, CD, SAD, CAD, MS. A metric never
knows which method made the maps, except MS, which recomputes the explanation of noisy inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from pairlens.metrics.faithfulness import (
    auc,
    average_drop_increase,
    default_step,
    gaussian_blur,
    insertion_deletion_curves,
    minmax,
    n_steps,
    pixel_ranks,
)
from pairlens.metrics.ground_truth import (
    GROUND_TRUTH_METRICS,
    energy_pointing_game,
    ground_truth_scores,
    pointing_game,
)
from pairlens.metrics.robustness import max_sensitivity
from pairlens.metrics.sanity import SanityResult, map_ssim, sanity_check, spearman
from pairlens.models.similarity import SimilarityModel, check_finite

ALL_METRICS = ("SI", "SD", "CI", "CD", "SAD", "CAD", "SAI", "CAI", "MS", *GROUND_TRUTH_METRICS)
DEFAULT_METRICS = ("SI", "SD", "CI", "CD", "SAD", "CAD")
HIGHER_IS_BETTER = {"SI": True, "SD": False, "CI": True, "CD": False, "SAD": False,
                    "CAD": False, "SAI": True, "CAI": True, "MS": False, "PG": True,
                    "EPG": True}


def evaluate(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    explanation_or_maps: Any,
    metrics: Sequence[str] = DEFAULT_METRICS,
    step: int | None = None,
    batch_size: int = 128,
    return_curves: bool = False,
    method: str | None = None,
    method_params: Mapping[str, Any] | None = None,
    ms_samples: int = 10,
    ms_radius: float = 0.2,
    seed: int = 0,
    masks: tuple[Tensor, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Evaluate pair explanations of the pairs ``(x1[i], x2[i])`` (seed 000, §IV-B).

    Args:
        model: the similarity model whose cosine similarity was explained.
        x1, x2: (B, 3, H, W) in model-input space (any H, W; the two batches share a shape).
        explanation_or_maps: a :class:`~pairlens.PairExplanation` or ``(map1, map2)``, each
            (B, H, W), higher meaning more important; NaN or infinite values raise
            :class:`~pairlens.models.NonFiniteError` (a ``ValueError``).
        metrics: names from :data:`ALL_METRICS` (case-insensitive).
        step: pixels ``L`` per insertion / deletion step; default ``max(1, round(H*W/224))``.
        batch_size: images per forward pass (altered images of several steps and pairs are
            batched together).
        return_curves: also return the curves, keyed ``"SI_curve"`` etc., each (B, N+1); the
            conditional curve is the mean of the two directions.
        method, method_params: the method that made the maps, needed by ``MS`` only; taken from
            the explanation when it is a ``PairExplanation``.
        ms_samples, ms_radius, seed: maximum-sensitivity noise (10 samples, [-0.2, 0.2]).
        masks: ground-truth ``(mask1, mask2)``, each (B, H, W) bool, needed by ``PG`` / ``EPG``
            only (e.g. from :func:`pairlens.data.composites.pair_batch`).

    Returns:
        ``{name: (B,) float tensor}`` on the model's device. ``SAD`` / ``CAD`` are NaN for pairs
        whose unaltered similarity is <= 0 (skipped, as the definition divides by it); count them
        with ``torch.isnan``. ``MS`` is NaN for pairs with an all-zero map. ``PG`` / ``EPG``
        are NaN for an empty mask (``EPG`` also for a constant map).

    Conventions are those of :mod:`pairlens.metrics.faithfulness` and
    :mod:`pairlens.metrics.robustness`. Runs without autograd except inside the method for MS.
    """
    wanted = [m.upper() for m in metrics]
    unknown = sorted(set(wanted) - set(ALL_METRICS))
    if unknown:
        raise ValueError(
            f"unknown metric {', '.join(unknown)}; choose from {', '.join(ALL_METRICS)}"
        )
    map1, map2 = _maps(explanation_or_maps)
    if method is None and hasattr(explanation_or_maps, "method"):
        method = explanation_or_maps.method
        if method_params is None:
            method_params = explanation_or_maps.params
    x1 = model.check_input(x1, "image 1")
    x2 = model.check_input(x2, "image 2")
    if x1.shape != x2.shape:
        raise ValueError(f"the two batches differ in shape: {tuple(x1.shape)} vs {tuple(x2.shape)}")
    expected = (x1.shape[0], x1.shape[2], x1.shape[3])
    for m, which in ((map1, 1), (map2, 2)):
        if tuple(m.shape) != expected:
            raise ValueError(f"map {which} has shape {tuple(m.shape)}; expected {expected}")
    map1, map2 = map1.to(x1.device), map2.to(x1.device)

    out: dict[str, Tensor] = {}
    b = x1.shape[0]
    need_curves = [m for m in wanted if m in ("SI", "SD", "CI", "CD")]
    need_drop = [m for m in wanted if m in ("SAD", "CAD", "SAI", "CAI")]
    z1 = z2 = None
    if need_curves or need_drop:
        with torch.no_grad():
            z = torch.cat([model.embed(t) for t in torch.cat([x1, x2]).split(batch_size)])
        z1, z2 = z[:b], z[b:]
    if need_curves:
        kinds = [k for k, letter in (("insertion", "I"), ("deletion", "D"))
                 if any(m.endswith(letter) for m in need_curves)]
        curves = insertion_deletion_curves(model, x1, x2, map1, map2, step=step, kinds=kinds,
                                           batch_size=batch_size, z1=z1, z2=z2)
        for name in need_curves:
            out[name] = auc(curves[name])
            if return_curves:
                out[f"{name}_curve"] = curves[name]
    if need_drop:
        drops = average_drop_increase(model, x1, x2, map1, map2, batch_size=batch_size,
                                      z1=z1, z2=z2)
        for name in need_drop:
            out[name] = drops[name]
    if any(m in GROUND_TRUTH_METRICS for m in wanted):
        if masks is None:
            raise ValueError("metrics PG / EPG need ground-truth masks: pass masks=(mask1, mask2) "
                             "(the composites data provides them)")
        mask1, mask2 = (torch.as_tensor(m).to(map1.device).bool() for m in masks)
        for m, which in ((mask1, 1), (mask2, 2)):
            if tuple(m.shape) != expected:
                raise ValueError(f"mask {which} has shape {tuple(m.shape)}; expected {expected}")
        gt = ground_truth_scores(map1, map2, mask1, mask2)
        out.update({m: gt[m] for m in wanted if m in GROUND_TRUTH_METRICS})
    if "MS" in wanted:
        if method is None:
            raise ValueError("metric MS needs the method: pass method=... (and method_params)")
        out["MS"] = max_sensitivity(model, x1, x2, method, method_params, maps=(map1, map2),
                                    n_samples=ms_samples, radius=ms_radius, seed=seed,
                                    batch_size=max(1, batch_size // 2))
    return {k: out[k] for k in list(wanted) + [k for k in out if k not in wanted]}


def _maps(explanation_or_maps: Any) -> tuple[Tensor, Tensor]:
    maps = getattr(explanation_or_maps, "maps", explanation_or_maps)
    if not isinstance(maps, (tuple, list)) or len(maps) != 2:
        raise TypeError("expected a PairExplanation or a pair (map1, map2) of (B, H, W) tensors")
    out = []
    for which, m in enumerate(maps, start=1):
        t = torch.as_tensor(m)
        if t.is_complex() or not (t.is_floating_point() or t.dtype in _REAL_INT):
            raise TypeError(f"map {which} has dtype {t.dtype}; expected real numbers")
        out.append(check_finite(t.float(), f"map {which}"))  # NaN would rank as the top pixel
    return out[0], out[1]


_REAL_INT = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)


__all__ = [
    "ALL_METRICS",
    "DEFAULT_METRICS",
    "GROUND_TRUTH_METRICS",
    "HIGHER_IS_BETTER",
    "SanityResult",
    "auc",
    "average_drop_increase",
    "default_step",
    "energy_pointing_game",
    "evaluate",
    "gaussian_blur",
    "ground_truth_scores",
    "insertion_deletion_curves",
    "map_ssim",
    "max_sensitivity",
    "minmax",
    "n_steps",
    "pixel_ranks",
    "pointing_game",
    "sanity_check",
    "spearman",
]
