"""Test helpers of issue 10: region-seeing encoders in every feature layout, a check that a map
concentrates on a region, and a tiny open_clip architecture.

An encoder that only sees one region of its input must be explained by that region, whatever its
feature layout, similarity or tower. Two ways to build one:

* :class:`ToyEncoder`: a tiny patchify-conv encoder in a chosen layout (channels-first,
  channels-last, tokens with any number of prefix tokens, tokens without a class token);
* :func:`restrict_to_region`: hooks that make any real encoder (timm, torchvision, HF) see only a
  region: the input is masked outside it, and the feature layer's output is zeroed outside it (in
  the layout the test knows to be true), so nothing outside the region reaches the embedding.

A wrong layout reading (channels-last read as channels-first, a wrong number of prefix tokens, a
transposed grid) moves the map off the region, and :func:`concentration` drops far below 0.9.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SIZE = (64, 96)  # non-square input; patch 8 -> an 8 x 12 grid
PATCH = 8
REGION1 = (slice(8, 24), slice(48, 72))  # rows, cols (patch-aligned, 2 x 3 cells)
REGION2 = (slice(40, 56), slice(8, 32))  # tower 2's region in two-tower tests


def pixel_mask(region: tuple[slice, slice], size: tuple[int, int] = SIZE) -> Tensor:
    m = torch.zeros(size)
    m[region] = 1.0
    return m


def grid_mask(region: tuple[slice, slice], patch: int, size: tuple[int, int] = SIZE) -> Tensor:
    """The region on the patch grid (a cell is in if its patch lies in the region)."""
    return F.avg_pool2d(pixel_mask(region, size)[None, None], patch)[0, 0].round()


def concentration(m: Tensor, region: tuple[slice, slice], dilate: int = PATCH) -> float:
    """Fraction of the map's absolute mass inside the region dilated by ``dilate`` pixels (the
    bilinear upsampling of a grid map bleeds by up to one cell)."""
    mask = pixel_mask(region, m.shape[-2:])
    if dilate:
        mask = F.max_pool2d(mask[None, None], 2 * dilate + 1, 1, dilate)[0, 0]
    mass = m.abs().float()
    total = float(mass.sum())
    assert total > 0, "blank map"
    return float((mass * mask.to(mass.device)).sum()) / total


class ToyEncoder(nn.Module):
    """Patchify conv (kernel = stride = 8) then a feature layer ``features`` in ``layout``:

    * ``"first"``: (B, C, h, w) map, average-pooled;
    * ``"last"``: (B, h, w, C) after a LayerNorm (as Swin), average-pooled;
    * ``"tokens-K"``: (B, K + h*w, C) with K learned prefix tokens; the embedding is the class
      token after a readout that adds the mean patch token (as a class token attending to them);
    * ``"gap"``: (B, h*w, C) tokens without a class token, mean-pooled.

    Only ``region`` is seen: pixels outside it are zeroed before the conv and feature-layer cells
    outside it are zeroed before ``features``.
    """

    def __init__(self, layout: str, region: tuple[slice, slice], channels: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.layout = layout
        self.proj = nn.Conv2d(3, channels, PATCH, stride=PATCH)
        self.norm = nn.LayerNorm(channels)
        self.prefix = int(layout.split("-")[1]) if layout.startswith("tokens") else 0
        self.tokens = nn.Parameter(torch.randn(1, max(self.prefix, 1), channels, generator=g))
        self.readout = nn.Linear(channels, channels)
        with torch.no_grad():
            for p in (self.proj.weight, self.readout.weight):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.register_buffer("pixels", pixel_mask(region)[None, None])
        self.register_buffer("cells", grid_mask(region, PATCH)[None, None])
        self.features = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        a = F.gelu(self.proj(x * self.pixels)) * self.cells  # (B, C, h, w)
        if self.layout == "first":
            return self.features(a)
        if self.layout == "last":
            return self.features(self.norm(a.permute(0, 2, 3, 1)) * self.cells[0, 0, :, :, None])
        t = a.flatten(2).transpose(1, 2)  # (B, h*w, C)
        if self.layout == "gap":
            return self.features(t).mean(1)
        k = self.prefix
        t = self.features(torch.cat([self.tokens.expand(len(x), -1, -1)[:, :k], t], dim=1))
        cls = t[:, 0] + self.readout(t[:, k:].mean(1))
        return torch.cat([cls[:, None], t[:, 1:]], dim=1)


LAYOUTS = ("first", "last", "tokens-1", "tokens-2", "tokens-5", "gap")


def restrict_to_region(
    encoder: nn.Module, feature_layer: str, layout: str, region: tuple[slice, slice], patch: int,
    size: tuple[int, int] = SIZE, prefix: int = 0,
) -> list:
    """Make a real encoder see only ``region``: mask its input, and zero its feature layer's
    output outside the region in the true ``layout`` (``first``, ``last`` or ``tokens`` with
    ``prefix`` leading tokens). Returns the hook handles."""
    pixels = pixel_mask(region, size)[None, None]
    cells = grid_mask(region, patch, size)

    def pre(_m, args):
        return (args[0] * pixels.to(args[0].dtype),) + tuple(args[1:])

    def post(_m, _inp, out):
        t = out[0] if isinstance(out, tuple) else out
        if layout == "first":
            t = t * cells[None, None].to(t.dtype)
        elif layout == "last":
            t = t * cells[None, :, :, None].to(t.dtype)
        else:
            keep = torch.cat([torch.ones(prefix), cells.flatten()]).to(t.dtype)
            t = t * keep[None, :, None]
        return (t, *out[1:]) if isinstance(out, tuple) else t

    return [
        encoder.register_forward_pre_hook(pre),
        encoder.get_submodule(feature_layer).register_forward_hook(post),
    ]


def pair(size: tuple[int, int] = SIZE, b: int = 2, seed: int = 0, channels: int = 3):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(b, channels, *size, generator=g)
    x2 = torch.randn(b, channels, *size, generator=g)
    return x1, x2


def tiny_open_clip(folder, name: str, quick_gelu: bool = False):
    """Register a tiny open_clip ViT architecture ``name`` (config written into ``folder``);
    returns the open_clip module (the test is skipped without open_clip)."""
    import json

    import pytest

    open_clip = pytest.importorskip("open_clip")
    cfg = folder / f"{name}.json"
    cfg.write_text(json.dumps({
        "embed_dim": 16, "quick_gelu": quick_gelu,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                       "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 1},
    }))  # fmt: skip
    open_clip.add_model_config(cfg)
    return open_clip
