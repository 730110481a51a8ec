"""Gradient saliency for pairs (seed 000, §III-A1): Input x Gradient and SmoothGrad.

Both explain the cosine similarity s(x1, x2). The map of an image is the maximum over channels of
|x * ds/dx| in model-input space. ``guided=True`` replaces every ReLU's backward pass (modules and
functional calls alike) with guided backpropagation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pairlens.methods.common import by_pairs, generator, noise_sigma, pair_scores, saliency
from pairlens.methods.registry import PairMaps, register_method
from pairlens.models.similarity import SimilarityModel, similarity_input_gradients
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
    guided: bool = False,
    batch_size: Annotated[int, Range(1)] | None = None,
    seed: Annotated[int, Range(0)] | None = 0,
) -> PairMaps:
    """SmoothGrad (Smilkov et al., 2017) on the pair similarity.

    Each of ``n_samples`` steps adds independent Gaussian noise with standard deviation
    ``noise_level * (max(x) - min(x))`` (per image, as in the SmoothGrad paper; the reference code
    divides instead of multiplying) to both images and takes the gradient of their similarity.
    The gradients are averaged and multiplied by the clean image. Noisy pairs go through the model
    ``batch_size`` images (``batch_size // 2`` pairs, at least one) at a time (None:
    :func:`pairlens.runtime.default_batch_size`); the noise of sample k is drawn for all pairs at
    once, image 1 then image 2, on the CPU, so the maps depend neither on ``batch_size`` nor on
    the device.
    """
    if n_samples < 1:
        raise ValueError("n_samples must be >= 1")
    gen = generator(seed)
    b = x1.shape[0]
    per = max(1, resolve_batch_size(batch_size, x1, grad=True) // 2)
    sig1, sig2 = noise_sigma(x1, noise_level), noise_sigma(x2, noise_level)
    total1 = torch.zeros_like(x1)
    total2 = torch.zeros_like(x2)
    noise: dict[int, tuple[Tensor, Tensor]] = {}  # sample -> its noise for all pairs

    def sample_noise(k: int) -> tuple[Tensor, Tensor]:
        if k not in noise:
            noise.clear()  # samples are visited in order: keep only the current one
            noise[k] = (
                torch.randn(x1.shape, generator=gen).to(x1.device) * sig1,
                torch.randn(x2.shape, generator=gen).to(x2.device) * sig2,
            )
        return noise[k]

    # the (sample, pair) grid is flattened sample-major; chunks of it go through the model together
    for start in track(range(0, n_samples * b, per), desc="smoothgrad"):
        flat = range(start, min(start + per, n_samples * b))
        parts = [sample_noise(f // b) for f in flat]
        idx = torch.tensor([f % b for f in flat], device=x1.device)
        n1 = torch.stack([p[0][f % b] for p, f in zip(parts, flat, strict=True)])
        n2 = torch.stack([p[1][f % b] for p, f in zip(parts, flat, strict=True)])
        _, g1, g2 = similarity_input_gradients(model, x1[idx] + n1, x2[idx] + n2, guided=guided)
        total1.index_add_(0, idx, g1)
        total2.index_add_(0, idx, g2)
    score = pair_scores(model, x1, x2, 2 * per)
    return PairMaps(saliency(x1, total1 / n_samples), saliency(x2, total2 / n_samples), score)
