"""Pair evaluation metrics (seed 000, §IV) against plain loop implementations and known answers."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn

import pairlens
from pairlens.metrics import evaluate, max_sensitivity
from pairlens.metrics.faithfulness import auc, default_step, gaussian_blur, pixel_ranks
from pairlens.models.similarity import SimilarityModel


def tiny_cnn(h: int, w: int, seed: int = 0) -> SimilarityModel:
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                        nn.ReLU())
    return SimilarityModel(enc, head=nn.Linear(16, 8), input_size=(h, w), mean=(0, 0, 0),
                           std=(1, 1, 1), name="tiny")


def tied_maps(b: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4, (b, h, w), generator=g).float()  # few levels: many ties


# ---------------------------------------------------------------- plain reference implementation
def ref_order(m: torch.Tensor) -> list[int]:
    values = m.flatten().tolist()
    return sorted(range(len(values)), key=lambda p: (-values[p], p))


def ref_altered(x: torch.Tensor, m: torch.Tensor, kind: str, k: int, step: int) -> torch.Tensor:
    """Image x (3,H,W) after step k of the game, built pixel by pixel."""
    h, w = x.shape[1:]
    order = ref_order(m)[: k * step]
    if kind == "deletion":
        out = x.clone()
        for p in order:
            out[:, p // w, p % w] = 0.0
    else:
        out = TF.gaussian_blur(x[None], [11, 11], [5.0, 5.0])[0]
        for p in order:
            out[:, p // w, p % w] = x[:, p // w, p % w]
    return out


def ref_scores(model, x1, x2, m1, m2, step):
    """Straightforward reading of §IV-B, one pair and one step at a time, re-encoding everything."""
    out = {k: [] for k in ("SI", "SD", "CI", "CD", "SAD", "CAD", "SAI", "CAI")}
    h, w = x1.shape[2:]
    n = math.ceil(h * w / step)
    sim = lambda a, b: float(model.similarity(a[None], b[None]))  # noqa: E731
    with torch.no_grad():
        for i in range(x1.shape[0]):
            a, b, ma, mb = x1[i], x2[i], m1[i], m2[i]
            for kind, letter in (("insertion", "I"), ("deletion", "D")):
                s_sim, s_cond = [], []
                for k in range(n + 1):
                    a_k, b_k = ref_altered(a, ma, kind, k, step), ref_altered(b, mb, kind, k, step)
                    s_sim.append(sim(a_k, b_k))
                    s_cond.append((sim(a_k, b) + sim(a, b_k)) / 2)
                for name, s in ((f"S{letter}", s_sim), (f"C{letter}", s_cond)):
                    out[name].append((sum(s) - s[0] / 2 - s[-1] / 2) / n)
            s = sim(a, b)

            def norm(m):
                return (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else m * 0

            a_m, b_m = a * norm(ma), b * norm(mb)
            s_sim, s_1, s_2 = sim(a_m, b_m), sim(a_m, b), sim(a, b_m)

            def drop(v, s=s):
                return max(0.0, s - v) / s if s > 0 else math.nan

            out["SAD"].append(drop(s_sim))
            out["CAD"].append((drop(s_1) + drop(s_2)) / 2)
            out["SAI"].append(float(s_sim > s))
            out["CAI"].append((float(s_1 > s) + float(s_2 > s)) / 2)
    return {k: torch.tensor(v) for k, v in out.items()}


# ---------------------------------------------------------------- tests
def test_ranking_is_descending_with_ties_broken_by_flat_index():
    m = torch.tensor([[[1.0, 3.0, 3.0], [0.0, 3.0, 1.0]]])
    ranks = pixel_ranks(m)[0].tolist()
    # order: 3 at indices 1, 2, 4 then 1 at 0, 5 then 0 at 3
    assert ranks == [3, 0, 1, 5, 2, 4]
    assert ref_order(m[0]) == [1, 2, 4, 0, 5, 3]


def test_blur_matches_torchvision():
    x = torch.randn(2, 3, 9, 13)
    assert torch.allclose(gaussian_blur(x), TF.gaussian_blur(x, [11, 11], [5.0, 5.0]), atol=1e-5)


def test_default_step():
    assert default_step(224, 224) == 224
    assert default_step(32, 32) == 5  # round(1024 / 224)
    assert default_step(3, 4) == 1


@pytest.mark.parametrize("h,w,step", [(10, 14, 9), (6, 9, None), (7, 7, 5)])
def test_evaluate_matches_plain_loop_including_ties(h, w, step):
    model = tiny_cnn(h, w)
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(3, 3, h, w, generator=g), torch.randn(3, 3, h, w, generator=g)
    x2[0] = x1[0] + 0.1 * x2[0]  # a similar pair, so drop is defined for some pairs
    m1, m2 = tied_maps(3, h, w, 2), tied_maps(3, h, w, 3)
    m1[1] = 0.0  # a constant map: pure index order, min-max gives zeros
    got = evaluate(model, x1, x2, (m1, m2),
                   metrics=("SI", "SD", "CI", "CD", "SAD", "CAD", "SAI", "CAI"),
                   step=step, batch_size=7)
    want = ref_scores(model, x1, x2, m1, m2, step or default_step(h, w))
    for name, ref in want.items():
        assert torch.allclose(got[name], ref, atol=2e-5, equal_nan=True), name


def test_batch_of_pairs_equals_pairs_one_by_one_and_curves_have_n_plus_1_points():
    h, w = 9, 11
    model = tiny_cnn(h, w, seed=3)
    x1, x2 = torch.randn(4, 3, h, w), torch.randn(4, 3, h, w)
    m1, m2 = torch.rand(4, h, w), torch.rand(4, h, w)
    full = evaluate(model, x1, x2, (m1, m2), step=4, return_curves=True, batch_size=13)
    assert full["SI_curve"].shape == (4, math.ceil(h * w / 4) + 1)
    assert torch.allclose(auc(full["CD_curve"]), full["CD"])
    for i in range(4):
        one = evaluate(model, x1[i : i + 1], x2[i : i + 1], (m1[i : i + 1], m2[i : i + 1]),
                       step=4, batch_size=1000)
        for name in ("SI", "SD", "CI", "CD", "SAD", "CAD"):
            assert torch.allclose(one[name], full[name][i : i + 1], atol=1e-5, equal_nan=True)


class RevealCounter(nn.Module):
    """Embedding (fraction of pixels with |channel 0| > 0.5, c): a known function of the game.

    On a +-1 checkerboard the Gaussian blur is far below 0.5 in magnitude, so after step k of
    insertion exactly min(k*L, HW) pixels count, and after deletion HW - min(k*L, HW).
    """

    def __init__(self, c: float = 1.0):
        super().__init__()
        self.c = c

    def forward(self, x):
        frac = (x[:, 0].abs() > 0.5).float().flatten(1).mean(1)
        return torch.stack([frac, torch.full_like(frac, self.c)], 1)


def cos2(a, b):
    return (a[0] * b[0] + a[1] * b[1]) / (math.hypot(*a) * math.hypot(*b))


def test_hand_computed_curves_on_a_reveal_counting_encoder():
    h, w, step = 6, 10, 7  # N = ceil(60 / 7) = 9, last step partial
    n = 9
    model = SimilarityModel(RevealCounter(), input_size=(h, w), mean=(0, 0, 0), std=(1, 1, 1))
    board = ((torch.arange(h)[:, None] + torch.arange(w)[None]) % 2 * 2 - 1).float()
    x1 = board.expand(1, 3, h, w).clone()
    x2 = x1.clone()
    x2[:, :, :, w // 2 :] = 0  # image 2 has signal in its left half only
    m1 = torch.rand(1, h, w)
    m2 = torch.zeros(1, h, w)
    m2[:, :, : w // 2] = 1 + torch.rand(1, h, w // 2)  # image 2's map ranks its left half first
    assert float(gaussian_blur(x1).abs().max()) < 0.5
    got = evaluate(model, x1, x2, (m1, m2), metrics=("SI", "SD", "CI", "CD"), step=step,
                   return_curves=True)
    hw, half = h * w, h * w // 2
    revealed = [min(k * step, hw) for k in range(n + 1)]
    f1_ins = [r / hw for r in revealed]
    f2_ins = [min(r, half) / hw for r in revealed]  # only the left half carries signal
    f1_del = [1 - r / hw for r in revealed]
    f2_del = [(half - min(r, half)) / hw for r in revealed]
    whole1, whole2 = (1.0, 1.0), (0.5, 1.0)
    expect = {
        "SI": [cos2((a, 1), (b, 1)) for a, b in zip(f1_ins, f2_ins, strict=True)],
        "SD": [cos2((a, 1), (b, 1)) for a, b in zip(f1_del, f2_del, strict=True)],
        "CI": [(cos2((a, 1), whole2) + cos2(whole1, (b, 1))) / 2
               for a, b in zip(f1_ins, f2_ins, strict=True)],
        "CD": [(cos2((a, 1), whole2) + cos2(whole1, (b, 1))) / 2
               for a, b in zip(f1_del, f2_del, strict=True)],
    }
    for name, curve in expect.items():
        assert torch.allclose(got[f"{name}_curve"][0], torch.tensor(curve), atol=1e-6), name
        area = (sum(curve) - curve[0] / 2 - curve[-1] / 2) / n
        assert got[name].item() == pytest.approx(area, abs=1e-6)


def test_perfect_and_worst_maps_order_deletion_scores():
    """A map ranking the only informative pixels first deletes the similarity fastest."""
    h, w = 8, 8
    model = SimilarityModel(RevealCounter(c=0.2), input_size=(h, w), mean=(0, 0, 0),
                            std=(1, 1, 1))
    x = torch.zeros(1, 3, h, w)
    x[:, :, :3, :3] = 1.0  # 9 informative pixels
    good = torch.zeros(1, h, w)
    good[:, :3, :3] = 1
    bad = 1 - good
    s_good = evaluate(model, x, x, (good, good), metrics=("CD", "CI"), step=3)
    s_bad = evaluate(model, x, x, (bad, bad), metrics=("CD", "CI"), step=3)
    assert s_good["CD"] < s_bad["CD"]
    assert s_good["CI"] > s_bad["CI"]


def test_average_drop_skips_non_positive_similarity_pairs():
    model = SimilarityModel(RevealCounter(), input_size=(4, 4), mean=(0, 0, 0), std=(1, 1, 1))

    class Signed(nn.Module):
        def forward(self, x):
            return torch.stack([x[:, 0].mean((1, 2)), x[:, 1].mean((1, 2))], 1)

    model = SimilarityModel(Signed(), input_size=(4, 4), mean=(0, 0, 0), std=(1, 1, 1))
    x1 = torch.ones(2, 3, 4, 4)
    x2 = torch.ones(2, 3, 4, 4)
    x2[1] = -1  # cosine -1: drop undefined
    maps = (torch.rand(2, 4, 4), torch.rand(2, 4, 4))
    out = evaluate(model, x1, x2, maps, metrics=("SAD", "CAD", "SAI"))
    assert not torch.isnan(out["SAD"][0]) and torch.isnan(out["SAD"][1])
    assert torch.isnan(out["CAD"][1])
    assert not torch.isnan(out["SAI"]).any()


def test_evaluate_accepts_a_pair_explanation_and_rejects_bad_input():
    model = tiny_cnn(12, 12)
    x1, x2 = torch.randn(2, 3, 12, 12), torch.randn(2, 3, 12, 12)
    exp = pairlens.explain(model, x1, x2, method="input-x-gradient")
    a = evaluate(model, x1, x2, exp, metrics=("CI",))
    b = evaluate(model, x1, x2, exp.maps, metrics=("CI",))
    assert torch.equal(a["CI"], b["CI"])
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(model, x1, x2, exp, metrics=("XX",))
    with pytest.raises(ValueError, match="map 1 has shape"):
        evaluate(model, x1, x2, (exp.maps[0][:, :5], exp.maps[1]))
    with pytest.raises(ValueError, match="MS needs the method"):
        evaluate(model, x1, x2, exp.maps, metrics=("MS",))


def test_max_sensitivity_matches_loop_and_random_maps_are_maximally_sensitive():
    from pairlens.methods.common import pair_generators

    model = tiny_cnn(10, 10)
    x1, x2 = torch.randn(2, 3, 10, 10), torch.randn(2, 3, 10, 10)
    ms = max_sensitivity(model, x1, x2, "input-x-gradient", n_samples=3, seed=5, batch_size=4,
                         noise="independent")
    # plain loop with the same noise: each pair's own generator, image 1's sample first
    gens = pair_generators(5, x1, x2)
    noise = torch.stack([(torch.rand((3, 2, 3, 10, 10), generator=g) * 2 - 1) * 0.2
                         for g in gens], 2)  # (S, 2, B, 3, H, W)
    e = pairlens.explain(model, x1, x2, method="input-x-gradient").maps
    worst = torch.zeros(2, 2)
    for s in range(3):
        p = pairlens.explain(model, x1 + noise[s, 0], x2 + noise[s, 1],
                             method="input-x-gradient").maps
        for j in range(2):
            r = (p[j] - e[j]).flatten(1).norm(dim=1) / e[j].flatten(1).norm(dim=1)
            worst[j] = torch.maximum(worst[j], r)
    assert torch.allclose(ms, worst.mean(0), atol=1e-5)
    assert (ms > 0).all()
    # the random baseline draws new maps for the noisy pairs (its generator is seeded by the
    # pair's pixels): ||u - u'|| / ||u|| of two U[0,1) maps is about sqrt(1/2)
    ms_random = max_sensitivity(model, x1, x2, "random", n_samples=2, batch_size=4)
    assert (ms_random > 0.6).all() and (ms_random < 0.85).all()


# ---------------------------------------------------------------- sanity check
def test_spearman_and_ssim_match_scipy_skimage_and_known_values():
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    from pairlens.metrics.sanity import map_ssim, spearman

    a = tied_maps(2, 9, 8, 0)
    b = torch.rand(2, 9, 8)
    rho = spearman(a, b)
    for i in range(2):
        assert rho[i].item() == pytest.approx(spearmanr(a[i].flatten(), b[i].flatten())[0],
                                              abs=1e-6)
    assert torch.allclose(spearman(b, 3 * b + 1), torch.ones(2))
    assert torch.allclose(spearman(b, -b), -torch.ones(2))
    assert torch.isnan(spearman(b, torch.zeros(2, 9, 8))).all()
    assert torch.allclose(map_ssim(b, 2 * b), torch.ones(2), atol=1e-6)  # min-max invariant
    nb = (b - b.amin((1, 2), keepdim=True)) / (b.amax((1, 2), keepdim=True)
                                               - b.amin((1, 2), keepdim=True))
    na = a / 3.0
    want = structural_similarity(na[0].double().numpy(), nb[0].double().numpy(), data_range=1.0,
                                 win_size=7)
    assert map_ssim(a, b)[0].item() == pytest.approx(want, abs=1e-5)


def test_sanity_check_randomises_from_head_to_bottom_and_leaves_model_untouched():
    from pairlens.metrics import sanity_check
    from pairlens.metrics.sanity import randomisable_layers

    model = tiny_cnn(12, 12)
    model.classifier = nn.Linear(8, 3)  # a probe the embedding does not use
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x1, x2 = torch.randn(2, 3, 12, 12), torch.randn(2, 3, 12, 12)
    assert randomisable_layers(model, x1) == ["encoder.0", "encoder.2", "head"]
    res = sanity_check(model, x1, x2, "input-x-gradient")
    assert res.steps == [["head"], ["encoder.2"], ["encoder.0"]]
    assert res.spearman.shape == (3, 2, 2) and res.ssim.shape == (3, 2, 2)
    assert len(res.maps) == 4
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # after randomising every layer the explanation no longer resembles the original
    assert res.spearman[-1].abs().mean() < 0.6
    # an input-independent baseline passes nothing: its maps never change
    flat = sanity_check(model, x1, x2, "random")
    assert torch.allclose(flat.spearman, torch.ones_like(flat.spearman))
    fig = res.figure(0)
    assert len(fig.axes) == 2 * 5
    import matplotlib.pyplot as plt

    plt.close(fig)
