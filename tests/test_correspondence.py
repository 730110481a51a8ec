"""Correspondence (second-order) explanations: exactness, ground truth, projection, guards, I/O.

Ground truth. The encoder below is bias-free, convolutional and average-pooled, and keeps the three
colour channels in separate groups up to a block-diagonal head: it sees only the pasted squares of
each image (the background is zero in model-input space, which it maps to zero features) and it
compares red content only with red content, green only with green. Image 1 carries a red pattern at
region A and a green one at A'; image 2 the same red pattern at B and the same green one at B'. The
similarity is then exactly (red term) + (green term), i.e. the (A, B) and (A', B') region pairs,
and *nothing* comes from (A, B') or (A', B), although all four regions matter to first order: an
outer product of the two marginal maps (what first-order maps can express) puts half its mass on
the wrong pairs, which the last ground-truth test checks, so the test can fail.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import pair_batch, square_model
from torch import nn

import pairlens
from pairlens.methods.common import area_matrix, cell_index, regrid, regrid_pairs
from pairlens.methods.correspondence import embedding_directions, pair_generators

METHODS = ("feature-grid", "bilrp", "integrated-jacobians")
GRID = 4  # 8-px regions on the 32-px toy images


class GroupedEncoder(nn.Module):
    """Bias-free 2-layer CNN whose channel groups never mix (one group per colour channel);
    output (B, 3*width, 32, 32) at full resolution, which is the feature layer."""

    def __init__(self, width: int = 4):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.conv1 = nn.Conv2d(3, 3 * width, 3, padding=1, groups=3, bias=False)
        self.conv2 = nn.Conv2d(3 * width, 3 * width, 3, padding=1, groups=3, bias=False)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        with torch.no_grad():
            self.conv1.weight.copy_(torch.randn(self.conv1.weight.shape, generator=g).abs())
            self.conv2.weight.copy_(torch.randn(self.conv2.weight.shape, generator=g).abs())
        self.features = nn.Identity()

    def forward(self, x):
        return self.features(self.relu2(self.conv2(self.relu1(self.conv1(x)))))


def grouped_model(
    similarity: str = "cosine", width: int = 4, dim: int = 2
) -> pairlens.SimilarityModel:
    enc = GroupedEncoder(width)
    head = nn.Linear(3 * width, 3 * dim, bias=False)
    g = torch.Generator().manual_seed(4)
    mask = torch.block_diag(*[torch.ones(dim, width)] * 3)  # colour group c -> embedding block c
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * mask)
    return pairlens.SimilarityModel(enc, head=head, feature_layer="features", input_size=(32, 32),
                                    mean=(0, 0, 0), std=(1, 1, 1), similarity=similarity,
                                    name="grouped")


def cell_slices(cell: int) -> tuple[slice, slice]:
    """Pixels 2..6 of an 8-px region: the 3x3 convolutions spread content by 2 px, so a pasted
    patch never leaves its region."""
    r, c = divmod(cell, GRID)
    return slice(8 * r + 2, 8 * r + 6), slice(8 * c + 2, 8 * c + 6)


def pasted_pair(double: bool = True) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    g = torch.Generator().manual_seed(5)
    red = torch.rand(4, 4, generator=g) + 0.2
    green = torch.rand(4, 4, generator=g) + 0.2
    x1, x2 = torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)
    a, b, a2, b2 = 0, 11, 13, 5  # A, B, A', B' (row-major regions of the 4x4 grid)
    x1[0, 0][cell_slices(a)] = red
    x2[0, 0][cell_slices(b)] = red
    truth = [(a, b)]
    if double:
        x1[0, 1][cell_slices(a2)] = green
        x2[0, 1][cell_slices(b2)] = green
        truth.append((a2, b2))
    return x1, x2, truth


def share(rel: torch.Tensor, cells: list[tuple[int, int]]) -> float:
    """Share of the absolute relevance of one pair on the given region pairs."""
    total = rel.abs().sum()
    return float(sum(rel[i, j].abs() for i, j in cells) / total)


EXACT = {  # settings under which each method is exact on the grouped encoder
    "feature-grid": {},  # affine (linear) head on the average-pooled grid: exact algebra
    "bilrp": {"k": None},  # all D directions; LRP never mixes the groups
    "integrated-jacobians": {"k": None, "reference": "zero", "steps": 4},  # homogeneous net
}


# ---------------------------------------------------------------------- ground truth
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("double", [False, True])
def test_pasted_regions_are_matched(method, double):
    # Threshold 1 - 1e-5 for every method: in this construction all three are exact (see
    # EXACT), so the only relevance off the true region pairs is float round-off.
    model = grouped_model()
    x1, x2, truth = pasted_pair(double)
    exp = pairlens.correspond(model, x1, x2, method=method, grid=GRID, **EXACT[method])
    rel = exp.relevance[0]
    assert share(rel, truth) > 1 - 1e-5, (method, share(rel, truth))
    for i, j in truth:
        assert rel[i, j] > 0
    # the similarity is the sum of the red and green terms and the relevance says so
    assert torch.allclose(rel.sum(), exp.score[0], atol=1e-4)


def test_marginals_alone_cannot_say_which_part_matches_which():
    model = grouped_model()
    x1, x2, truth = pasted_pair(double=True)
    exp = pairlens.correspond(model, x1, x2, method="feature-grid", grid=GRID)
    m1, m2 = exp.relevance[0].sum(1), exp.relevance[0].sum(0)  # the first-order picture
    outer = m1[:, None] * m2[None, :]
    assert share(outer, truth) < 0.8  # first-order maps spread mass over (A, B') and (A', B)
    assert share(exp.relevance[0], truth) > 1 - 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_encoder_seeing_one_square_is_explained_by_that_square(square, method):
    # the conftest encoder sees only rows/cols 4..13 of both images: regions 0, 1, 4, 5 of the
    # 4x4 grid. Every method propagates through the input mask, so nothing may land elsewhere.
    x1, x2 = pair_batch(2)
    exp = pairlens.correspond(square, x1, x2, method=method, grid=GRID, k=2)
    seen = [0, 1, 4, 5]
    for rel in exp.relevance:
        inside = rel[seen][:, seen].abs().sum()
        assert float(inside / rel.abs().sum()) > 1 - 1e-5
    assert exp.maps[0].shape == (2, 32, 32)


# ---------------------------------------------------------------------- exactness
def linear_model(bias: bool, similarity: str) -> pairlens.SimilarityModel:
    enc = GroupedEncoder()
    torch.manual_seed(0)
    head = nn.Linear(12, 6, bias=bias)  # GroupedEncoder(width=4): 12 channels
    return pairlens.SimilarityModel(enc, head=head, feature_layer="features", input_size=(32, 32),
                                    similarity=similarity, name="linear")


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("k", [None, 3])
def test_feature_grid_sums_to_the_similarity_for_a_bias_free_linear_head(similarity, k):
    model = linear_model(bias=False, similarity=similarity)
    x1, x2 = pair_batch(3)
    exp = pairlens.correspond(model, x1, x2, method="feature-grid", k=k, grid=4)
    s = exp.score
    assert torch.allclose(exp.relevance.sum((1, 2)), s, atol=1e-4 * float(s.abs().max()), rtol=0)
    assert exp.extras["completeness_error"].abs().max() < 1e-4 * float(s.abs().max())


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_feature_grid_is_the_exact_decomposition_of_an_affine_head(similarity):
    # brute force: z = W mean_u A(u) + b, so R[u, v] = c (W A1(u) / n).(W A2(v) / n) and the bias
    # terms c (z1.b + b.z2 - b.b) are exactly what the relevance leaves out
    model = linear_model(bias=True, similarity=similarity)
    x1, x2 = pair_batch(2)
    exp = pairlens.correspond(model, x1, x2, method="feature-grid")
    with torch.no_grad():
        z, a = model.embed_with_features(torch.cat([x1, x2]))
        q = torch.einsum("dc,bchw->bdhw", model.head.weight, a).flatten(2) / a[0, 0].numel()
    z1, z2, b = z[:2], z[2:], model.head.bias
    c = 1 / (z1.norm(dim=1) * z2.norm(dim=1)) if similarity == "cosine" else torch.ones(2)
    brute = c[:, None, None] * torch.einsum("bdi,bdj->bij", q[:2], q[2:])
    scale = float(brute.abs().max())
    assert torch.allclose(exp.relevance, brute, atol=1e-5 * scale, rtol=1e-4)
    reference_terms = c * ((z1 * b).sum(1) + (b * z2).sum(1) - (b * b).sum())
    tol = 1e-4 * float(exp.score.abs().max().clamp(min=1))
    assert torch.allclose(exp.relevance.sum((1, 2)) + reference_terms, exp.score, atol=tol)
    assert exp.extras["completeness_error"].abs().max() < tol


def test_removing_a_location_removes_its_row_of_relevance():
    # dot similarity, bias-free linear head: zeroing feature location u of image 1 (kept in the
    # average) lowers S by exactly sum_v R[u, v]
    model = linear_model(bias=False, similarity="dot")
    x1, x2 = pair_batch(1)
    exp = pairlens.correspond(model, x1, x2, method="feature-grid")
    u = 37
    with torch.no_grad():
        a1 = model.encoder(x1)
        a2 = model.encoder(x2)
        a1_cut = a1.flatten(2).clone()
        a1_cut[:, :, u] = 0
        z1 = model.head(a1.mean((2, 3)))
        z1_cut = model.head(a1_cut.mean(2))
        z2 = model.head(a2.mean((2, 3)))
    drop = (z1 * z2).sum() - (z1_cut * z2).sum()
    assert torch.allclose(drop, exp.relevance[0, u].sum(), rtol=1e-4, atol=1e-6)


def test_bilrp_conserves_the_similarity_on_a_bias_free_network():
    model = grouped_model("dot")
    x1, x2 = pair_batch(2)
    x1, x2 = x1.clamp(min=0), x2.clamp(min=0)  # inside the z^B box [0, 1]... and beyond: fine
    exp = pairlens.correspond(model, x1, x2, method="bilrp", k=None)
    assert torch.allclose(exp.relevance.sum((1, 2)), exp.score, rtol=1e-3)


def test_integrated_jacobians_completeness_error_shrinks_with_steps():
    model = square_model()
    x1, x2 = pair_batch(1)
    errs = [float(pairlens.correspond(model, x1, x2, method="integrated-jacobians", k=2,
                                      steps=n).extras["completeness_error"].abs()[0])
            for n in (2, 32)]
    assert errs[1] < errs[0] / 4


# ---------------------------------------------------------------------- the projection
def test_directions_keep_the_target_and_are_unbiased():
    torch.manual_seed(0)
    d, k = 12, 5
    a1, a2 = torch.randn(1, d), torch.randn(1, d)
    v1, v2 = torch.randn(d), torch.randn(d)  # any other pair of vectors
    n = 800
    gens = [torch.Generator().manual_seed(seed) for seed in range(n)]
    u, w = embedding_directions(a1.expand(n, d), a2.expand(n, d), k, gens)
    assert u.shape == (n, d, k)
    assert torch.allclose(u.transpose(1, 2) @ u, torch.eye(k).expand(n, k, k), atol=1e-5)
    kept = (w * (a1 @ u)[:, 0] * (a2 @ u)[:, 0]).sum(1)  # the decomposed product, every draw
    assert torch.allclose(kept, (a1 * a2).sum().expand(n), atol=1e-4)
    estimates = (w * (v1 @ u) * (v2 @ u)).sum(1).numpy()
    # unbiased for the full-basis value v1.v2; tolerance: 5 standard errors of the mean
    mean, sem = np.mean(estimates), np.std(estimates) / np.sqrt(len(estimates))
    assert abs(mean - float(v1 @ v2)) < 5 * sem
    u, w = embedding_directions(a1, a2, None, [])
    assert u is None and w.shape == (1, d)
    with pytest.raises(ValueError, match="k must be"):
        embedding_directions(a1, a2, 1, [torch.Generator()])


@pytest.mark.parametrize("method", METHODS)
def test_a_pair_gets_the_same_relevance_alone_or_in_a_batch(method):
    model = square_model()
    x1, x2 = pair_batch(3)
    params = {"k": 3, "grid": GRID, "batch_size": 2}
    if method == "integrated-jacobians":
        params["steps"] = 3
    batch = pairlens.correspond(model, x1, x2, method=method, **params)
    alone = pairlens.correspond(model, x1[2:], x2[2:], method=method, **params)
    assert torch.allclose(batch.relevance[2], alone.relevance[0], atol=1e-6, rtol=1e-4)


def test_pair_generators_depend_on_seed_and_pair_only():
    x1, x2 = pair_batch(2)
    a = [torch.rand(1, generator=g) for g in pair_generators(1, x1, x2)]
    b = [torch.rand(1, generator=g) for g in pair_generators(1, x1[1:], x2[1:])]
    c = [torch.rand(1, generator=g) for g in pair_generators(2, x1, x2)]
    assert a[1] == b[0] and a[0] != a[1] and a[0] != c[0]


# ---------------------------------------------------------------------- grids
def test_regridding_conserves_sums_and_sum_pools_nested_grids():
    g = torch.Generator().manual_seed(0)
    v = torch.rand(2, 3, 8, 6, generator=g)
    coarse = regrid(v, (4, 3))
    assert torch.allclose(coarse, v.reshape(2, 3, 4, 2, 3, 2).sum((3, 5)))
    for to in ((5, 7), (3, 3), (16, 12)):
        assert torch.allclose(regrid(v, to).sum((2, 3)), v.sum((2, 3)), rtol=1e-5)
    assert torch.allclose(area_matrix(3, 7).sum(0), torch.ones(3))
    rel = torch.rand(2, 8 * 6, 4 * 4, generator=g)
    out = regrid_pairs(rel, ((8, 6), (4, 4)), ((2, 3), (2, 2)))
    assert out.shape == (2, 6, 4)
    assert torch.allclose(out.sum((1, 2)), rel.sum((1, 2)), rtol=1e-5)
    idx = cell_index((10, 10), (3, 3))
    assert idx.min() == 0 and idx.max() == 8 and idx[0, 9] == 2


# ---------------------------------------------------------------------- results and files
def test_match_map_top_matches_and_files(tmp_path):
    model = grouped_model()
    x1, x2, truth = pasted_pair(double=True)
    exp = pairlens.correspond(model, x1, x2, method="feature-grid", grid=GRID,
                              sources=("a.png", "b.png"))
    assert isinstance(exp, pairlens.PairExplanation)
    (i, j, v), *_ = exp.top_matches(k=3)
    assert (i, j) in truth and v == pytest.approx(float(exp.relevance[0].max()))
    # clicking inside region A of image 1 highlights region B of image 2, and back
    m = exp.match_map((4, 4), image=1)
    assert m.shape == (32, 32) and m[18:22, 26:30].mean() > 10 * m.abs().mean() / 2
    back = exp.match_map((20, 28), image=2)
    assert back[2:6, 2:6].mean() == pytest.approx(float(back.max()), rel=0.5)
    with pytest.raises(ValueError, match="outside"):
        exp.match_map((40, 0))
    written = exp.save(tmp_path, stem="fg")
    assert {p.suffix for p in written} == {".png", ".npz", ".json"}
    data = np.load(tmp_path / "fg.npz")
    assert np.allclose(data["relevance"], exp.relevance.numpy())
    assert list(data["grid1"]) == [GRID, GRID] and data["map1"].shape == (1, 32, 32)
    meta = json.loads((tmp_path / "fg.json").read_text())
    assert meta["grids"] == [[GRID, GRID], [GRID, GRID]] and meta["method"] == "feature-grid"
    assert "completeness_error" in meta and meta["sources"] == ["a.png", "b.png"]


def test_marginal_maps_are_the_relevance_marginals():
    model = grouped_model()
    x1, x2 = pair_batch(2)
    for method in METHODS:
        exp = pairlens.correspond(model, x1, x2, method=method, grid=GRID, k=4)
        pooled = regrid(exp.maps[0], (GRID, GRID)).flatten(1)
        assert torch.allclose(pooled, exp.relevance.sum(2), rtol=1e-3, atol=1e-5), method


# ---------------------------------------------------------------------- guards
def test_guards(square, tiny_vit):
    x1, x2 = pair_batch(1)
    with pytest.raises(ValueError, match="first-order"):
        pairlens.correspond(square, x1, x2, method="grad-cam")
    neg = pairlens.SimilarityModel(square.encoder, head=square.head, feature_layer="features",
                                   input_size=(32, 32), similarity="neg-l2")
    with pytest.raises(ValueError, match="bilinear"):
        pairlens.correspond(neg, x1, x2, method="feature-grid")
    with pytest.raises(ValueError, match="grid"):
        pairlens.correspond(square, x1, x2, grid=0)
    with pytest.raises(ValueError, match="k must be|parameter k"):
        pairlens.correspond(square, x1, x2, k=1)
    with pytest.raises(ValueError, match="reference"):
        pairlens.correspond(square, x1, x2, method="integrated-jacobians", reference="grey")
    with pytest.raises(ValueError, match="steps"):
        pairlens.correspond(square, x1, x2, method="integrated-jacobians", steps=0)
    bare = pairlens.SimilarityModel(square.encoder, head=square.head, input_size=(32, 32))
    with pytest.raises(ValueError, match="feature_layer"):
        pairlens.correspond(bare, x1, x2, method="feature-grid")
    with pytest.raises(ValueError, match="LRP"):
        pairlens.correspond(tiny_vit, x1, x2, method="bilrp")


# ---------------------------------------------------------------------- correspondence faithfulness
def test_pair_interaction_curve_is_the_relevance_of_the_removed_block():
    # dot similarity, bias-free encoder whose receptive fields stay inside the 8-px regions: the
    # similarity is exactly bilinear in the region features, so removing regions A_t and B_t
    # leaves an interaction equal to the relevance summed over A_t x B_t (brute force below)
    from pairlens.metrics.correspondence import greedy_matching

    model = grouped_model("dot")
    x1, x2, truth = pasted_pair(double=True)
    exp = pairlens.correspond(model, x1, x2, method="feature-grid", grid=GRID)
    # zero fill: removing a region zeroes exactly its features (blur would leak across regions)
    scores = pairlens.evaluate(model, x1, x2, exp, metrics=["PI", "PD"], pair_grid=GRID,
                               pair_fill="zero", return_curves=True)
    rows, cols = greedy_matching(exp.relevance)
    rel = exp.relevance[0]
    block = [0.0] + [float(rel[rows[0, :t]][:, cols[0, :t]].sum()) for t in range(1, GRID**2 + 1)]
    assert torch.allclose(scores["PI_curve"][0], torch.tensor(block), rtol=1e-4, atol=1e-3)
    assert [(int(rows[0, t]), int(cols[0, t])) for t in range(2)] == truth
    assert scores["PD_curve"][0, 0] == pytest.approx(float(exp.score[0]), rel=1e-5)
    assert scores["PI"][0] > scores["PI-random"][0]
    # a wrong correspondence, (A, B') and (A', B), is worse by PI ... but better by PD, which
    # rewards removing one important region of each image whatever they match (module docstring)
    a, b, a2, b2 = truth[0] + truth[1]
    wrong = torch.zeros_like(exp.relevance)
    wrong[0, a, b2], wrong[0, a2, b] = 2.0, 1.0
    fake = dataclasses.replace(exp, relevance=wrong)
    bad = pairlens.evaluate(model, x1, x2, fake, metrics=["PI", "PD"], pair_grid=GRID,
                            pair_fill="zero")
    assert bad["PI"][0] < scores["PI"][0] - 1
    assert bad["PD"][0] < scores["PD"][0]


def test_first_order_maps_are_ranked_by_their_own_order_and_references_are_seeded(square):
    x1, x2 = pair_batch(2)
    exp = pairlens.explain(square, x1, x2, method="grad-cam")
    a = pairlens.evaluate(square, x1, x2, exp, metrics=["PI"], pair_grid=GRID, seed=3)
    assert torch.equal(a["PI"], a["PI-marginal"])
    single = pairlens.evaluate(square, x1[1:], x2[1:], (exp.maps[0][1:], exp.maps[1][1:]),
                               metrics=["PI"], pair_grid=GRID, seed=3)
    assert torch.allclose(single["PI-random"][0], a["PI-random"][1], rtol=1e-5)
    with pytest.raises(ValueError, match="fill"):
        pairlens.evaluate(square, x1, x2, exp, metrics=["PD"], pair_fill="grey")


def test_evaluate_stores_and_reports_correspondence_methods(tmp_path):
    from pairlens.report import write_report
    from pairlens.study import PairSet, ResultStore, parse_methods, parse_metrics
    from pairlens.study.loop import run_evaluation

    model = grouped_model()
    pairs = PairSet(model, "digits", n=2, seed=0)
    specs = parse_methods("feature-grid[grid=4],bilrp[k=2;grid=4],grad-cam")
    with ResultStore(tmp_path / "r.db") as store:
        run_evaluation(model, "grouped", pairs, specs, parse_metrics("SD,PI,PD"), store,
                       step=64, pairs_per_batch=2, progress=False)
    written = write_report([tmp_path / "r.db"], tmp_path / "report", formats=["md", "csv"])
    text = (tmp_path / "report" / "report.md").read_text()
    for label in ("feature-grid[grid=4]", "bilrp[grid=4,k=2]", "grad-cam"):
        assert label in text
    for metric in ("PI ↑", "PI-random ↑", "PI-marginal ↑", "PD ↓", "PD-random ↓"):
        assert metric in text
    assert any(p.name.startswith("curves") for p in written)


# ---------------------------------------------------------------------- command line
def test_correspond_command_writes_figure_relevance_and_json(tmp_path, capsys):
    from pairlens.cli import main

    out = tmp_path / "out"
    rc = main(["correspond", "--model", "digits", "--methods", "feature-grid", "--grid", "4",
               "--top", "5", "--out", str(out), "--json", "--device", "cpu"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    entry = report["methods"]["feature-grid"]
    assert entry["grid"] == [[4, 4], [4, 4]] and len(entry["top"]) == 5
    data = np.load(out / "feature-grid.npz")
    assert data["relevance"].shape == (1, 16, 16)
    assert (out / "feature-grid.png").stat().st_size > 1000
    for bad, message in ((["--methods", "grad-cam"], "not a correspondence method"),
                         (["--grid", "0"], "grid"),
                         (["--param", "nope=1"], "no selected method has parameter")):
        assert main(["correspond", "--model", "digits", "--out", str(out), *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------- the demo
def test_demo_click_shows_the_matched_region_of_the_other_image():
    from pairlens.demo import core

    model = grouped_model()
    x1, x2, truth = pasted_pair(double=True)
    exp = pairlens.correspond(model, x1, x2, method="feature-grid", grid=GRID)
    v1, v2 = core.match_views(exp)  # default: the strongest match, region A of image 1
    assert v1.size == v2.size == (256, 256)  # 32 px enlarged 8 times
    # a click inside region A' of image 1 (display pixels) lights up region B' of image 2
    (a, b), (a2, b2) = truth
    r, c = divmod(a2, GRID)
    point = core.click_point((8 * (8 * c + 4), 8 * (8 * r + 4)), exp)
    assert point == (8 * r + 4, 8 * c + 4)
    _, shown = core.match_views(exp, point, image=1)
    heat = np.asarray(shown, dtype=float)[..., 0] - np.asarray(shown, dtype=float)[..., 2]
    rb, cb = divmod(b2, GRID)
    inside = heat[64 * rb : 64 * (rb + 1), 64 * cb : 64 * (cb + 1)].mean()
    assert inside > heat.mean() + 50  # red (high) over B', blue (low) elsewhere
    back, _ = core.match_views(exp, (8 * (b // GRID) + 4, 8 * (b % GRID) + 4), image=2)
    assert back.size == (256, 256)
    with pytest.raises(core.DemoError, match="correspondence"):
        core.match_views(pairlens.explain(model, x1, x2, method="grad-cam"))
    # the method's widgets round-trip: empty grid and k mean "feature grid" and "all"
    assert core.coerce_params("bilrp", {"grid": "", "k": ""}) == {"grid": None, "k": None}
    assert core.coerce_params("bilrp", {"grid": "7"}) == {"grid": 7}
    with pytest.raises(ValueError, match="grid"):
        core.coerce_params("bilrp", {"grid": "7x5"})


# ---------------------------------------------------------------------- real architectures
def _resnet50():
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet50()
    net.fc = nn.Identity()  # 32 px keeps the test fast: layer4 is then a 1 x 1 grid
    return pairlens.SimilarityModel(net, feature_layer="layer4", input_size=(32, 32),
                                    name="resnet50")


def _timm_vit(**kw):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                            img_size=64, depth=2, **kw)
    layer = "blocks.1" if kw.get("global_pool") == "avg" else "blocks.1.norm1"
    return pairlens.SimilarityModel(net, feature_layer=layer, input_size=(64, 64), name="vit")


ARCHITECTURES = {
    "resnet50": _resnet50,
    "timm-vit": _timm_vit,
    "timm-vit-registers-avgpool": lambda: _timm_vit(reg_tokens=4, global_pool="avg",
                                                    class_token=False),
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_method_runs_on_real_architectures(arch):
    model = ARCHITECTURES[arch]()
    g = torch.Generator().manual_seed(0)
    b = 1 if arch == "resnet50" else 2  # ResNet-50 is the costly one: one pair
    size = model.input_size[0]
    x1, x2 = (torch.randn(b, 3, size, size, generator=g) for _ in range(2))
    fast = {"feature-grid": {"k": 4}, "bilrp": {"k": 2},
            "integrated-jacobians": {"k": 2, "steps": 2}}
    for method in METHODS:
        if method == "bilrp" and arch != "resnet50":
            with pytest.raises(ValueError, match="no rules"):  # zennit has no transformer rules
                pairlens.correspond(model, x1, x2, method=method, **fast[method])
            continue
        exp = pairlens.correspond(model, x1, x2, method=method, grid=4, **fast[method])
        assert exp.relevance.shape == (b, 16, 16) and exp.maps[0].shape == (b, size, size)
        assert torch.isfinite(exp.relevance).all() and exp.relevance.abs().sum() > 0
        with torch.no_grad():
            assert torch.allclose(exp.score, model.similarity(x1, x2), atol=1e-5)


# ---------------------------------------------------------------------- the documentation
def test_documented_commands_run_at_a_tiny_size(tmp_path, capsys):
    # every number and figure of docs/correspondence.md comes from one of these commands; here
    # each runs on one digits pair with the fewest directions and steps
    import importlib.util
    from pathlib import Path

    from pairlens.cli import main

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "correspondence.md").read_text()
    for command in ("pairlens correspond --methods feature-grid,bilrp,integrated-jacobians",
                    "pairlens evaluate --model photos --data photos",
                    "pairlens evaluate --model digits --data digits",
                    "python benchmarks/correspondence.py", "python benchmarks/pair_metric_fill.py"):
        assert command in doc, command
    for name in ("feature-grid", "bilrp", "integrated-jacobians"):
        assert (root / "docs" / "img" / "correspondence" / f"{name}.png").is_file()
    tiny = ["--param", "bilrp.k=2", "--param", "integrated-jacobians.k=2",
            "--param", "integrated-jacobians.steps=2"]
    assert main(["correspond", "--model", "digits", "--methods",
                 "feature-grid,bilrp,integrated-jacobians", *tiny, "--out", str(tmp_path / "fig"),
                 "--quiet", "--device", "cpu"]) == 0
    db = tmp_path / "d.db"
    assert main(["evaluate", "--model", "digits", "--data", "digits", "--pairs", "1", "--methods",
                 "feature-grid,bilrp[k=2],integrated-jacobians[k=2;steps=2],grad-cam,random",
                 "--metrics", "PI,PD", "--store", str(db), "--device", "cpu", "--quiet"]) == 0
    assert main(["report", str(db), "--out", str(tmp_path / "report"), "--format", "md"]) == 0
    assert "PI-random" in (tmp_path / "report" / "report.md").read_text()
    def script(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}",
                                                      root / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    rows = script("correspondence").main(["--models", "digits", "--batch", "1", "--repeats", "1",
                                          "--k", "2", "--steps", "2", "--threads", "1"])
    assert {r["method"] for r in rows} == set(METHODS)
    assert all(r["ratio"] > 0 for r in rows)
    rows = script("pair_metric_fill").main(["--pairs", "1", "--methods", "grad-cam,random"])
    assert {(r["method"], r["fill"]) for r in rows} == {
        (m, f) for m in ("grad-cam", "random") for f in ("zero", "blur")}
    capsys.readouterr()


def test_a_zero_embedding_gets_zero_relevance_not_a_huge_one():
    # image 1 all zero: the bias-free grouped encoder gives a zero embedding, cosine 0
    model = grouped_model()
    x1, x2, _ = pasted_pair(double=False)
    for method in METHODS:
        exp = pairlens.correspond(model, torch.zeros_like(x1), x2, method=method, grid=GRID,
                                  **EXACT[method])
        assert exp.score[0] == 0 and torch.isfinite(exp.relevance).all()
        assert exp.relevance.abs().max() == 0, method
