"""Pair evaluation metrics (seed 000, §IV): :func:`evaluate` and the functions behind it.

Metric names: ``SI``, ``SD``, ``CI``, ``CD`` (insertion / deletion AUC, simultaneous and
conditional), ``SAD``, ``CAD`` (average drop), ``SAI``, ``CAI`` (average increase rates), ``MS``
(maximum sensitivity, which needs the method), the region games ``RSI``, ``RSD``, ``RCI``, ``RCD``
(:mod:`pairlens.metrics.regions`), ROAD ``SMoRF``, ``SLeRF``, ``CMoRF``, ``CLeRF``
(:mod:`pairlens.metrics.road`) and the pointing game ``PG`` and energy-based pointing game ``EPG``
against ground-truth masks (:mod:`pairlens.metrics.ground_truth`); names are matched
case-insensitively. :data:`HIGHER_IS_BETTER` gives each metric's direction. A metric never knows
which method made the maps, except MS, which recomputes the explanation of noisy inputs.
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
from pairlens.metrics.regions import (
    REGION_METRICS,
    Regions,
    default_region_size,
    region_labels,
)
from pairlens.metrics.road import ROAD_FRACTIONS, ROAD_NOISE, linear_impute, road_curves
from pairlens.metrics.robustness import max_sensitivity
from pairlens.metrics.sanity import SanityResult, map_ssim, sanity_check, spearman
from pairlens.models.similarity import SimilarityModel, check_finite

ROAD_METRICS = ("SMoRF", "SLeRF", "CMoRF", "CLeRF")
ALL_METRICS = ("SI", "SD", "CI", "CD", "SAD", "CAD", "SAI", "CAI", "MS", *REGION_METRICS,
               *ROAD_METRICS, *GROUND_TRUTH_METRICS)
DEFAULT_METRICS = ("SI", "SD", "CI", "CD", "SAD", "CAD")
HIGHER_IS_BETTER = {"SI": True, "SD": False, "CI": True, "CD": False, "SAD": False,
                    "CAD": False, "SAI": True, "CAI": True, "MS": False,
                    "RSI": True, "RSD": False, "RCI": True, "RCD": False,
                    "SMoRF": False, "SLeRF": True, "CMoRF": False, "CLeRF": True,
                    "PG": True, "EPG": True}
_CANONICAL = {m.upper(): m for m in ALL_METRICS}


def canonical_metrics(names: Sequence[str]) -> list[str]:
    """Metric names in their canonical spelling (matched case-insensitively).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    unknown = sorted({n for n in names if n.strip().upper() not in _CANONICAL})
    if unknown:
        raise ValueError(
            f"unknown metric {', '.join(unknown)}; choose from {', '.join(ALL_METRICS)}"
        )
    return [_CANONICAL[n.strip().upper()] for n in names]


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
    ms_noise: str = "shared",
    regions: Regions = "grid",
    region_size: int | None = None,
    road_fractions: Sequence[float] = ROAD_FRACTIONS,
    road_noise: float = ROAD_NOISE,
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
        ms_samples, ms_radius, seed: maximum-sensitivity noise (10 samples, [-0.2, 0.2]); the
            seed also drives ROAD's imputation noise and tie-breaking field.
        ms_noise: ``"shared"`` (one noise sample added to both images, the authors' code) or
            ``"independent"``.
        regions, region_size: the regions of RSI..RCD: ``"grid"`` cells or ``"slic"``
            superpixels of side ``region_size`` (default an eighth of the shorter side).
        road_fractions, road_noise: ROAD's removal fractions (0.1 ... 0.9) and imputation noise
            (0.01 in [0, 1] pixel units).
        masks: ground-truth ``(mask1, mask2)``, each (B, H, W) bool, needed by ``PG`` / ``EPG``
            only (e.g. from :func:`pairlens.data.composites.pair_batch`).

    Returns:
        ``{name: (B,) float tensor}`` on the model's device (ROAD values are the mean similarity
        over the fractions; with ``return_curves`` the per-fraction values are the
        ``"SMoRF_curve"`` etc.). ``SAD`` / ``CAD`` are NaN for pairs
        whose unaltered similarity is <= 0 (skipped, as the definition divides by it); count them
        with ``torch.isnan``. ``MS`` is NaN for pairs with an all-zero map. ``PG`` / ``EPG``
        are NaN for an empty mask (``EPG`` also for a constant map).

    Conventions are those of :mod:`pairlens.metrics.faithfulness` and
    :mod:`pairlens.metrics.robustness`. Runs without autograd except inside the method for MS.
    """
    wanted = list(dict.fromkeys(canonical_metrics(metrics)))
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
    gt_masks = None
    if any(m in GROUND_TRUTH_METRICS for m in wanted):
        if masks is None:
            raise ValueError("metrics PG / EPG need ground-truth masks: pass masks=(mask1, mask2) "
                             "(the composites data provides them)")
        gt_masks = tuple(torch.as_tensor(m).to(map1.device).bool() for m in masks)
        for m, which in zip(gt_masks, (1, 2), strict=True):
            if tuple(m.shape) != expected:
                raise ValueError(f"mask {which} has shape {tuple(m.shape)}; expected {expected}")

    out: dict[str, Tensor] = {}
    b = x1.shape[0]
    need_curves = [m for m in wanted if m in ("SI", "SD", "CI", "CD")]
    need_drop = [m for m in wanted if m in ("SAD", "CAD", "SAI", "CAI")]
    need_regions = [m for m in wanted if m in REGION_METRICS]
    need_road = [m for m in wanted if m in ROAD_METRICS]
    z1 = z2 = None
    if need_curves or need_drop or need_regions or need_road:
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
    if need_regions:
        size = int(region_size or default_region_size(x1.shape[2], x1.shape[3]))
        labels = region_labels(model.denormalize(torch.cat([x1, x2])), regions, size)
        kinds = [k for k, letter in (("insertion", "I"), ("deletion", "D"))
                 if any(m.endswith(letter) for m in need_regions)]
        curves = insertion_deletion_curves(model, x1, x2, map1, map2, kinds=kinds,
                                           batch_size=batch_size, z1=z1, z2=z2,
                                           regions=(labels[:b], labels[b:]), region_size=size)
        for name in need_regions:
            out[name] = auc(curves[name[1:]])
            if return_curves:
                out[f"{name}_curve"] = curves[name[1:]]
    if need_road:
        road = road_curves(model, x1, x2, map1, map2, fractions=road_fractions, noise=road_noise,
                           seed=seed, batch_size=batch_size, z1=z1, z2=z2)
        for name in need_road:
            out[name] = road[name].mean(1)
            if return_curves:
                out[f"{name}_curve"] = road[name]
    if need_drop:
        drops = average_drop_increase(model, x1, x2, map1, map2, batch_size=batch_size,
                                      z1=z1, z2=z2)
        for name in need_drop:
            out[name] = drops[name]
    if gt_masks is not None:
        gt = ground_truth_scores(map1, map2, *gt_masks)
        out.update({m: gt[m] for m in wanted if m in GROUND_TRUTH_METRICS})
    if "MS" in wanted:
        if method is None:
            raise ValueError("metric MS needs the method: pass method=... (and method_params)")
        out["MS"] = max_sensitivity(model, x1, x2, method, method_params, maps=(map1, map2),
                                    n_samples=ms_samples, radius=ms_radius, seed=seed,
                                    batch_size=max(1, batch_size // 2), noise=ms_noise)
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
    "REGION_METRICS",
    "ROAD_METRICS",
    "canonical_metrics",
    "linear_impute",
    "region_labels",
    "road_curves",
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
