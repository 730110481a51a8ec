"""`SimilarityModel`: any image encoder (plus optional head) seen as a pair-similarity model.

All model plumbing lives here, in :mod:`pairlens.models.layouts` and in
:mod:`pairlens.models.hooks`: methods never register hooks or read module internals themselves.
Conventions (DESIGN.md, "Exact conventions" and "Similarity, layouts and towers"):

* images enter the encoder in *model-input space*: resized, centre-cropped, scaled to [0, 1] and
  normalised with the model's mean / std (one value per input channel);
* the similarity is the model's: cosine (default, with ``eps=1e-8`` so that a zero vector gives
  0), dot product, negative L2 distance or a callable; compare embeddings only with
  :meth:`SimilarityModel.embedding_similarity`;
* the feature map used by CAM methods is the output of ``feature_layer`` (a dotted module path),
  turned into a grid (B, C, h, w) by reading its layout from the model
  (:mod:`pairlens.models.layouts`);
* two-tower models send image 1 through tower 1 and image 2 through tower 2; one-tower models
  embed both images of a pair in one pass;
* explanations of a pair never run on a model in training mode (:func:`evaluating`), and never
  on all-zero or non-finite embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from pairlens.io import ImageLike, load_image
from pairlens.models.layouts import (
    GridProbe,
    LayoutError,
    ReshapeTransform,
    plausible_grid,
    probe_grid,
    suggest_feature_layer,
)
from pairlens.models.layouts import to_grid as layout_to_grid

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COSINE_EPS = 1e-8
#: ``--amp`` choices: autocast dtype of the encoder and head (None: float32)
AMP_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}

# |dS/dz| * |z| below this fraction of |S| counts as a stationary similarity (identical embeddings)
STATIONARY_TOL = 1e-5

SimilarityFn = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "COSINE_EPS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BlankGradientError",
    "FeatureLayerError",
    "FixedEmbedding",
    "LayoutError",
    "NonFiniteError",
    "SimilarityModel",
    "ZeroEmbeddingError",
    "all_finite",
    "check_all_finite",
    "check_embeddings",
    "check_finite",
    "cosine",
    "dot",
    "evaluating",
    "first_parameter",
    "is_pair_error",
    "joint_feature_gradients",
    "joint_input_gradients",
    "neg_l2",
    "pool_features",
    "resolve_device",
    "resolve_similarity",
    "similarity_feature_gradients",
    "similarity_input_gradients",
]


class NonFiniteError(ValueError):
    """Raised when an input or an embedding holds NaN or infinite values."""


class ZeroEmbeddingError(ValueError):
    """Raised when an image's embedding is exactly zero (every similarity and map would be 0)."""


class BlankGradientError(ValueError):
    """Raised when a gradient method would return a blank map: the similarity's gradient at the
    explained layer is exactly zero, or the similarity is stationary (identical embeddings)."""


class FeatureLayerError(BlankGradientError):
    """Raised when the explained feature layer does not reach the embedding: every pair's map
    would be blank (the model's configuration, not a property of a pair)."""


def is_pair_error(err: BaseException) -> bool:
    """Whether ``err`` is a guard that a pair's own images trigger (identical embeddings, a zero
    or non-finite embedding, a zero gradient with respect to an image), so that the other pairs
    of its batch can still be explained; False for :class:`FeatureLayerError` and every other
    error."""
    return (isinstance(err, (BlankGradientError, ZeroEmbeddingError, NonFiniteError))
            and not isinstance(err, FeatureLayerError))


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


def all_finite(*tensors: Tensor) -> bool:
    """True when no value of any of ``tensors`` is NaN or infinite; one device sync.

    Fast path: one sum per tensor. Under IEEE arithmetic a NaN or an infinity anywhere makes the
    sum NaN or infinite, so a finite total proves every value finite; a non-finite total (a NaN,
    an infinity, or finite values whose sum overflows) falls back to the elementwise test, which
    decides. This costs one reduction per tensor where ``torch.isfinite(t).all()`` costs four
    elementwise passes and a reduction (it matters for small models, where these checks run on
    every call)."""
    with torch.no_grad():  # (no graph, and no detach op per tensor)
        sums = [t.sum().float() for t in tensors if t.numel()]
        if not sums:
            return True
        total = sums[0]
        for t in sums[1:]:  # (one op per tensor; stack and sum would be two for any number)
            total = total + t
    if math.isfinite(float(total)):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def check_finite(t: Tensor, what: str) -> Tensor:
    """Raise :class:`NonFiniteError` naming ``what`` if ``t`` holds NaN or inf."""
    if not all_finite(t):
        raise NonFiniteError(f"{what} contains NaN or infinite values")
    return t


def check_all_finite(*named: tuple[Tensor, str]) -> None:
    """:func:`check_finite` of several ``(tensor, what)`` with one device sync when all are
    finite; otherwise raises for the first non-finite one."""
    if all_finite(*(t for t, _ in named)):
        return
    for t, what in named:
        check_finite(t, what)


def check_embeddings(
    z: Tensor, what: str, model: str = "", z2: Tensor | None = None, split: int | None = None
) -> None:
    """Raise if an embedding (a row of ``z``, (B, D), or of ``z2``: image 2's) is non-finite or
    exactly zero; one device sync when all is well. ``split``: ``z`` holds images 1 (rows
    ``< split``) then images 2 (one tower's batch), and ``z2`` is not given.

    A zero embedding (for example after a broken checkpoint conversion) would give a similarity
    of 0 and blank maps with every method: :class:`ZeroEmbeddingError` instead.
    """
    norm = torch.linalg.vector_norm
    r = norm(z.detach(), dim=-1)
    if z2 is not None:
        r = torch.cat([r, norm(z2.detach(), dim=-1)])
    # fast test: every norm in (0, inf) <=> every log is finite (log 0 = -inf, log NaN = NaN);
    # a norm that overflows a finite row only sends us to the exact tests below
    if math.isfinite(float(r.log().sum())):
        return
    if split is not None:
        z, z2 = z[:split], z[split:]
    of = f" of model {model!r}" if model else ""
    for t, name in ((z, what), (z2, "image 2")):
        if t is None:
            continue
        check_finite(t, f"the embedding of {name}{of}")
        zero = (t == 0).all(dim=-1)
        if bool(zero.any()):
            rows = torch.nonzero(zero).flatten().tolist()
            raise ZeroEmbeddingError(
                f"the embedding of {name}{of} is exactly zero (batch row(s) "
                f"{', '.join(map(str, rows[:5]))}): every similarity and map would be 0 or "
                "blank; check the checkpoint (a broken conversion?) and the embedding / head"
            )


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) means CUDA when present, else Apple's MPS when present, else CPU."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available here")
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device 'mps' was requested but MPS is not available here")
    return device


@contextmanager
def evaluating(*modules: nn.Module | None) -> Iterator[None]:
    """Run ``modules`` in eval mode and restore every submodule's own mode afterwards.

    Explanations and metrics must not depend on the caller's mode: in training mode BatchNorm
    normalises with batch statistics (and updates its running statistics) and dropout is random,
    so a similarity of 0.997 can read 0.05 and every call gives another map.
    """
    mods = [m for m in modules if m is not None]
    training, stack = [], list(mods)
    while stack:  # every submodule (a plain walk: Module.modules() costs more per call)
        m = stack.pop()
        if m is None:  # (a submodule slot set to None)
            continue
        if m.training:
            training.append(m)
        stack.extend(m._modules.values())
    try:
        if training:  # (in eval mode already, the common case, there is nothing to do)
            for mod in mods:
                mod.eval()
        yield
    finally:
        for m in training:
            m.training = True


def first_parameter(module: nn.Module) -> nn.Parameter | None:
    """``next(module.parameters(), None)`` without building ``parameters()``'s generators (a hot
    path: the device and dtype of a model are read on every call): the same pre-order walk."""
    stack = [module]
    while stack:
        m = stack.pop()
        for p in m._parameters.values():
            if p is not None:
                return p
        stack.extend(reversed([c for c in m._modules.values() if c is not None]))
    return None


def _get_submodule(root: nn.Module, dotted: str, what: str = "feature_layer") -> nn.Module:
    try:
        return root.get_submodule(dotted)
    except AttributeError as err:
        names = [n for n, _ in root.named_modules() if n][:12]
        raise ValueError(
            f"{what} {dotted!r} is not a submodule of the encoder; "
            f"some valid names: {', '.join(names)}"
        ) from err


def _first_tensor(out: Any) -> Tensor:
    """A module's output as one tensor: the first element of a tuple / list / ModelOutput."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "to_tuple"):  # transformers' ModelOutput
        out = out.to_tuple()
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"expected a tensor output, got {type(out).__name__}")


def _fixed_input_size(encoder: nn.Module) -> tuple[int, int] | None:
    """The only input size an encoder accepts, read from its modules (None: any size).

    torchvision's ViT asserts its ``image_size``; timm patch embeddings with ``strict_img_size``
    (ViTs built without ``dynamic_img_size``, Swin) assert theirs.
    """
    for m in encoder.modules():
        kind = type(m)
        if kind.__name__ == "VisionTransformer" and kind.__module__.startswith("torchvision"):
            return (int(m.image_size), int(m.image_size))
        if getattr(m, "strict_img_size", False) and not getattr(m, "dynamic_img_size", False):
            size = getattr(m, "img_size", None)
            if size is not None:
                return (int(size[0]), int(size[1]))
    return None


class FixedEmbedding(nn.Module):
    """A tower that ignores its images and returns a fixed embedding (a CLIP text prompt, a class
    prototype, a stored gallery vector).

    ``forward`` maps (B, ...) to the target as a (B, D, 1, 1) map through the ``grid`` layer, so
    that CAM methods see it as a second image whose pooled feature map is the target.
    """

    def __init__(self, z: Tensor) -> None:
        super().__init__()
        z = torch.as_tensor(z).detach().float()
        if z.dim() == 2 and len(z) == 1:
            z = z[0]
        if z.dim() != 1 or z.numel() == 0:
            raise ValueError(f"a target embedding must be (D,) or (1, D); got {tuple(z.shape)}")
        check_embeddings(z[None], "the target")
        self.register_buffer("z", z)
        self.grid = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.z.to(x.device).expand(x.shape[0], -1)[:, :, None, None].clone()
        if torch.is_grad_enabled():
            out.requires_grad_(True)  # a leaf, so that gradients at the "feature map" exist
        return self.grid(out)


class Tower(NamedTuple):
    """One side of a similarity model: encoder, head, CAM layer, layout and normalisation."""

    encoder: nn.Module
    head: nn.Module
    feature_layer: str | None
    reshape_transform: ReshapeTransform | None
    mean: Tensor
    std: Tensor


class SimilarityModel(nn.Module):
    """Wrap ``encoder`` (and an optional ``head``) so that two images have a similarity.

    Args:
        encoder: module mapping (B, C, H, W) to features. A (B, C, h, w) output is
            average-pooled, a (B, N, C) token output is reduced to its first (class) token, a
            transformers ``ModelOutput`` gives its ``image_embeds``, ``pooler_output`` or
            ``last_hidden_state`` (in that order of preference).
        head: optional module applied to the pooled features (for example a projection MLP). The
            embedding is ``head(encoder(x))``.
        feature_layer: dotted name of the submodule whose output is the spatial feature map for
            CAM methods (``"layer4"`` for a torchvision ResNet). For a ViT whose embedding is the
            class token, use the *first norm of the last block* (``"blocks.11.norm1"`` in timm,
            ``"encoder.layers.encoder_layer_11.ln_1"`` in torchvision): the patch tokens that
            leave the last block never reach the class token, so their gradients are zero (an
            error says so).
        input_size: (H, W) the model expects.
        mean, std: per-channel normalisation; their length is the number of input channels
            (``(0.5,)`` for a grayscale model); ``mean=(0, 0, 0), std=(1, 1, 1)`` for models
            such as SimCLRv2 that take inputs in [0, 1].
        crop_fraction: ``preprocess`` resizes the image (keeping its aspect ratio) so that it
            just covers ``input_size / crop_fraction`` and centre-crops ``input_size``.
        patch_size: patch size of a token encoder whose patch embedding is not a convolution
            (the grid is otherwise read from the convolution that ran).
        name: a short name used in figures and saved metadata.
        similarity: how two embeddings are compared: ``"cosine"`` (default, the papers'),
            ``"dot"``, ``"neg-l2"`` (-||z1 - z2||) or a callable ``(z1, z2) -> (B,)``.
        reshape_transform: ``fn(tensor) -> (B, C, h, w)`` for feature layouts that cannot be
            read from the model (the pytorch-grad-cam convention); applied to activations and
            gradients.
        encoder2, head2, feature_layer2, mean2, std2, reshape_transform2: a second tower for
            asymmetric models (image-text, sketch-photo, query-gallery): image 1 goes through
            tower 1 and image 2 through tower 2, each with its own normalisation. Any of them
            given makes the model two-tower; those not given are tower 1's (``head2`` alone: a
            shared encoder with two heads). Both towers take the same ``input_size``.
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
        reshape_transform: ReshapeTransform | None = None,
        encoder2: nn.Module | None = None,
        head2: nn.Module | None = None,
        feature_layer2: str | None = None,
        mean2: Sequence[float] | None = None,
        std2: Sequence[float] | None = None,
        reshape_transform2: ReshapeTransform | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head if head is not None else nn.Identity()
        self.feature_layer = feature_layer
        if feature_layer is not None:
            _get_submodule(encoder, feature_layer)
        self.reshape_transform = reshape_transform
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.register_buffer("mean", _channel_vector(mean, "mean"))
        self.register_buffer("std", _channel_vector(std, "std"))
        if self.mean.shape != self.std.shape:
            raise ValueError(f"mean and std differ in length: {len(mean)} vs {len(std)}")
        if not 0 < crop_fraction <= 1:
            raise ValueError("crop_fraction must be in (0, 1]")
        self.crop_fraction = crop_fraction
        self.patch_size = patch_size
        self.name = name
        self.similarity_name, self._similarity_fn = resolve_similarity(similarity)
        self.classifier: nn.Module | None = None  # optional (B, D) -> logits probe
        self.two_towers = any(
            v is not None
            for v in (encoder2, head2, feature_layer2, mean2, std2, reshape_transform2)
        )
        self.encoder2 = encoder2
        self.head2 = head2
        self.feature_layer2 = feature_layer2 if feature_layer2 is not None else (
            feature_layer if encoder2 is None else None
        )
        self.reshape_transform2 = reshape_transform2
        if self.two_towers:
            enc2 = encoder2 if encoder2 is not None else encoder
            if self.feature_layer2 is not None:
                _get_submodule(enc2, self.feature_layer2, "feature_layer2")
            self.register_buffer(
                "mean2", _channel_vector(mean2 if mean2 is not None else mean, "mean2")
            )
            self.register_buffer("std2", _channel_vector(std2 if std2 is not None else std, "std2"))
        self._probes: dict[tuple, GridProbe] = {}  # (tower, layer, H, W) -> what a pass revealed
        # tower -> (its encoder, the only input size it accepts or None)
        self._fixed_sizes: dict[int, tuple[nn.Module, tuple[int, int] | None]] = {}
        self.amp: str | None = None
        self.channels_last = False
        self.eval()

    def set_execution(self, amp: str | None = None, channels_last: bool = False) -> SimilarityModel:
        """How forward passes run (both towers); changes speed, and results only within the
        checked tolerance.

        Args:
            amp: ``None`` (float32), ``"bf16"`` or ``"fp16"``: the encoder and head run under
                ``torch.autocast`` on the model's device; embeddings, maps and scores stay float32.
                Checked against float32 in ``benchmarks/precision.py`` (docs/performance.md).
            channels_last: store conv weights and feed images in the channels-last memory layout
                (faster convolutions with oneDNN / cuDNN; no effect on a ViT's results).

        Returns:
            ``self``. Raises ValueError for an unknown ``amp``.
        """
        if amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {', '.join(map(str, AMP_DTYPES))}; got {amp!r}")
        self.amp = amp
        self.channels_last = bool(channels_last)
        self.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        return self

    # ------------------------------------------------------------------ towers and basics
    def tower(self, index: int = 1) -> Tower:
        """The parts of tower ``index`` (1 or 2; a one-tower model has tower 2 == tower 1)."""
        if index not in (1, 2):
            raise ValueError(f"tower must be 1 or 2; got {index!r}")
        if index == 1 or not self.two_towers:
            modules, buffers = self._modules, self._buffers  # (no __getattr__: a hot path)
            return Tower(
                modules["encoder"], modules["head"], self.feature_layer, self.reshape_transform,
                buffers["mean"], buffers["std"],
            )
        return Tower(
            self.encoder2 if self.encoder2 is not None else self.encoder,
            self.head2 if self.head2 is not None else self.head,
            self.feature_layer2,
            self.reshape_transform2,
            self.mean2,
            self.std2,
        )

    def _index(self, tower: int) -> int:
        return tower if self.two_towers else 1

    @property
    def fixed_tower(self) -> int | None:
        """The tower (1 or 2) that is a :class:`FixedEmbedding`, if any."""
        if isinstance(self.encoder, FixedEmbedding):
            return 1
        return 2 if isinstance(self.encoder2, FixedEmbedding) else None

    @property
    def device(self) -> torch.device:
        """The device of the first parameter (of the buffer ``mean`` when there is none)."""
        p = first_parameter(self)
        return self.mean.device if p is None else p.device

    @property
    def in_channels(self) -> int:
        """Number of input channels (the length of ``mean``)."""
        return int(self.mean.shape[1])

    # ------------------------------------------------------------------ images
    def preprocess(self, image: ImageLike | Sequence[ImageLike], tower: int = 1) -> Tensor:
        """Image(s) to a model-input tensor (B, C, H, W) on the model's device.

        Accepts a PIL image, a path, an (H, W) or (H, W, C) array (uint8, uint16 or float in
        [0, 1]), or a list of them. Converts to RGB (grayscale for a 1-channel model), resizes
        (aspect ratio kept) to cover ``input_size / crop_fraction``, centre-crops ``input_size``,
        scales to [0, 1] and normalises with ``tower``'s mean / std.
        """
        if isinstance(image, (list, tuple)):
            return torch.cat([self.preprocess(im, tower) for im in image])
        channels = int(self.tower(tower).mean.shape[1])
        if channels not in (1, 3):
            raise ValueError(
                f"model {self.name!r} takes {channels}-channel images, which cannot be read from "
                "image files; pass (B, C, H, W) tensors in model-input space instead"
            )
        pil = load_image(image)
        h, w = self.input_size
        scale = max(h / self.crop_fraction / pil.size[1], w / self.crop_fraction / pil.size[0])
        new = (max(w, round(pil.size[0] * scale)), max(h, round(pil.size[1] * scale)))
        pil = pil.resize(new, Image.BICUBIC)
        left, top = (new[0] - w) // 2, (new[1] - h) // 2
        pil = pil.crop((left, top, left + w, top + h))
        if channels == 1:
            pil = pil.convert("L")
        arr = np.asarray(pil, dtype=np.float32) / 255.0
        if arr.ndim == 2:
            arr = arr[:, :, None]
        x = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).to(self.device)
        return self.normalize(x, tower)

    def normalize(self, x01: Tensor, tower: int = 1) -> Tensor:
        """[0, 1] pixels to model-input space of ``tower``."""
        t = self.tower(tower)
        return (x01 - t.mean) / t.std

    def denormalize(self, x: Tensor, tower: int = 1) -> Tensor:
        """Model-input space of ``tower`` back to [0, 1] pixels (not clamped)."""
        t = self.tower(tower)
        return x * t.std + t.mean

    def check_input(self, x: Tensor, what: str = "input", tower: int = 1) -> Tensor:
        """Validate a (B, C, H, W) batch for ``tower`` and return it as float32 on the model's
        device.

        Floating-point tensors are taken as model-input space (see :meth:`preprocess`) and must
        be finite. Integer tensors cannot be model-input space, so one clear rule applies:
        ``uint8`` is taken as pixels in 0..255 and converted (``/ 255``, then
        :meth:`normalize`); any other integer or boolean dtype raises ``TypeError``. Raises for
        a wrong shape or channel count, or a size the encoder cannot run at (a ViT with a fixed
        position embedding).
        """
        return check_finite(self._input(x, what, tower), what)

    def check_pair(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`check_input` of image batch 1 (tower 1) and image batch 2 (tower 2), with one
        finiteness test (one device sync) for both; raises ``ValueError`` unless the two batches
        have the same shape."""
        device = self.device
        x1, x2 = self._input(x1, "image 1", 1, device), self._input(x2, "image 2", 2, device)
        check_all_finite((x1, "image 1"), (x2, "image 2"))
        if x1.shape != x2.shape:
            raise ValueError(
                "the two batches must have the same shape; "
                f"got {tuple(x1.shape)} and {tuple(x2.shape)}"
            )
        return x1, x2

    def _input(self, x: Tensor, what: str, tower: int,
               device: torch.device | None = None) -> Tensor:
        """:meth:`check_input` without the finiteness test (``device``: the model's, if known)."""
        t = self.tower(tower)
        c = int(t.mean.shape[1])
        if not isinstance(x, Tensor):
            raise TypeError(
                f"{what} must be a tensor of shape (B, {c}, H, W); got {type(x).__name__}"
            )
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != c:
            raise ValueError(
                f"{what} must have shape (B, {c}, H, W) for model {self.name!r} "
                f"({c}-channel input); got {tuple(x.shape)}"
            )
        if x.dtype == torch.uint8:
            x = self.normalize(x.to(device or self.device, torch.float32) / 255.0, tower)
        elif not x.is_floating_point():
            raise TypeError(
                f"{what} has dtype {x.dtype}; give float images in model-input space "
                "(model.preprocess) or uint8 pixels in 0..255"
            )
        index = self._index(tower)
        encoder = t.encoder
        known = self._fixed_sizes.get(index)
        if known is None or known[0] is not encoder:  # (a replaced encoder is read again)
            known = self._fixed_sizes[index] = (encoder, _fixed_input_size(encoder))
        fixed = known[1]
        if fixed is not None and tuple(x.shape[-2:]) != fixed:
            raise ValueError(
                f"model {self.name!r} runs at {fixed[0]}x{fixed[1]} only (its position "
                f"embedding is fixed), {what} is {x.shape[-2]}x{x.shape[-1]}: resize the images "
                "(model.preprocess does), or build the model for this size (timm: "
                "dynamic_img_size=True)"
            )
        return x.to(device or self.device, torch.float32)

    # ------------------------------------------------------------------ embeddings
    def forward(self, x: Tensor) -> Tensor:
        return self.embed(x)

    def embed(self, x: Tensor, tower: int = 1) -> Tensor:
        """Embedding (B, D), float32, of images through ``tower``. Keeps autograd if enabled.

        Images are cast to the encoder's dtype (half-precision weights run) and run in the
        memory layout and precision set by :meth:`set_execution`."""
        t = self.tower(tower)
        p = first_parameter(t.encoder)
        if p is not None and p.is_floating_point() and x.dtype != p.dtype:
            x = x.to(p.dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        hw = (x.shape[-2], x.shape[-1])
        if self.amp is None:
            z = t.head(pool_features(t.encoder(x), hw))
        else:
            with torch.autocast(x.device.type, dtype=AMP_DTYPES[self.amp]):
                z = t.head(pool_features(t.encoder(x), hw))
        return z if z.dtype == torch.float32 else z.float()

    def embed_pair(self, x1: Tensor, x2: Tensor, check: bool = True) -> tuple[Tensor, Tensor]:
        """Embeddings of ``x1`` (tower 1) and ``x2`` (tower 2): one pass for a one-tower model.

        With ``check`` (for unaltered images) raises :class:`NonFiniteError` /
        :class:`ZeroEmbeddingError` for a non-finite or all-zero embedding; altered images
        (occluded, transformed) may legitimately embed to zero: ``check=False``.
        """
        if not self.two_towers and x1.shape[1:] == x2.shape[1:]:
            z = self.embed(torch.cat([x1, x2]))
            z1, z2 = z[: len(x1)], z[len(x1) :]
        else:
            z1, z2 = self.embed(x1, 1), self.embed(x2, 2)
        if check:
            check_embeddings(z1, "image 1", self.name, z2)
        return z1, z2

    def embed_mixed(self, x: Tensor, second: Tensor) -> Tensor:
        """Embeddings (N, D) of images (N, C, H, W) of which those flagged in the boolean
        ``second`` (N,) belong to image 2 (tower 2). No checks: altered images (a deletion
        game's last step) may legitimately embed to zero."""
        if not self.two_towers:
            return self.embed(x)
        second = second.to(x.device)
        out: Tensor | None = None
        for flag, tower in ((False, 1), (True, 2)):
            rows = torch.nonzero(second == flag).flatten()
            if len(rows):
                z = self.embed(x[rows], tower)
                if out is None:
                    out = z.new_empty(len(x), z.shape[1])
                out[rows] = z
        assert out is not None
        return out

    def embedding_similarity(self, z1: Tensor, z2: Tensor) -> Tensor:
        """The model's similarity (B,) of two (B, D) embeddings (cosine unless configured)."""
        return self._similarity_fn(z1, z2)

    def similarity(self, x1: Tensor, x2: Tensor) -> Tensor:
        """The model's similarity (B,) of image batches ``x1`` (tower 1) and ``x2`` (tower 2)."""
        return self.embedding_similarity(*self.embed_pair(x1, x2))

    @torch.no_grad()
    def embed_batched(self, x: Tensor, batch_size: int = 64, tower: int = 1) -> Tensor:
        """Embed many images without autograd, ``batch_size`` at a time."""
        return torch.cat(
            [self.embed(x[i : i + batch_size], tower) for i in range(0, len(x), batch_size)]
        )

    has_text_tower = False  # image-text models (CLIP, SigLIP) override embed_text

    def embed_text(self, texts: str | Sequence[str]) -> Tensor:
        """Caption embeddings (T, D); only image-text models have a text tower."""
        raise ValueError(
            f"model {self.name!r} has no text tower; text targets need an image-text model "
            "(clip:ARCH, hf:PATH of a CLIP / SigLIP model)"
        )

    # ------------------------------------------------------------------ feature maps
    def embed_with_features(
        self, x: Tensor, tower: int = 1, grad_from_features: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Embedding (B, D) and the raw output of ``tower``'s feature layer, one forward pass.

        The raw output keeps its own layout ((B, C, h, w), (B, h, w, C) or (B, N, C));
        differentiate with respect to it and convert activation and gradient with
        :meth:`to_grid`. The first pass at each input size also reads the layout from the model
        (:func:`pairlens.models.layouts.probe_grid`).

        ``grad_from_features=True``: the layers before the feature layer run without autograd
        and its output is returned as a leaf requiring grad, from which the rest of the forward
        pass is recorded (the CAM methods need gradients down to that layer only; this saves the
        autograd bookkeeping and activation memory of the backbone below it). The gradient with
        respect to that leaf is the same as with respect to the layer's output in a full graph.
        """
        t = self.tower(tower)
        if t.feature_layer is None:
            raise ValueError(
                f"model {self.name!r} has no feature_layer{'2' if tower == 2 else ''}; CAM "
                "methods need one (SimilarityModel(..., feature_layer='layer4'))"
            )
        module = _get_submodule(t.encoder, t.feature_layer)
        key = (self._index(tower), t.feature_layer, *x.shape[-2:])
        store: dict[str, Tensor] = {}

        def hook(_m: nn.Module, _inp: Any, out: Any) -> Any:
            a = _first_tensor(out)
            if not grad_from_features:
                store["a"] = a
                return None
            torch.set_grad_enabled(True)  # record from here on (restored below)
            store["a"] = a.detach().requires_grad_(True)
            a = store["a"].clone()  # later in-place ops must not touch the leaf
            if isinstance(out, Tensor):
                return a
            if isinstance(out, (tuple, list)):
                return [a, *out[1:]] if isinstance(out, list) else (a, *out[1:])
            out[next(iter(out.keys()))] = a  # transformers' ModelOutput: its first field
            return None

        handle = module.register_forward_hook(hook)
        probing = key not in self._probes
        grad_mode = torch.is_grad_enabled()
        try:
            if grad_from_features:
                torch.set_grad_enabled(False)
            with probe_grid(t.encoder, module) if probing else nullcontext() as state:
                z = self.embed(x, tower)
        finally:
            handle.remove()
            torch.set_grad_enabled(grad_mode)
        if "a" not in store:
            raise ValueError(
                f"feature layer {t.feature_layer!r} of model {self.name!r} did not run in the "
                "forward pass"
            )
        if probing and state is not None and state["probe"] is not None:
            self._probes[key] = state["probe"]
        return z, store["a"]

    def embed_pair_with_features(
        self, x1: Tensor, x2: Tensor, grad_from_features: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Embeddings z1, z2 (checked as in :meth:`embed_pair`) and raw feature-layer outputs
        a1, a2 of image 1 (tower 1) and image 2 (tower 2); one pass for a one-tower model (then
        a1 and a2 are slices of one tensor). ``grad_from_features``: see
        :meth:`embed_with_features`."""
        g = grad_from_features
        if not self.two_towers:
            z, a = self.embed_with_features(torch.cat([x1, x2]), grad_from_features=g)
            b = len(x1)
            z1, z2, a1, a2 = z[:b], z[b:], a[:b], a[b:]
        else:
            z1, a1 = self.embed_with_features(x1, 1, grad_from_features=g)
            z2, a2 = self.embed_with_features(x2, 2, grad_from_features=g)
        check_embeddings(z1, "image 1", self.name, z2)
        return z1, z2, a1, a2

    def to_grid(self, a: Tensor, input_hw: tuple[int, int] | None = None, tower: int = 1) -> Tensor:
        """A feature-layer output (or its gradient) of ``tower`` as a grid (B, C, h, w).

        The layout is read from the model (see :mod:`pairlens.models.layouts`): channels-first or
        channels-last maps, token sequences on the grid of the patch embedding that ran (prefix
        tokens dropped), or ``reshape_transform``. Raises :class:`LayoutError` naming
        ``reshape_transform`` when the layout is ambiguous.
        """
        t = self.tower(tower)
        hw = (int(input_hw[0]), int(input_hw[1])) if input_hw else self.input_size
        probe = self._probes.get((self._index(tower), t.feature_layer, *hw))
        return layout_to_grid(
            a, hw, probe, t.reshape_transform, self.patch_size, t.feature_layer or "feature_layer"
        )

    # ------------------------------------------------------------------ fixed targets
    def with_target(self, target: Tensor) -> SimilarityModel:
        """A two-tower view explaining images against a fixed embedding ``target`` (D,).

        Tower 1 of the view is the target (:class:`FixedEmbedding`, whose feature map is the
        target on a 1x1 grid) and tower 2 is this model's tower 1, so a pair method explains its
        *second* image (:func:`pairlens.explain` swaps the roles back). The view's similarity is
        this model's with the arguments in this model's order: ``sim(image, target)``.
        """
        fixed = FixedEmbedding(target).to(self.device)
        t = self.tower(1)
        fn = self._similarity_fn
        dim = fixed.z.shape[0]

        def swapped(z_target: Tensor, z_image: Tensor) -> Tensor:
            if z_image.shape[-1] != dim:
                raise ValueError(
                    f"the target has {dim} dimensions but model {self.name!r} embeds images "
                    f"in {z_image.shape[-1]}"
                )
            return fn(z_image, z_target)

        swapped.__name__ = self.similarity_name
        view = SimilarityModel(
            fixed,
            feature_layer="grid",
            input_size=self.input_size,
            mean=tuple(t.mean.flatten().tolist()),
            std=tuple(t.std.flatten().tolist()),
            crop_fraction=self.crop_fraction,
            patch_size=self.patch_size,
            name=self.name,
            similarity=swapped,
            encoder2=t.encoder,
            head2=t.head,
            feature_layer2=t.feature_layer,
            reshape_transform2=t.reshape_transform,
        ).to(self.device)
        view.similarity_name = self.similarity_name
        view.amp, view.channels_last = self.amp, self.channels_last  # (modules shared: converted)
        return view

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
        out = {
            "name": self.name,
            "input_size": list(self.input_size),
            "mean": _rounded(self.mean),
            "std": _rounded(self.std),
            "feature_layer": self.feature_layer,
            "similarity": self.similarity_name,
            **({"amp": self.amp} if self.amp else {}),
        }
        if self.two_towers:
            out["tower2"] = {
                "mean": _rounded(self.mean2),
                "std": _rounded(self.std2),
                "feature_layer": self.feature_layer2,
            }
        return out


def _rounded(t: Tensor) -> list[float]:
    """``t``'s values rounded to 6 decimals, read now (a cache keyed on the tensor's version
    missed writes through ``.data``)."""
    return [round(v, 6) for v in t.flatten().tolist()]


def _channel_vector(values: Sequence[float], what: str) -> Tensor:
    t = torch.tensor([float(v) for v in values], dtype=torch.float32)
    if t.dim() != 1 or len(t) == 0:
        raise ValueError(f"{what} must be a non-empty sequence of per-channel values")
    return t.view(1, -1, 1, 1)


def pool_features(f: Any, input_hw: tuple[int, int] | None = None) -> Tensor:
    """Encoder output to (B, D): average-pool a map, take the class token of a token sequence;
    a transformers ``ModelOutput`` gives ``image_embeds``, ``pooler_output`` or the class token of
    ``last_hidden_state``; a tuple its first element.

    A map is pooled over dims (2, 3), or over dims (1, 2) when, for an ``input_hw`` input, only
    those can be its spatial grid (a channels-last (B, h, w, C) output such as a Swin stage's;
    see :func:`pairlens.models.layouts.plausible_grid`)."""
    if not isinstance(f, Tensor):
        for key in ("image_embeds", "pooler_output", "last_hidden_state"):
            value = f.get(key) if hasattr(f, "get") else None
            if isinstance(value, Tensor):
                f = value
                break
        else:
            f = _first_tensor(f)
    if f.dim() == 4:
        if input_hw is not None and not plausible_grid(tuple(f.shape[2:]), input_hw):
            if plausible_grid(tuple(f.shape[1:3]), input_hw):
                return f.mean(dim=(1, 2))
        return f.mean(dim=(2, 3))
    if f.dim() == 3:
        return f[:, 0]
    if f.dim() == 2:
        return f
    raise ValueError(f"encoder output has unsupported shape {tuple(f.shape)}")


def _all_clear(s: Tensor, z: Tensor, dz: Tensor, grads: Tensor) -> bool:
    """A sufficient condition for :func:`_blank_checks` to pass, for a one-tower batch of 2B
    rows (images 1 then images 2): every embedding norm, every |dS/dz| |z| - tol and every
    max |gradient| is positive and finite. Fewer tensor operations and one device sync; when
    it is False, :func:`_blank_checks` decides (and raises)."""
    norm = torch.linalg.vector_norm
    n = norm(z, dim=1)
    # |dS/dz| |z| - tol |S| for pair i's two rows, i and B + i
    r = torch.add((norm(dz, dim=1) * n).view(2, -1), s.abs().clamp_min(1e-12),
                  alpha=-STATIONARY_TOL)
    # max |gradient| per row (not norm(ord=inf): 10x slower on CPU)
    v = torch.cat([n, r.view(-1), grads.abs().amax(dim=tuple(range(1, grads.dim())))])
    # 0 < v < inf everywhere <=> every log(v) is finite (log 0 = -inf, log of a negative or NaN
    # is NaN); their sum (|log v| < 104 in float32) cannot overflow
    return math.isfinite(float(v.log().sum()))


def _blank_checks(
    model: SimilarityModel,
    s: Tensor,
    z: tuple[Tensor, Tensor],
    dz: tuple[Tensor, Tensor],
    grads: tuple[Tensor, Tensor],
    where: str,
) -> None:
    """Raise when the embeddings are non-finite or zero (:func:`check_embeddings`) or a real
    (non-fixed) side would get a blank map (:class:`BlankGradientError`); one device sync when
    all is well (the checks run after the backward pass, which they do not need)."""
    fixed = model.fixed_tower
    sides = [i for i in (0, 1) if fixed != i + 1]
    norms = [t.flatten(1).norm(dim=1) for t in z]
    tol = STATIONARY_TOL * s.detach().abs().clamp_min(1e-12)
    stationary = {i: dz[i].flatten(1).norm(dim=1) * norms[i] <= tol for i in sides}
    blank = {i: grads[i].flatten(1).abs().amax(dim=1) == 0 for i in sides}
    bad_z = [~((n > 0) & torch.isfinite(n)) for n in norms]
    if not bool(torch.cat([*bad_z, *stationary.values(), *blank.values()]).any()):
        return
    check_embeddings(z[0], "image 1", model.name, z[1])
    for i in sides:
        if bool(stationary[i].any()):
            rows = torch.nonzero(stationary[i]).flatten().tolist()
            where = f" for pair(s) {rows[:5]}" if s.numel() > 1 else ""
            raise BlankGradientError(
                f"the {model.similarity_name} similarity is stationary{where} (the two "
                "embeddings are identical), so its gradient is zero and gradient maps would be "
                "blank; explain two different images, or use an occlusion method"
            )
    for i in sides:
        if bool(blank[i].any()):
            rows = torch.nonzero(blank[i]).flatten().tolist()[:5]
            tower = model.tower(i + 1)
            layer = tower.feature_layer if where == "features" else None
            if layer is None:
                raise BlankGradientError(
                    f"the similarity's gradient with respect to image {i + 1} is exactly zero "
                    f"(pair(s) {rows}): the map would be blank"
                )
            better = suggest_feature_layer(tower.encoder)
            advice = (
                f"use feature_layer{'2' if i == 1 and model.two_towers else ''}={better!r}"
                if better and better != layer
                else "choose a layer whose output reaches the embedding"
            )
            raise FeatureLayerError(
                f"the similarity's gradient at feature layer {layer!r} is exactly zero for "
                f"pair(s) {rows}: its output does not "
                "reach the embedding (a ViT's class token never sees the last block's output "
                f"tokens, nor anything after it); {advice}"
            )


def similarity_input_gradients(
    model: SimilarityModel, x1: Tensor, x2: Tensor, guided: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Similarity (B,) and its gradients w.r.t. ``x1`` and ``x2`` (each (B, C, H, W), float32).

    One forward pass of the 2B images (one per tower for two-tower models) and one backward pass;
    parameter gradients are not accumulated. Pairs are independent in eval mode, so the gradient
    of the summed similarity gives every pair's own gradient. With ``guided=True`` every ReLU
    backpropagates guided gradients. Raises :class:`BlankGradientError` when a pair's similarity
    is stationary (identical embeddings: its gradient, and so every map, is zero).
    """
    b = x1.shape[0]
    if not model.two_towers:
        s, _, g = joint_input_gradients(model, x1, x2, guided)
        return s, g[:b], g[b:]
    with torch.enable_grad(), model.guided(guided):
        a = x1.detach().requires_grad_(True)
        c = x2.detach().requires_grad_(True)
        z1, z2 = model.embed(a, 1), model.embed(c, 2)
        s = model.embedding_similarity(z1, z2)
        g1, g2, dz1, dz2 = torch.autograd.grad(s.sum(), (a, c, z1, z2), materialize_grads=True)
    _blank_checks(model, s, (z1.detach(), z2.detach()), (dz1, dz2), (g1, g2), "input")
    return s.detach(), g1.float(), g2.float()


def joint_input_gradients(
    model: SimilarityModel, x1: Tensor, x2: Tensor, guided: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`similarity_input_gradients` of a one-tower model with both images in one batch:
    similarity (B,), the images ``x = cat([x1, x2])`` (2B, C, H, W; a leaf requiring grad) and
    dS/dx (2B, C, H, W, float32). Raises ``ValueError`` for a two-tower model."""
    if model.two_towers:
        raise ValueError("joint_input_gradients needs a one-tower model")
    b = x1.shape[0]
    with torch.enable_grad(), model.guided(guided):
        x = torch.cat([x1, x2]).detach().requires_grad_(True)
        z = model.embed(x)
        s = model.embedding_similarity(z[:b], z[b:])
        g, dz = torch.autograd.grad(s.sum(), (x, z), materialize_grads=True)
    s = s.detach()
    if not _all_clear(s, z.detach(), dz, g):
        _blank_checks(model, s, (z[:b].detach(), z[b:].detach()), (dz[:b], dz[b:]),
                      (g[:b], g[b:]), "input")
    return s, x, g.float()


def similarity_feature_gradients(
    model: SimilarityModel, x1: Tensor, x2: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Similarity (B,), feature grids A1, A2 (B, C, h, w) and dS/dA1, dS/dA2 (same shapes).

    One forward pass of the 2B images (one per tower for two-tower models) with a hook on the
    feature layer (the layers below it without autograd) and one backward pass down to that
    layer. Raises :class:`BlankGradientError` when the gradient at the feature layer is exactly
    zero for a pair (the layer does not reach the embedding: the message names the layer to use)
    or the similarity is stationary.
    """
    b = x1.shape[0]
    hw = (x1.shape[2], x1.shape[3])
    if not model.two_towers:
        s, a, g = joint_feature_gradients(model, x1, x2)
        return s, a[:b], a[b:], g[:b], g[b:]
    with torch.enable_grad():
        z1, a1 = model.embed_with_features(x1, 1, grad_from_features=True)
        z2, a2 = model.embed_with_features(x2, 2, grad_from_features=True)
        s = model.embedding_similarity(z1, z2)
        _check_reaches(model, s)
        g1, g2, dz1, dz2 = torch.autograd.grad(s.sum(), (a1, a2, z1, z2), materialize_grads=True)
    s = s.detach()
    grids = [
        model.to_grid(t, hw, tower).float()
        for t, tower in ((a1.detach(), 1), (a2.detach(), 2), (g1, 1), (g2, 2))
    ]
    _blank_checks(model, s, (z1.detach(), z2.detach()), (dz1, dz2), (grids[2], grids[3]),
                  "features")
    return s, grids[0], grids[1], grids[2], grids[3]


def joint_feature_gradients(
    model: SimilarityModel, x1: Tensor, x2: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`similarity_feature_gradients` of a one-tower model with both images' grids in one
    batch: similarity (B,), A and dS/dA (2B, C, h, w), rows ``< B`` image 1, then image 2 (a
    method can then compute both maps with one set of tensor operations). Raises ``ValueError``
    for a two-tower model, and like :func:`similarity_feature_gradients`."""
    if model.two_towers:
        raise ValueError("joint_feature_gradients needs a one-tower model")
    b = x1.shape[0]
    hw = (x1.shape[2], x1.shape[3])
    with torch.enable_grad():
        z, a = model.embed_with_features(torch.cat([x1, x2]), grad_from_features=True)
        s = model.embedding_similarity(z[:b], z[b:])
        _check_reaches(model, s)
        g, dz = torch.autograd.grad(s.sum(), (a, z), materialize_grads=True)
    s = s.detach()
    a, g = model.to_grid(a.detach(), hw, 1).float(), model.to_grid(g, hw, 1).float()
    # on the grids: a class token's own gradient does not make a map
    if not _all_clear(s, z.detach(), dz, g):
        _blank_checks(model, s, (z[:b].detach(), z[b:].detach()), (dz[:b], dz[b:]),
                      (g[:b], g[b:]), "features")
    return s, a, g


def _check_reaches(model: SimilarityModel, s: Tensor) -> None:
    """Raise :class:`BlankGradientError` when the similarity does not depend on the feature
    layer's output (it carries no autograd history from the hooked leaf)."""
    if s.requires_grad:
        return
    better = suggest_feature_layer(model.encoder)
    raise FeatureLayerError(
        f"the similarity of model {model.name!r} does not depend on feature layer "
        f"{model.feature_layer!r}: every CAM map would be blank; "
        + (f"use feature_layer={better!r}" if better and better != model.feature_layer
           else "choose a layer whose output reaches the embedding")
    )
