"""ROAD and region insertion / deletion for pairs, on inputs whose right answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import pair_batch

import pairlens
from pairlens.metrics import linear_impute
from pairlens.metrics.regions import (
    grid_labels,
    region_labels,
    region_ranks_and_counts,
)
from pairlens.metrics.road import NEIGHBOURS, removal_masks


def square_map(b: int = 2, inside: float = 1.0, outside: float = 0.0) -> torch.Tensor:
    """The region the toy encoder sees (rows/cols 4..13 of 32) marked ``inside``."""
    m = torch.full((b, 32, 32), outside)
    m[:, 4:14, 4:14] = inside
    return m


# ------------------------------------------------------------------------------ imputation
def test_linear_imputation_solves_the_neighbour_mean_equations():
    rng = np.random.default_rng(0)
    img = rng.random((3, 9, 7))
    removed = rng.random((9, 7)) < 0.5
    removed[0, 0] = removed[8, 6] = True  # corners: only 3 neighbours inside the image
    out = linear_impute(img, removed)
    np.testing.assert_array_equal(out[:, ~removed], img[:, ~removed])
    for r, c in zip(*np.nonzero(removed), strict=True):  # brute force: every equation holds
        num, den = np.zeros(3), 0.0
        for dy, dx, w in NEIGHBOURS:
            if 0 <= r + dy < 9 and 0 <= c + dx < 7:
                num += w * out[:, r + dy, c + dx]
                den += w
        np.testing.assert_allclose(out[:, r, c], num / den, atol=1e-10)


def test_one_removed_pixel_is_the_weighted_mean_of_its_eight_neighbours():
    img = np.random.default_rng(1).random((2, 3, 3))
    removed = np.zeros((3, 3), bool)
    removed[1, 1] = True
    direct = img[:, 0, 1] + img[:, 2, 1] + img[:, 1, 0] + img[:, 1, 2]
    diagonal = img[:, 0, 0] + img[:, 0, 2] + img[:, 2, 0] + img[:, 2, 2]
    np.testing.assert_allclose(linear_impute(img, removed)[:, 1, 1],
                               direct / 6 + diagonal / 12)


def test_removal_masks_morf_and_lerf_count_floor_of_the_fraction():
    ranks = torch.arange(10).view(1, 10)
    assert removal_masks(ranks, 0.35, "MoRF").nonzero()[:, 1].tolist() == [0, 1, 2]
    assert removal_masks(ranks, 0.35, "LeRF").nonzero()[:, 1].tolist() == [7, 8, 9]


def test_imputing_every_pixel_is_refused():
    with pytest.raises(ValueError, match="every pixel"):
        linear_impute(np.zeros((3, 4, 4)), np.ones((4, 4), bool))


# ------------------------------------------------------------------------------ ROAD
def test_road_on_the_map_of_exactly_the_seen_square(square):
    """The encoder sees only the square. Removing anything else (LeRF of the square map, MoRF of
    its complement) cannot change the similarity: those curves equal the unaltered similarity
    at every fraction up to 0.9 (921 of the 924 outside pixels). Removing the square first
    (MoRF of the square map) must lower it."""
    x1, x2 = pair_batch(2)
    base = square.similarity(x1, x2)
    seen = square_map()
    metrics = ("SMoRF", "SLeRF", "CMoRF", "CLeRF")
    on = pairlens.evaluate(square, x1, x2, (seen, seen), metrics=metrics, return_curves=True)
    off = pairlens.evaluate(square, x1, x2, (1 - seen, 1 - seen), metrics=metrics,
                            return_curves=True)
    for name in ("SLeRF_curve", "CLeRF_curve"):
        torch.testing.assert_close(on[name], base[:, None].expand(2, 9), atol=1e-5, rtol=0)
    for name in ("SMoRF_curve", "CMoRF_curve"):
        torch.testing.assert_close(off[name], base[:, None].expand(2, 9), atol=1e-5, rtol=0)
    assert (on["SMoRF"] < base - 0.05).all() and (on["CMoRF"] < base - 0.05).all()


def test_road_is_the_same_alone_and_in_a_batch(square):
    x1, x2 = pair_batch(3)
    maps = (torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)),) * 2
    fr = (0.3, 0.6)
    batch = pairlens.evaluate(square, x1, x2, maps, metrics=("SMoRF", "CLeRF"), road_fractions=fr)
    for i in range(3):
        one = pairlens.evaluate(square, x1[i:i + 1], x2[i:i + 1], (maps[0][i:i + 1],) * 2,
                                metrics=("SMoRF", "CLeRF"), batch_size=7, road_fractions=fr)
        for k in one:
            torch.testing.assert_close(batch[k][i:i + 1], one[k], atol=1e-5, rtol=0)


def test_road_bad_fractions_are_clear_errors(square):
    x1, x2 = pair_batch(1)
    with pytest.raises(ValueError, match="fractions"):
        pairlens.evaluate(square, x1, x2, (square_map(1),) * 2, metrics=("SMoRF",),
                          road_fractions=(0.5, 1.0))


# ------------------------------------------------------------------------------ regions
def test_region_ranks_follow_region_means_and_counts_stop_at_region_boundaries():
    labels = torch.tensor([[[0, 0, 1], [2, 2, 1], [2, 2, 1]]])  # sizes 2, 3, 4
    maps = torch.tensor([[[1.0, 1.0, 5.0], [2.0, 2.0, 5.0], [2.0, 2.0, 5.0]]])
    ranks, counts = region_ranks_and_counts(maps, labels, n_steps=3)
    # region 1 (mean 5) first, then region 2 (mean 2), then region 0
    assert ranks.view(3, 3).tolist() == [[7, 8, 0], [3, 4, 1], [5, 6, 2]]
    # targets ceil(k*9/3) = 0, 3, 6, 9 -> prefixes of sizes 3, 7, 9 cover them
    assert counts.tolist() == [[0, 3, 7, 9]]


def test_region_ties_are_broken_by_label():
    labels = grid_labels(1, 4, 4, 2)
    _, counts = region_ranks_and_counts(torch.zeros(1, 4, 4), labels, 4)
    ranks, _ = region_ranks_and_counts(torch.zeros(1, 4, 4), labels, 4)
    assert ranks.view(4, 4)[:2, :2].flatten().tolist() == [0, 1, 2, 3]  # cell 0 first
    assert counts.tolist() == [[0, 4, 8, 12, 16]]


@torch.no_grad()
def _region_curves_by_hand(model, x1, x2, m1, m2, size):
    """Reference: regions of a grid, ranked by mean, deleted one cell per step, in a plain loop."""
    from pairlens.metrics.faithfulness import auc

    h = x1.shape[-1]
    cells = [(r, c) for r in range(0, h, size) for c in range(0, h, size)]

    def order(m):
        means = [float(m[r:r + size, c:c + size].mean()) for r, c in cells]
        return sorted(range(len(cells)), key=lambda i: (-means[i], i))

    out = {"RSD": [], "RCD": []}
    for i in range(x1.shape[0]):
        o1, o2 = order(m1[i]), order(m2[i])
        a, b = x1[i:i + 1].clone(), x2[i:i + 1].clone()
        sd, cd = [], []
        for k in range(len(cells) + 1):
            if k:
                r, c = cells[o1[k - 1]]
                a[..., r:r + size, c:c + size] = 0
                r, c = cells[o2[k - 1]]
                b[..., r:r + size, c:c + size] = 0
            sd.append(float(model.similarity(a, b)))
            one, two = model.similarity(a, x2[i:i + 1]), model.similarity(x1[i:i + 1], b)
            cd.append(float(one + two) / 2)
        out["RSD"].append(sd)
        out["RCD"].append(cd)
    return {k: auc(torch.tensor(v)) for k, v in out.items()}


def test_region_deletion_matches_a_plain_loop(square):
    x1, x2 = pair_batch(2)
    g = torch.Generator().manual_seed(3)
    m1, m2 = torch.rand(2, 32, 32, generator=g), torch.rand(2, 32, 32, generator=g)
    got = pairlens.evaluate(square, x1, x2, (m1, m2), metrics=("RSD", "RCD"), region_size=8)
    want = _region_curves_by_hand(square, x1, x2, m1, m2, 8)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=0)


def test_region_games_rank_the_seen_square_above_its_complement(square):
    """With 4-px cells the seen square (rows/cols 4..13) spans whole cells 1..3 of each axis: a
    map of the square deletes what the model sees first and inserts it first."""
    x1, x2 = pair_batch(2)
    seen = square_map()
    metrics = ("RSI", "RSD", "RCI", "RCD")
    good = pairlens.evaluate(square, x1, x2, (seen, seen), metrics=metrics, region_size=4)
    bad = pairlens.evaluate(square, x1, x2, (1 - seen, 1 - seen), metrics=metrics, region_size=4)
    assert (good["RCD"] < bad["RCD"] - 0.2).all() and (good["RCI"] > bad["RCI"] + 0.2).all()
    assert (good["RSI"] > bad["RSI"]).all()


def test_slic_regions_cover_the_image_and_give_n_plus_one_scores(square):
    x1, x2 = pair_batch(2)
    labels = region_labels(square.denormalize(torch.cat([x1, x2])), "slic", 8)
    assert labels.shape == (4, 32, 32) and labels.min() >= 0
    out = pairlens.evaluate(square, x1, x2, (square_map(),) * 2, metrics=("RSD", "RCI"),
                            regions="slic", region_size=8, return_curves=True)
    n = math.ceil(32 / 8) ** 2
    assert out["RSD_curve"].shape == (2, n + 1) and torch.isfinite(out["RCI"]).all()
    with pytest.raises(ValueError, match="grid"):
        pairlens.evaluate(square, x1, x2, (square_map(),) * 2, metrics=("RSD",), regions="hex")


def test_the_documented_evaluate_and_report_commands_run_at_a_tiny_size(tmp_path, capsys):
    """docs/evaluation.md's photos example, at 2 digits pairs: the new metrics are stored and the
    report puts each method next to random (names given in any case)."""
    from pairlens.cli import main

    db = tmp_path / "d.db"
    code = main(["evaluate", "--model", "digits", "--data", "digits", "--pairs", "2",
                 "--methods", "grad-cam,random", "--metrics", "CD,rcd,CMoRF,clerf",
                 "--step", "64", "--store", str(db), "--threads", "1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    code = main(["report", str(db), "--out", str(tmp_path / "rep"), "--format", "md,csv"])
    assert code == 0, capsys.readouterr().err
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| method | CD ↓ | RCD ↓ | CMoRF ↓ | CLeRF ↑ |" in md
    assert "Against random, 95 % intervals and paired Wilcoxon test" in md
    assert "| grad-cam | RCD ↓ |" in md
