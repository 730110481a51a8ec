"""Second-order (correspondence) explanations: which region of image 1 matches which of image 2.

Every method here decomposes a *bilinear* similarity. With ``c = 1`` for ``dot`` and
``c = 1 / (|z1| |z2|)`` for ``cosine`` (the norms held fixed, as in Möller et al.'s code), the
similarity of embeddings ``z1, z2`` (D-dim) is ``S = c z1.z2 = c sum_m (u_m.z1)(u_m.z2)`` for any
orthonormal basis ``u_1..u_D``. Each method attributes each projected dimension ``u_m.z`` of each
image to its regions (a first-order attribution ``E_m(x)`` with ``sum_regions E_m(x) ~ u_m.z`` or
``u_m.(z - z_ref)``) and multiplies them:

    R[i, j] = c * sum_m w_m E_m(x1)[i] E_m(x2)[j]                                         (*)

(BiLRP, Eberle et al., TPAMI 2020, with LRP; Möller et al., EMNLP 2023, with integrated
Jacobians; checked against the authors' code: ``oeberle/BiLRP_explain_similarity`` ``bilrp()``
sums over the embedding dimensions the products of the pooled LRP maps, ``lucasmllr/xsbert``
``explain_similarity`` forms ``(x - r) J_a^T J_b (x' - r')``). The methods differ in ``E``:

* ``feature-grid``: ``E_m(u) = dot(d(u_m.z)/dA(u), A(u))``, the Jacobian-activation product at
  each location ``u`` of the feature grid A. Exact when the embedding is an affine head of the
  average-pooled grid, ``z = W mean_u A(u) + b``: then ``E_m(u) = u_m.W A(u) / n``, (*) sums to
  ``c (z1 - b).(z2 - b)`` and the ``b`` terms (the embedding of an all-zero feature grid) are the
  only part of ``S`` not attributed; with a bias-free head the relevance sums to ``S``.
  With a non-linear head it is first order in the head (its Jacobian at the pooled features).
* ``bilrp``: ``E_m`` = the LRP relevance of the pixels for ``u_m.z`` (zennit rules, see
  :mod:`pairlens.models.lrp`), started, as in the authors' code, from the embedding relevance
  ``z * u_m`` (the contribution of each dimension to ``u_m.z``).
* ``integrated-jacobians``: ``E_m = (x - r) * mean_{s=1..N} d(u_m.z)/dx (r + s/N (x - r))``, the
  integrated gradients of ``u_m.z`` from a reference image ``r`` (right Riemann sum over N steps,
  as the authors' code). (*) then sums to ``c (z1 - z_r1).(z2 - z_r2)`` up to the integration
  error, reported as ``completeness_error``.

The projection (``k`` directions instead of all D, so that the cost is k backward passes per
image): the first two directions span the two vectors whose product is decomposed (``z1, z2``, or
``z - z_ref``), so the relevance still sums to its target; the other ``k - 2`` are uniformly random
orthonormal directions of the rest, weighted ``(D - 2) / (k - 2)``, which makes (*) an unbiased
estimate of the full sum over all D dimensions. Eberle et al.'s code projects the embedding with a
random Gaussian matrix (``proj_case='random'``, 100 dimensions); ``k=None`` (or ``k >= D``) uses
all D dimensions, exactly.

Regions: a method's native grid is the feature grid (feature-grid) or the pixels (the others).
``grid`` re-bins the relevance onto ``grid`` (rows, cols) regions by area, conserving sums; by
default it is the model's feature grid (7 x 7 when the model has no feature layer). The pixel
methods sum their pixel relevance in each region (the authors' code averages, which only rescales).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch import Tensor

from pairlens.methods.common import (
    as_grid,
    check_grid_fits,
    pair_embeddings,
    pair_generators,
    regrid,
    upsample,
)
from pairlens.methods.registry import NotApplicableError, PairRelevance, register_method
from pairlens.models.similarity import COSINE_EPS, SimilarityModel, check_embeddings
from pairlens.runtime import resolve_batch_size
from pairlens.validation import Annotated, Range

#: ``grid`` parameter of the methods: g x g regions, or None for the model's feature grid
Grid = Annotated[int, Range(1)] | None
#: ``k`` parameter: embedding directions (None: all D)
Directions = Annotated[int, Range(2)] | None
Seed = Annotated[int, Range(0)] | None
#: ``batch_size`` parameter: images per forward pass (None: the device-aware default)
BatchSize = Annotated[int, Range(1)] | None

#: grid used by default when the model has no feature layer.
DEFAULT_GRID = (7, 7)
#: most region pairs per image pair (h1*w1 x h2*w2): 2**26 float32 values are 256 MiB of
#: relevance per pair (a 90 x 90 grid on both images); finer grids would exhaust memory.
MAX_REGION_PAIRS = 2**26


# ---------------------------------------------------------------------- shared pieces
def bilinear_scale(model: SimilarityModel, z1: Tensor, z2: Tensor) -> Tensor:
    """``c`` (B,) with ``S = c * z1.z2``: 1 for ``dot``, ``1 / (|z1| |z2|)`` for ``cosine`` (0 when
    an embedding is zero, whose cosine is 0 by convention, so its relevance is 0, not huge).

    Raises:
        ValueError: the model's similarity is not bilinear (``neg-l2`` or a callable).
    """
    name = model.similarity_name
    if name == "dot":
        return torch.ones(z1.shape[0], device=z1.device)
    if name == "cosine":  # a zero embedding has cosine 0 (COSINE_EPS): nothing to decompose
        norms = z1.norm(dim=1) * z2.norm(dim=1)
        return torch.where(norms > COSINE_EPS, 1.0 / norms.clamp(min=COSINE_EPS), 0.0)
    raise ValueError(
        f"correspondence methods decompose a bilinear similarity (cosine or dot); model "
        f"{model.name!r} compares embeddings with {name!r} (first-order methods work with any "
        "similarity)"
    )


def embedding_directions(
    a1: Tensor, a2: Tensor, k: int | None, gens: Sequence[torch.Generator]
) -> tuple[Tensor | None, Tensor]:
    """Directions ``U`` (B, D, m) and weights ``w`` (B, m) with ``sum_m w_m (u_m.a)(u_m.b)``
    equal to ``a1.a2`` (exactly, since ``a1, a2`` lie in the span of the first directions) and,
    over the random draw, an unbiased estimate of the full-basis sum for any other pair of vectors.

    ``k=None`` or ``k >= D``: the standard basis (m = D, returned as ``U = None``), no randomness.
    Otherwise m = k: an orthonormal basis of ``span(a1, a2)`` (per pair, rank r <= 2) and
    ``k - r`` orthonormal directions drawn uniformly in its complement, weighted
    ``(D - r) / (k - r)``.

    Raises:
        ValueError: ``k < 2``.
    """
    b, d = a1.shape
    device = a1.device
    if k is None or k >= d:
        return None, torch.ones(b, d, device=device)
    if k < 2:
        raise ValueError(f"k must be >= 2 projected dimensions (or None for all); got {k}")
    us, ws = [], []
    for i in range(b):
        basis: list[Tensor] = []
        for v in (a1[i], a2[i]):
            v = v.detach().double().cpu()
            scale = float(v.norm())
            for q in basis:
                v = v - (q @ v) * q
            if scale > 0 and float(v.norm()) > 1e-6 * scale:
                basis.append(v / v.norm())
        r = len(basis)
        parts = [torch.stack(basis, 1)] if r else []
        if k > r:
            g = torch.randn(d, k - r, generator=gens[i], dtype=torch.float64)
            if r:
                g = g - parts[0] @ (parts[0].T @ g)
            parts.append(torch.linalg.qr(g).Q)
        us.append(torch.cat(parts, 1))
        extra = [(d - r) / (k - r)] * (k - r) if k > r else []
        ws.append(torch.tensor([1.0] * r + extra, dtype=torch.float64))
    return torch.stack(us).float().to(device), torch.stack(ws).float().to(device)


def resolve_grid(
    model: SimilarityModel, grid: int | None, x: Tensor, tower: int = 1
) -> tuple[int, int]:
    """The region grid of ``tower``'s images: ``grid x grid`` if given, else the tower's feature
    grid for inputs like ``x`` (one forward pass of one image), else :data:`DEFAULT_GRID`."""
    g = as_grid(grid)
    if g is not None:
        return g
    if model.tower(tower).feature_layer is None:
        return DEFAULT_GRID
    with torch.no_grad():
        _, a = model.embed_with_features(x[:1], tower)
        return tuple(model.to_grid(a, tuple(x.shape[-2:]), tower).shape[-2:])  # type: ignore


def check_grids(grids: Sequence[tuple[int, int]], size: tuple[int, int]) -> None:
    """Raise ``ValueError`` if a region grid is finer than the ``size`` (H, W) pixels or the
    relevance would exceed :data:`MAX_REGION_PAIRS` region pairs per image pair."""
    for g in grids:
        check_grid_fits(g, size)
    (h1, w1), (h2, w2) = grids
    if h1 * w1 * h2 * w2 > MAX_REGION_PAIRS:
        raise ValueError(
            f"grid {h1}x{w1} gives {h1 * w1} x {h2 * w2} region pairs per image pair, more than "
            f"the {MAX_REGION_PAIRS:,} (256 MiB of relevance) allowed; use a coarser grid"
        )


def direction(u: Tensor | None, m: int, rows: Tensor, d: int) -> Tensor:
    """Direction ``m`` for the images ``rows`` (indices into ``U``'s pairs, repeated for the two
    images): ``U[rows, :, m]``, or the one-hot vector ``e_m`` when ``U`` is the standard basis."""
    if u is None:
        out = torch.zeros(len(rows), d, device=rows.device)
        out[:, m] = 1.0
        return out
    return u[rows, :, m]


def assemble(
    e1: Tensor, e2: Tensor, w: Tensor, c: Tensor,
    grids: tuple[tuple[int, int], tuple[int, int]], size: tuple[int, int],
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Relevance (B, n1, n2) on ``grids`` and the two marginal maps (B, H, W) from per-direction
    attributions ``e1, e2`` (B, m, h, w) at their native resolution, weights ``w`` (B, m) and
    scale ``c`` (B,): eq. (*) of the module docstring. Marginals at native resolution are exact
    (``map1[p] = c sum_m w_m e1_m[p] sum_j e2_m[j]``) and upsampled bilinearly when coarser than
    the input."""
    t1, t2 = e1.sum((2, 3)), e2.sum((2, 3))
    map1 = c[:, None, None] * torch.einsum("bmhw,bm->bhw", e1, w * t2)
    map2 = c[:, None, None] * torch.einsum("bmhw,bm->bhw", e2, w * t1)
    g1 = regrid(e1, grids[0]).flatten(2)
    g2 = regrid(e2, grids[1]).flatten(2)
    rel = c[:, None, None] * torch.einsum("bmi,bm,bmj->bij", g1, w, g2)
    return rel, (upsample(map1, size), upsample(map2, size))


def _extras(rel: Tensor, target: Tensor) -> dict[str, Tensor]:
    return {"target": target, "completeness_error": rel.sum((1, 2)) - target}


def directional_grads(
    z: Tensor, wrt: Tensor, u: Tensor | None, rows: Tensor, per_call: int,
    scale: Tensor | None = None,
) -> Iterator[tuple[int, Tensor]]:
    """Vector-Jacobian products of ``z`` (N, D) for every embedding direction: the vector of
    direction m for output row i is ``direction(u, m, rows)[i]``, times ``scale`` (N, D) if given.
    ``per_call`` directions share one backward pass (``is_grads_batched``, a vmap over the
    backward pass; one pass per direction for operations without a batching rule). Yields
    ``(m0, grads)``, grads (m, *wrt.shape) for directions ``m0 .. m0 + m - 1``."""
    d = z.shape[1]
    n_dirs = d if u is None else u.shape[2]
    per_call = max(1, int(per_call))
    for m0 in range(0, n_dirs, per_call):
        vs = torch.stack([direction(u, m, rows, d) for m in range(m0, min(n_dirs, m0 + per_call))])
        if scale is not None:
            vs = vs * scale
        try:
            (g,) = torch.autograd.grad(z, wrt, grad_outputs=vs, retain_graph=True,
                                       is_grads_batched=True)
        except (RuntimeError, NotImplementedError):
            g = torch.stack([torch.autograd.grad(z, wrt, grad_outputs=v, retain_graph=True)[0]
                             for v in vs])
        yield m0, g


def _chunks(b: int, batch_size: int, per_pair: int) -> list[slice]:
    """Slices of pairs so that one forward pass holds at most ``batch_size`` images."""
    step = max(1, batch_size // per_pair)
    return [slice(i, min(i + step, b)) for i in range(0, b, step)]


# ---------------------------------------------------------------------- feature-grid
@register_method(
    "feature-grid",
    section="decomposition of average-pooled features (Möller et al. 2023 code; Hamilton et al.)",
    summary="Correspondence of feature-grid locations: Jacobian x activation, product per "
    "embedding direction (exact for an affine head on average-pooled features)",
    family="correspondence",
    pairs_only=True,
)
def feature_grid(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    *,
    grid: Grid = None,
    k: Directions = None,
    seed: Seed = 0,
    batch_size: BatchSize = None,
) -> PairRelevance:
    """Feature-grid interaction: ``R[u, v] = c sum_m w_m E_m(x1)[u] E_m(x2)[v]`` with
    ``E_m(x)[u] = dot(d(u_m.z)/dA(u), A(u))`` at the feature grid A (module docstring, eq. *).

    For a model whose embedding is ``z = W mean_u A(u) + b`` (average-pooled feature grid and an
    affine head, e.g. a ResNet with ``feature_layer="layer4"`` and a linear or no head) this is the
    exact decomposition ``c (z1 - b).(z2 - b) = sum_uv c (W A1(u) / n1).(W A2(v) / n2)``; with no
    head it is the token-pair decomposition of Möller et al.'s code (``xsbert``,
    ``XSTransformer.explain_by_decomposition``: ``emb_a @ emb_b.T / n_a / n_b``), and the GAP
    architectures for which Hamilton et al. (ICLR 2022, arXiv 2103.00370) extend CAM to pairwise
    correspondences. ``target`` is ``c (z1 - z_ref1).(z2 - z_ref2)`` with ``z_ref`` the embedding of
    an all-zero feature grid, and ``completeness_error`` is 0 up to float error. With a non-linear
    head the attribution is first order in the head (its Jacobian); for a class-token ViT the
    feature layer covers only part of the paths to the embedding, which shows up as a large
    ``completeness_error``.

    Args:
        grid: ``grid x grid`` regions for the relevance (default: the feature grid itself).
        k: embedding directions (None: all D, exact; fewer: the projection of the module
            docstring, k backward passes from the embedding to the feature layer).
        seed: seeds the random directions (only used when ``k < D``).
        batch_size: images per forward pass (None: the device-aware default).

    Returns:
        :class:`PairRelevance` on ``grid``; marginal maps upsampled from the feature grid.

    Raises:
        ValueError: no feature layer, a non-bilinear similarity, ``k < 2``, a ``grid`` finer
            than the pixels or too fine (:func:`check_grids`).
    """
    from pairlens.models.hooks import replaced_output

    for t in (1, 2):
        if model.tower(t).feature_layer is None:
            raise ValueError(f"model {model.name!r} has no feature_layer"
                             f"{'2' if t == 2 else ''}; feature-grid needs one")
    size = tuple(x1.shape[-2:])
    if grid is not None:
        check_grids((as_grid(grid),) * 2, size)
    b = x1.shape[0]
    batch_size = resolve_batch_size(batch_size, x1, grad=True)
    gens = pair_generators(seed, x1, x2) if k is not None else []
    frozen = not any(p.requires_grad for p in model.parameters())
    rels, maps1, maps2, targets, scores = [], [], [], [], []
    natives: tuple = ()
    for sl in _chunks(b, batch_size, 2):
        xs = (x1[sl].detach(), x2[sl].detach())
        n = xs[0].shape[0]
        # a one-tower model takes both images of the chunk in one pass (forward and backward)
        one = not model.two_towers and xs[0].shape[1:] == xs[1].shape[1:]
        runs = [(torch.cat(xs), 1)] if one else list(zip(xs, (1, 2), strict=True))
        with torch.no_grad():
            zr = []
            for x, t in runs:
                tw = model.tower(t)
                with replaced_output(tw.encoder.get_submodule(tw.feature_layer), torch.zeros_like):
                    zr.append(model.embed(x, t))
            zr = list(zr[0].split(n)) if one else zr
        rows = torch.arange(n, device=x1.device)
        with torch.enable_grad():
            graphs = [model.embed_with_features(x.requires_grad_(True) if frozen else x, t)
                      for x, t in runs]
            zs = graphs[0][0].detach().split(n) if one else [g[0].detach() for g in graphs]
            z1, z2 = zs[0], zs[1]
            check_embeddings(z1, "image 1", model.name, z2)
            c = bilinear_scale(model, z1, z2)
            u, w = embedding_directions(z1 - zr[0], z2 - zr[1], k, gens[sl] if gens else [])
            es = []
            for (z, a), (_, t) in zip(graphs, runs, strict=True):
                act = model.to_grid(a.detach(), size, t)
                e = torch.empty(len(z), w.shape[1], *act.shape[-2:], device=x1.device)
                # directions of pair i for image i of either view; as many images per backward
                # pass as with one view per pass
                own = rows.repeat(len(z) // n)
                for m0, g in directional_grads(z, a, u, own, max(1, batch_size * n // len(z))):
                    grid_g = model.to_grid(g.flatten(0, 1), size, t).unflatten(0, g.shape[:2])
                    e[:, m0 : m0 + len(g)] = (grid_g * act).sum(2).transpose(0, 1)
                es.append(e)
            es = list(es[0].split(n)) if one else es
        natives = (tuple(es[0].shape[-2:]), tuple(es[1].shape[-2:]))
        grids = (as_grid(grid) or natives[0], as_grid(grid) or natives[1])
        rel, (m1, m2) = assemble(es[0], es[1], w, c, grids, size)
        rels.append(rel)
        maps1.append(m1)
        maps2.append(m2)
        targets.append(c * ((z1 - zr[0]) * (z2 - zr[1])).sum(1))
        scores.append(model.embedding_similarity(z1, z2))
    rel = torch.cat(rels)
    grids = (as_grid(grid) or natives[0], as_grid(grid) or natives[1])
    return PairRelevance(rel, grids, (torch.cat(maps1), torch.cat(maps2)), torch.cat(scores),
                         _extras(rel, torch.cat(targets)))


# ---------------------------------------------------------------------- BiLRP
@register_method(
    "bilrp",
    section="Eberle et al. TPAMI 2020 (BiLRP)",
    summary="BiLRP: products of the LRP relevances (zennit) of k embedding directions",
    family="correspondence",
    pairs_only=True,
)
def bilrp(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    *,
    grid: Grid = None,
    k: Directions = 32,
    gamma: Annotated[float, Range(0)] = 0.25,
    epsilon: Annotated[float, Range(0)] = 1e-6,
    seed: Seed = 0,
    batch_size: BatchSize = None,
) -> PairRelevance:
    """BiLRP (Eberle et al., TPAMI 2020): ``R[i, j] = c sum_m w_m LRP_m(x1)[i] LRP_m(x2)[j]``,
    eq. (*) of the module docstring, with ``LRP_m(x)`` the pixel relevance (summed over colour
    channels, then over the pixels of each region) of the embedding direction ``u_m.z``, started
    from the embedding relevance ``z * u_m`` and propagated with zennit's rules (z^B box rule in
    the first convolution, gamma rule in the other convolutions, epsilon rule in linear layers;
    :mod:`pairlens.models.lrp`).

    ``target`` is the similarity; ``completeness_error`` is the relevance LRP did not conserve
    (absorbed by biases and stabilisers).

    Args:
        grid: ``grid x grid`` regions (default: the feature grid of the model, else 7 x 7).
        k: embedding directions, i.e. LRP backward passes per image (None: all D).
        gamma: gamma of the gamma rule in convolutions (zennit's default 0.25; the authors' VGG
            code uses 0.5 to 0 from the bottom to the top).
        epsilon: stabiliser of the epsilon rule.
        seed: seeds the random directions (only used when ``k < D``).
        batch_size: images per forward pass (None: the device-aware default).

    Raises:
        ValueError: a non-bilinear similarity; layers zennit has no rule for (transformers);
            an LRP view that does not reproduce the model's embedding; a ``grid`` finer than
            the pixels or too fine (:func:`check_grids`).
    """
    from pairlens.models.lrp import lrp_embedding, unsupported_layers

    for t in (1, 2):
        bad = unsupported_layers(model, t, x1 if t == 1 else x2)
        if bad:
            raise NotApplicableError(
                f"LRP (zennit) has no rules for the {', '.join(bad)} layers of model "
                f"{model.name!r} (transformer-style blocks); use method 'integrated-jacobians' "
                "or 'feature-grid'"
            )
    size = tuple(x1.shape[-2:])
    grids = (resolve_grid(model, grid, x1, 1), resolve_grid(model, grid, x2, 2))
    check_grids(grids, size)
    b = x1.shape[0]
    batch_size = resolve_batch_size(batch_size, x1, grad=True)
    gens = pair_generators(seed, x1, x2) if k is not None else []
    with torch.no_grad():
        z1, z2 = pair_embeddings(model, x1, x2, batch_size)  # checked; batch_size images a pass
    s = model.embedding_similarity(z1, z2)
    c = bilinear_scale(model, z1, z2)
    u, w = embedding_directions(z1, z2, k, gens)
    e = [torch.empty(b, w.shape[1], *size, device=x1.device) for _ in range(2)]
    for t, x, z_model in ((1, x1, z1), (2, x2, z2)):
        with lrp_embedding(model, tower=t, gamma=gamma, epsilon=epsilon, x=x) as view:
            for sl in _chunks(b, batch_size, 1):
                xx = x[sl].detach().requires_grad_(True)
                with torch.enable_grad():
                    z = view(xx)
                    zd = z.detach()
                    scale = float(z_model[sl].abs().max().clamp(min=1e-6))
                    if not torch.allclose(zd, z_model[sl], rtol=1e-3, atol=1e-4 * scale):
                        raise ValueError(
                            f"bilrp: the LRP view of model {model.name!r} does not reproduce "
                            "its embedding (an encoder whose output is not pooled like "
                            "SimilarityModel's)"
                        )
                    rows = torch.arange(sl.start, sl.stop, device=x1.device)
                    per_call = max(1, batch_size // len(rows))
                    for m0, g in directional_grads(z, xx, u, rows, per_call, scale=zd):
                        e[t - 1][sl, m0 : m0 + len(g)] = g.sum(2).transpose(0, 1)
    rel, maps = assemble(e[0], e[1], w, c, grids, size)
    return PairRelevance(rel, grids, maps, s, _extras(rel, s))


# ---------------------------------------------------------------------- integrated Jacobians
def reference_image(model: SimilarityModel, x: Tensor, reference: str, tower: int = 1) -> Tensor:
    """The reference ``r`` of integrated Jacobians for inputs ``x`` (B, C, H, W) of ``tower``, in
    model-input space: ``"blur"`` (Gaussian blur, kernel 21, sigma 5, the COCOA baseline),
    ``"black"`` (pixels 0) or ``"zero"`` (0 in model-input space: the normalisation mean)."""
    key = str(reference).strip().lower()
    if key == "blur":
        from pairlens.attribution.baselines import blur

        return blur(x)
    if key == "black":
        return model.normalize(torch.zeros_like(x), tower)
    if key == "zero":
        return torch.zeros_like(x)
    raise ValueError(f"reference must be 'blur', 'black' or 'zero'; got {reference!r}")


@register_method(
    "integrated-jacobians",
    section="Möller et al. EMNLP 2023 / EACL 2024",
    summary="Integrated Jacobians: products of the integrated gradients of k embedding "
    "directions from a reference image, with the completeness error",
    family="correspondence",
    pairs_only=True,
)
def integrated_jacobians(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    *,
    grid: Grid = None,
    k: Directions = 16,
    steps: Annotated[int, Range(1)] = 32,
    reference: Literal["blur", "black", "zero"] = "blur",
    seed: Seed = 0,
    batch_size: BatchSize = None,
) -> PairRelevance:
    """Integrated Jacobians (Möller et al., EMNLP 2023; EACL 2024 for models not trained
    for it): ``R[i, j] = c sum_m w_m IG_m(x1)[i] IG_m(x2)[j]`` with
    ``IG_m(x) = (x - r) * (1/N) sum_{s=1..N} d(u_m.z)/dx (r + s/N (x - r))`` summed over colour
    channels and region pixels; the same reference ``r`` is used for both images.

    ``sum R`` approximates ``target = c (z1 - z_r1).(z2 - z_r2)`` (z_r the reference embeddings);
    ``completeness_error = sum R - target`` is the integration error the paper reports, which
    shrinks as ``steps`` grows. ``S - target`` (the reference terms) is the part of the
    similarity the reference itself explains; Möller et al.'s exact models are trained so that
    it is zero.

    Args:
        grid: ``grid x grid`` regions (default: the feature grid of the model, else 7 x 7).
        k: embedding directions (None: all D); cost: ``2 * steps * k`` backward passes per pair.
        steps: N, points on the straight path (right Riemann sum, as the authors' code).
        reference: ``"blur"`` (default), ``"black"`` or ``"zero"`` (model-input space). The
            authors' reference is a neutral input (padding tokens); for images the blurred image
            is the nearer neutral input: on the bundled photos pair the completeness error at 16
            steps was -0.04 from the blur and -2.5 from black (target 0.67 and 3.5).
        seed: seeds the random directions (only used when ``k < D``).
        batch_size: images per forward pass (path points of several images are batched; None:
            the device-aware default).

    Raises:
        ValueError: a non-bilinear similarity, ``steps < 1``, ``k < 2``, a bad reference, a
            ``grid`` finer than the pixels or too fine (:func:`check_grids`).
    """
    steps = int(steps)
    size = tuple(x1.shape[-2:])
    grids = (resolve_grid(model, grid, x1, 1), resolve_grid(model, grid, x2, 2))
    check_grids(grids, size)
    b = x1.shape[0]
    batch_size = resolve_batch_size(batch_size, x1, grad=True)
    xs = (x1.detach(), x2.detach())
    refs = tuple(reference_image(model, x, reference, t) for t, x in zip((1, 2), xs, strict=True))
    with torch.no_grad():
        # checked: non-finite or zero embeddings raise; at most batch_size images per pass
        z1, z2 = pair_embeddings(model, x1, x2, batch_size)
        zr1, zr2 = pair_embeddings(model, refs[0], refs[1], batch_size, check=False)
    s = model.embedding_similarity(z1, z2)
    c = bilinear_scale(model, z1, z2)
    a1, a2 = z1 - zr1, z2 - zr2
    u, w = embedding_directions(a1, a2, k, pair_generators(seed, x1, x2) if k is not None else [])
    e = [torch.zeros(b, w.shape[1], *size, device=x1.device) for _ in range(2)]
    # path points (image, step) of each tower in chunks of at most batch_size images
    for t, x, r in zip((1, 2), xs, refs, strict=True):
        points = [(i, st) for i in range(b) for st in range(1, steps + 1)]
        for start in range(0, len(points), batch_size):
            chunk = points[start : start + batch_size]
            idx = torch.tensor([i for i, _ in chunk], device=x.device)
            alpha = torch.tensor([st / steps for _, st in chunk], device=x.device).view(-1, 1, 1, 1)
            xp = (r[idx] + alpha * (x[idx] - r[idx])).requires_grad_(True)
            with torch.enable_grad():
                zp = model.embed(xp, t)
                per_call = max(1, batch_size // len(chunk))
                for m0, g in directional_grads(zp, xp, u, idx, per_call):
                    contrib = ((x[idx] - r[idx]) * g).sum(2) / steps  # (m, chunk, H, W)
                    e[t - 1][:, m0 : m0 + len(g)].index_add_(0, idx, contrib.transpose(0, 1))
    rel, maps = assemble(e[0], e[1], w, c, grids, size)
    return PairRelevance(rel, grids, maps, s, _extras(rel, c * (a1 * a2).sum(1)))
