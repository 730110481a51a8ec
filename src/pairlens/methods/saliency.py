"""Gradient saliency for pairs (seed 000, §III-A1): Input x Gradient and SmoothGrad.

Both explain the model's similarity s(x1, x2). The map of an image is the maximum over channels of
|x * ds/dx| in model-input space. ``guided=True`` replaces every ReLU's backward pass (modules and
functional calls alike) with guided backpropagation.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from pairlens.methods.common import (
    NoiseScale,
    by_pairs,
    noise_sigma,
    pair_generators,
    pair_scores,
    saliency,
)
from pairlens.methods.registry import PairMaps, register_method
from pairlens.models.similarity import (
    SimilarityModel,
    joint_input_gradients,
    similarity_input_gradients,
)
from pairlens.progress import track
from pairlens.runtime import resolve_batch_size
from pairlens.validation import Annotated, Range


@register_method(
    "input-x-gradient",
    section="§III-A1",
    summary="|image x d(similarity)/d(image)|, max over channels; guided=True for guided backprop",
    family="saliency",
)
def input_x_gradient(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    *,
    guided: bool = False,
    batch_size: Annotated[int, Range(1)] | None = None,
) -> PairMaps:
    """Input x Gradient of the pair similarity, one forward and one backward pass per chunk of
    ``batch_size`` images (None: :func:`pairlens.runtime.default_batch_size`)."""

    def run(a: Tensor, c: Tensor) -> PairMaps:
        if not model.two_towers:  # both images' maps with one set of operations
            s, x, g = joint_input_gradients(model, a, c, guided=guided)
            with torch.no_grad():
                m = saliency(x, g)
            return PairMaps(m[: len(a)], m[len(a) :], s)
        s, g1, g2 = similarity_input_gradients(model, a, c, guided=guided)
        return PairMaps(saliency(a, g1), saliency(c, g2), s)

    return by_pairs(run, x1, x2, batch_size, grad=True)


@register_method(
    "smoothgrad",
    section="§III-A1",
    summary="Input x (gradient averaged over noisy copies of both images); guided=True available",
    family="saliency",
    deterministic=False,
)
def smoothgrad(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    *,
    n_samples: Annotated[int, Range(1)] = 50,
    noise_level: Annotated[float, Range(0)] = 0.15,
    noise: Literal["shared", "independent"] = "shared",
    noise_scale: NoiseScale = "divide",
    guided: bool = False,
    batch_size: Annotated[int, Range(1)] | None = None,
    seed: Annotated[int, Range(0)] | None = 0,
) -> PairMaps:
    """SmoothGrad (Smilkov et al., 2017) of the pair similarity (seed 000, §III-A1).

    Each of ``n_samples`` steps adds Gaussian noise to both images and takes the gradient of their
    similarity; the gradients are averaged and multiplied by the clean images (max over channels
    of the absolute value). Defaults follow the authors' code (explain-cl ``methods.py``,
    ``smooth_grad``):

    * ``noise="shared"``: one noise sample added to *both* images at each step, with the standard
      deviation of image 1; ``"independent"``: each image gets its own sample and its own sigma.
    * ``noise_scale``: ``"divide"`` gives sigma = ``noise_level / (max - min)`` (the code's
      formula), ``"multiply"`` sigma = ``noise_level * (max - min)`` (Smilkov et al.'s definition
      of the noise level); see :func:`~pairlens.methods.common.noise_sigma`.

    Noise is drawn per pair from :func:`~pairlens.methods.common.pair_generators`, so a pair's map
    does not depend on the batch it is explained in. ``batch_size`` is the number of images per
    forward pass (two per noisy pair; None: :func:`pairlens.runtime.default_batch_size`).

    Raises:
        ValueError: ``n_samples < 1``, ``batch_size < 1`` or an unknown ``noise`` / ``noise_scale``.
    """
    if n_samples < 1:
        raise ValueError("n_samples must be >= 1")
    batch_size = resolve_batch_size(batch_size, x1, grad=True)
    if noise not in ("shared", "independent"):
        raise ValueError(f"noise must be 'shared' or 'independent', got {noise!r}")
    b = x1.shape[0]
    gens = pair_generators(seed, x1, x2)
    sig1 = noise_sigma(x1, noise_level, noise_scale)
    sig2 = sig1 if noise == "shared" else noise_sigma(x2, noise_level, noise_scale)
    shape = tuple(x1.shape[1:])
    total1 = torch.zeros_like(x1)
    total2 = torch.zeros_like(x2)
    per_chunk = max(1, batch_size // 2)
    # the (pair, sample) grid is flattened pair-major; chunks of it go through the model together,
    # and each pair's noise comes from its own generator in sample order
    for start in track(range(0, b * n_samples, per_chunk), desc="smoothgrad"):
        idx = torch.arange(start, min(start + per_chunk, b * n_samples))
        pair = idx // n_samples
        draws = [torch.randn((1 if noise == "shared" else 2, *shape), generator=gens[int(k)])
                 for k in pair]
        eps = torch.stack(draws).to(x1.device, x1.dtype)  # (n, 1 or 2, 3, H, W)
        pair = pair.to(x1.device)
        n1 = eps[:, 0] * sig1[pair]
        n2 = eps[:, -1] * sig2[pair]
        _, g1, g2 = similarity_input_gradients(model, x1[pair] + n1, x2[pair] + n2, guided=guided)
        total1.index_add_(0, pair, g1)
        total2.index_add_(0, pair, g2)
    score = pair_scores(model, x1, x2, batch_size)
    return PairMaps(saliency(x1, total1 / n_samples), saliency(x2, total2 / n_samples), score)
