"""Guards against empty or meaningless explanations (issue 10, item 2). Each test fails without
its guard: a blank map, a similarity of 0 from zero embeddings, a train-mode model whose score and
map change (and whose BatchNorm statistics drift) on every call."""

from __future__ import annotations

import pytest
import torch
from conftest import pair_batch
from torch import nn

import pairlens
from pairlens.models.similarity import (
    BlankGradientError,
    NonFiniteError,
    ZeroEmbeddingError,
    all_finite,
    check_all_finite,
    resolve_device,
)


# ---------------------------------------------------------------- zero gradients at the layer
def _timm_vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", depth=2, num_classes=0, img_size=32,
                             patch_size=8)


def _torchvision_vit():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                            hidden_dim=32, mlp_dim=64)
    vit.heads = nn.Identity()
    return vit


@pytest.mark.parametrize(
    "build, dead, good",
    [
        (_timm_vit, "blocks.1", "blocks.1.norm1"),
        (_timm_vit, "blocks.1.norm2", "blocks.1.norm1"),
        (_timm_vit, "norm", "blocks.1.norm1"),
        (_torchvision_vit, "encoder.layers.encoder_layer_1", "encoder.layers.encoder_layer_1.ln_1"),
        (_torchvision_vit, "encoder.ln", "encoder.layers.encoder_layer_1.ln_1"),
    ],
)
def test_a_layer_that_does_not_reach_the_class_token_is_an_error_naming_the_right_one(
    build, dead, good
):
    net = build()
    x1, x2 = pair_batch(2, 32)
    model = pairlens.SimilarityModel(net, feature_layer=dead, input_size=(32, 32))
    for method in ("grad-cam", "interaction-cam"):
        with pytest.raises(BlankGradientError, match=f"feature_layer='{good}'") as info:
            pairlens.explain(model, x1, x2, method=method)
        assert dead in str(info.value) and "\n" not in str(info.value)
    ok = pairlens.SimilarityModel(net, feature_layer=good, input_size=(32, 32))
    assert pairlens.explain(ok, x1, x2, method="grad-cam").maps[0].abs().sum() > 0


def test_identical_images_with_a_stationary_similarity_are_an_error(square):
    x, _ = pair_batch(1)
    for method in ("input-x-gradient", "grad-cam"):
        with pytest.raises(BlankGradientError, match="stationary"):
            pairlens.explain(square, x, x, method=method)
    occ = pairlens.explain(square, x, x, method="conditional-occlusion", window=8, stride=8)
    assert occ.maps[0].abs().sum() > 0  # perturbation methods still explain it


def test_one_stationary_pair_in_a_batch_is_named(square):
    x1, x2 = pair_batch(3)
    x2[1] = x1[1]  # pair 1 only: the fast all-clear test fails, the exact checks name the pair
    for method in ("input-x-gradient", "grad-cam"):
        with pytest.raises(BlankGradientError, match=r"pair\(s\) \[1\]"):
            pairlens.explain(square, x1, x2, method=method)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_all_finite_agrees_with_the_elementwise_test(dtype):
    big = torch.finfo(dtype).max
    g = torch.Generator().manual_seed(0)
    cases = [torch.empty(0, dtype=dtype), torch.randn(50, generator=g).to(dtype),
             torch.full((8,), big / 2, dtype=dtype),  # finite, but the sum overflows
             torch.tensor([big, -big, big], dtype=dtype)]
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.randn(50, generator=g).to(dtype)
        t[17] = bad
        cases.append(t)
    cases.append(torch.tensor([float("inf"), -float("inf"), 1.0], dtype=dtype))  # sums to NaN
    for t in cases:
        expected = bool(torch.isfinite(t).all())
        assert all_finite(t) is expected, t
        assert all_finite(torch.ones(3), t) is expected
    with pytest.raises(NonFiniteError, match="the second"):
        check_all_finite((torch.ones(2), "the first"), (cases[-1], "the second"))


# ---------------------------------------------------------------- zero embeddings
class Broken(nn.Module):
    """A model whose checkpoint conversion went wrong: every embedding is 0."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.features = nn.Identity()

    def forward(self, x):
        return self.features(self.conv(x)) * 0.0


def test_all_zero_embeddings_are_an_error_not_a_similarity_of_zero():
    model = pairlens.SimilarityModel(Broken(), feature_layer="features", input_size=(16, 16))
    x1, x2 = pair_batch(2, 16)
    for method in ("grad-cam", "input-x-gradient", "conditional-occlusion", "smoothgrad"):
        with pytest.raises(ZeroEmbeddingError, match="exactly zero"):
            pairlens.explain(model, x1, x2, method=method, **({"n_samples": 2}
                                                               if method == "smoothgrad" else {}))
    with pytest.raises(ZeroEmbeddingError):
        pairlens.evaluate(model, x1, x2, (x1[:, 0], x2[:, 0]), metrics=("SAD",))
    with pytest.raises(ZeroEmbeddingError):
        pairlens.explain(pairlens.load_model("digits"), torch.zeros(1, 3, 32, 32),
                         target=torch.zeros(8), method="grad-cam")


def test_nan_embeddings_are_still_caught():
    class NaN(nn.Module):
        def forward(self, x):
            return x.mean((2, 3)) * float("nan")

    model = pairlens.SimilarityModel(NaN(), input_size=(8, 8))
    with pytest.raises(NonFiniteError):
        pairlens.explain(model, *pair_batch(1, 8), method="conditional-occlusion")

    class NaNFeatures(nn.Module):  # a NaN in one embedding only, after the feature layer
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            z = self.conv(x).mean((2, 3))
            return z / (x[:, :1, 0, 0] > -10).float()  # NaN-free ...

    model = pairlens.SimilarityModel(NaNFeatures(), feature_layer="conv", input_size=(8, 8))
    x1, x2 = pair_batch(2, 8)
    x2[1, :, 0, 0] = -100.0  # ... except 0/0 or z/0 for pair 1's image 2
    for method in ("grad-cam", "input-x-gradient"):
        with pytest.raises((NonFiniteError, ZeroEmbeddingError)):
            pairlens.explain(model, x1, x2, method=method)


# ---------------------------------------------------------------- train mode
class WithBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.features = nn.Identity()
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        return self.drop(self.features(torch.relu(self.bn(self.conv(x)))))


def test_train_mode_models_are_explained_in_eval_mode_and_keep_their_mode():
    model = pairlens.SimilarityModel(WithBatchNorm(), feature_layer="features",
                                     input_size=(16, 16))
    x1, x2 = pair_batch(2, 16)
    reference = pairlens.explain(model, x1, x2, method="grad-cam")  # eval mode
    model.train()
    model.encoder.drop.eval()  # a submodule's own mode must come back as it was
    stats = model.encoder.bn.running_mean.clone(), model.encoder.bn.running_var.clone()
    for _ in range(2):
        exp = pairlens.explain(model, x1, x2, method="grad-cam")
        torch.testing.assert_close(exp.score, reference.score)
        torch.testing.assert_close(exp.maps[0], reference.maps[0])
    pairlens.evaluate(model, x1, x2, exp, metrics=("SI", "SAD"), step=64)
    from pairlens.corpus.targets import LabelFree

    pairlens.attribute(LabelFree(model, x1), x1, method="rise", n_masks=8)
    from pairlens.metrics import sanity_check

    sanity_check(model, x1, x2, "grad-cam", max_steps=1)
    torch.testing.assert_close(model.encoder.bn.running_mean, stats[0])
    torch.testing.assert_close(model.encoder.bn.running_var, stats[1])
    assert model.training and model.encoder.bn.training and not model.encoder.drop.training


# ---------------------------------------------------------------- half precision, devices
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_give_float32_maps(square, dtype):
    import copy

    model = copy.deepcopy(square).to(dtype)
    x1, x2 = pair_batch(1)
    for method, kw in (("grad-cam", {}), ("input-x-gradient", {}),
                       ("conditional-occlusion", {"window": 16, "stride": 8})):
        exp = pairlens.explain(model, x1, x2, method=method, **kw)
        ref = pairlens.explain(square, x1, x2, method=method, **kw)
        for m, r in zip(exp.maps, ref.maps, strict=True):
            assert m.dtype == torch.float32 and torch.isfinite(m).all()
            assert torch.corrcoef(torch.stack([m.flatten(), r.flatten()]))[0, 1] > 0.9
        assert exp.score.dtype == torch.float32


def test_device_auto_picks_mps_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto").type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="MPS is not available"):
        resolve_device("mps")
