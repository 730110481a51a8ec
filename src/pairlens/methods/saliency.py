"""Gradient saliency for pairs (seed 000, §III-A1): Input x Gradient and SmoothGrad.

Both explain the cosine similarity s(x1, x2). The map of an image is the maximum over channels of
|x * ds/dx| in model-input space. ``guided=True`` replaces every ReLU's backward pass (modules and
functional calls alike) with guided backpropagation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pairlens.methods.common import generator, noise_sigma, saliency
from pairlens.methods.registry import PairMaps, register_method
from pairlens.models.similarity import SimilarityModel, similarity_input_gradients
from pairlens.progress import track
from pairlens.validation import Annotated, Range


@register_method(
    "input-x-gradient",
    section="§III-A1",
    summary="|image x d(similarity)/d(image)|, max over channels; guided=True for guided backprop",
    family="saliency",
)
def input_x_gradient(
    model: SimilarityModel, x1: Tensor, x2: Tensor, *, guided: bool = False
) -> PairMaps:
    """Input x Gradient of the pair similarity, one forward and one backward pass per batch."""
    s, g1, g2 = similarity_input_gradients(model, x1, x2, guided=guided)
    return PairMaps(saliency(x1, g1), saliency(x2, g2), s)


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
    batch_size: Annotated[int, Range(1)] = 32,
    seed: Annotated[int, Range(0)] | None = 0,
) -> PairMaps:
    """SmoothGrad (Smilkov et al., 2017) on the pair similarity.

    Each of ``n_samples`` steps adds independent Gaussian noise with standard deviation
    ``noise_level * (max(x) - min(x))`` (per image, as in the SmoothGrad paper; the reference code
    divides instead of multiplying) to both images and takes the gradient of their similarity.
    The gradients are averaged and multiplied by the clean image. Noisy pairs go through the model
    ``batch_size`` pairs at a time.
    """
    if n_samples < 1:
        raise ValueError("n_samples must be >= 1")
    gen = generator(seed, x1.device)
    b = x1.shape[0]
    sig1, sig2 = noise_sigma(x1, noise_level), noise_sigma(x2, noise_level)
    total1 = torch.zeros_like(x1)
    total2 = torch.zeros_like(x2)
    # the (sample, pair) grid is flattened; chunks of it go through the model together
    for start in track(range(0, n_samples * b, batch_size), desc="smoothgrad"):
        idx = torch.arange(start, min(start + batch_size, n_samples * b), device=x1.device) % b
        a1, a2 = x1[idx], x2[idx]
        n1 = torch.randn(a1.shape, generator=gen, device=x1.device) * sig1[idx]
        n2 = torch.randn(a2.shape, generator=gen, device=x1.device) * sig2[idx]
        _, g1, g2 = similarity_input_gradients(model, a1 + n1, a2 + n2, guided=guided)
        total1.index_add_(0, idx, g1)
        total2.index_add_(0, idx, g2)
    return PairMaps(saliency(x1, total1 / n_samples), saliency(x2, total2 / n_samples))
