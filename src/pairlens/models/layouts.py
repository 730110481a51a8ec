"""Feature-layer layouts: a feature layer's output as a (B, C, h, w) grid, read from the model.

CAM methods need the output of a model's ``feature_layer`` as a channels-first grid. Encoders
produce it in several layouts, and reading the wrong one gives a normal-looking but wrong map
(a (2, 7, 7, 768) Swin stage read as C=7, h=7, w=768 is a picture of vertical stripes). The
layout is therefore read from the model, never guessed:

* **4-D tensors** are channels-first (B, C, h, w: ResNet, torchvision ConvNeXt) or channels-last
  (B, h, w, C: Swin in timm and torchvision, timm ConvNeXt internals). A spatial grid must have
  the input's aspect ratio: ``(h, w)`` is *plausible* for an (H, W) input when ``h <= H``,
  ``w <= W`` and ``|H*w - W*h| < max(H, W)`` (one common stride, up to rounding). When exactly
  one of (dims 2, 3) and (dims 1, 2) is plausible, it is the grid. When both are (a last dim
  equal to a spatial dim, e.g. (B, 16, 16, 16)), the last module with parameters that ran before
  the feature layer's output decides: a convolution, BatchNorm2d, GroupNorm or any ``*2d`` module
  writes channels-first, a Linear or a (channels-last) LayerNorm writes channels-last; any other
  module leaves the layout ambiguous, which is an error naming ``reshape_transform``.
* **3-D tensors** are token sequences (B, N, C). Their grid comes from the patch embedding that
  actually ran for this input: the output size of the convolutions executed before the feature
  layer (the patch projection of ViT, DeiT, DINOv2, CLIP, SigLIP, in timm, torchvision,
  open_clip and HF ``transformers``), so a ViT in the user's own wrapper at 224x320 gets 14x20.
  The grid is the convolution output (gh, gw) with the fewest tokens left over, and the
  ``N - gh*gw`` left-over tokens are the prefix (class, distillation, register tokens), dropped.
  A sequence shorter than the patch grid is a patch-merging hierarchy (HF Swin): the grid is the
  patch grid divided by the power of two that gives exactly N tokens. Never ``sqrt(N)``. Without
  a convolution, a ``patch_size`` given to the model is used; otherwise an error names
  ``reshape_transform``.
* ``reshape_transform``: a callable ``(tensor) -> (B, C, h, w)`` (the pytorch-grad-cam
  convention) for anything else; applied to activations and gradients alike.

The probe that reads convolution grids and the last parameterised module hooks every module once
per (feature layer, input size) and is cached, so the plain path pays nothing afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

ReshapeTransform = Callable[[Tensor], Tensor]

# names of the module entering the last transformer block, per code base
_BLOCK_INPUT_NORMS = ("norm1", "ln_1", "layernorm_before", "layer_norm1")


class LayoutError(ValueError):
    """A feature layer's output cannot be turned into a (B, C, h, w) grid unambiguously."""


@dataclass(frozen=True)
class GridProbe:
    """What one forward pass revealed about the feature layer's input geometry.

    Attributes:
        conv_grids: spatial sizes (h, w) of the 4-D outputs of the convolutions that ran before
            the feature layer's output, in execution order, without repeats.
        channels: ``"first"`` / ``"last"`` as written by the last module with parameters that ran
            before the feature layer's output, or None when that module is of an unknown kind.
    """

    conv_grids: tuple[tuple[int, int], ...] = ()
    channels: str | None = None


def channels_hint(module: nn.Module) -> str | None:
    """Which layout a module's output has: ``"first"``, ``"last"`` or None (unknown)."""
    if type(module).__name__.endswith("2d") or isinstance(module, (nn.Conv2d, nn.GroupNorm)):
        return "first"
    if isinstance(module, (nn.Linear, nn.LayerNorm)):
        return "last"
    return None


@contextmanager
def probe_grid(encoder: nn.Module, feature_module: nn.Module) -> Iterator[dict[str, Any]]:
    """Hooks recording, during the next forward pass of ``encoder``, the :class:`GridProbe` of
    ``feature_module``: read ``state["probe"]`` after the pass."""
    grids: list[tuple[int, int]] = []
    state: dict[str, Any] = {"done": False, "channels": None, "probe": None}

    def on_leaf(module: nn.Module, _inp: Any, out: Any) -> None:
        if state["done"]:
            return
        if isinstance(module, nn.Conv2d) and isinstance(out, Tensor) and out.dim() == 4:
            hw = (int(out.shape[-2]), int(out.shape[-1]))
            if hw not in grids:
                grids.append(hw)
        state["channels"] = channels_hint(module)

    def on_feature(_m: nn.Module, _inp: Any, _out: Any) -> None:
        if not state["done"]:
            state["done"] = True
            state["probe"] = GridProbe(tuple(grids), state["channels"])

    handles = [
        m.register_forward_hook(on_leaf)
        for m in encoder.modules()
        if any(True for _ in m.parameters(recurse=False))
    ]
    handles.append(feature_module.register_forward_hook(on_feature))
    try:
        yield state
    finally:
        for h in handles:
            h.remove()


def plausible_grid(hw: tuple[int, int], input_hw: tuple[int, int]) -> bool:
    """Whether (h, w) can be the spatial grid of an (H, W) input (one common stride)."""
    (h, w), (big_h, big_w) = hw, input_hw
    return 1 <= h <= big_h and 1 <= w <= big_w and abs(big_h * w - big_w * h) < max(big_h, big_w)


def _refuse(shape: tuple[int, ...], why: str, layer: str) -> LayoutError:
    return LayoutError(
        f"feature layer {layer!r} gives a {shape} tensor: {why}; pass "
        "SimilarityModel(..., reshape_transform=fn) with fn(tensor) -> (B, C, h, w)"
    )


def to_grid(
    a: Tensor,
    input_hw: tuple[int, int],
    probe: GridProbe | None = None,
    reshape_transform: ReshapeTransform | None = None,
    patch_size: int | None = None,
    layer: str = "feature_layer",
) -> Tensor:
    """A feature layer's output ``a`` as a channels-first grid (B, C, h, w).

    Args:
        a: the raw output (B, C, h, w), (B, h, w, C) or (B, N, C) (or a gradient of it).
        input_hw: (H, W) of the images that produced ``a``.
        probe: what the forward pass revealed (:func:`probe_grid`); needed for tokens and for
            ambiguous 4-D outputs.
        reshape_transform: user callable taking precedence over everything else.
        patch_size: tokens' patch size when no convolution ran (a linear patch embedding).
        layer: the feature layer's name, for error messages.

    Raises:
        LayoutError: the layout is ambiguous or fits no rule (the message names
            ``reshape_transform``).
    """
    shape = tuple(a.shape)
    if reshape_transform is not None:
        grid = reshape_transform(a)
        if not isinstance(grid, Tensor) or grid.dim() != 4 or grid.shape[0] != a.shape[0]:
            got = tuple(grid.shape) if isinstance(grid, Tensor) else type(grid).__name__
            raise LayoutError(
                f"reshape_transform must return a (B, C, h, w) tensor with B={a.shape[0]}; "
                f"got {got} for an input of shape {shape}"
            )
        return grid
    if a.dim() == 4:
        return _grid4(a, input_hw, probe, layer)
    if a.dim() == 3:
        return _tokens(a, input_hw, probe, patch_size, layer)
    raise _refuse(shape, f"a {a.dim()}-D output has no spatial layout", layer)


def _grid4(a: Tensor, input_hw: tuple[int, int], probe: GridProbe | None, layer: str) -> Tensor:
    _, d1, d2, d3 = a.shape
    first = plausible_grid((d2, d3), input_hw)
    last = plausible_grid((d1, d2), input_hw)
    if first and last:
        hint = probe.channels if probe is not None else None
        if hint is None:
            raise _refuse(
                tuple(a.shape),
                f"both (B, C, h, w) and (B, h, w, C) fit a {input_hw[0]}x{input_hw[1]} input "
                "and the module that wrote it does not say which",
                layer,
            )
        first = hint == "first"
    elif not (first or last):
        raise _refuse(
            tuple(a.shape),
            f"neither dims (2, 3) nor dims (1, 2) are a grid of the {input_hw[0]}x{input_hw[1]} "
            "input",
            layer,
        )
    return a if first else a.permute(0, 3, 1, 2)


def _tokens(
    a: Tensor,
    input_hw: tuple[int, int],
    probe: GridProbe | None,
    patch_size: int | None,
    layer: str,
) -> Tensor:
    b, n, c = a.shape
    grids = list(probe.conv_grids) if probe is not None else []
    if not grids and patch_size:
        grids = [(input_hw[0] // patch_size, input_hw[1] // patch_size)]
    if not grids:
        raise _refuse(
            tuple(a.shape),
            "no convolution (patch embedding) ran before it, so the token grid is unknown "
            "(or give patch_size=)",
            layer,
        )
    fitting = [(n - gh * gw, (gh, gw)) for gh, gw in grids if gh * gw <= n]
    if fitting:
        prefix, (gh, gw) = min(fitting, key=lambda t: t[0])
        if prefix > gh * gw:
            raise _refuse(
                tuple(a.shape),
                f"{n} tokens do not match the {gh}x{gw} patch grid (+{prefix} tokens)",
                layer,
            )
        return a[:, prefix:, :].transpose(1, 2).reshape(b, c, gh, gw)
    gh, gw = grids[0]
    f = 2
    while f <= max(gh, gw):  # patch merging halves the grid per stage (HF Swin)
        mh, mw = -(-gh // f), -(-gw // f)
        if mh * mw == n:
            return a.transpose(1, 2).reshape(b, c, mh, mw)
        f *= 2
    raise _refuse(
        tuple(a.shape),
        f"{n} tokens fit neither the {gh}x{gw} patch grid nor a merged version of it",
        layer,
    )


def suggest_feature_layer(encoder: nn.Module) -> str | None:
    """The CAM layer for a module, or None when nothing fits.

    * Models with a class token (a parameter named ``cls_token``, ``class_token`` or
      ``class_embedding``): the norm entering the last transformer block
      (``blocks.{L-1}.norm1`` in timm, ``...encoder_layer_{L-1}.ln_1`` in torchvision,
      ``...resblocks.{L-1}.ln_1`` in open_clip, ``...layer.{L-1}.layernorm_before`` / ``.norm1``
      / ``.layer_norm1`` in HF ViT / DINOv2 / CLIP). The class token does not depend on the last
      block's *output* patch tokens (every operation after the last attention is per token), so
      their gradients are exactly zero; the tokens entering the last block reach it through the
      attention.
    * Otherwise ``layer4`` (ResNets), the last ``feature_info`` stage (timm: Swin, ConvNeXt, ...),
      ``features`` (torchvision CNNs and Swin), or the norm entering the last block.
    """
    names = dict(encoder.named_modules())
    last_norm = None
    for name, module in names.items():
        if name.rpartition(".")[2] in _BLOCK_INPUT_NORMS and isinstance(module, nn.LayerNorm):
            last_norm = name
    class_token = any(
        name.rpartition(".")[2] in ("cls_token", "class_token", "class_embedding")
        for name, _ in encoder.named_parameters()
    )
    if class_token and last_norm is not None:
        return last_norm
    for name in names:
        if name == "layer4" or name.endswith(".layer4"):
            return name
    info = getattr(encoder, "feature_info", None)
    if info is not None:
        try:
            return info[-1]["module"]
        except (TypeError, KeyError, IndexError):
            pass
    if "features" in names:
        return "features"
    return last_norm
