"""Activation methods for pairs (seed 000, §III-C) and Deep Similarity (Stylianou et al., 2019).

All three read the feature grid A (B, C, h, w) of the model's ``feature_layer`` (its layout is
read from the model: channels-last maps are transposed, ViT tokens are put on their patch grid) and
upsample their (h, w) map bilinearly to the input. Against a fixed target (a text prompt, a
prototype: :func:`pairlens.explain` with ``target=``), the target stands in for the second image
as a 1x1 feature map holding its D values.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.linalg import vector_norm

from pairlens.methods.common import by_pairs, upsample, upsample_pair
from pairlens.methods.registry import NotApplicableError, PairMaps, register_method
from pairlens.models.similarity import (
    SimilarityModel,
    check_embeddings,
    joint_feature_gradients,
    similarity_feature_gradients,
)
from pairlens.validation import Annotated, Range

Reduction = Literal["mean", "max", "attention"]


@register_method(
    "grad-cam",
    section="§III-C1 (eq. 1)",
    summary="Baseline-Grad-CAM: sum_k [dS/dA_k]_+ * A_k for each image separately",
    family="activation",
)
def grad_cam(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    *,
    batch_size: Annotated[int, Range(1)] | None = None,
) -> PairMaps:
    """Baseline-Grad-CAM, eq. (1): E = sum_k [W^k]_+ (.) A^k with W^k = dS/dA^k (point-wise,
    not spatially averaged, as in the paper and its code). ``batch_size``: images per forward
    pass (None: :func:`pairlens.runtime.default_batch_size`)."""

    def cam(a: Tensor, g: Tensor) -> Tensor:
        return (g.clamp(min=0) * a).sum(1)

    def run(x1: Tensor, x2: Tensor) -> PairMaps:
        size = tuple(x1.shape[-2:])
        if not model.two_towers:  # both images' maps with one set of operations
            s, a, g = joint_feature_gradients(model, x1, x2)
            e = upsample(cam(a, g), size)
            return PairMaps(e[: len(x1)], e[len(x1) :], s)
        s, a1, a2, g1, g2 = similarity_feature_gradients(model, x1, x2)
        return PairMaps(*upsample_pair(cam(a1, g1), cam(a2, g2), size), s)

    return by_pairs(run, x1, x2, batch_size, grad=True)


def reduce_activation(a: Tensor, reduction: Reduction) -> Tensor:
    """Spatial reduction (B, C, h, w) -> (B, C) used for the joint activation term J."""
    if reduction == "mean":
        return a.mean(dim=(2, 3))
    if reduction == "max":
        return a.amax(dim=(2, 3))
    if reduction == "attention":
        # query: the average-pooled feature; keys and values: the h*w feature vectors.
        # Unscaled dot-product attention, as in the paper's code.
        tokens = a.flatten(2).transpose(1, 2)  # (B, hw, C)
        query = tokens.mean(1, keepdim=True)  # (B, 1, C)
        attn = torch.softmax(query @ tokens.transpose(1, 2), dim=-1)  # (B, 1, hw)
        return (attn @ tokens)[:, 0]
    raise ValueError(f"reduction must be 'mean', 'max' or 'attention'; got {reduction!r}")


def same_channels(model: SimilarityModel, a1: Tensor, a2: Tensor, method: str) -> None:
    """Raise :class:`NotApplicableError` unless the two feature grids have the same channels
    (``method`` pairs channel k of one image with channel k of the other)."""
    if a1.shape[1] == a2.shape[1]:
        return
    fixed = model.fixed_tower
    if fixed is not None:
        target, image = (a1, a2) if fixed == 1 else (a2, a1)
        raise NotApplicableError(
            f"{method} against a fixed target uses the target as image 2's pooled feature map, "
            f"but the target has {target.shape[1]} dimensions and the feature layer "
            f"{image.shape[1]} channels; use grad-cam"
        )
    raise NotApplicableError(
        f"{method} pairs the feature channels of the two images, but tower 1's feature layer "
        f"has {a1.shape[1]} and tower 2's {a2.shape[1]}; use grad-cam"
    )


@register_method(
    "interaction-cam",
    section="§III-C2 (eq. 2)",
    summary="Interaction-CAM: joint activation J and gradient interaction G weight both maps",
    family="activation",
)
def interaction_cam(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    *,
    reduction: Reduction = "mean",
    grad_interaction: bool = True,
    batch_size: Annotated[int, Range(1)] | None = None,
) -> PairMaps:
    """Interaction-CAM, eq. (2): E_{1,2} = sum_k [j^k g^k_{1,2}]_+ A^k_{1,2}.

    * J = red(A1) (.) red(A2), ``reduction`` in mean / max / attention (§III-C2).
    * With ``grad_interaction=True``, G^{kl} = vec(dS/dA1^k)^T vec(dS/dA2^l),
      g1^k = max_l G^{kl}, g2^l = max_k G^{kl}.
    * With ``grad_interaction=False`` the gradient term is the point-wise gradient dS/dA^k(u)
      (as in the paper's code, which then reduces eq. 2 to Grad-CAM weighted by J).

    The rectification [.]_+ is applied to the product j^k g^k as eq. (2) writes it; for
    non-negative activations this equals the paper code's j^k [g^k]_+.

    When the two feature grids differ in size (two towers of different strides, or a fixed
    target, which is a 1x1 map), G is computed with the smaller gradient map resized bilinearly
    to the larger grid (a 1x1 map is constant over it): our choice, as eq. (2) assumes one grid.
    ``batch_size``: images per forward pass (None: :func:`pairlens.runtime.default_batch_size`).
    """

    def joint(x1: Tensor, x2: Tensor) -> PairMaps:
        """One-tower models: both images' maps with one set of operations (same values)."""
        s, a, g = joint_feature_gradients(model, x1, x2)
        b = len(x1)
        r = reduce_activation(a, reduction)
        j = r[:b] * r[b:]
        if grad_interaction:
            gram = g[:b].flatten(2) @ g[b:].flatten(2).transpose(1, 2)  # (B, C, C)
            w = torch.cat([j * gram.amax(dim=2), j * gram.amax(dim=1)])[:, :, None, None]
        else:
            w = torch.cat([j, j])[:, :, None, None] * g
        e = upsample((w.clamp(min=0) * a).sum(1), tuple(x1.shape[-2:]))
        return PairMaps(e[:b], e[b:], s)

    def run(x1: Tensor, x2: Tensor) -> PairMaps:
        if not model.two_towers:
            return joint(x1, x2)
        s, a1, a2, g1, g2 = similarity_feature_gradients(model, x1, x2)
        same_channels(model, a1, a2, "interaction-cam")
        j = (reduce_activation(a1, reduction) * reduce_activation(a2, reduction))[:, :, None, None]
        if grad_interaction:
            if g1.shape[-2:] != g2.shape[-2:]:  # resize the smaller grid's gradients to the other's
                if g1.shape[2] * g1.shape[3] >= g2.shape[2] * g2.shape[3]:
                    g2 = F.interpolate(g2, size=g1.shape[-2:], mode="bilinear")
                else:
                    g1 = F.interpolate(g1, size=g2.shape[-2:], mode="bilinear")
            gram = g1.flatten(2) @ g2.flatten(2).transpose(1, 2)  # (B, C, C)
            w1 = gram.amax(dim=2)[:, :, None, None]
            w2 = gram.amax(dim=1)[:, :, None, None]
        else:
            w1, w2 = g1, g2
        size = tuple(x1.shape[-2:])
        e1 = ((j * w1).clamp(min=0) * a1).sum(1)
        e2 = ((j * w2).clamp(min=0) * a2).sum(1)
        return PairMaps(*upsample_pair(e1, e2, size), s)

    return by_pairs(run, x1, x2, batch_size, grad=True)


def _contract(a: Tensor, f: Tensor) -> Tensor:
    """sum_c a[b, c, h, w] f[b, c] as (B, h, w): ``einsum("bchw,bc->bhw")`` as one batched
    matrix product (einsum lowers it to the same product, through 15 tensor operations)."""
    b, _, h, w = a.shape
    return torch.bmm(a.flatten(2).transpose(1, 2), f[:, :, None]).view(b, h, w)


@register_method(
    "deep-similarity",
    section="comparison method of Tables I-IV (Stylianou et al., WACV 2019)",
    summary="Similarity decomposition: each location's features dotted with the other's pooled",
    family="activation",
)
def deep_similarity(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    *,
    batch_size: Annotated[int, Range(1)] | None = None,
) -> PairMaps:
    """Spatial decomposition of the similarity of the average-pooled feature-layer vectors.

    With f_i = mean_u A_i(u), cos(f1, f2) = sum_u A1(u).f2 / (hw |f1| |f2|); the map of image 1
    is the summand A1(u).f2 / (hw |f1||f2|) at each location u (and symmetrically for image 2),
    so each map sums to the pooled-feature cosine. For a model whose similarity is the dot
    product the summand is A1(u).f2 / hw (the maps sum to f1.f2); other similarities do not
    decompose over locations (an error). Like the original method it explains the pooled
    features and ignores any head after them. No gradients are needed. ``batch_size``: images
    per forward pass (None: :func:`pairlens.runtime.default_batch_size`).
    """
    if model.similarity_name not in ("cosine", "dot"):
        raise NotApplicableError(
            "deep-similarity decomposes a cosine or dot product over locations; model "
            f"{model.name!r} uses the {model.similarity_name!r} similarity"
        )

    def summands(a: Tensor, f: Tensor, other: Tensor) -> Tensor:
        """A(u).f_other / (hw |f| |f_other|) (cosine) or / hw (dot), (N, h, w)."""
        hw = a.shape[2] * a.shape[3]
        e = _contract(a, other)
        if model.similarity_name == "cosine":
            norms = (vector_norm(f, dim=1) * vector_norm(other, dim=1)).clamp(min=1e-8)
            return e / (norms[:, None, None] * hw)
        return e / float(hw)

    @torch.no_grad()
    def run(x1: Tensor, x2: Tensor) -> PairMaps:
        size = tuple(x1.shape[-2:])
        b = len(x1)
        if not model.two_towers:  # one pass, and both maps with one set of operations
            z, r = model.embed_with_features(torch.cat([x1, x2]))
            check_embeddings(z, "image 1", model.name, split=b)
            a = model.to_grid(r, size, 1).float()
            f = a.mean(dim=(2, 3))
            e = upsample(summands(a, f, f.roll(b, 0)), size)  # (row i's partner: row i +- B)
            return PairMaps(e[:b], e[b:], model.embedding_similarity(z[:b], z[b:]))
        z1, z2, r1, r2 = model.embed_pair_with_features(x1, x2)
        a1, a2 = model.to_grid(r1, size, 1).float(), model.to_grid(r2, size, 2).float()
        same_channels(model, a1, a2, "deep-similarity")
        f1, f2 = a1.mean(dim=(2, 3)), a2.mean(dim=(2, 3))
        e1, e2 = summands(a1, f1, f2), summands(a2, f2, f1)
        return PairMaps(*upsample_pair(e1, e2, size), model.embedding_similarity(z1, z2))

    return by_pairs(run, x1, x2, batch_size, grad=False)
