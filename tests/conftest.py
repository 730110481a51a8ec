"""Shared fixtures: small models whose right answers are known."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pairlens import SimilarityModel

torch.set_num_threads(2)


class SquareEncoder(nn.Module):
    """A CNN that only sees the square ``rows x cols`` of its input: every activation (and so the
    embedding) depends on those pixels alone. The correct explanation is that square."""

    def __init__(self, rows: slice, cols: slice, channels: int = 16, functional_relu: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.rows, self.cols = rows, cols
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU()
        self.functional_relu = functional_relu
        for conv in (self.conv1, self.conv2):
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.5)
                conv.bias.copy_(torch.rand(conv.bias.shape, generator=g) * 0.1)
        self.features = nn.Identity()  # the CAM layer: (B, C, H/2, W/2)

    def _mask(self, x: torch.Tensor) -> torch.Tensor:
        m = torch.zeros_like(x[:, :1])
        m[:, :, self.rows, self.cols] = 1.0
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self._mask(x)
        act = F.relu if self.functional_relu else self.relu
        h = act(self.conv1(x * m)) * m
        h = act(self.conv2(h)) * m
        h = F.avg_pool2d(h, 2)
        return self.features(h)


def square_model(size: int = 32, functional_relu: bool = False) -> SimilarityModel:
    """A 32-px model that only sees rows/cols 4..14 (a 10x10 square in the top-left quarter)."""
    enc = SquareEncoder(slice(4, 14), slice(4, 14), functional_relu=functional_relu)
    torch.manual_seed(1)
    head = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8))
    for layer in head:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=0.5)
    return SimilarityModel(
        enc, head=head, feature_layer="features", input_size=(size, size), name="square"
    )


@pytest.fixture(scope="session")
def square():
    return square_model()


@pytest.fixture(scope="session")
def tiny_vit():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=16,
    )
    vit.heads = nn.Identity()  # torchvision zero-initialises the classifier head
    return SimilarityModel(
        vit,
        feature_layer="encoder.layers.encoder_layer_1.ln_1",
        input_size=(32, 32),
        name="tiny-vit",
    )


def pair_batch(b: int = 2, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x1 = torch.rand(b, 3, size, size, generator=g)
    x2 = (x1 + 0.3 * torch.rand(b, 3, size, size, generator=g)).clamp(0, 1)
    return (x1 - 0.5) / 0.25, (x2 - 0.5) / 0.25


def bomb_png(path, width: int = 28_000, height: int = 28_000):
    """Write a valid 1-bit black PNG of ``width x height`` pixels that is small on disk (about
    100 KB at 28000 x 28000, 784 megapixels: decoding it as RGB would take 2.4 GB)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte 0, then the packed pixels
    comp = zlib.compressobj(9)
    rows_per_block = max(1, (1 << 22) // len(row))
    parts = []
    for start in range(0, height, rows_per_block):
        parts.append(comp.compress(row * min(rows_per_block, height - start)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts))
    path.write_bytes(data + chunk(b"IEND", b""))
    return path
