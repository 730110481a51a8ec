"""Attribution methods on any scalar target: ``pairlens.attribute(target, x, method=...)``.

Seed 002 (COCOA) §3.2: a feature attribution method explains a scalar explanation target; the
targets of :mod:`pairlens.corpus.targets` (label-free, contrastive label-free, corpus, COCOA,
CLIP text corpora) work with every method here, and so does any callable (N, 3, H, W) -> (N,).

==========================  =============================================================
method                      parameters (defaults follow the paper, Appendix H.3)
==========================  =============================================================
``integrated-gradients``    ``n_steps=50``, ``method="gausslegendre"``,
                            ``internal_batch_size`` (captum)
``gradient-shap``           ``n_samples=50``, ``stdevs=0.2`` (captum)
``rise``                    ``n_masks=5000``, ``grid`` (7, or 4 for inputs <= 32 px),
                            ``p_keep=0.5``, ``batch_size`` (auto)
``relax``                   ``n_masks=3000``, ``grid``, ``p_keep=0.5``, ``batch_size``;
                            :func:`relax` also returns the uncertainty map
``random``                  none: standard normal noise, the benchmark of §4.1
==========================  =============================================================

Every method uses ``baseline``: ``None`` is the Gaussian blur (kernel 21, sigma 5) of each
explicand, or give a number, a tensor or a callable of the input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pairlens.attribution.baselines import Baseline, blur, resolve_baseline
from pairlens.attribution.gradients import gradient_shap, integrated_gradients
from pairlens.attribution.relax import relax_maps
from pairlens.attribution.rise import default_grid, rise_maps, rise_masks
from pairlens.models.similarity import evaluating
from pairlens.validation import signature_specs, validate_call

ATTRIBUTION_METHODS: dict[str, str] = {
    "integrated-gradients": "Integrated Gradients from the baseline (captum), 50 steps",
    "gradient-shap": "GradientSHAP (captum): 50 noisy samples, noise sd 0.2",
    "rise": "RISE: 5000 random smooth masks, batched on the model's device",
    "relax": "RELAX: similarity-weighted random masks, with an uncertainty map",
    "random": "standard normal noise (the random-attribution benchmark)",
}
REDUCTIONS = ("mean", None)


def attribution_methods() -> dict[str, str]:
    """Names and one-line descriptions of the attribution methods."""
    return dict(ATTRIBUTION_METHODS)


def attribute(
    target: Callable[[Tensor], Tensor],
    x: Tensor,
    method: str = "rise",
    reduce: str | None = "mean",
    baseline: Baseline = None,
    seed: int | None = 0,
    **params: Any,
) -> Tensor:
    """Attribute ``target`` at the explicands ``x`` (B, 3, H, W) in model-input space.

    Returns (B, H, W) maps averaged over channels (``reduce="mean"``, as in §4.1, higher = more
    important for the target), or the raw (B, 3, H, W) attributions with ``reduce=None`` (mask
    methods give the same value in every channel). Targets holding one direction per explicand
    (``LabelFree``, ``ContrastiveLabelFree``) must hold exactly B. ``seed`` fixes masks and noise
    (``None``: do not reseed). Extra keyword arguments go to the method (see the module doc).
    The target's model (``target.model``, or the target if it is a module) runs in eval mode
    and gets its own mode back.
    """
    name = method.strip().lower().replace("_", "-")
    if name not in ATTRIBUTION_METHODS:
        raise ValueError(
            f"unknown attribution method {method!r}; choose from {', '.join(ATTRIBUTION_METHODS)}"
        )
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be 'mean' or None; got {reduce!r}")
    x = _check_inputs(target, x)
    base = resolve_baseline(baseline, x)
    per_explicand = _per_explicand(target, len(x))
    with _seeded(seed, x.device) as generator, evaluating(_model_of(target)):
        if name == "integrated-gradients":
            _check_params(integrated_gradients, params, name)
            if per_explicand:
                raw = torch.cat(
                    [
                        integrated_gradients(
                            target.select(i), x[i : i + 1], base[i : i + 1], **params
                        )
                        for i in range(len(x))
                    ]
                )
            else:
                raw = integrated_gradients(target, x, base, **params)
        elif name == "gradient-shap":
            _check_params(gradient_shap, params, name)
            raw = torch.cat(
                [
                    gradient_shap(
                        _one(target, i, per_explicand), x[i : i + 1], base[i : i + 1], **params
                    )
                    for i in range(len(x))
                ]
            )
        elif name in ("rise", "relax"):
            fn = rise_maps if name == "rise" else relax_maps
            _check_params(fn, params, name)
            maps = []
            for i in range(len(x)):
                out = fn(
                    _one(target, i, per_explicand),
                    x[i : i + 1],
                    base[i : i + 1],
                    generator=generator,
                    **params,
                )
                maps.append(out[0] if name == "relax" else out.reshape(x.shape[-2:]))
            raw = torch.stack(maps)[:, None].expand(-1, x.shape[1], -1, -1)
        else:  # random
            _check_params(lambda: None, params, name)
            raw = torch.randn(x.shape, generator=generator, device=x.device)
    raw = raw.detach().float()
    return raw.mean(dim=1) if reduce == "mean" else raw.contiguous()


def relax(
    target: Callable[[Tensor], Tensor],
    x: Tensor,
    baseline: Baseline = None,
    seed: int | None = 0,
    **params: Any,
) -> tuple[Tensor, Tensor]:
    """RELAX importance and uncertainty maps, each (B, H, W) (see :mod:`.relax`)."""
    x = _check_inputs(target, x)
    base = resolve_baseline(baseline, x)
    per_explicand = _per_explicand(target, len(x))
    _check_params(relax_maps, params, "relax")
    importance, uncertainty = [], []
    with _seeded(seed, x.device) as generator, evaluating(_model_of(target)):
        for i in range(len(x)):
            imp, unc = relax_maps(
                _one(target, i, per_explicand),
                x[i : i + 1],
                base[i : i + 1],
                generator=generator,
                **params,
            )
            importance.append(imp)
            uncertainty.append(unc)
    return torch.stack(importance), torch.stack(uncertainty)


# ----------------------------------------------------------------------------- helpers
def _model_of(target: Any) -> torch.nn.Module | None:
    """The module a target runs (its ``model``, or the target itself), to run in eval mode."""
    model = getattr(target, "model", target)
    return model if isinstance(model, torch.nn.Module) else None


def _check_inputs(target: Any, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor (B, 3, H, W); got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, C, H, W); got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values")
    model = getattr(target, "model", None)
    device = getattr(model, "device", None) if model is not None else None
    if device is not None:
        x = x.to(device)
    return x.detach().float()


def _per_explicand(target: Any, batch: int) -> bool:
    n = getattr(target, "n_explicands", None)
    if n is None:
        return False
    if n != batch:
        raise ValueError(
            f"the target holds {n} explicands but x has {batch} images; build the target from "
            "the same explicands"
        )
    return True


def _one(target: Any, i: int, per_explicand: bool) -> Any:
    return target.select(i) if per_explicand else target


def _check_params(fn: Callable, params: dict[str, Any], name: str) -> None:
    """Unknown names and values outside the declared ranges (``Annotated[int, Range(1)]`` in the
    method's signature) raise a one-line ``ValueError``; valid values are converted in place by
    the shared rules of :mod:`pairlens.validation`."""
    specs = {
        k: v for k, v in signature_specs(fn, keyword=True).items()
        if k not in ("target", "score_fn", "x", "baseline", "generator")
    }
    params.update(validate_call(specs, params, name, defaults=False))


class _seeded:
    """Context: a generator seeded with ``seed`` on ``device`` for masks, and the global torch and
    NumPy RNGs (captum draws GradientSHAP's noise with torch and its baselines / interpolation
    points with NumPy) seeded and restored afterwards; ``seed=None`` leaves them alone."""

    def __init__(self, seed: int | None, device: torch.device) -> None:
        self.seed, self.device = seed, torch.device(device)
        self._fork: Any = None
        self._np_state: Any = None

    def __enter__(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        devices = [self.device] if self.device.type == "cuda" else []
        self._fork = torch.random.fork_rng(devices=devices)
        self._fork.__enter__()
        torch.manual_seed(int(self.seed))
        self._np_state = np.random.get_state()
        np.random.seed(int(self.seed) % 2**32)
        return torch.Generator(device=self.device).manual_seed(int(self.seed))

    def __exit__(self, *exc: Any) -> None:
        if self._np_state is not None:
            np.random.set_state(self._np_state)
        if self._fork is not None:
            self._fork.__exit__(*exc)


__all__ = [
    "ATTRIBUTION_METHODS",
    "attribute",
    "attribution_methods",
    "blur",
    "default_grid",
    "gradient_shap",
    "integrated_gradients",
    "relax",
    "relax_maps",
    "resolve_baseline",
    "rise_maps",
    "rise_masks",
]
