"""Attribution methods on scalar targets (seed 002 §3.2, Appendices D and H.3)."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms as T
from torch import nn

import pairlens
from pairlens import SimilarityModel, targets
from pairlens.attribution import relax, relax_maps, rise_maps, rise_masks
from pairlens.attribution.baselines import blur
from pairlens.attribution.rise import default_grid


def smooth_model(size: int = 16, seed: int = 0) -> SimilarityModel:
    """Smooth activations (Softplus, Tanh), so a Riemann / Gauss-Legendre rule converges."""
    torch.manual_seed(seed)
    enc = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Softplus(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
    )
    return SimilarityModel(enc, input_size=(size, size), mean=(0.5,) * 3, std=(0.25,) * 3)


def structured_images(n: int, g: torch.Generator, size: int = 16) -> torch.Tensor:
    """Smooth random fields, half of them with a fine grid pattern that blurring removes."""
    smooth = torch.nn.functional.interpolate(
        torch.randn(n, 3, 4, 4, generator=g), size=(size, size), mode="bilinear"
    )
    grid = torch.zeros(1, 3, size, size)
    grid[..., ::2, :] = 3.0
    grid[..., :, ::2] -= 3.0
    return 2 * smooth + grid * (torch.rand(n, 1, 1, 1, generator=g) > 0.5)


class SquareEncoder(nn.Module):
    """Sees only the pixels of one square: rows 4..11, columns 18..25 of a 32 px image."""

    rows, cols = slice(4, 12), slice(18, 26)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, self.rows, self.cols].flatten(1)


@pytest.fixture(scope="module")
def cocoa_setup():
    model = smooth_model()
    g = torch.Generator().manual_seed(0)
    corpus = structured_images(6, g)
    foil = structured_images(9, g)
    x = structured_images(2, g)
    return model, targets.ContrastiveCorpus(model, corpus, foil), x


def test_integrated_gradients_completeness_on_cocoa(cocoa_setup):
    """Appendix D (D.3): IG attributions sum to target(x) - target(baseline)."""
    model, target, x = cocoa_setup
    raw = pairlens.attribute(target, x, "integrated-gradients", reduce=None, n_steps=200)
    assert raw.shape == (2, 3, 16, 16)
    with torch.no_grad():
        gap = target(x) - target(blur(x))
    assert float(gap.abs().min()) > 1e-3  # a non-trivial gap, so the check means something
    torch.testing.assert_close(raw.sum(dim=(1, 2, 3)), gap, rtol=0.03, atol=1e-5)
    # the same holds for a per-explicand target, attributed one explicand at a time
    lf = targets.ContrastiveLabelFree(model, x, structured_images(5, torch.Generator()))
    raw = pairlens.attribute(lf, x, "integrated-gradients", reduce=None, n_steps=200)
    with torch.no_grad():
        gap = torch.stack([lf.select(i)(blur(x)[i : i + 1])[0] for i in range(2)])
        gap = lf(x) - gap
    torch.testing.assert_close(raw.sum(dim=(1, 2, 3)), gap, rtol=0.03, atol=1e-5)


def test_baselines_tensor_callable_number(cocoa_setup):
    _, target, x = cocoa_setup
    zero = pairlens.attribute(target, x, "integrated-gradients", baseline=x.clone(), reduce=None)
    assert float(zero.abs().max()) == 0.0  # baseline = input: nothing to attribute
    a = pairlens.attribute(target, x, "integrated-gradients", baseline=lambda v: v * 0 + 0.25)
    b = pairlens.attribute(target, x, "integrated-gradients", baseline=0.25)
    torch.testing.assert_close(a, b)
    c = pairlens.attribute(
        target, x, "integrated-gradients", baseline=torch.full((3, 16, 16), 0.25)
    )
    torch.testing.assert_close(a, c)
    with pytest.raises(ValueError, match="baseline"):
        pairlens.attribute(target, x, "rise", baseline=torch.zeros(3, 8, 8))


def test_blur_baseline_matches_torchvision():
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(blur(x), T.GaussianBlur(21, sigma=5.0)(x))
    small = torch.randn(1, 3, 8, 8)  # kernel shrinks to 15 so reflect padding works
    torch.testing.assert_close(blur(small), T.GaussianBlur(15, sigma=5.0)(small))


def test_rise_localises_the_seen_square():
    """5000 masks (the paper's count): the most important pixels are the ones the encoder sees."""
    model = SimilarityModel(SquareEncoder(), input_size=(32, 32), mean=(0,) * 3, std=(1,) * 3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 32, 32, generator=g)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[SquareEncoder.rows, SquareEncoder.cols] = True
    n_inside = int(inside.sum())
    foil = torch.randn(20, 3, 32, 32, generator=g)
    for target in (targets.LabelFree(model, x), targets.ContrastiveCorpus(model, x, foil)):
        m = pairlens.attribute(target, x, "rise", n_masks=5000)[0]
        top = m.flatten().argsort(descending=True)[:n_inside]
        overlap = float(inside.flatten()[top].float().mean())
        assert overlap >= 0.7, overlap
        rows, cols = top // 32, top % 32
        assert 4 <= float(rows.float().mean()) < 12 and 18 <= float(cols.float().mean()) < 26
        assert float(m[inside].mean()) > float(m[~inside].mean()) + 0.03
    # RELAX on the label-free (cosine) target localises the square too
    importance, uncertainty = relax(targets.LabelFree(model, x), x, n_masks=3000)
    assert importance.shape == uncertainty.shape == (1, 32, 32)
    assert float(importance[0][inside].mean()) > float(importance[0][~inside].mean()) + 0.03


def test_rise_maps_equal_the_rise_formula_with_the_same_masks(cocoa_setup):
    _, target, x = cocoa_setup
    x1, base = x[:1], blur(x[:1])
    n, p = 300, 0.5
    masks = rise_masks(n, (16, 16), 4, p, torch.Generator().manual_seed(5))
    with torch.no_grad():
        scores = target(x1 * masks[:, None] + base * (1 - masks[:, None]))
    expected = (scores[:, None, None] * masks).sum(0) / (n * p)
    got = rise_maps(
        target,
        x1,
        base,
        n_masks=n,
        grid=4,
        p_keep=p,
        batch_size=n,
        generator=torch.Generator().manual_seed(5),
    )
    torch.testing.assert_close(got[0], expected, rtol=1e-4, atol=1e-6)
    # several targets sharing the masked images: (N, K) scores give K maps
    both = rise_maps(
        lambda v: torch.stack([target(v), -target(v)], 1),
        x1,
        base,
        n_masks=n,
        grid=4,
        p_keep=p,
        batch_size=n,
        generator=torch.Generator().manual_seed(5),
    )
    torch.testing.assert_close(both[0], expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(both[1], -expected, rtol=1e-4, atol=1e-6)


def test_relax_equals_weighted_mean_and_variance(cocoa_setup):
    _, target, x = cocoa_setup
    x1, base = x[:1], blur(x[:1])
    n = 200
    masks = rise_masks(n, (16, 16), 4, 0.5, torch.Generator().manual_seed(2))
    with torch.no_grad():
        s = target(x1 * masks[:, None] + base * (1 - masks[:, None])).double()
    w = masks.double()
    mean = (s[:, None, None] * w).sum(0) / w.sum(0)
    var = (w * (s[:, None, None] - mean) ** 2).sum(0) / w.sum(0)
    imp, unc = relax_maps(
        target,
        x1,
        base,
        n_masks=n,
        grid=4,
        batch_size=n,  # one batch: the same random stream as rise_masks above
        generator=torch.Generator().manual_seed(2),
    )
    torch.testing.assert_close(imp.double(), mean, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(unc.double(), var, rtol=1e-3, atol=1e-7)
    imp, unc = relax_maps(lambda v: torch.full((len(v),), 0.7), x1, base, n_masks=100, grid=4)
    torch.testing.assert_close(imp, torch.full_like(imp, 0.7))
    assert float(unc.abs().max()) < 1e-6


def test_rise_masks_properties():
    g = torch.Generator().manual_seed(0)
    masks = rise_masks(2000, (32, 32), 4, 0.5, g)
    assert masks.shape == (2000, 32, 32)
    assert float(masks.min()) >= 0 and float(masks.max()) <= 1
    assert abs(float(masks.mean()) - 0.5) < 0.02
    # smooth (bilinear) masks with a uniform keep rate over the image
    assert float(((masks > 0.01) & (masks < 0.99)).float().mean()) > 0.3
    assert float((masks.mean(0) - 0.5).abs().max()) < 0.06
    assert default_grid(32, 32) == 4 and default_grid(224, 224) == 7
    kept = rise_masks(4000, (16, 16), 4, 0.2, g).mean()
    assert abs(float(kept) - 0.2) < 0.02


def test_reduce_seed_and_methods(cocoa_setup):
    _, target, x = cocoa_setup
    for method in ("integrated-gradients", "gradient-shap", "rise", "relax", "random"):
        params = {
            "rise": {"n_masks": 200},
            "relax": {"n_masks": 200},
            "integrated-gradients": {"n_steps": 10},
            "gradient-shap": {"n_samples": 10},
        }.get(method, {})
        raw = pairlens.attribute(target, x, method, reduce=None, seed=3, **params)
        maps = pairlens.attribute(target, x, method, seed=3, **params)
        assert raw.shape == (2, 3, 16, 16) and maps.shape == (2, 16, 16)
        torch.testing.assert_close(raw.mean(1), maps)  # same seed, same result
        if method in ("gradient-shap", "rise", "relax", "random"):
            other = pairlens.attribute(target, x, method, seed=4, **params)
            assert not torch.allclose(maps, other)


def test_errors_are_clear(cocoa_setup):
    model, target, x = cocoa_setup
    with pytest.raises(ValueError, match="unknown attribution method"):
        pairlens.attribute(target, x, "lime")
    with pytest.raises(ValueError, match="has no parameter n_masks"):
        pairlens.attribute(target, x, "integrated-gradients", n_masks=10)
    with pytest.raises(ValueError, match="n_masks must be an integer >= 1; got 0"):
        pairlens.attribute(target, x, "rise", n_masks=0)
    with pytest.raises(ValueError, match="holds 2 explicands"):
        pairlens.attribute(targets.LabelFree(model, x), x[:1], "rise")
    with pytest.raises(ValueError, match="reduce"):
        pairlens.attribute(target, x, "rise", reduce="max")
