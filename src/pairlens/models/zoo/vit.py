"""A minimal Vision Transformer whose parameter names are those of timm and DINO.

Why our own ViT rather than timm: the MoCo v3 checkpoints were written by a timm
``VisionTransformer`` (timm 0.4.9) and the DINO ones by DINO's own copy of it; both use the same
key names (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``). The forward pass these
files need is ~60 lines, so owning it keeps the MoCo v3 and DINO entries free of an optional
dependency whose constructor arguments and attention kernels change between versions, and lets
every ReLU/GELU and attention step be plain autograd (guided backpropagation, hooks). The tests
check it against timm when timm is installed.

Conventions: pre-norm blocks, exact GELU, LayerNorm eps 1e-6, attention scale ``head_dim ** -0.5``.
``forward`` returns all tokens after the final norm, (B, 1 + N, C); the class token is token 0,
so :func:`pairlens.models.similarity.pool_features` picks it. For inputs whose patch grid differs
from the stored position embedding, the patch part is resized with bicubic interpolation
(as DINO does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` patches to tokens, (B, 3, H, W) -> (B, N, C)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT trunk (no classification head): (B, 3, H, W) -> tokens (B, 1 + N, C) after ``norm``.

    The CAM feature layer is ``blocks.{depth-1}.norm1``: the tokens entering the last block
    (normalised). The embedding is the class token after the last block, and the last block's
    *output* patch tokens do not reach it (every later operation is per token), so their
    gradients are exactly zero; the last block's input tokens reach the class token through its
    attention (the layer pytorch-grad-cam recommends for ViTs).
    """

    def __init__(
        self,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        img_size: int = 224,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        n = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def cam_layer(self) -> str:
        return f"blocks.{len(self.blocks) - 1}.norm1"

    def position_embedding(self, gh: int, gw: int) -> Tensor:
        """(1, 1 + gh*gw, C) position embedding for a gh x gw patch grid."""
        pos = self.pos_embed
        n = pos.shape[1] - 1
        if n == gh * gw:
            return pos
        side = int(round(n**0.5))
        grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch_embed.patch_size
        gh, gw = x.shape[-2] // p, x.shape[-1] // p
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        t = t + self.position_embedding(gh, gw)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)


VIT_CONFIGS = {
    # name: (embed_dim, depth, num_heads)
    "vit-s-dino": (384, 12, 6),  # DINO / DeiT-S
    "vit-s-mocov3": (384, 12, 12),  # MoCo v3 ViT-Small has 12 heads (moco-v3 README)
    "vit-b": (768, 12, 12),
}


def vit_from_state_dict(
    sd: dict[str, Tensor] | None, patch_size: int, config: str, depth: int | None = None
) -> VisionTransformer:
    """Build the ViT ``config`` (fixed width, depth and heads, so that a file of another size fails
    with a shape report); only the training resolution is read from ``sd``'s position embedding."""
    dim, default_depth, heads = VIT_CONFIGS[config]
    depth = depth or default_depth
    img = 224
    if sd:
        if "pos_embed" in sd and sd["pos_embed"].dim() == 3:
            side = int(round((sd["pos_embed"].shape[1] - 1) ** 0.5))
            img = side * patch_size
    return VisionTransformer(patch_size, dim, depth, heads, img_size=img)
