"""Maximum sensitivity of pair explanations (seed 000, §IV-A; Yeh et al., 2019).

Convention (DESIGN.md): ``n_samples = 10`` draws of uniform noise in ``[-radius, radius]`` with
``radius = 0.2``, added to both images in model-input space; the explanation is recomputed with
the same method and parameters; per image ``||e - e'|| / ||e||`` (Frobenius norm of the (H, W)
maps), the maximum over the samples, then the mean over the two images of the pair. A pair whose
original map is all zero has no relative change: its value is NaN.

``noise="shared"`` (default) adds the *same* sample to both images, as the seed-000 authors' code
does (explain-cl ``evaluation.py``, ``max_sensitivity`` and ``max_sensitivity_cam``: one
``sample`` added to ``X1`` and ``X2``); ``"independent"`` draws one sample per image (the images
then move apart, which makes MS larger). Noise is drawn per pair on the CPU from
:func:`~pairlens.methods.common.pair_generators` (seeded from ``seed`` and the pair's pixels), so a
pair's MS does not depend on its batch and CPU and CUDA draw the same noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from pairlens.models.similarity import SimilarityModel
from pairlens.runtime import resolve_batch_size


def max_sensitivity(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    method: str,
    params: Mapping[str, Any] | None = None,
    maps: tuple[Tensor, Tensor] | None = None,
    n_samples: int = 10,
    radius: float = 0.2,
    seed: int | None = 0,
    batch_size: int | None = None,
    noise: Literal["shared", "independent"] = "shared",
) -> Tensor:
    """Maximum sensitivity (B,) of ``method`` (with ``params``) on the pairs ``(x1[i], x2[i])``.

    ``maps`` are the explanation of the unaltered pairs if already computed (they must have been
    made by the same method and parameters). ``batch_size`` is images per forward pass (None:
    :func:`pairlens.runtime.default_batch_size`): the noisy copies of all pairs and samples are
    explained ``batch_size // 2`` pairs at a time (sample-major order), and ``batch_size`` is
    passed on to the method when it takes one and ``params`` does not set it. See the module
    docstring for ``noise``.

    Raises:
        ValueError: an unknown ``noise`` or ``n_samples < 1``.
    """
    from pairlens.explanation import explain
    from pairlens.methods.common import pair_generators
    from pairlens.methods.registry import get_method

    if noise not in ("shared", "independent"):
        raise ValueError(f"noise must be 'shared' or 'independent', got {noise!r}")
    if n_samples < 1:
        raise ValueError("n_samples must be >= 1")
    params = dict(params or {})
    b = x1.shape[0]
    batch_size = resolve_batch_size(batch_size, x1, grad=True)
    if "batch_size" in get_method(method).params and params.get("batch_size") is None:
        params["batch_size"] = batch_size
    per = max(1, batch_size // 2)
    if maps is None:
        maps = explain(model, x1, x2, method=method, **params).maps
    e1, e2 = (m.to(x1.device).float() for m in maps)
    draws = 1 if noise == "shared" else 2
    eps = torch.stack([torch.rand((n_samples, draws, *x1.shape[1:]), generator=g)
                       for g in pair_generators(seed, x1, x2)], 1)  # (S, B, draws, 3, H, W)
    eps = ((eps * 2 - 1) * radius).to(x1.device, x1.dtype)
    noisy1 = (x1[None] + eps[:, :, 0]).flatten(0, 1)  # (S*B, 3, H, W), sample-major
    noisy2 = (x2[None] + eps[:, :, -1]).flatten(0, 1)
    out1, out2 = [], []
    for start in range(0, noisy1.shape[0], per):
        exp = explain(model, noisy1[start : start + per], noisy2[start : start + per],
                      method=method, **params)
        out1.append(exp.maps[0].to(x1.device))
        out2.append(exp.maps[1].to(x1.device))
    p1 = torch.cat(out1).view(n_samples, b, *e1.shape[1:])
    p2 = torch.cat(out2).view(n_samples, b, *e2.shape[1:])
    return (_relative_change(e1, p1) + _relative_change(e2, p2)) / 2


def _relative_change(e: Tensor, perturbed: Tensor) -> Tensor:
    """max over samples of ||e - e'|| / ||e||, (B,); NaN when ||e|| = 0."""
    num = (perturbed - e[None]).flatten(2).norm(dim=2)  # (S, B)
    den = e.flatten(1).norm(dim=1)
    ratio = num.amax(0) / den
    return torch.where(den > 0, ratio, torch.full_like(ratio, float("nan")))
