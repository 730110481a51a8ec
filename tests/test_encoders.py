"""Real architectures users bring (issue 10, acceptance): timm Swin, ConvNeXt, ViT with registers at
a non-square size, a GAP ViT, torchvision Swin and ViT, a ViT hidden in the user's own wrapper, a
1-channel model. Each gets random weights, is made to see one region only
(:func:`regions.restrict_to_region`), and must be explained by that region; nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch
from regions import concentration, restrict_to_region
from torch import nn

import pairlens

timm = pytest.importorskip("timm")
CAMS = ("grad-cam", "interaction-cam")


def _pair(size, seed=0, channels=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, channels, *size, generator=g) for _ in range(2))


def _check(model, size, layout, region, stride, prefix=0, methods=CAMS, dilate=None):
    """The model's default layer gives a grid of the right shape, and a region-only version of
    the model is explained by the region."""
    x1, x2 = _pair(size)
    _, a = model.embed_with_features(x1)
    grid = model.to_grid(a, size)
    assert grid.shape[-2:] == (size[0] // stride, size[1] // stride), (grid.shape, layout)
    restrict_to_region(model.encoder, model.feature_layer, layout, region, stride, size, prefix)
    for method in methods:
        exp = pairlens.explain(model, x1, x2, method=method)
        for m in (*exp.maps[0], *exp.maps[1]):
            c = concentration(m, region, dilate=dilate if dilate is not None else stride // 2)
            assert c > 0.9, (method, c)


def test_timm_swin_channels_last_stage_at_a_non_square_size():
    """The issue's bug: a Swin stage is (B, h, w, C); read as (B, C, h, w) it gives stripes."""
    model = pairlens.load_model(
        "timm:swin_tiny_patch4_window7_224", random_weights=True, depths=(1, 1, 1, 1),
        embed_dim=32, num_heads=(1, 1, 2, 2),
    )
    assert model.feature_layer == "layers.3"
    _check(model, (128, 192), "last", (slice(32, 64), slice(96, 160)), 32)


def test_timm_convnext_channels_first():
    model = pairlens.load_model("timm:convnext_atto", random_weights=True)
    assert model.feature_layer == "stages.3"
    _check(model, (128, 192), "first", (slice(32, 64), slice(96, 160)), 32)


def test_timm_vit_with_registers_at_a_non_square_size():
    model = pairlens.load_model(
        "timm:vit_small_patch14_reg4_dinov2", random_weights=True, depth=2, embed_dim=48,
        num_heads=2,
    )
    assert model.feature_layer == "blocks.1.norm1" and model.input_size == (518, 518)
    _check(model, (112, 168), "tokens", (slice(28, 56), slice(84, 140)), 14, prefix=5,
           methods=(*CAMS, "deep-similarity"))


def test_timm_gap_vit_without_class_token():
    model = pairlens.load_model(
        "timm:vit_small_patch16_224", random_weights=True, depth=2, embed_dim=48, num_heads=2,
        class_token=False, global_pool="avg",
    )
    assert model.feature_layer == "blocks.1"  # no class token: the last block's output reaches z
    _check(model, (96, 144), "tokens", (slice(32, 64), slice(80, 128)), 16)


def test_vit_in_the_users_own_wrapper_at_224x320_gets_a_14x20_grid():
    vit = timm.create_model("vit_tiny_patch16_224", depth=1, num_classes=0, dynamic_img_size=True)

    class Mine(nn.Module):  # hides every attribute of the ViT (no patch_size, no patch_embed)
        def __init__(self):
            super().__init__()
            self.backbone = nn.ModuleList([vit])

        def forward(self, x):
            return self.backbone[0](x)

    model = pairlens.SimilarityModel(Mine(), feature_layer="backbone.0.blocks.0.norm1",
                                     input_size=(224, 320))
    _check(model, (224, 320), "tokens", (slice(64, 128), slice(192, 256)), 16, prefix=1)


def test_torchvision_swin_and_vit():
    from torchvision.models import SwinTransformer
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    swin = SwinTransformer([4, 4], 32, [1, 1, 1, 1], [1, 1, 2, 2], [7, 7])
    swin.head = nn.Identity()
    model = pairlens.SimilarityModel(swin, feature_layer="features", input_size=(128, 192))
    _check(model, (128, 192), "last", (slice(32, 64), slice(96, 160)), 32)

    vit = VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2,
                            hidden_dim=32, mlp_dim=64)
    vit.heads = nn.Identity()
    model = pairlens.SimilarityModel(vit, feature_layer="encoder.layers.encoder_layer_1.ln_1",
                                     input_size=(64, 64))
    x1, x2 = _pair((64, 96))
    with pytest.raises(ValueError, match="runs at 64x64 only") as info:
        pairlens.explain(model, x1, x2, method="grad-cam")  # not a raw AssertionError
    assert "\n" not in str(info.value)
    _check(model, (64, 64), "tokens", (slice(16, 32), slice(32, 64)), 16, prefix=1)


def test_timm_vit_runs_at_other_sizes_and_strict_ones_are_refused_up_front():
    model = pairlens.load_model("timm:vit_tiny_patch16_224", random_weights=True, depth=1)
    x1, x2 = _pair((96, 128))
    assert pairlens.explain(model, x1, x2, method="grad-cam").maps[0].shape == (2, 96, 128)
    strict = pairlens.SimilarityModel(
        timm.create_model("vit_tiny_patch16_224", depth=1, num_classes=0),
        feature_layer="blocks.0.norm1",
    )
    with pytest.raises(ValueError, match="dynamic_img_size=True"):
        pairlens.explain(strict, x1, x2, method="grad-cam")


class Gray(nn.Module):
    """A 1-channel (X-ray style) encoder that only sees rows 8..24, cols 32..56 of 48 x 64."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 8, 8, stride=8)
        self.features = nn.Identity()
        mask = torch.zeros(1, 1, 48, 64)
        mask[..., 8:24, 32:56] = 1
        self.register_buffer("mask", mask)

    def forward(self, x):
        a = torch.relu(self.conv(x * self.mask)) * torch.nn.functional.avg_pool2d(self.mask, 8)
        return self.features(a)


def test_one_channel_model(tmp_path):
    from PIL import Image

    model = pairlens.SimilarityModel(Gray(), feature_layer="features", input_size=(48, 64),
                                     mean=(0.5,), std=(0.25,))
    path = tmp_path / "scan.png"
    Image.new("RGB", (80, 60), (200, 30, 30)).save(path)
    x = model.preprocess(path)
    assert x.shape == (1, 1, 48, 64)
    torch.testing.assert_close(x, model.normalize(torch.full_like(x, round(
        0.299 * 200 + 0.587 * 30 + 0.114 * 30) / 255)), atol=1e-2, rtol=0)  # fmt: skip
    x1, x2 = _pair((48, 64), channels=1)
    region = (slice(8, 24), slice(32, 56))
    for method, kw in (("grad-cam", {}), ("input-x-gradient", {}),
                       ("averaged-transforms", {"transform": "gaussian-blur", "steps": 2}),
                       ("conditional-occlusion", {"window": 8, "stride": 8})):
        exp = pairlens.explain(model, x1, x2, method=method, **kw)
        assert concentration(exp.maps[0][0], region, dilate=8) > 0.9, method
    with pytest.raises(ValueError, match="needs RGB"):
        pairlens.explain(model, x1, x2, method="averaged-transforms")  # color-jitter
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        pairlens.explain(model, torch.randn(1, 3, 48, 64), torch.randn(1, 3, 48, 64))
    exp.save(tmp_path / "out")  # figures of 1-channel images
    assert (tmp_path / "out" / "conditional-occlusion_1.png").is_file()
