"""Averaged Transforms (seed 000, §III-A2) and its differentiable transform families.

Every family ``T(x, s, u)`` maps [0, 1] pixel images (N, 3, H, W) to transformed images, with a
per-image strength ``s`` (N,) in the family's own unit and per-image random draws ``u`` (N, 8) in
[0, 1) that fix the random parts (jitter direction, crop position, which SimCLR ops apply) along
the whole strength path. All families are differentiable in ``x``.

=================  ===================================  ======================
family             strength unit                        default range (lo, hi)
=================  ===================================  ======================
color-jitter       jitter magnitude (brightness,        (0, 0.8)
                   contrast, saturation factors
                   1 +- s, hue shift +- s/2)
gaussian-blur      sigma in pixels (kernel 11)          (0, 5)
grayscale          blend weight towards grayscale       (0, 1)
solarize           fraction of the range inverted       (0, 0.5)
                   (threshold 1 - s; 0.5 = PIL default)
rotation           degrees (any angle; fill black)      (0, 90)
horizontal-flip    blend weight towards the mirror      (0, 1)
resized-crop       fraction of the area cropped away    (0, 0.92)
simclr             recipe strength (crop, flip p=0.5,   (0, 1)
                   jitter p=0.8, gray p=0.2, blur
                   p=0.5, each scaled by s)
=================  ===================================  ======================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from pairlens.methods.common import (
    NoiseScale,
    check_noise_scale,
    noise_sigma,
    pair_generators,
    saliency,
)
from pairlens.methods.registry import PairMaps, register_method
from pairlens.models.similarity import SimilarityModel, check_embeddings
from pairlens.progress import track
from pairlens.runtime import resolve_batch_size
from pairlens.validation import Annotated, Choices, Ordered, Range

Family = Callable[[Tensor, Tensor, Tensor], Tensor]
_LUMA = (0.299, 0.587, 0.114)


def _col(s: Tensor) -> Tensor:
    return s.view(-1, 1, 1, 1)


def luma(x: Tensor) -> Tensor:
    """ITU-R 601 luma (N, 1, H, W) of RGB images (N, 3, H, W)."""
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def blend(x: Tensor, y: Tensor, s: Tensor) -> Tensor:
    """(1 - s) x + s y with a per-image weight ``s``."""
    return x + _col(s) * (y - x)


def grayscale(x: Tensor, s: Tensor, u: Tensor) -> Tensor:
    return blend(x, luma(x).expand_as(x), s)


def horizontal_flip(x: Tensor, s: Tensor, u: Tensor) -> Tensor:
    return blend(x, x.flip(-1), s)


def solarize(x: Tensor, s: Tensor, u: Tensor) -> Tensor:
    return torch.where(x > 1 - _col(s), 1 - x, x)


def blur_per_image(x: Tensor, sigma: Tensor, kernel: int) -> Tensor:
    """Separable Gaussian blur of (N, C, H, W) images, image i with standard deviation
    ``sigma[i]`` (> 0), an odd ``kernel`` and reflect padding; one grouped convolution per axis."""
    n, c, h, w = x.shape
    sigma = sigma.view(-1, 1).to(x.device, x.dtype)
    r = torch.arange(kernel, device=x.device, dtype=x.dtype) - kernel // 2
    k = torch.exp(-(r**2) / (2 * sigma**2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, kernel)
    pad = kernel // 2
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(
        F.pad(y, (pad, pad, 0, 0), mode="reflect"), k.view(n * c, 1, 1, kernel), groups=n * c
    )
    y = F.conv2d(
        F.pad(y, (0, 0, pad, pad), mode="reflect"), k.view(n * c, 1, kernel, 1), groups=n * c
    )
    return y.view(n, c, h, w)


def gaussian_blur(x: Tensor, s: Tensor, u: Tensor, kernel: int = 11) -> Tensor:
    return blur_per_image(x, s.clamp(min=1e-3), kernel)


# RGB <-> YIQ (NTSC), float64 so the per-image colour matrices are exact to float32 precision
_RGB2YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64
)
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def hue_rotate(x: Tensor, turns: Tensor) -> Tensor:
    """Hue shift of (N, 3, H, W) RGB images: the chroma plane (I, Q) of YIQ colour space rotated
    by ``2 pi turns[i]`` for image i (a smooth, differentiable, linear stand-in for an HSV hue
    shift); one 3 x 3 colour matrix per image. Not clamped. Used by the ``color-jitter``
    transform and the SimCLR augmentation."""
    angle = turns.detach().to("cpu", torch.float64).reshape(-1) * 2 * math.pi
    cos, sin = angle.cos(), angle.sin()
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rot = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], 1).view(-1, 3, 3)
    m = (_YIQ2RGB @ rot @ _RGB2YIQ).to(x.device, x.dtype)
    return torch.bmm(m, x.flatten(2)).view(x.shape)  # einsum "nij,njhw->nihw", lowered


def color_jitter(x: Tensor, s: Tensor, u: Tensor) -> Tensor:
    d = 2 * u[:, :4] - 1  # fixed random direction per image in [-1, 1]^4
    x = (x * _col(1 + s * d[:, 0])).clamp(0, 1)
    mean = luma(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * _col(1 + s * d[:, 1]) + mean).clamp(0, 1)
    g = luma(x)
    x = ((x - g) * _col(1 + s * d[:, 2]) + g).clamp(0, 1)
    return hue_rotate(x, s * d[:, 3] / 2).clamp(0, 1)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotation(x: Tensor, s: Tensor, u: Tensor) -> Tensor:
    n, _, h, w = x.shape
    a = torch.deg2rad(s)
    cos, sin = torch.cos(a), torch.sin(a)
    # rotation in pixel space expressed in normalised coordinates (aspect ratio corrected)
    theta = torch.stack(
        [
            torch.stack([cos, -sin * h / w, torch.zeros_like(a)], 1),
            torch.stack([sin * w / h, cos, torch.zeros_like(a)], 1),
        ],
        1,
    )
    return _affine(x, theta)


def resized_crop(x: Tensor, s: Tensor, u: Tensor) -> Tensor:
    scale = (1 - s).clamp(min=0.01).sqrt()
    room = 1 - scale
    tx, ty = room * (2 * u[:, 4] - 1), room * (2 * u[:, 5] - 1)
    zero = torch.zeros_like(scale)
    theta = torch.stack([torch.stack([scale, zero, tx], 1), torch.stack([zero, scale, ty], 1)], 1)
    return _affine(x, theta)


def simclr(x: Tensor, s: Tensor, u: Tensor) -> Tensor:
    on = lambda k, p: (u[:, k] < p).to(x.dtype)  # noqa: E731 - which recipe steps apply
    x = resized_crop(x, 0.92 * s, u)
    x = horizontal_flip(x, s * on(6, 0.5), u)
    x = color_jitter(x, 0.8 * s * on(7, 0.8), u)
    x = grayscale(x, s * on(0, 0.2), u)
    return gaussian_blur(x, 2.0 * s * on(1, 0.5), u)


COLOR_FAMILIES = ("color-jitter", "grayscale", "simclr")  # need 3 (RGB) channels
FAMILIES: dict[str, tuple[Family, tuple[float, float]]] = {
    "color-jitter": (color_jitter, (0.0, 0.8)),
    "gaussian-blur": (gaussian_blur, (0.0, 5.0)),
    "grayscale": (grayscale, (0.0, 1.0)),
    "solarize": (solarize, (0.0, 0.5)),
    "rotation": (rotation, (0.0, 90.0)),
    "horizontal-flip": (horizontal_flip, (0.0, 1.0)),
    "resized-crop": (resized_crop, (0.0, 0.92)),
    "simclr": (simclr, (0.0, 1.0)),
}


def apply_transform(
    name: str, x01: Tensor, strength: float | Tensor, u: Tensor | None = None
) -> Tensor:
    """Apply family ``name`` at ``strength`` to [0, 1] images (N, 3, H, W)."""
    fn, _ = _family(name)
    s = torch.as_tensor(strength, dtype=x01.dtype, device=x01.device).expand(x01.shape[0])
    if u is None:
        u = torch.rand(x01.shape[0], 8, device=x01.device)
    return fn(x01, s, u)


def _family(name: str) -> tuple[Family, tuple[float, float]]:
    if name not in FAMILIES:
        raise ValueError(f"unknown transform {name!r}; choose from {', '.join(FAMILIES)}")
    return FAMILIES[name]


GEOMETRIC = ("rotation", "horizontal-flip", "resized-crop", "simclr")
"""Families that move pixels: a view is not pixel-aligned with the image it was made from."""

Interpolation = Literal["paper", "strength"]


def strength_range(name: str, strength: tuple[float, float] | None) -> tuple[float, float]:
    """The (lo, hi) strengths of family ``name``: ``strength`` or the family's default range."""
    _, default = _family(name)
    lo, hi = strength if strength is not None else default
    return float(lo), float(hi)


def paper_weights(steps: int) -> Tensor:
    """The blend weights rho_k = 1 - k / steps, k = 1 .. steps - 1 (0.9, 0.8, ..., 0.1 for 10
    steps), of the views o_k = rho_k I1 + (1 - rho_k) T(I2) that enter the average.

    The authors' code (explain-cl ``methods.py``, ``create_mixed_images``) builds
    ``lambdas = np.arange(1, 0, -step)`` (1.0, 0.9, ..., 0.1 for ``step = 0.1``) and
    ``averaged_transforms`` averages over ``mixed_images[1:]``: the lambda = 1 image is I1 itself.
    """
    return 1 - torch.arange(1, steps, dtype=torch.float64) / steps


def transform_path(
    name: str,
    x01: Tensor,
    steps: int,
    strength: tuple[float, float] | None,
    u: Tensor,
) -> Tensor:
    """The Z views T(x; s_z), s_z = lo + (hi - lo) z / Z for z = 1 .. Z, of [0, 1] images
    (N, 3, H, W), shape (Z, N, 3, H, W): the family's own strength swept in Z steps
    (``interpolation="strength"``)."""
    fn, _ = _family(name)
    lo, hi = strength_range(name, strength)
    n = x01.shape[0]
    z = torch.arange(1, steps + 1, device=x01.device, dtype=x01.dtype) / steps
    s = (lo + (hi - lo) * z).repeat_interleave(n)
    rep = x01.repeat(steps, 1, 1, 1)
    return fn(rep, s, u.repeat(steps, 1)).view(steps, *x01.shape)


@register_method(
    "averaged-transforms",
    section="§III-A2",
    summary="Input x gradient averaged over Z strengths of an augmentation (guided / noise)",
    family="saliency",
    deterministic=False,
)
def averaged_transforms(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    *,
    transform: Annotated[str, Choices(tuple(FAMILIES))] = "color-jitter",
    steps: Annotated[int, Range(1)] = 10,
    strength: Annotated[tuple[float, float], Ordered()] | None = None,
    interpolation: Interpolation = "paper",
    guided: bool = False,
    noise: bool = False,
    noise_level: Annotated[float, Range(0)] = 0.15,
    noise_scale: NoiseScale = "divide",
    batch_size: Annotated[int, Range(1)] | None = None,
    seed: Annotated[int, Range(0)] | None = 0,
) -> PairMaps:
    """Averaged Transforms (seed 000, §III-A2): input x gradient of the similarity of image 1 with
    views of image 2 along a transformation path, averaged over the path (the model's similarity;
    image 1 through tower 1, the views through tower 2).

    ``interpolation="paper"`` (default) is the formulation of §III-A2 ("practically") as the
    authors' code implements it (explain-cl ``methods.py``, ``create_mixed_images`` and
    ``averaged_transforms``):

    * one strong view ``T(x2)`` at the top of the family's strength range (``hi``);
    * views ``o_k = rho_k x1 + (1 - rho_k) T(x2)``, ``rho_k = 1 - k/steps`` for
      ``k = 1 .. steps-1`` (0.9 ... 0.1; see :func:`paper_weights`);
    * ``S_k = sim(x1, o_k)``; each view is an input of its own (no gradient flows back to x1 or x2
      through it); ``map_1 = |x1 * mean_k dS_k/dx1|`` and ``map_2 = |o_last * mean_k dS_k/do_k|``
      with ``o_last`` the view closest to ``T(x2)`` (rho = 1/steps), max over channels.
      ``map_2`` is thus laid on the view, which is pixel-aligned with x2 only for photometric
      families: geometric families (:data:`GEOMETRIC`) raise ``ValueError`` in this mode.

    ``interpolation="strength"``: views ``t_z = T(x2; lo + (hi - lo) z/Z)``, ``z = 1 .. Z``, the
    family's own strength swept; ``S_z = sim(x1, t_z(x2))``; gradients w.r.t. x2 flow *through*
    the differentiable transform, so ``map_2 = |x2 * mean_z dS_z/dx2|`` is aligned with x2 for any
    family (rotations and crops included).

    * Transforms act in [0, 1] pixel space (the model's mean/std are undone and redone); the blend
      of the paper mode is the same in either space.
    * ``guided=True`` (variant G): guided backpropagation through every ReLU.
    * ``noise=True`` (variant N): Gaussian noise added to every view but the last one, each view
      its own sample, as the authors' code does (``create_mixed_images(add_noise=True)``); sigma
      from image 1 (paper mode, as the code) or from image 2 (strength mode) with ``noise_scale``
      (see :func:`~pairlens.methods.common.noise_sigma`; ``"divide"`` is the code's formula).
    * Random draws (the family's random parts, the noise) come from
      :func:`~pairlens.methods.common.pair_generators`: a pair's map does not depend on its batch.
    * ``batch_size``: images per forward pass (None: :func:`pairlens.runtime.default_batch_size`).
      Image 1 is embedded once per pair with its graph kept; the views go through the model
      ``batch_size`` at a time, and the gradients dS/dz1 and dS/dview of all chunks are summed
      before the backward passes through image 1's network and (strength mode) the transform:
      the chain rule, so the maps do not depend on ``batch_size``.
    * Against a fixed target (``pairlens.explain(..., target=z)``) the transformed image is the
      explained one, and the paper mode's path goes from that image to its transform.

    Raises:
        ValueError: unknown family, ``steps`` too small (paper mode needs >= 2), a geometric
            family in paper mode, or an unknown ``interpolation`` / ``noise_scale``.
    """
    fn, _ = _family(transform)
    if interpolation not in ("paper", "strength"):
        raise ValueError(
            f"interpolation must be 'paper' or 'strength', got {interpolation!r}"
            + (" ('pixel' was removed: it was not the paper's formulation)"
               if interpolation == "pixel" else "")
        )
    paper = interpolation == "paper"
    if steps < (2 if paper else 1):
        raise ValueError(
            f"steps must be >= {2 if paper else 1} with interpolation={interpolation!r}"
        )
    if paper and transform in GEOMETRIC:
        raise ValueError(
            f"transform {transform!r} moves pixels: with interpolation='paper' the map of image 2 "
            "is laid on the transformed view (as in the authors' code) and would not be aligned "
            "with image 2; use interpolation='strength'"
        )
    if x2.shape[1] != 3 and transform in COLOR_FAMILIES:
        raise ValueError(
            f"transform {transform!r} changes colours and needs RGB images; model "
            f"{model.name!r} takes {x2.shape[1]}-channel images (use solarize, gaussian-blur, "
            "rotation, horizontal-flip or resized-crop)"
        )
    check_noise_scale(noise_scale)
    lo, hi = strength_range(transform, strength)
    b = x1.shape[0]
    n_views = steps - 1 if paper else steps
    bs = resolve_batch_size(batch_size, x1, grad=True)
    gens = pair_generators(seed, x1, x2)
    u = torch.stack([torch.rand(8, generator=g) for g in gens]).to(x1.device, x1.dtype)
    image1 = x1 if model.fixed_tower != 1 else x2  # against a fixed target: the image itself
    sigma = noise_sigma(image1 if paper else x2, noise_level, noise_scale) if noise else None
    rho = paper_weights(steps).to(x1.device, x1.dtype).view(-1, 1, 1, 1, 1)
    map1_parts, map2_parts, score_parts = [], [], []  # per chunk of pairs
    per_chunk = min(b, bs)  # pairs whose image 1 goes through the model together
    for start in track(range(0, b, per_chunk), desc="averaged-transforms"):
        sl = slice(start, start + per_chunk)
        n = x1[sl].shape[0]
        eps = None
        if noise and n_views > 1:  # every view but the last; drawn pair by pair
            eps = torch.stack([
                torch.randn((n_views - 1, *x2.shape[1:]), generator=g) for g in gens[sl]
            ]).transpose(0, 1).to(x1.device, x1.dtype)  # (V-1, n, 3, H, W)
        a = x1[sl].detach().requires_grad_(True)
        with torch.enable_grad(), model.guided(guided):
            if paper:
                with torch.no_grad():
                    full = torch.full((n,), hi, device=x1.device, dtype=x1.dtype)
                    strong = model.normalize(fn(model.denormalize(x2[sl], 2), full, u[sl]), 2)
                    views = rho * _start(model, x1[sl], x2[sl]) + (1 - rho) * strong
                    last_view = views[-1]  # (read before the noise, which spares it)
                    if eps is not None:
                        views[:-1] += eps * sigma[sl]
            else:
                c = x2[sl].detach().requires_grad_(True)
                views = model.normalize(
                    transform_path(transform, model.denormalize(c, 2), steps, (lo, hi), u[sl]), 2
                )
                if eps is not None:
                    views = torch.cat([views[:-1] + eps * sigma[sl], views[-1:]])
            views_flat = views.flatten(0, 1)  # (V * n, C, H, W), view-major
            z1 = model.embed(a, 1)
            z1_leaf = z1.detach().requires_grad_(True)
            g_z1 = torch.zeros_like(z1_leaf)
            g_views = torch.empty_like(views_flat)
            for v0 in range(0, len(views_flat), bs):  # the views (tower 2), bs images per pass
                leaf = views_flat[v0 : v0 + bs].detach().requires_grad_(True)
                pair = torch.arange(v0, v0 + len(leaf), device=x1.device) % n
                s = model.embedding_similarity(z1_leaf[pair], model.embed(leaf, 2))
                gz, gv = torch.autograd.grad(
                    s.sum() / n_views, (z1_leaf, leaf), materialize_grads=True
                )
                g_z1 += gz
                g_views[v0 : v0 + len(leaf)] = gv
            if z1.requires_grad:  # (a fixed target in tower 1 ignores its input: zero gradient)
                (g1,) = torch.autograd.grad(z1, a, grad_outputs=g_z1, materialize_grads=True)
            else:
                g1 = torch.zeros_like(a)
            if paper:  # gradient w.r.t. the views themselves, summed over the views
                g2 = g_views.view(n_views, n, *x2.shape[1:]).sum(0)
            else:  # through the differentiable transform back to image 2
                (g2,) = torch.autograd.grad(views_flat, c, grad_outputs=g_views)
        with torch.no_grad():  # the score of the unaltered pair: only image 2 is new
            z1, z2 = z1.detach(), model.embed(x2[sl], 2)
            check_embeddings(z1, "image 1", model.name, z2)
            score_parts.append(model.embedding_similarity(z1, z2))
        map1_parts.append(saliency(x1[sl], g1))
        map2_parts.append(saliency(last_view if paper else x2[sl], g2))
    return PairMaps(_cat(map1_parts), _cat(map2_parts), _cat(score_parts))


def _cat(parts: list[Tensor]) -> Tensor:
    """The chunks' results as one batch (no copy for a single chunk)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _start(model: SimilarityModel, x1: Tensor, x2: Tensor) -> Tensor:
    """Where the paper mode's path of views starts, in tower 2's input space: image 1 (re-expressed
    in tower 2's normalisation for a two-tower model); against a fixed target (the target is tower
    1, see :meth:`~pairlens.models.SimilarityModel.with_target`) there is no image 1, and the path
    goes from the image itself to its transform."""
    if model.fixed_tower == 1:
        return x2
    if model.two_towers:
        return model.normalize(model.denormalize(x1, 1), 2)
    return x1
