"""Feature layouts read from the model (issue 10, item 1): region-seeing toy encoders in every
layout, with every similarity and both towers, must be explained by their region."""

from __future__ import annotations

import pytest
import torch
from regions import (
    LAYOUTS,
    PATCH,
    REGION1,
    REGION2,
    SIZE,
    ToyEncoder,
    concentration,
    pair,
)
from torch import nn

import pairlens
from pairlens.models.layouts import LayoutError, plausible_grid


def neg_sq(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """A custom similarity: minus the squared Euclidean distance."""
    return -((z1 - z2) ** 2).sum(-1)


SIMILARITIES = ("cosine", "dot", "neg-l2", neg_sq)
FAST = {
    "conditional-occlusion": {"window": 8, "stride": 8},
    "smoothgrad": {"n_samples": 3},
    "averaged-transforms": {"steps": 3, "transform": "gaussian-blur"},
}


def toy_model(layout: str, similarity="cosine", two_towers: bool = False):
    kw = {}
    if two_towers:
        kw = dict(
            encoder2=ToyEncoder(layout, REGION2, seed=1),
            feature_layer2="features",
            mean2=(0.5, 0.5, 0.5),
            std2=(0.25, 0.25, 0.25),
        )
    return pairlens.SimilarityModel(
        ToyEncoder(layout, REGION1),
        feature_layer="features",
        input_size=SIZE,
        name=f"toy-{layout}",
        similarity=similarity,
        **kw,
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_grid_of_every_layout_on_a_non_square_input(layout):
    model = toy_model(layout)
    x1, _ = pair()
    z, a = model.embed_with_features(x1)
    grid = model.to_grid(a, SIZE)
    assert grid.shape == (2, 16, SIZE[0] // PATCH, SIZE[1] // PATCH)
    inside = grid[:, :, 1:3, 6:9].abs().sum()  # REGION1 on the 8 x 12 grid
    assert inside > 0 and torch.isclose(grid.abs().sum(), inside)


@pytest.mark.parametrize("two_towers", [False, True], ids=["one-tower", "two-towers"])
@pytest.mark.parametrize("similarity", SIMILARITIES, ids=lambda s: getattr(s, "__name__", s))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_maps_concentrate_on_the_seen_region(layout, similarity, two_towers):
    """CAM methods read the layout: all of them in every layout; the pixel-space methods do not,
    so they run in one layout (but with every similarity and tower)."""
    model = toy_model(layout, similarity, two_towers)
    x1, x2 = pair()
    methods = ["grad-cam", "interaction-cam"]
    if similarity in ("cosine", "dot"):
        methods.append("deep-similarity")
    if layout == "first":
        methods += ["input-x-gradient", "conditional-occlusion"]
        if similarity == "cosine":
            methods += ["smoothgrad", "averaged-transforms"]
    region2 = REGION2 if two_towers else REGION1
    for method in methods:
        exp = pairlens.explain(model, x1, x2, method=method, **FAST.get(method, {}))
        for i in range(2):
            c1 = concentration(exp.maps[0][i], REGION1)
            c2 = concentration(exp.maps[1][i], region2)
            assert c1 > 0.9 and c2 > 0.9, (method, i, c1, c2)
    assert exp.model["similarity"] == getattr(similarity, "__name__", similarity)


def test_the_score_and_every_map_use_the_models_similarity():
    """A model defining neg-l2 gets neg-l2 scores and maps, not cosine ones."""
    x1, x2 = pair()
    cos, l2 = toy_model("first"), toy_model("first", "neg-l2")
    l2.load_state_dict(cos.state_dict())
    with torch.no_grad():
        z1, z2 = cos.embed(x1), cos.embed(x2)
    want = -(z1 - z2).norm(dim=1)
    for method in ("grad-cam", "conditional-occlusion", "input-x-gradient"):
        e_cos = pairlens.explain(cos, x1, x2, method=method, **FAST.get(method, {}))
        e_l2 = pairlens.explain(l2, x1, x2, method=method, **FAST.get(method, {}))
        torch.testing.assert_close(e_l2.score, want, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(e_cos.maps[0], e_l2.maps[0])
    # conditional occlusion of window w: drop = s - s(occluded), with the model's similarity
    exp = pairlens.explain(l2, x1, x2, method="conditional-occlusion", window=96, stride=96)
    with torch.no_grad():
        occluded = l2.embed(torch.zeros_like(x1))
    drop = want + (occluded - z2).norm(dim=1)
    torch.testing.assert_close(exp.maps[0][:, 0, 0], drop, rtol=1e-4, atol=1e-4)


def test_channels_last_is_not_read_as_channels_first():
    """The bug of the issue: a (B, 7, 7, 768) Swin stage read as C=7, h=7, w=768."""
    model = toy_model("last")
    _, a = model.embed_with_features(pair()[0])
    assert a.shape == (2, 8, 12, 16)
    grid = model.to_grid(a, SIZE)
    torch.testing.assert_close(grid, a.permute(0, 3, 1, 2))


def test_plausible_grid():
    assert plausible_grid((7, 7), (224, 224)) and not plausible_grid((7, 768), (224, 224))
    assert plausible_grid((14, 20), (224, 320)) and not plausible_grid((20, 14), (224, 320))
    assert not plausible_grid((7, 8), (224, 224))


class Ambiguous(nn.Module):
    """Writes (B, 7, 7, 7) through a module of unknown kind: channels-first or -last?"""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(7, 3) * 0.5)
        self.mix = Mixer(self.weight)
        self.features = nn.Identity()

    def forward(self, x):
        a = self.features(self.mix(torch.nn.functional.adaptive_avg_pool2d(x, 7)))
        return a.mean(dim=(1, 2))  # really channels-last


class Mixer(nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.w = nn.Parameter(weight.detach().clone())

    def forward(self, x):
        return torch.einsum("bchw,dc->bhwd", x, self.w)


def test_ambiguous_layout_is_refused_naming_reshape_transform():
    model = pairlens.SimilarityModel(Ambiguous(), feature_layer="features", input_size=(56, 56))
    x1, x2 = pair((56, 56))
    with pytest.raises(LayoutError, match="reshape_transform"):
        pairlens.explain(model, x1, x2, method="grad-cam")
    fixed = pairlens.SimilarityModel(
        Ambiguous(),
        feature_layer="features",
        input_size=(56, 56),
        reshape_transform=lambda t: t.permute(0, 3, 1, 2),
    )
    exp = pairlens.explain(fixed, x1, x2, method="grad-cam")
    assert exp.maps[0].shape == (2, 56, 56) and exp.maps[0].abs().sum() > 0


def test_square_cnn_whose_channels_equal_its_grid_side_is_read_from_its_conv(square):
    """(B, 16, 16, 16): ambiguous by shape, but a Conv2d wrote it, so it is channels-first."""
    x = torch.randn(1, 3, 32, 32)
    _, a = square.embed_with_features(x)
    assert a.shape == (1, 16, 16, 16)
    assert square.to_grid(a, (32, 32)) is a


class LinearPatches(nn.Module):
    """Tokens from a linear patch embedding (no convolution): (B, 1 + h*w, C)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3 * 64, 8)
        self.features = nn.Identity()

    def forward(self, x):
        p = torch.nn.functional.unfold(x, 8, stride=8).transpose(1, 2)  # (B, h*w, 192)
        t = self.embed(p)
        t = self.features(torch.cat([t.mean(1, keepdim=True), t], 1))
        return t


def test_tokens_without_a_conv_need_patch_size_or_reshape_transform():
    x1, x2 = pair()
    model = pairlens.SimilarityModel(LinearPatches(), feature_layer="features", input_size=SIZE)
    with pytest.raises(LayoutError, match="reshape_transform"):
        pairlens.explain(model, x1, x2, method="grad-cam")
    model = pairlens.SimilarityModel(
        LinearPatches(), feature_layer="features", input_size=SIZE, patch_size=8
    )
    _, a = model.embed_with_features(x1)
    assert model.to_grid(a, SIZE).shape == (2, 8, 8, 12)


def test_reshape_transform_must_return_a_grid():
    model = pairlens.SimilarityModel(
        ToyEncoder("first", REGION1), feature_layer="features", input_size=SIZE,
        reshape_transform=lambda t: t.flatten(2),
    )
    with pytest.raises(LayoutError, match=r"\(B, C, h, w\)"):
        pairlens.explain(model, *pair(), method="grad-cam")


def test_metric_rules_for_similarities_other_than_cosine():
    """docs/evaluation.md: curves in the similarity's units; neg-l2's average drop is the
    relative increase of the distance; dot's is the paper's formula (s <= 0 skipped)."""
    x1, x2 = pair()
    for similarity in ("neg-l2", "dot"):
        model = toy_model("first", similarity)
        exp = pairlens.explain(model, x1, x2, method="grad-cam")
        out = pairlens.evaluate(model, x1, x2, exp, metrics=("SD", "CD", "SAD"), step=1536,
                                return_curves=True)
        sim = model.embedding_similarity
        m1, m2 = (pairlens.metrics.minmax(m)[:, None] for m in exp.maps)
        with torch.no_grad():
            z1, z2 = model.embed(x1), model.embed(x2)
            zero = model.embed(torch.zeros_like(x1))
            s, s_masked = sim(z1, z2), sim(model.embed(x1 * m1), model.embed(x2 * m2))
        torch.testing.assert_close(out["SD_curve"][:, 0], s)
        torch.testing.assert_close(out["CD_curve"][:, -1], (sim(zero, z2) + sim(z1, zero)) / 2)
        if similarity == "neg-l2":
            want = (s - s_masked).clamp(min=0) / s.abs()  # = max(0, d' - d) / d
        else:
            want = torch.where(s > 0, (s - s_masked).clamp(min=0) / s, float("nan"))
        torch.testing.assert_close(out["SAD"], want, equal_nan=True)
        if similarity == "neg-l2":
            assert not out["SAD"].isnan().any()  # the paper's rule would skip every pair
