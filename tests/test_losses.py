"""supcon_loss / nt_xent against brute-force loops over eq. 2 and eq. 3 of seed 003 (ExCon)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pairlens.training.losses import nt_xent, supcon_loss


def brute_force(features, labels, temperature, background=None):
    """Eq. 2 / eq. 3 written as plain Python loops (mean over anchors that have a positive)."""
    n = features.shape[0]
    bg = [False] * n if background is None else [bool(b) for b in background]
    e = features.double()
    terms = []
    for i in range(n):
        if bg[i]:
            continue  # background rows are never anchors
        pos = [p for p in range(n) if p != i and not bg[p] and int(labels[p]) == int(labels[i])]
        if not pos:
            continue
        denom = sum(math.exp(float(e[i] @ e[a]) / temperature) for a in range(n) if a != i)
        total = 0.0
        for p in pos:
            total += math.log(math.exp(float(e[i] @ e[p]) / temperature) / denom)
        terms.append(-total / len(pos))
    return sum(terms) / len(terms) if terms else 0.0


def random_case(n=12, d=5, classes=3, seed=0, n_background=0):
    g = torch.Generator().manual_seed(seed)
    f = F.normalize(torch.randn(n, d, generator=g), dim=1)
    labels = torch.randint(0, classes, (n,), generator=g)
    background = torch.zeros(n, dtype=torch.bool)
    background[torch.randperm(n, generator=g)[:n_background]] = True
    return f, labels, background


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("temperature", [0.07, 0.1, 0.5])
def test_supcon_equals_eq2_brute_force(seed, temperature):
    f, labels, _ = random_case(seed=seed)
    got = supcon_loss(f, labels, temperature=temperature)
    assert got.item() == pytest.approx(brute_force(f, labels, temperature), rel=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_exconb_equals_eq3_brute_force(seed):
    f, labels, bg = random_case(n=14, seed=seed, n_background=4)
    got = supcon_loss(f, labels, temperature=0.1, background=bg)
    want = brute_force(f, labels, 0.1, background=bg)
    assert got.item() == pytest.approx(want, rel=1e-5)
    # background rows matter (denominators): dropping them changes the loss
    dropped = supcon_loss(f[~bg], labels[~bg], temperature=0.1)
    assert abs(dropped.item() - got.item()) > 1e-4


def test_background_label_is_irrelevant():
    f, labels, bg = random_case(n=10, seed=3, n_background=3)
    other = labels.clone()
    other[bg] = torch.tensor([0, 1, 2])[: int(bg.sum())]
    a = supcon_loss(f, labels, 0.1, background=bg)
    b = supcon_loss(f, other, 0.1, background=bg)
    assert torch.allclose(a, b)


def test_background_gradient_only_through_denominators():
    """d loss / d e_b for a background row b equals the analytic denominator-only term
    (1/|A|) Σ_i softmax_i(b) e_i / τ over anchors i."""
    tau = 0.2
    f, labels, bg = random_case(n=10, d=4, seed=7, n_background=3)
    f = f.double().requires_grad_(True)
    loss = supcon_loss(f, labels, tau, background=bg)
    (g,) = torch.autograd.grad(loss, f)

    e = f.detach()
    n = e.shape[0]
    anchors = [
        i for i in range(n)
        if not bg[i] and any(p != i and not bg[p] and labels[p] == labels[i] for p in range(n))
    ]
    for b in torch.nonzero(bg).flatten().tolist():
        want = torch.zeros(e.shape[1], dtype=torch.float64)
        for i in anchors:
            logits = torch.tensor([float(e[i] @ e[a]) / tau if a != i else -math.inf
                                   for a in range(n)], dtype=torch.float64)
            w = torch.softmax(logits, 0)[b]
            want += w * e[i] / tau
        want /= len(anchors)
        assert torch.allclose(g[b], want, atol=1e-10)
    # and the gradient is not zero: background rows do take part in the denominators
    assert g[bg].abs().sum() > 0


def test_anchor_without_positive_is_finite_and_skipped():
    f, _, _ = random_case(n=6, seed=1)
    labels = torch.tensor([0, 0, 1, 2, 3, 4])  # only rows 0 and 1 have a positive
    f = f.double().requires_grad_(True)
    loss = supcon_loss(f, labels, 0.1)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(brute_force(f.detach(), labels, 0.1), rel=1e-5)
    loss.backward()
    assert torch.isfinite(f.grad).all()


def test_no_positive_at_all_gives_finite_zero_with_gradient():
    f, _, _ = random_case(n=5, seed=2)
    f = f.clone().requires_grad_(True)
    loss = supcon_loss(f, torch.arange(5), 0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(f.grad).all()
    # everything background: also finite
    loss = supcon_loss(f, torch.zeros(5, dtype=torch.long), 0.1,
                       background=torch.ones(5, dtype=torch.bool))
    assert torch.isfinite(loss) and loss.item() == 0.0


def test_nt_xent_matches_simclr_formula():
    """NT-Xent = mean over 2B anchors of -log(exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ))."""
    g = torch.Generator().manual_seed(0)
    b, tau = 5, 0.5
    z1 = F.normalize(torch.randn(b, 8, generator=g), dim=1)
    z2 = F.normalize(torch.randn(b, 8, generator=g), dim=1)
    z = torch.cat([z1, z2]).double()
    sim = z @ z.T / tau
    total = 0.0
    for i in range(2 * b):
        j = (i + b) % (2 * b)
        denom = sum(math.exp(sim[i, k]) for k in range(2 * b) if k != i)
        total += -math.log(math.exp(sim[i, j]) / denom)
    assert nt_xent(z1, z2, tau).item() == pytest.approx(total / (2 * b), rel=1e-5)


def test_loss_is_lower_for_aligned_views():
    g = torch.Generator().manual_seed(0)
    z1 = F.normalize(torch.randn(8, 16, generator=g), dim=1)
    noisy = F.normalize(z1 + 0.05 * torch.randn(8, 16, generator=g), dim=1)
    unrelated = F.normalize(torch.randn(8, 16, generator=g), dim=1)
    assert nt_xent(z1, noisy, 0.2) < nt_xent(z1, unrelated, 0.2)


def test_bad_shapes_raise():
    f = torch.zeros(4, 3)
    with pytest.raises(ValueError):
        supcon_loss(f, torch.zeros(3), 0.1)
    with pytest.raises(ValueError):
        supcon_loss(f, torch.zeros(4), 0.0)
    with pytest.raises(ValueError):
        nt_xent(torch.zeros(2, 3), torch.zeros(3, 3))
