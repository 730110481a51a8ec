"""`SimilarityModel`: any image encoder (plus optional head) seen as a pair-similarity model.

All model plumbing lives here and in :mod:`pairlens.models.hooks`: methods never register hooks or
read module internals themselves. Conventions (DESIGN.md, "Exact conventions"):

* images enter the encoder in *model-input space*: resized, centre-cropped, scaled to [0, 1] and
  normalised with the model's mean / std;
* the similarity of two embeddings is their cosine with ``eps=1e-8`` so that a zero vector gives 0;
* the feature map used by CAM methods is the output of ``feature_layer`` (a dotted module path),
  returned as a grid (B, C, h, w). ViT tokens (B, N, C) are reshaped to the grid inferred from the
  input size and patch size, with the class / register tokens (the first ``N - h*w``) dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from pairlens.io import ImageLike, load_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COSINE_EPS = 1e-8


SimilarityFn = Callable[[Tensor, Tensor], Tensor]


class NonFiniteError(ValueError):
    """Raised when an input or an embedding holds NaN or infinite values."""


def cosine(z1: Tensor, z2: Tensor) -> Tensor:
    """Row-wise cosine similarity of two (B, D) tensors; a zero row gives 0, never NaN."""
    return F.cosine_similarity(z1, z2, dim=-1, eps=COSINE_EPS)


def dot(z1: Tensor, z2: Tensor) -> Tensor:
    """Row-wise dot product of two (B, D) tensors."""
    return (z1 * z2).sum(dim=-1)


def neg_l2(z1: Tensor, z2: Tensor) -> Tensor:
    """Row-wise negative Euclidean distance -||z1 - z2||_2 of two (B, D) tensors (metric learning,
    face verification). Its gradient at z1 == z2 is taken as 0."""
    d = z1 - z2
    return -torch.sqrt((d * d).sum(dim=-1) + 1e-12)


SIMILARITIES: dict[str, SimilarityFn] = {"cosine": cosine, "dot": dot, "neg-l2": neg_l2}


def resolve_similarity(similarity: str | SimilarityFn) -> tuple[str, SimilarityFn]:
    """A similarity name or callable to ``(name, fn)``; ``fn(z1, z2)`` maps two (B, D) embeddings
    to (B,) scores."""
    if callable(similarity):
        return getattr(similarity, "__name__", "custom"), similarity
    key = str(similarity).strip().lower().replace("_", "-")
    if key not in SIMILARITIES:
        raise ValueError(
            f"unknown similarity {similarity!r}; use one of {', '.join(SIMILARITIES)} "
            "or a callable (z1, z2) -> (B,)"
        )
    return key, SIMILARITIES[key]


def check_finite(t: Tensor, what: str) -> Tensor:
    """Raise :class:`NonFiniteError` naming ``what`` if ``t`` holds NaN or inf."""
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteError(f"{what} contains NaN or infinite values")
    return t


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) means CUDA when present, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available here")
    return device


def _get_submodule(root: nn.Module, dotted: str) -> nn.Module:
    try:
        return root.get_submodule(dotted)
    except AttributeError as err:
        names = [n for n, _ in root.named_modules() if n][:12]
        raise ValueError(
            f"feature_layer {dotted!r} is not a submodule of the encoder; "
            f"some valid names: {', '.join(names)}"
        ) from err


class SimilarityModel(nn.Module):
    """Wrap ``encoder`` (and an optional ``head``) so that two images have a similarity.

    Args:
        encoder: module mapping (B, 3, H, W) to features. A (B, C, h, w) output is average-pooled,
            a (B, N, C) token output is reduced to its first (class) token.
        head: optional module applied to the pooled features (for example a projection MLP). The
            embedding whose cosine is the similarity is ``head(encoder(x))``.
        feature_layer: dotted name of the submodule whose output is the spatial feature map for
            CAM methods (``"layer4"`` for a torchvision ResNet). For a ViT whose embedding is the
            class token, use the *first norm of the last block* (``"blocks.11.norm1"`` in timm,
            ``"encoder.layers.encoder_layer_11.ln_1"`` in torchvision): the patch tokens that
            leave the last block never reach the class token, so their gradients are zero.
        input_size: (H, W) the model expects.
        mean, std: per-channel normalisation; ``mean=(0, 0, 0), std=(1, 1, 1)`` for models such as
            SimCLRv2 that take inputs in [0, 1].
        crop_fraction: ``preprocess`` resizes the image (keeping its aspect ratio) so that it
            just covers ``input_size / crop_fraction`` and centre-crops ``input_size`` (0.875 is
            the ImageNet 256 -> 224 convention; 1.0 keeps as much of the image as fits).
        patch_size: ViT patch size; inferred from a ``patch_size`` attribute when omitted.
        name: a short name used in figures and saved metadata.
        similarity: how two embeddings are compared: ``"cosine"`` (default, the papers'),
            ``"dot"``, ``"neg-l2"`` (-||z1 - z2||) or a callable ``(z1, z2) -> (B,)``. Use
            :meth:`embedding_similarity` wherever two embeddings are compared.
    """

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module | None = None,
        feature_layer: str | None = None,
        input_size: tuple[int, int] = (224, 224),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        crop_fraction: float = 0.875,
        patch_size: int | None = None,
        name: str = "custom",
        similarity: str | SimilarityFn = "cosine",
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head if head is not None else nn.Identity()
        self.feature_layer = feature_layer
        if feature_layer is not None:
            _get_submodule(encoder, feature_layer)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        if not 0 < crop_fraction <= 1:
            raise ValueError("crop_fraction must be in (0, 1]")
        self.crop_fraction = crop_fraction
        self.patch_size = patch_size or _find_patch_size(encoder)
        self.name = name
        self.similarity_name, self._similarity_fn = resolve_similarity(similarity)
        self.classifier: nn.Module | None = None  # optional (B, D) -> logits probe
        self.eval()

    # ------------------------------------------------------------------ device and basics
    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        return self.mean.device

    # ------------------------------------------------------------------ images
    def preprocess(self, image: ImageLike | Sequence[ImageLike]) -> Tensor:
        """Image(s) to a model-input tensor (B, 3, H, W) on the model's device.

        Accepts a PIL image, a path, an (H, W) or (H, W, C) array (uint8, uint16 or float in
        [0, 1]), or a list of them. Converts to RGB, resizes (aspect ratio kept) to cover
        ``input_size / crop_fraction``, centre-crops ``input_size``, scales to [0, 1] and
        normalises.
        """
        if isinstance(image, (list, tuple)):
            return torch.cat([self.preprocess(im) for im in image])
        pil = load_image(image)
        h, w = self.input_size
        scale = max(h / self.crop_fraction / pil.size[1], w / self.crop_fraction / pil.size[0])
        new = (max(w, round(pil.size[0] * scale)), max(h, round(pil.size[1] * scale)))
        pil = pil.resize(new, Image.BICUBIC)
        left, top = (new[0] - w) // 2, (new[1] - h) // 2
        pil = pil.crop((left, top, left + w, top + h))
        arr = np.asarray(pil, dtype=np.float32) / 255.0
        x = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).to(self.device)
        return self.normalize(x)

    def normalize(self, x01: Tensor) -> Tensor:
        """[0, 1] pixels to model-input space."""
        return (x01 - self.mean) / self.std

    def denormalize(self, x: Tensor) -> Tensor:
        """Model-input space back to [0, 1] pixels (not clamped)."""
        return x * self.std + self.mean

    def check_input(self, x: Tensor, what: str = "input") -> Tensor:
        """Validate a (B, 3, H, W) batch and return it as float32 on the model's device.

        Floating-point tensors are taken as model-input space (see :meth:`preprocess`) and must
        be finite. Integer tensors cannot be model-input space, so one clear rule applies:
        ``uint8`` is taken as pixels in 0..255 and converted (``/ 255``, then
        :meth:`normalize`); any other integer or boolean dtype raises ``TypeError``.
        """
        if not isinstance(x, Tensor):
            raise TypeError(
                f"{what} must be a tensor of shape (B, 3, H, W); got {type(x).__name__}"
            )
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{what} must have shape (B, 3, H, W); got {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            return self.normalize(x.to(self.device, torch.float32) / 255.0)
        if not x.is_floating_point():
            raise TypeError(
                f"{what} has dtype {x.dtype}; give float images in model-input space "
                "(model.preprocess) or uint8 pixels in 0..255"
            )
        check_finite(x, what)
        return x.to(self.device, torch.float32)

    # ------------------------------------------------------------------ embeddings
    def forward(self, x: Tensor) -> Tensor:
        return self.embed(x)

    def embed(self, x: Tensor) -> Tensor:
        """Embedding (B, D) whose cosine is the similarity. Keeps autograd if enabled."""
        return self.head(pool_features(self.encoder(x)))

    def embedding_similarity(self, z1: Tensor, z2: Tensor) -> Tensor:
        """The model's similarity (B,) of two (B, D) embeddings (cosine unless configured)."""
        return self._similarity_fn(z1, z2)

    def similarity(self, x1: Tensor, x2: Tensor) -> Tensor:
        """The model's similarity (B,) of the embeddings of two batches of images."""
        return self.embedding_similarity(self.embed(x1), self.embed(x2))

    @torch.no_grad()
    def embed_batched(self, x: Tensor, batch_size: int = 64) -> Tensor:
        """Embed many images without autograd, ``batch_size`` at a time."""
        return torch.cat([self.embed(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])

    # ------------------------------------------------------------------ feature maps
    def embed_with_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Embedding (B, D) and the raw output of ``feature_layer`` from one forward pass.

        The raw output keeps its own layout ((B, C, h, w) or (B, N, C)); differentiate with
        respect to it and convert both activation and gradient with :meth:`to_grid`.
        """
        if self.feature_layer is None:
            raise ValueError(
                f"model {self.name!r} has no feature_layer; CAM methods need one "
                "(SimilarityModel(..., feature_layer='layer4'))"
            )
        store: dict[str, Tensor] = {}
        module = _get_submodule(self.encoder, self.feature_layer)

        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            store["a"] = out[0] if isinstance(out, (tuple, list)) else out

        handle = module.register_forward_hook(hook)
        try:
            z = self.embed(x)
        finally:
            handle.remove()
        return z, store["a"]

    def to_grid(self, a: Tensor, input_hw: tuple[int, int] | None = None) -> Tensor:
        """Feature-layer output as a grid (B, C, h, w); ViT tokens lose their prefix tokens."""
        if a.dim() == 4:
            return a
        if a.dim() != 3:
            raise ValueError(f"feature layer output has unsupported shape {tuple(a.shape)}")
        b, n, c = a.shape
        h_in, w_in = input_hw or self.input_size
        if self.patch_size:
            gh, gw = h_in // self.patch_size, w_in // self.patch_size
        else:
            side = int(math.isqrt(n))
            gh = gw = side
        if gh * gw > n:
            raise ValueError(f"cannot reshape {n} tokens to a {gh}x{gw} grid")
        tokens = a[:, n - gh * gw :, :]
        return tokens.transpose(1, 2).reshape(b, c, gh, gw)

    # ------------------------------------------------------------------ guided backprop
    @contextmanager
    def guided(self, enabled: bool = True):
        """Context in which every ReLU (module or functional) backpropagates guided gradients."""
        from pairlens.models.hooks import guided_relus

        if not enabled:
            yield self
            return
        with guided_relus():
            yield self

    # ------------------------------------------------------------------ persistence
    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary used in saved metadata."""
        return {
            "name": self.name,
            "input_size": list(self.input_size),
            "mean": [round(v, 6) for v in self.mean.flatten().tolist()],
            "std": [round(v, 6) for v in self.std.flatten().tolist()],
            "feature_layer": self.feature_layer,
            "similarity": self.similarity_name,
        }


def pool_features(f: Tensor) -> Tensor:
    """Encoder output to (B, D): average-pool a map, take the class token of a token sequence."""
    if f.dim() == 4:
        return f.mean(dim=(2, 3))
    if f.dim() == 3:
        return f[:, 0]
    if f.dim() == 2:
        return f
    raise ValueError(f"encoder output has unsupported shape {tuple(f.shape)}")


def _find_patch_size(encoder: nn.Module) -> int | None:
    for obj in (encoder, getattr(encoder, "patch_embed", None)):
        p = getattr(obj, "patch_size", None)
        if p is not None:
            return int(p[0] if isinstance(p, (tuple, list)) else p)
    return None


def similarity_input_gradients(
    model: SimilarityModel, x1: Tensor, x2: Tensor, guided: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Similarity (B,) and its gradients w.r.t. ``x1`` and ``x2`` (each (B, 3, H, W)).

    One forward pass of the 2B images and one backward pass; parameter gradients are not
    accumulated. Pairs are independent in eval mode, so the gradient of the summed similarity gives
    every pair's own gradient. With ``guided=True`` every ReLU backpropagates guided gradients.
    """
    b = x1.shape[0]
    x = torch.cat([x1, x2]).detach().requires_grad_(True)
    with torch.enable_grad(), model.guided(guided):
        z = model.embed(x)
        s = cosine(z[:b], z[b:])
        (g,) = torch.autograd.grad(s.sum(), x)
    return s.detach(), g[:b], g[b:]


def similarity_feature_gradients(
    model: SimilarityModel, x1: Tensor, x2: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Similarity (B,), feature grids A1, A2 (B, C, h, w) and dS/dA1, dS/dA2 (same shapes).

    One forward pass of the 2B images through the encoder with a hook on ``feature_layer`` and one
    backward pass down to that layer.
    """
    b = x1.shape[0]
    x = torch.cat([x1, x2]).detach()
    with torch.enable_grad():
        if not any(p.requires_grad for p in model.parameters()):
            x.requires_grad_(True)  # frozen models: make the activation part of a graph
        z, a = model.embed_with_features(x)
        s = cosine(z[:b], z[b:])
        (g,) = torch.autograd.grad(s.sum(), a)
    hw = (x.shape[2], x.shape[3])
    a_grid, g_grid = model.to_grid(a.detach(), hw), model.to_grid(g, hw)
    return s.detach(), a_grid[:b], a_grid[b:], g_grid[:b], g_grid[b:]
