"""Pair evaluation metrics (seed 000, §IV): :func:`evaluate` and the functions behind it.

Metric names: ``SI``, ``SD``, ``CI``, ``CD`` (insertion / deletion AUC, simultaneous and
conditional), ``SAD``, ``CAD`` (average drop), ``SAI``, ``CAI`` (average increase rates), ``MS``
(maximum sensitivity, which needs the method), the region games ``RSI``, ``RSD``, ``RCI``, ``RCD``
(:mod:`pairlens.metrics.regions`), ROAD ``SMoRF``, ``SLeRF``, ``CMoRF``, ``CLeRF``
(:mod:`pairlens.metrics.road`), the correspondence (region-pair) metrics ``PI`` / ``PD``, each
reported with its ``-marginal`` and ``-random`` reference orders
(:mod:`pairlens.metrics.correspondence`), and the pointing game ``PG`` and energy-based pointing
game ``EPG`` (and the pair energy pointing game ``PEPG`` of correspondences) against ground-truth
masks (:mod:`pairlens.metrics.ground_truth`); names are matched
case-insensitively. :data:`HIGHER_IS_BETTER` gives each metric's direction. A metric never knows
which method made the maps, except MS, which recomputes the explanation of noisy inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from pairlens.metrics.correspondence import PAIR_METRICS, REFERENCES, pair_removal_curves
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
    pair_energy_pointing_game,
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
from pairlens.models.similarity import SimilarityModel, check_finite, evaluating
from pairlens.runtime import resolve_batch_size

ROAD_METRICS = ("SMoRF", "SLeRF", "CMoRF", "CLeRF")
ALL_METRICS = ("SI", "SD", "CI", "CD", "SAD", "CAD", "SAI", "CAI", "MS", *REGION_METRICS,
               *ROAD_METRICS, *PAIR_METRICS, *GROUND_TRUTH_METRICS)
DEFAULT_METRICS = ("SI", "SD", "CI", "CD", "SAD", "CAD")
HIGHER_IS_BETTER = {"SI": True, "SD": False, "CI": True, "CD": False, "SAD": False,
                    "CAD": False, "SAI": True, "CAI": True, "MS": False,
                    "RSI": True, "RSD": False, "RCI": True, "RCD": False,
                    "SMoRF": False, "SLeRF": True, "CMoRF": False, "CLeRF": True,
                    "PG": True, "EPG": True, "PEPG": True}
for _name, _higher in (("PI", True), ("PD", False)):
    for _suffix in ("", *(f"-{r}" for r in REFERENCES)):
        HIGHER_IS_BETTER[_name + _suffix] = _higher
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
    batch_size: int | None = None,
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
    pair_grid: int = 7,
    pair_fill: str = "blur",
    masks: tuple[Tensor, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Evaluate pair explanations of the pairs ``(x1[i], x2[i])`` (seed 000, §IV-B).

    Args:
        model: the similarity model whose similarity was explained (its own: cosine unless it
            defines another; see :mod:`pairlens.metrics.faithfulness` for the rules that other
            similarities follow). It runs in eval mode and gets its own mode back.
        x1, x2: (B, C, H, W) in model-input space (any H, W; the two batches share a shape);
            x1 goes through tower 1 and x2 through tower 2 of a two-tower model.
        explanation_or_maps: a :class:`~pairlens.PairExplanation` or ``(map1, map2)``, each
            (B, H, W), higher meaning more important; NaN or infinite values raise
            :class:`~pairlens.models.NonFiniteError` (a ``ValueError``).
        metrics: names from :data:`ALL_METRICS` (case-insensitive).
        step: pixels ``L`` per insertion / deletion step; default ``max(1, round(H*W/224))``.
        batch_size: images per forward pass (altered images of several steps and pairs are
            batched together); None: :func:`pairlens.runtime.default_batch_size` for the device
            and image size. Also passed to ``MS`` and its method (None there: the default
            for passes with autograd).
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
        pair_grid, pair_fill: regions per side and fill (``"blur"`` or ``"zero"``) of ``PI`` /
            ``PD``. Their explanation order is the pair relevance's for a
            :class:`~pairlens.PairCorrespondence`, the maps' own (marginal) order otherwise; the
            seed draws their random pairing.
        masks: ground-truth ``(mask1, mask2)``, each (B, H, W) bool, needed by ``PG`` / ``EPG``
            only (e.g. from :func:`pairlens.data.composites.pair_batch`).

    Returns:
        ``{name: (B,) float tensor}`` on the model's device (ROAD values are the mean similarity
        over the fractions; with ``return_curves`` the per-fraction values are the
        ``"SMoRF_curve"`` etc.). ``SAD`` / ``CAD`` are NaN for pairs whose unaltered similarity
        is <= 0 (skipped, as the definition divides by it; ``neg-l2``: = 0); count them with
        ``torch.isnan``. ``MS`` is NaN for pairs with an all-zero map. ``PI`` / ``PD`` add their
        ``-marginal`` and ``-random`` references. ``PG`` / ``EPG`` are NaN for an empty mask
        (``EPG`` also for a constant map).

    Conventions are those of :mod:`pairlens.metrics.faithfulness` and
    :mod:`pairlens.metrics.robustness`. Runs without autograd except inside the method for MS.
    """
    wanted = list(dict.fromkeys(canonical_metrics(metrics)))
    if getattr(explanation_or_maps, "target", None) is not None:
        raise ValueError(
            "this explanation is against a fixed target, not a pair of images; the pair metrics "
            "need two images"
        )
    map1, map2 = _maps(explanation_or_maps)
    if method is None and hasattr(explanation_or_maps, "method"):
        method = explanation_or_maps.method
        if method_params is None:
            method_params = explanation_or_maps.params
    x1 = model.check_input(x1, "image 1", 1)
    x2 = model.check_input(x2, "image 2", 2)
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
    with evaluating(model):
        b = x1.shape[0]
        need_curves = [m for m in wanted if m in ("SI", "SD", "CI", "CD")]
        need_drop = [m for m in wanted if m in ("SAD", "CAD", "SAI", "CAI")]
        need_regions = [m for m in wanted if m in REGION_METRICS]
        need_road = [m for m in wanted if m in ROAD_METRICS]
        need_pairs = [m for m in wanted if m in PAIR_METRICS]
        z1 = z2 = None
        images = resolve_batch_size(batch_size, x1)  # (MS resolves its own, with autograd)
        if need_curves or need_drop or need_regions or need_road or need_pairs:
            with torch.inference_mode():
                half = max(1, images // 2)  # pairs per pass: batch_size images
                zs = [model.embed_pair(a, c) for a, c in zip(x1.split(half), x2.split(half),
                                                              strict=True)]
            z1, z2 = torch.cat([z[0] for z in zs]), torch.cat([z[1] for z in zs])
        if need_curves:
            kinds = [k for k, letter in (("insertion", "I"), ("deletion", "D"))
                     if any(m.endswith(letter) for m in need_curves)]
            curves = insertion_deletion_curves(model, x1, x2, map1, map2, step=step, kinds=kinds,
                                               batch_size=images, z1=z1, z2=z2)
            for name in need_curves:
                out[name] = auc(curves[name])
                if return_curves:
                    out[f"{name}_curve"] = curves[name]
        if need_regions:
            size = int(region_size or default_region_size(x1.shape[2], x1.shape[3]))
            pixels = torch.cat([model.denormalize(x1, 1), model.denormalize(x2, 2)])
            labels = region_labels(pixels, regions, size)
            kinds = [k for k, letter in (("insertion", "I"), ("deletion", "D"))
                     if any(m.endswith(letter) for m in need_regions)]
            curves = insertion_deletion_curves(model, x1, x2, map1, map2, kinds=kinds,
                                               batch_size=images, z1=z1, z2=z2,
                                               regions=(labels[:b], labels[b:]), region_size=size)
            for name in need_regions:
                out[name] = auc(curves[name[1:]])
                if return_curves:
                    out[f"{name}_curve"] = curves[name[1:]]
        if need_road:
            road = road_curves(model, x1, x2, map1, map2, fractions=road_fractions,
                               noise=road_noise, seed=seed, batch_size=images, z1=z1, z2=z2)
            for name in need_road:
                out[name] = road[name].mean(1)
                if return_curves:
                    out[f"{name}_curve"] = road[name]
        if need_drop:
            drops = average_drop_increase(model, x1, x2, map1, map2, batch_size=images,
                                          z1=z1, z2=z2)
            for name in need_drop:
                out[name] = drops[name]
        if need_pairs:
            pairs = pair_removal_curves(
                model, x1, x2, (map1, map2),
                relevance=getattr(explanation_or_maps, "relevance", None),
                grids=getattr(explanation_or_maps, "grids", None), grid=pair_grid,
                fill=pair_fill, seed=seed, batch_size=images, z1=z1, z2=z2)
            for name in need_pairs:
                for suffix in ("", *(f"-{r}" for r in REFERENCES)):
                    out[name + suffix] = pairs[name + suffix]
                if return_curves:
                    out[f"{name}_curve"] = pairs[f"{name}_curve"]
        if gt_masks is not None:
            if "PG" in wanted or "EPG" in wanted:
                gt = ground_truth_scores(map1, map2, *gt_masks)
                out.update({m: gt[m] for m in wanted if m in ("PG", "EPG")})
            if "PEPG" in wanted:
                out["PEPG"] = pair_energy_pointing_game(
                    gt_masks, relevance=getattr(explanation_or_maps, "relevance", None),
                    grids=getattr(explanation_or_maps, "grids", None), maps=(map1, map2),
                    grid=pair_grid)
        if "MS" in wanted:
            if method is None:
                raise ValueError("metric MS needs the method: pass method=... (and method_params)")
            out["MS"] = max_sensitivity(model, x1, x2, method, method_params, maps=(map1, map2),
                                        n_samples=ms_samples, radius=ms_radius, seed=seed,
                                        batch_size=batch_size, noise=ms_noise)
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
    "pair_energy_pointing_game",
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
    "pair_removal_curves",
    "pixel_ranks",
    "pointing_game",
    "sanity_check",
    "spearman",
]
