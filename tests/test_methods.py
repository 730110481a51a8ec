"""Behaviour of every pair explanation method on models whose right answer is known."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import pair_batch, square_model

import pairlens
from pairlens.methods.registry import get_method, method_infos
from pairlens.models.hooks import GuidedReLU, guided_relus
from pairlens.models.similarity import NonFiniteError

ALL = [info.name for info in method_infos() if info.name != "random"]
STOCHASTIC = [info.name for info in method_infos() if not info.deterministic]
FAST = {  # smaller settings of the costly methods, same code paths
    "smoothgrad": {"n_samples": 8},
    "pairwise-occlusion": {"n_samples": 40},
    "averaged-transforms": {"steps": 5},
    "feature-grid": {"k": 4},
    "bilrp": {"k": 2},
    "integrated-jacobians": {"k": 2, "steps": 4},
}


def params(name: str) -> dict:
    return dict(FAST.get(name, {}))


def test_all_eight_paper_methods_are_registered():
    expected = {
        "input-x-gradient",
        "smoothgrad",
        "averaged-transforms",
        "conditional-occlusion",
        "pairwise-occlusion",
        "grad-cam",
        "interaction-cam",
        "deep-similarity",
    }
    assert expected <= set(pairlens.methods())


def inside_fraction(m: torch.Tensor, rows=slice(2, 16), cols=slice(2, 16)) -> float:
    """Share of the (non-negative part of the) map's mass inside the seen square (+2 px margin)."""
    m = m.clamp(min=0)
    return float(m[..., rows, cols].sum() / m.sum().clamp(min=1e-12))


@pytest.mark.parametrize("name", ALL)
def test_toy_encoder_is_explained_by_the_square_it_sees(square, name):
    x1, x2 = pair_batch(2)
    exp = pairlens.explain(square, x1, x2, method=name, **params(name))
    for m in exp.maps:
        assert m.shape == (2, 32, 32)
        assert torch.isfinite(m).all()
        for i in range(2):
            # pairwise occlusion spreads softmax weight over every erased rectangle, so its
            # contrast is weaker; every other method puts (almost) all mass on the square
            frac = inside_fraction(m[i])
            if name == "pairwise-occlusion":
                inside = m[i, 4:14, 4:14].mean()
                outside = m[i, 20:, 20:].mean()
                if m[i].sum() > 0:
                    assert inside > 1.3 * outside, (name, float(inside), float(outside))
            elif name == "conditional-occlusion":
                # a window (9 px at 32 px) covering any part of the square lowers the score, so
                # the map is the square blurred by half a window
                assert inside_fraction(m[i], slice(0, 19), slice(0, 19)) > 0.95
                assert frac > 0.6, (name, frac)
            elif name == "averaged-transforms" and m is exp.maps[1]:
                # colour jitter's contrast step uses the mean of the whole image, so every
                # pixel of image 2 has a small genuine influence on the transformed view
                assert frac > 0.8, (name, frac)
            else:
                assert frac > 0.9, (name, frac)


def test_pairwise_occlusion_localises_the_square_across_the_pair(square):
    x1, x2 = pair_batch(1)
    exp = pairlens.explain(square, x1, x2, method="pairwise-occlusion", n_samples=200)
    total = exp.maps[0][0] + exp.maps[1][0]
    assert total[4:14, 4:14].mean() > 1.3 * total[20:, 20:].mean()


@pytest.mark.parametrize("name", ALL + ["random"])
def test_batch_of_three_equals_three_batches_of_one(square, name):
    """Stochastic methods included: their noise is drawn per pair (pair_generators), so a pair's
    map is the same alone, in a batch, at another position and with another forward batch size."""
    x1, x2 = pair_batch(3)
    p = params(name)
    batch = pairlens.explain(square, x1, x2, method=name, **p)
    if "batch_size" in get_method(name).params:
        p["batch_size"] = 5  # chunks that cut through pairs
    order = [2, 0, 1]
    shuffled = pairlens.explain(square, x1[order], x2[order], method=name, **p)
    for i in range(3):
        single = pairlens.explain(square, x1[i : i + 1], x2[i : i + 1], method=name, **p)
        for mb, ms, mp in zip(batch.maps, single.maps, shuffled.maps, strict=True):
            torch.testing.assert_close(mb[i : i + 1], ms, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(mp[order.index(i)], ms[0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(batch.score[i : i + 1], single.score, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_methods_draw_different_noise_for_different_pairs(square, name):
    """Two pairs whose images are the same up to a shift get different random draws: the maps of
    a pair and of its slightly changed copy differ by more than the change explains for the
    deterministic input x gradient, and seed=None gives fresh draws."""
    from pairlens.methods.common import pair_generators

    x1, x2 = pair_batch(2)
    g = pair_generators(0, x1, x2)
    assert not torch.equal(torch.rand(4, generator=g[0]), torch.rand(4, generator=g[1]))
    again = pair_generators(0, x1[1:], x2[1:])[0]
    assert torch.equal(torch.rand(4, generator=pair_generators(0, x1, x2)[1]),
                       torch.rand(4, generator=again))
    fresh = pair_generators(None, x1, x2)
    assert not torch.equal(torch.rand(4, generator=fresh[0]),
                           torch.rand(4, generator=pair_generators(None, x1, x2)[0]))
    twice = torch.cat([x1[:1], x1[:1]]), torch.cat([x2[:1], x2[:1]])
    a = pairlens.explain(square, *twice, method=name, **params(name))
    for m in a.maps:  # the same pair twice in one batch: the same map twice
        torch.testing.assert_close(m[0], m[1])


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_maps(square, name):
    x1, x2 = pair_batch(2)
    a = pairlens.explain(square, x1, x2, method=name, **params(name))
    b = pairlens.explain(square, x1, x2, method=name, **params(name))
    for ma, mb in zip(a.maps, b.maps, strict=True):
        torch.testing.assert_close(ma, mb)


@pytest.mark.parametrize("name", ["smoothgrad", "pairwise-occlusion", "averaged-transforms"])
def test_other_seed_other_maps(square, name):
    x1, x2 = pair_batch(1)
    p = params(name)
    a = pairlens.explain(square, x1, x2, method=name, seed=0, **p)
    b = pairlens.explain(square, x1, x2, method=name, seed=1, **p)
    assert not torch.allclose(a.maps[0] + a.maps[1], b.maps[0] + b.maps[1])


@pytest.mark.parametrize("name", ALL)
def test_every_method_works_on_a_vit(tiny_vit, name):
    x1, x2 = pair_batch(2)
    if name == "bilrp":  # zennit has no LRP rules for transformer blocks: refused, not wrong
        with pytest.raises(ValueError, match="no rules"):
            pairlens.explain(tiny_vit, x1, x2, method=name, **params(name))
        return
    exp = pairlens.explain(tiny_vit, x1, x2, method=name, **params(name))
    for m in exp.maps:
        assert m.shape == (2, 32, 32) and torch.isfinite(m).all()
        assert m.abs().sum() > 0


def test_vit_grid_drops_the_class_token(tiny_vit):
    x = pair_batch(1)[0]
    z, tokens = tiny_vit.embed_with_features(x)
    grid = tiny_vit.to_grid(tokens)
    assert tokens.shape == (1, 17, 32) and grid.shape == (1, 32, 4, 4)
    torch.testing.assert_close(grid[0, :, 0, 1], tokens[0, 2])  # patch (0, 1) is token 2


def test_input_x_gradient_matches_autograd_by_hand(square):
    x1, x2 = pair_batch(2)
    exp = pairlens.explain(square, x1, x2, method="input-x-gradient")
    a = x1.clone().requires_grad_(True)
    s = F.cosine_similarity(square.embed(a), square.embed(x2), dim=-1).sum()
    (g,) = torch.autograd.grad(s, a)
    torch.testing.assert_close(exp.maps[0], (a * g).abs().amax(1).detach())


@pytest.mark.parametrize("name", ["input-x-gradient", "smoothgrad", "averaged-transforms"])
def test_guided_differs_from_plain(square, name):
    x1, x2 = pair_batch(2)
    plain = pairlens.explain(square, x1, x2, method=name, **params(name))
    guided = pairlens.explain(square, x1, x2, method=name, guided=True, **params(name))
    assert not torch.allclose(plain.maps[0], guided.maps[0])


def test_guided_backprop_also_guides_functional_relus():
    module_relu = square_model(functional_relu=False)
    functional_relu = square_model(functional_relu=True)
    x1, x2 = pair_batch(2)
    a = pairlens.explain(module_relu, x1, x2, method="input-x-gradient", guided=True)
    b = pairlens.explain(functional_relu, x1, x2, method="input-x-gradient", guided=True)
    # same weights, ReLUs applied as modules or as F.relu: guided maps must be identical
    torch.testing.assert_close(a.maps[0], b.maps[0])
    plain = pairlens.explain(functional_relu, x1, x2, method="input-x-gradient")
    assert not torch.allclose(plain.maps[0], b.maps[0])


def test_guided_relu_keeps_only_positive_gradients_at_positive_inputs():
    x = torch.tensor([-1.0, 2.0, 3.0, -4.0], requires_grad=True)
    with guided_relus():
        y = torch.relu(x)
    y.backward(torch.tensor([1.0, -1.0, 2.0, 5.0]))
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 0.0, 2.0, 0.0]))
    assert GuidedReLU.apply(torch.tensor([-1.0, 1.0])).tolist() == [0.0, 1.0]


def test_interaction_cam_variants_differ_from_each_other_and_from_grad_cam(square):
    x1, x2 = pair_batch(2)
    maps = {"grad-cam": pairlens.explain(square, x1, x2, method="grad-cam").maps[0]}
    for reduction in ("mean", "max", "attention"):
        for gi in (True, False):
            exp = pairlens.explain(
                square, x1, x2, method="interaction-cam", reduction=reduction, grad_interaction=gi
            )
            maps[f"{reduction}-{gi}"] = exp.maps[0]
    keys = list(maps)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            na = maps[a] / maps[a].amax(dim=(1, 2), keepdim=True)
            nb = maps[b] / maps[b].amax(dim=(1, 2), keepdim=True)
            assert not torch.allclose(na, nb, atol=1e-4), (a, b)


def test_interaction_cam_matches_equation_2_by_hand(square):
    x1, x2 = pair_batch(1)
    exp = pairlens.explain(square, x1, x2, method="interaction-cam", reduction="mean")
    a = [square.encoder(x) for x in (x1, x2)]
    a = [t.detach().requires_grad_(True) for t in a]
    s = F.cosine_similarity(square.head(a[0].mean((2, 3))), square.head(a[1].mean((2, 3))), dim=-1)
    g1, g2 = torch.autograd.grad(s.sum(), a)
    j = a[0].mean((2, 3)) * a[1].mean((2, 3))
    gram = torch.einsum("kp,lp->kl", g1[0].flatten(1), g2[0].flatten(1))
    w1 = (j[0] * gram.max(1).values).clamp(min=0)
    e1 = (w1[:, None, None] * a[0][0]).sum(0).detach()
    up = F.interpolate(e1[None, None], size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(exp.maps[0][0], up)


def test_deep_similarity_maps_sum_to_the_pooled_feature_cosine(square):
    x1, x2 = pair_batch(2)
    size = (16, 16)  # feature grid; the sum is taken before upsampling
    exp = pairlens.explain(square, x1, x2, method="deep-similarity")
    f1, f2 = square.encoder(x1).mean((2, 3)), square.encoder(x2).mean((2, 3))
    down = F.interpolate(exp.maps[0][:, None], size=size, mode="area")[:, 0]
    torch.testing.assert_close(
        down.sum((1, 2)), F.cosine_similarity(f1, f2, dim=-1).detach(), rtol=1e-3, atol=1e-4
    )


def test_conditional_occlusion_window_value_is_the_similarity_drop(square):
    x1, x2 = pair_batch(1)
    exp = pairlens.explain(square, x1, x2, method="conditional-occlusion", window=32, stride=8)
    # one window covering the whole image: occluded image is all zeros
    base = square.similarity(x1, x2)
    occluded = square.similarity(torch.zeros_like(x1), x2)
    torch.testing.assert_close(exp.maps[0], (base - occluded).view(1, 1, 1).expand(1, 32, 32))


def test_pairwise_occlusion_rectangles_follow_the_convention():
    from pairlens.methods.perturbation import random_rectangles

    m = random_rectangles(500, 224, 224, (0.1, 0.3), (1.0, 1.5), torch.Generator().manual_seed(0))
    area = m.flatten(1).float().mean(1)
    assert area.min() >= 0.09 and area.max() <= 0.31
    rows = m.any(2).sum(1).float()
    cols = m.any(1).sum(1).float()
    ratio = rows / cols
    assert ratio.min() >= 0.95 and ratio.max() <= 1.56


def test_averaged_transforms_strength_path(square):
    from pairlens.methods.transforms import transform_path

    x01 = torch.rand(2, 3, 8, 8)
    u = torch.rand(2, 8)
    path = transform_path("grayscale", x01, 4, None, u)
    gray = (0.299 * x01[:, 0] + 0.587 * x01[:, 1] + 0.114 * x01[:, 2]).unsqueeze(1)
    for z in range(4):
        s = (z + 1) / 4
        torch.testing.assert_close(path[z], (1 - s) * x01 + s * gray.expand_as(x01))
    strength = transform_path("rotation", x01, 2, (0.0, 90.0), u)
    torch.testing.assert_close(
        strength[1][:, :, 1:-1, 1:-1],
        torch.rot90(x01, 1, (2, 3))[:, :, 1:-1, 1:-1],
        atol=1e-4,
        rtol=0,
    )


@pytest.mark.parametrize(
    "transform",
    [
        "color-jitter",
        "gaussian-blur",
        "grayscale",
        "solarize",
        "rotation",
        "horizontal-flip",
        "resized-crop",
        "simclr",
    ],
)
def test_every_transform_family_explains_the_square(square, transform):
    from pairlens.methods.transforms import GEOMETRIC

    x1, x2 = pair_batch(1)
    mode = "strength" if transform in GEOMETRIC else "paper"
    exp = pairlens.explain(
        square, x1, x2, method="averaged-transforms", transform=transform, steps=4,
        interpolation=mode,
    )
    # image 1 is never transformed: its map must sit on the square
    assert inside_fraction(exp.maps[0][0]) > 0.9
    assert torch.isfinite(exp.maps[1]).all() and exp.maps[1].sum() > 0


def test_noise_variant_differs(square):
    x1, x2 = pair_batch(1)
    a = pairlens.explain(square, x1, x2, method="averaged-transforms", steps=4)
    b = pairlens.explain(square, x1, x2, method="averaged-transforms", steps=4, noise=True)
    assert not torch.allclose(a.maps[1], b.maps[1])


def test_nan_input_is_a_clear_error(square):
    x1, x2 = pair_batch(1)
    x1[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="image 1"):
        pairlens.explain(square, x1, x2, method="grad-cam")


def test_nan_embedding_is_a_clear_error():
    from torch import nn

    class NaNEncoder(nn.Module):
        def forward(self, x):
            return x.mean((2, 3)) * float("nan")

    model = pairlens.SimilarityModel(NaNEncoder(), input_size=(8, 8))
    with pytest.raises(NonFiniteError, match="embedding"):
        pairlens.explain(
            model, torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), method="input-x-gradient"
        )


def test_unknown_method_and_parameter_are_clear_errors(square):
    x1, x2 = pair_batch(1)
    with pytest.raises(ValueError, match="unknown method"):
        pairlens.explain(square, x1, x2, method="gradcam++")
    with pytest.raises(ValueError, match="no parameter window_size"):
        pairlens.explain(square, x1, x2, method="conditional-occlusion", window_size=3)
    with pytest.raises(ValueError, match="same shape"):
        pairlens.explain(square, x1, x2[:, :, :16], method="grad-cam")


def test_zero_embedding_is_an_error_and_cosine_of_zero_is_zero_not_nan():
    from torch import nn

    from pairlens.models.similarity import ZeroEmbeddingError

    class Zero(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 4)

    model = pairlens.SimilarityModel(Zero(), input_size=(8, 8))
    z = torch.zeros(2, 4)
    assert model.embedding_similarity(z, z).tolist() == [0.0, 0.0]
    with pytest.raises(ZeroEmbeddingError, match="exactly zero"):
        model.similarity(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))


@pytest.fixture(scope="module")
def digits_pairs():
    from pairlens.data.bundled import digits

    model = pairlens.load_model("digits")
    images, _ = digits("test")
    x = model.normalize(images[:6].to(model.device))
    return model, x[:3], x[3:]


@pytest.mark.parametrize("name", ALL)
def test_every_method_on_the_bundled_digits_model(digits_pairs, name):
    model, x1, x2 = digits_pairs
    p = params(name) | ({"stride": 2} if name == "conditional-occlusion" else {})
    batch = pairlens.explain(model, x1, x2, method=name, **p)
    again = pairlens.explain(model, x1, x2, method=name, **p)
    for m, m_again in zip(batch.maps, again.maps, strict=True):
        assert m.shape == (3, *model.input_size) and m.dtype == torch.float32
        assert torch.isfinite(m).all() and (m.flatten(1).amax(1) > m.flatten(1).amin(1)).all()
        torch.testing.assert_close(m, m_again)  # deterministic (seeded where stochastic)
    if get_method(name).deterministic:
        # LRP's rule ratios amplify float32 differences of batched convolutions
        tol = {"rtol": 1e-3, "atol": 1e-4} if name == "bilrp" else {"rtol": 1e-4, "atol": 1e-6}
        for i in range(3):
            one = pairlens.explain(model, x1[i : i + 1], x2[i : i + 1], method=name, **p)
            for mb, ms in zip(batch.maps, one.maps, strict=True):
                torch.testing.assert_close(mb[i : i + 1], ms, **tol)
