"""Brute-force checks of the paper-exact conventions and of their named alternatives.

Each reference below is written the way the seed-000 authors' code (explain-cl ``methods.py`` and
``evaluation.py``) computes the quantity, one sample at a time, drawing its random numbers from
the same per-pair generators as PairLens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import pair_batch
from torch import nn

import pairlens
from pairlens.methods.common import noise_sigma, pair_generators


def _grads(model, a, b):
    a = a.detach().clone().requires_grad_(True)
    b = b.detach().clone().requires_grad_(True)
    s = F.cosine_similarity(model.embed(a), model.embed(b), dim=-1).sum()
    return torch.autograd.grad(s, (a, b))


def test_noise_scale_divides_or_multiplies_by_the_range():
    x = torch.zeros(2, 3, 4, 4)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 4.0, 0.5  # ranges 4 and 0.5
    assert noise_sigma(x, 0.2, "divide").flatten().tolist() == pytest.approx([0.05, 0.4])
    assert noise_sigma(x, 0.2, "multiply").flatten().tolist() == pytest.approx([0.8, 0.1])
    with pytest.raises(ValueError, match="noise_scale"):
        noise_sigma(x, 0.2, "sqrt")


@pytest.mark.parametrize(("noise", "scale"), [("shared", "divide"), ("independent", "multiply")])
def test_smoothgrad_matches_a_per_sample_loop(square, noise, scale):
    x1, x2 = pair_batch(2)
    n = 3
    got = pairlens.explain(square, x1, x2, method="smoothgrad", n_samples=n, noise=noise,
                           noise_scale=scale, batch_size=3)
    gens = pair_generators(0, x1, x2)
    for k in range(2):
        s1 = noise_sigma(x1[k:k + 1], 0.15, scale)[0]
        s2 = s1 if noise == "shared" else noise_sigma(x2[k:k + 1], 0.15, scale)[0]
        t1, t2 = torch.zeros_like(x1[k]), torch.zeros_like(x2[k])
        for _ in range(n):
            eps = torch.randn((1 if noise == "shared" else 2, *x1.shape[1:]), generator=gens[k])
            g1, g2 = _grads(square, x1[k:k + 1] + eps[0] * s1, x2[k:k + 1] + eps[-1] * s2)
            t1 += g1[0]
            t2 += g2[0]
        torch.testing.assert_close(got.maps[0][k], (x1[k] * t1 / n).abs().amax(0))
        torch.testing.assert_close(got.maps[1][k], (x2[k] * t2 / n).abs().amax(0))


def test_smoothgrad_shared_noise_keeps_a_pair_of_equal_images_equal(square):
    """Same sample on both images: a pair (x, x) stays a pair of equal images at every step, so the
    similarity stays stationary and every gradient is zero. The map would be blank, so the pair is
    refused (issue 10's guard) instead of returning two equal all-zero maps."""
    from pairlens.models.similarity import BlankGradientError

    x = pair_batch(1)[0]
    with pytest.raises(BlankGradientError, match="stationary"):
        pairlens.explain(square, x, x, method="smoothgrad", n_samples=4)


@pytest.mark.parametrize("noise", [False, True])
def test_averaged_transforms_paper_mode_matches_the_authors_loop(square, noise):
    """explain-cl: mixed = [lam*img1 + (1-lam)*T(img2) for lam in arange(1, 0, -step)], noise on
    mixed[1:-1], one backward per mixed[1:], map1 on img1, map2 on mixed[-1]."""
    x1, x2 = pair_batch(2)
    steps = 5
    got = pairlens.explain(square, x1, x2, method="averaged-transforms", transform="grayscale",
                           steps=steps, noise=noise)
    gens = pair_generators(0, x1, x2)
    for k in range(2):
        torch.rand(8, generator=gens[k])  # the family's random draws come first
        a = x1[k:k + 1]
        gray = square.denormalize(x2[k:k + 1])
        luma = 0.299 * gray[:, 0] + 0.587 * gray[:, 1] + 0.114 * gray[:, 2]
        strong = square.normalize(luma[:, None].expand_as(gray))
        mixed = [float(lam) * a + (1 - float(lam)) * strong for lam in np.arange(1, 0, -1 / steps)]
        assert len(mixed) == steps
        if noise:
            sigma = 0.15 / (a.max() - a.min())
            eps = torch.randn((steps - 2, *a.shape[1:]), generator=gens[k])
            mixed = [mixed[0]] + [m + eps[i] * sigma for i, m in enumerate(mixed[1:-1])] \
                + [mixed[-1]]
        g1 = g2 = 0
        for view in mixed[1:]:
            d1, d2 = _grads(square, a, view)
            g1, g2 = g1 + d1, g2 + d2
        g1, g2 = g1 / (steps - 1), g2 / (steps - 1)
        last = float(np.arange(1, 0, -1 / steps)[-1]) * a + (1 - 1 / steps) * strong
        torch.testing.assert_close(got.maps[0][k], (a * g1).abs().amax(1)[0], rtol=1e-4,
                                   atol=1e-6)
        torch.testing.assert_close(got.maps[1][k], (last * g2).abs().amax(1)[0], rtol=1e-4,
                                   atol=1e-6)


def test_averaged_transforms_paper_mode_refuses_geometric_families(square):
    x1, x2 = pair_batch(1)
    with pytest.raises(ValueError, match="strength"):
        pairlens.explain(square, x1, x2, method="averaged-transforms", transform="rotation")
    with pytest.raises(ValueError, match="paper, strength"):  # the former 'pixel' path is gone
        pairlens.explain(square, x1, x2, method="averaged-transforms", interpolation="pixel")


def test_averaged_transforms_strength_mode_differentiates_through_the_transform(square):
    """Strength mode with grayscale at strengths z/Z: t_z(x2) = (1 - z/Z) x2 + z/Z gray(x2);
    the gradient w.r.t. x2 flows through the blend and the map lies on x2."""
    x1, x2 = pair_batch(1)
    steps = 4
    got = pairlens.explain(square, x1, x2, method="averaged-transforms", transform="grayscale",
                           steps=steps, interpolation="strength")
    a, c = x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)
    total = 0
    for z in range(1, steps + 1):
        p = square.denormalize(c)
        gray = (0.299 * p[:, 0] + 0.587 * p[:, 1] + 0.114 * p[:, 2])[:, None].expand_as(p)
        view = square.normalize((1 - z / steps) * p + z / steps * gray)
        total = total + F.cosine_similarity(square.embed(a), square.embed(view), dim=-1).sum()
    g1, g2 = torch.autograd.grad(total / steps, (a, c))
    torch.testing.assert_close(got.maps[0], (x1 * g1).abs().amax(1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got.maps[1], (x2 * g2).abs().amax(1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.05])
def test_pairwise_occlusion_matches_a_per_sample_loop(square, temperature):
    from pairlens.methods.perturbation import random_rectangles

    x1, x2 = pair_batch(2)
    n = 6
    got = pairlens.explain(square, x1, x2, method="pairwise-occlusion", n_samples=n,
                           temperature=temperature)
    gens = pair_generators(0, x1, x2)
    with torch.no_grad():
        for k in range(2):
            m1 = random_rectangles(n, 32, 32, (0.1, 0.3), (1.0, 1.5), gens[k])
            m2 = random_rectangles(n, 32, 32, (0.1, 0.3), (1.0, 1.5), gens[k])
            base = square.similarity(x1[k:k + 1], x2[k:k + 1])
            drops, first = [], []
            for i in range(n):
                za = square.embed(x1[k:k + 1] * ~m1[i])
                zb = square.embed(x2[k:k + 1] * ~m2[i])
                drops.append(float(base - F.cosine_similarity(za, zb)))
                first.append(bool(za.norm() < zb.norm()))
            w = torch.softmax(torch.tensor(drops) / temperature, 0)
            a1 = sum(w[i] * m1[i].float() for i in range(n) if first[i])
            a2 = sum(w[i] * m2[i].float() for i in range(n) if not first[i])
            torch.testing.assert_close(got.maps[0][k], a1 + torch.zeros(32, 32), atol=1e-5,
                                       rtol=1e-4)
            torch.testing.assert_close(got.maps[1][k], a2 + torch.zeros(32, 32), atol=1e-5,
                                       rtol=1e-4)


@pytest.mark.parametrize("noise", ["shared", "independent"])
def test_max_sensitivity_matches_a_per_sample_loop(square, noise):
    """explain-cl evaluation.py: one uniform sample in [-0.2, 0.2] added to X1 and X2 (shared),
    explanation recomputed, max over samples of ||e - e'|| / ||e||, mean of the two images."""
    x1, x2 = pair_batch(2)
    got = pairlens.evaluate(square, x1, x2,
                            pairlens.explain(square, x1, x2, method="input-x-gradient"),
                            metrics=("MS",), ms_samples=3, ms_noise=noise)["MS"]
    gens = pair_generators(0, x1, x2)
    for k in range(2):
        e = pairlens.explain(square, x1[k:k + 1], x2[k:k + 1], method="input-x-gradient").maps
        worst = [0.0, 0.0]
        draws = torch.rand((3, 1 if noise == "shared" else 2, *x1.shape[1:]), generator=gens[k])
        for s in range(3):
            eps = (draws[s] * 2 - 1) * 0.2
            noisy = pairlens.explain(square, x1[k:k + 1] + eps[0], x2[k:k + 1] + eps[-1],
                                     method="input-x-gradient").maps
            for i in range(2):
                worst[i] = max(worst[i], float((e[i] - noisy[i]).norm() / e[i].norm()))
        assert float(got[k]) == pytest.approx(sum(worst) / 2, rel=1e-4)


def test_random_maps_are_per_pair_and_fresh_without_a_seed(square):
    x1, x2 = pair_batch(2)
    a = pairlens.explain(square, x1, x2, method="random").maps
    assert not torch.equal(a[0][0], a[0][1])  # pair 0 and pair 1 differ
    again = pairlens.explain(square, x1[1:], x2[1:], method="random").maps
    torch.testing.assert_close(a[0][1:], again[0])  # and pair 1 is the same alone
    f1 = pairlens.explain(square, x1, x2, method="random", seed=None).maps
    f2 = pairlens.explain(square, x1, x2, method="random", seed=None).maps
    assert not torch.equal(f1[0], f2[0])


class _NormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.ln = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.ln(self.bn(self.conv(x))).mean((2, 3)))


def test_sanity_check_randomises_norm_layers_on_request():
    from pairlens.metrics.sanity import reinitialise

    for norm, check in (("reset", lambda w, b: torch.equal(w, torch.ones(4))
                         and torch.equal(b, torch.zeros(4))),
                        ("random", lambda w, b: w.std() > 0.1 and b.abs().max() > 0.01)):
        net = _NormNet()
        for layer in (net.bn, net.ln):
            with torch.no_grad():
                layer.weight.fill_(3.0)
                layer.bias.fill_(-2.0)
            reinitialise(layer, seed=0, norm=norm)
            assert check(layer.weight.detach(), layer.bias.detach()), (norm, layer)
        assert float(net.bn.running_var.mean()) == 1.0  # fresh running statistics either way
    with pytest.raises(ValueError, match="norm"):
        reinitialise(_NormNet().bn, 0, norm="zero")


def test_sanity_check_passes_the_norm_choice_to_every_norm_layer():
    """Head first: step 0 randomises ``fc`` only (same maps in both modes); from the step that
    reaches the group norm on, random gamma/beta give other maps than reset ones."""
    from pairlens.metrics import sanity_check

    torch.manual_seed(0)
    model = pairlens.SimilarityModel(_NormNet().eval(), input_size=(16, 16))
    x1, x2 = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    res = {n: sanity_check(model, x1, x2, "input-x-gradient", norm=n) for n in ("reset", "random")}
    assert res["reset"].steps == [["encoder.fc"], ["encoder.ln"], ["encoder.bn"], ["encoder.conv"]]
    torch.testing.assert_close(res["reset"].maps[1][0], res["random"].maps[1][0])
    for step in (2, 3):
        assert not torch.allclose(res["reset"].maps[step][0], res["random"].maps[step][0])


def test_the_conventions_script_runs_at_a_tiny_size():
    """benchmarks/conventions.py makes the numbers of docs/methods.md; keep it working."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "conventions.py"
    spec = importlib.util.spec_from_file_location("conventions_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.main(["--model", "digits", "--data", "digits", "--pairs", "1",
                        "--po-samples", "6", "--ms-samples", "1", "--ms-methods",
                        "input-x-gradient", "--threads", "1"])
    assert "| 1 |" in text and "| input-x-gradient |" in text and "image 2: mean" in text
