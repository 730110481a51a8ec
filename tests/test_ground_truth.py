"""The composites benchmark (data, pairs, training batches) and the ground-truth metrics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pairlens
from pairlens.data import composites as C
from pairlens.metrics import evaluate
from pairlens.metrics.ground_truth import (
    energy_pointing_game,
    pair_energy_pointing_game,
    pointing_game,
)
from pairlens.models.similarity import IMAGENET_MEAN, IMAGENET_STD, SimilarityModel


# ---------------------------------------------------------------- metrics against plain loops
def ref_pointing(m: torch.Tensor, mask: torch.Tensor) -> float:
    values = m.flatten().tolist()
    inside = mask.flatten().tolist()
    if not any(inside):
        return math.nan
    top = max(values)
    at_max = [i for i, v in enumerate(values) if v == top]
    return sum(inside[i] for i in at_max) / len(at_max)


def ref_energy(m: torch.Tensor, mask: torch.Tensor) -> float:
    values = m.flatten().tolist()
    inside = mask.flatten().tolist()
    lo, hi = min(values), max(values)
    if not any(inside) or hi == lo:
        return math.nan
    e = [(v - lo) / (hi - lo) for v in values]
    return sum(v for v, i in zip(e, inside, strict=True) if i) / sum(e)


def test_pointing_games_match_plain_loops_with_ties():
    g = torch.Generator().manual_seed(0)
    maps = torch.randint(0, 3, (6, 9, 7), generator=g).float()  # few levels: many tied maxima
    maps[1] = 2.5  # constant map
    maps[2, 4, 4] = 9.0  # one clear maximum
    masks = torch.rand(6, 9, 7, generator=g) < 0.3
    masks[3] = False  # empty mask
    masks[2, 4, 4] = True
    pg, epg = pointing_game(maps, masks), energy_pointing_game(maps, masks)
    for i in range(6):
        for got, ref in ((pg[i], ref_pointing(maps[i], masks[i])),
                         (epg[i], ref_energy(maps[i], masks[i]))):
            if math.isnan(ref):
                assert math.isnan(float(got))
            else:
                assert float(got) == pytest.approx(ref, abs=1e-6)
    assert float(pg[2]) == 1.0
    assert float(pg[1]) == pytest.approx(float(masks[1].float().mean()))  # constant map: chance
    assert math.isnan(float(epg[1]))  # a constant map has no energy


def test_pointing_games_guard_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        pointing_game(torch.full((1, 4, 4), math.nan), torch.ones(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        energy_pointing_game(torch.zeros(1, 4, 4), torch.ones(1, 4, 5, dtype=torch.bool))


# ---------------------------------------------------------------- the data
def test_library_objects_and_masks():
    lib = C.object_library()
    assert len(lib) == C.N_OBJECTS == 75
    assert len({o.name for o in lib}) == 75
    for obj in lib:
        assert obj.rgb.shape[1:] == obj.alpha.shape
        assert float(obj.rgb.min()) >= 0 and float(obj.rgb.max()) <= 1
        assert bool((obj.alpha >= C.MASK_THRESHOLD).any())
        # cropped to the mask: every border row/column touches the object
        inside = obj.alpha >= C.MASK_THRESHOLD
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()


@pytest.mark.parametrize("size", [64, 96])
def test_pairs_share_exactly_one_object_and_masks_are_exact(size):
    for pid in range(6):
        pair = C.composite_pair(pid, seed=3, size=size)
        ids1 = {p.object_id for p in pair.layout1.objects}
        ids2 = {p.object_id for p in pair.layout2.objects}
        assert ids1 & ids2 == {pair.shared}
        assert len(ids1) == len(ids2) == 1 + C.DEFAULT_DISTRACTORS
        x1, x2, m1, m2 = pair.render()
        assert x1.shape == (3, size, size) and m1.shape == (size, size) and m1.dtype == torch.bool
        assert m1.any() and m2.any()
        for layout, x, m in ((pair.layout1, x1, m1), (pair.layout2, x2, m2)):
            scene = C.render(layout)
            assert torch.equal(scene.image, x)
            masks = scene.masks
            assert int(masks.sum(0).max()) == 1  # objects never overlap
            # the shared object's mask is exactly where the picture changes when it is removed
            without = C.render(layout.without([pair.shared])).image
            changed = (without - x).abs().amax(0) > 0
            assert not (m & ~changed).any()  # every mask pixel changes (alpha >= 0.5)
            place = next(p for p in layout.objects if p.object_id == pair.shared)
            box = torch.zeros_like(m)
            box[place.top : place.top + place.height, place.left : place.left + place.width] = True
            assert not (changed & ~box).any()  # nothing outside its box changes


def test_pair_does_not_depend_on_batch():
    x1, x2, m1, m2 = C.pair_batch([4, 0, 7], seed=1)
    alone = C.pair_batch([7], seed=1)
    assert torch.equal(x1[2], alone[0][0]) and torch.equal(m2[2], alone[3][0])
    other_seed = C.pair_batch([7], seed=2)
    assert not torch.equal(alone[0], other_seed[0])


def test_training_batch_distractors_are_distinct():
    g = torch.Generator().manual_seed(0)
    anchors = [3, 10, 3, 40]
    state = g.get_state()
    v1, v2 = C.shared_object_batch(anchors, g, size=64)
    assert v1.shape == v2.shape == (4, 3, 64, 64)
    # replay the generator to recover the layouts: the distractors are the batch's first draw
    g.set_state(state)
    pool = [i for i in range(C.N_OBJECTS) if i not in set(anchors)]
    drawn = [pool[i] for i in torch.randperm(len(pool), generator=g)[: 2 * 4 * 2].tolist()]
    assert len(set(drawn)) == len(drawn) and not set(drawn) & set(anchors)
    with pytest.raises(ValueError, match="distinct objects"):
        C.shared_object_batch(list(range(16)), g)


# ---------------------------------------------------------------- an encoder with a known answer
KEY = (1.0, 0.0, 1.0)
KEY_TOLERANCE = 0.05  # the object is painted within 0.02 of KEY, keeping a trace of its content


class KeyRegionEncoder(nn.Module):
    """Sees only the pixels close to one colour (the shared object, painted with it)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        for conv in (self.conv1, self.conv2):
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.5)
                conv.bias.copy_(torch.rand(conv.bias.shape, generator=g) * 0.1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("key", torch.tensor(KEY).view(1, 3, 1, 1))
        self.features = nn.Identity()

    def forward(self, x):
        region = (x * self.std + self.mean - self.key).abs().amax(1, keepdim=True) < KEY_TOLERANCE
        region = region.float().detach()
        h = F.relu(self.conv1(x * region)) * region
        h = F.relu(self.conv2(h)) * region
        return self.features(F.avg_pool2d(h, 2))


def key_region_model() -> SimilarityModel:
    """The :class:`KeyRegionEncoder` with a linear head (exact case of feature-grid)."""
    torch.manual_seed(1)
    return SimilarityModel(KeyRegionEncoder(), head=nn.Linear(16, 8), feature_layer="features",
                           input_size=(64, 64), crop_fraction=1.0, name="key-region")


def key_painted_pairs(n: int, size: int = 64):
    x1, x2, m1, m2 = C.pair_batch(range(n), seed=0, size=size)
    key = torch.tensor(KEY).view(1, 3, 1, 1)
    sign = 1 - 2 * key  # towards the inside of the unit cube

    def paint(x, m):
        # a faint copy of the object's content, so two views of it embed differently (an exactly
        # equal pair would have a stationary similarity and blank gradients)
        return torch.where(m[:, None], key + sign * 0.02 * x.mean(1, keepdim=True), x)

    return paint(x1, m1), paint(x2, m2), m1, m2


def test_ground_truth_region_encoder_gives_pointing_game_one():
    model = key_region_model()
    x01_1, x01_2, m1, m2 = key_painted_pairs(6)
    x1, x2 = model.normalize(x01_1), model.normalize(x01_2)
    # the encoder's region is exactly the ground truth
    enc = model.encoder
    for x, m in ((x1, m1), (x2, m2)):
        seen = (x * enc.std + enc.mean - enc.key).abs().amax(1) < KEY_TOLERANCE
        assert torch.equal(seen, m)
    scores = {}
    for method in ("input-x-gradient", "random"):
        exp = pairlens.explain(model, x1, x2, method=method)
        scores[method] = evaluate(model, x1, x2, exp, metrics=("PG", "EPG"), masks=(m1, m2))
    assert torch.equal(scores["input-x-gradient"]["PG"], torch.ones(6))
    assert torch.allclose(scores["input-x-gradient"]["EPG"], torch.ones(6))
    assert float(scores["random"]["PG"].mean()) < 0.5
    assert float(scores["random"]["EPG"].mean()) < 0.2  # about the masks' area fraction


def test_evaluate_needs_masks_for_ground_truth_metrics(square):
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="masks"):
        evaluate(square, x, x, (torch.rand(1, 32, 32), torch.rand(1, 32, 32)), metrics=("PG",))
    with pytest.raises(ValueError, match="mask 2"):
        evaluate(square, x, x, (torch.rand(1, 32, 32), torch.rand(1, 32, 32)), metrics=("EPG",),
                 masks=(torch.ones(1, 32, 32), torch.ones(1, 16, 16)))


# ---------------------------------------------------------------- evaluate --data composites
def _toy64(checkpoint=None, embedding=None, **kw):
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                        nn.ReLU())
    return SimilarityModel(enc, head=nn.Linear(16, 8), feature_layer="2", input_size=(64, 64),
                           crop_fraction=1.0, name="toy64")


def test_evaluate_cli_on_composites_stores_ground_truth_and_reports_it(tmp_path, capsys):
    import sqlite3

    from pairlens.cli import main
    from pairlens.models.registry import _MODELS, register_model

    if "toy64" not in _MODELS:
        register_model("toy64", summary="toy", input_size=(64, 64))(_toy64)
    db = tmp_path / "gt.db"
    args = ["evaluate", "--model", "toy64", "--data", "composites", "--pairs", "3",
            "--methods", "grad-cam,random", "--metrics", "PG,EPG", "--store", str(db),
            "--device", "cpu", "--quiet"]
    assert main(args) == 0
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT method, pair_id, metric, value FROM results").fetchall()
    assert len(rows) == 2 * 3 * 2
    assert all(0.0 <= v <= 1.0 for *_, v in rows)
    # the stored PG is the pointing game of the maps on the benchmark's own masks
    from pairlens.study import PairSet

    model = _toy64()
    pairs = PairSet(model, "composites", mode="shared-object", n=3)
    x1, x2 = pairs.batch([0, 1, 2])
    m1, m2 = pairs.masks([0, 1, 2])
    exp = pairlens.explain(model, x1, x2, method="grad-cam")
    expected = evaluate(model, x1, x2, exp, metrics=("PG",), masks=(m1, m2))["PG"]
    stored = sorted((pid, v) for meth, pid, met, v in rows if meth == "grad-cam" and met == "PG")
    assert [v for _, v in stored] == pytest.approx(expected.tolist())

    assert main(["report", "--store", str(db), "--out", str(tmp_path / "rep"),
                 "--format", "md"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    table = md.split("## Ground truth")[1]
    assert "| grad-cam |" in table and "| random |" in table

    capsys.readouterr()
    assert main(["evaluate", "--model", "toy64", "--data", "digits", "--pairs", "1",
                 "--methods", "random", "--metrics", "PG", "--store", str(tmp_path / "x.db"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pairlens: error:") and "composites" in err and "\n" not in err


# ---------------------------------------------------------------- the shared-object trainer
def _shared_object_run(out, epochs, fail_after_epoch=None):
    from pairlens.training.composites import train_shared_object
    from pairlens.training.simclr import TrainConfig, TrainingInterrupted

    config = TrainConfig(epochs=epochs, batch_size=4, steps_per_epoch=2, lr=1e-3,
                         temperature=0.2, out=str(out), resume=(out / "checkpoint.pt").exists(),
                         device="cpu", progress=False)
    hooks = []
    if fail_after_epoch is not None:
        def crash(trainer, epoch, row):
            if epoch == fail_after_epoch + 1:
                raise TrainingInterrupted("simulated crash")
        hooks.append(crash)
    return train_shared_object("resnet-mini-64", config, hooks=hooks)


def test_shared_object_training_resumes_exactly(tmp_path):
    from pairlens.training.simclr import TrainingInterrupted, load_trained

    net, log = _shared_object_run(tmp_path / "full", epochs=2)
    assert len(log) == 2 and all(math.isfinite(r["loss"]) for r in log)
    with pytest.raises(TrainingInterrupted):
        _shared_object_run(tmp_path / "crash", epochs=2, fail_after_epoch=1)
    resumed, _ = _shared_object_run(tmp_path / "crash", epochs=2)
    for k, v in net.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    model = load_trained(tmp_path / "full" / "model.pt")
    assert model.input_size == (64, 64) and model.feature_layer == "layer3"
    with pytest.raises(ValueError, match="batch-size"):
        from pairlens.training.composites import train_shared_object
        from pairlens.training.simclr import TrainConfig

        train_shared_object("resnet-mini-64", TrainConfig(batch_size=16, steps_per_epoch=1))


def test_removal_drops_match_a_plain_loop():
    from pairlens.training.composites import removal_drops

    model = _toy64()
    res = removal_drops(model, n_pairs=3, seed=5)

    def sim(a, b):
        with torch.no_grad():
            return float(model.similarity(model.normalize(a[None]), model.normalize(b[None])))

    for i in range(3):
        pair = C.composite_pair(i, 5, 64)
        x1, x2 = C.render(pair.layout1).image, C.render(pair.layout2).image
        s = sim(x1, x2)
        no1 = C.render(pair.layout1.without([pair.shared])).image
        no2 = C.render(pair.layout2.without([pair.shared])).image
        d1 = C.render(pair.layout1.without(pair.distractors(1)[:1])).image
        d2 = C.render(pair.layout2.without(pair.distractors(2)[:1])).image
        shared = res["per_pair"]["drop_shared"][i].tolist()
        distractor = res["per_pair"]["drop_distractor"][i].tolist()
        assert shared == pytest.approx([s - sim(no1, x2), s - sim(x1, no2)], abs=1e-5)
        assert distractor == pytest.approx([s - sim(d1, x2), s - sim(x1, d2)], abs=1e-5)
    sims = torch.zeros(3, 3)
    for i in range(3):
        for j in range(3):
            sims[i, j] = sim(C.render(C.composite_pair(i, 5, 64).layout1).image,
                             C.render(C.composite_pair(j, 5, 64).layout2).image)
    aucs = []
    for i in range(3):
        objs = {p.object_id for p in C.composite_pair(i, 5, 64).layout1.objects}
        others = [j for j in range(3) if j != i and not objs & {
            p.object_id for p in C.composite_pair(j, 5, 64).layout2.objects}]
        if others:
            aucs.append(sum(float(sims[i, i] > sims[i, j]) for j in others) / len(others))
    assert res["partner_auc"] == pytest.approx(sum(aucs) / len(aucs), abs=1e-6)


# ------------------------------------------------------------ pair energy pointing game (PEPG)
def _region_fractions_by_loop(mask: torch.Tensor, g: int) -> list[float]:
    h = mask.shape[0] // g
    return [float(mask[r * h:(r + 1) * h, c * h:(c + 1) * h].float().mean())
            for r in range(g) for c in range(g)]


def test_pair_energy_pointing_game_matches_a_plain_loop():
    g, size = 7, 28
    gen = torch.Generator().manual_seed(0)
    masks = (torch.rand(3, size, size, generator=gen) < 0.3,
             torch.rand(3, size, size, generator=gen) < 0.2)
    rel = torch.randn(3, g * g, g * g, generator=gen)
    got = pair_energy_pointing_game(masks, relevance=rel, grids=((g, g), (g, g)), grid=g)
    for b in range(3):
        f1 = _region_fractions_by_loop(masks[0][b], g)
        f2 = _region_fractions_by_loop(masks[1][b], g)
        num = den = 0.0
        for i in range(g * g):
            for j in range(g * g):
                r = max(float(rel[b, i, j]), 0.0)
                num += f1[i] * f2[j] * r
                den += r
        assert math.isclose(float(got[b]), num / den, rel_tol=1e-5)


def test_pair_energy_pointing_game_known_answers():
    g, size = 4, 16  # 4 x 4 regions of 4 px
    m1 = torch.zeros(1, size, size, dtype=torch.bool)
    m2 = torch.zeros(1, size, size, dtype=torch.bool)
    m1[0, :4, :4] = True    # region 0 of image 1
    m2[0, 12:, 12:] = True  # region 15 of image 2
    grids = ((g, g), (g, g))
    on_block = torch.zeros(1, 16, 16)
    on_block[0, 0, 15] = 2.0
    on_block[0, 3, 3] = -5.0  # negative relevance is not energy
    off_block = torch.zeros(1, 16, 16)
    off_block[0, 0, 14] = 1.0  # the object of image 1 matched with the wrong region of image 2
    uniform = torch.ones(1, 16, 16)

    def score(r):
        return float(pair_energy_pointing_game((m1, m2), relevance=r, grids=grids, grid=g))

    assert score(on_block) == pytest.approx(1.0)
    assert score(off_block) == 0.0
    assert score(uniform) == pytest.approx((1 / 16) ** 2)  # chance: product of area fractions
    # an explanation on a coarser native grid is re-binned (sums conserved) onto the common grid
    coarse = torch.zeros(1, 4, 4)
    coarse[0, 0, 3] = 1.0  # 2 x 2 grid: top-left quarter of 1 with bottom-right quarter of 2
    # (spread evenly over its 4 x 4 sub-region pairs, of which one is the object block)
    assert float(pair_energy_pointing_game((m1, m2), relevance=coarse, grids=((2, 2), (2, 2)),
                                           grid=g)) == pytest.approx(1 / 16)
    assert math.isnan(score(torch.zeros(1, 16, 16)))  # no positive relevance
    assert math.isnan(float(pair_energy_pointing_game(
        (torch.zeros_like(m1), m2), relevance=on_block, grids=grids, grid=g)))
    with pytest.raises(ValueError, match="relevance"):
        pair_energy_pointing_game((m1, m2), relevance=torch.zeros(2, 16, 16), grids=grids, grid=g)
    with pytest.raises(ValueError, match="finer"):
        pair_energy_pointing_game((m1, m2), relevance=on_block, grids=grids, grid=32)


def test_pair_energy_pointing_game_of_two_maps_is_the_product_of_region_energies():
    g, size = 4, 16
    gen = torch.Generator().manual_seed(1)
    maps = (torch.rand(2, size, size, generator=gen), torch.rand(2, size, size, generator=gen))
    masks = (torch.rand(2, size, size, generator=gen) < 0.4,
             torch.rand(2, size, size, generator=gen) < 0.4)
    got = pair_energy_pointing_game(masks, maps=maps, grid=g)
    for b in range(2):
        parts = []
        for m, mk in zip(maps, masks, strict=True):
            e = (m[b] - m[b].min()) / (m[b].max() - m[b].min())
            sums = [float(e[r * 4:(r + 1) * 4, c * 4:(c + 1) * 4].sum())
                    for r in range(g) for c in range(g)]
            f = _region_fractions_by_loop(mk[b], g)
            parts.append(sum(s * fi for s, fi in zip(sums, f, strict=True)) / sum(sums))
        assert math.isclose(float(got[b]), parts[0] * parts[1], rel_tol=1e-5)


def test_pair_energy_pointing_game_of_a_correspondence_on_the_ground_truth_encoder():
    model = key_region_model()
    a, b, m1, m2 = key_painted_pairs(4)
    x1, x2 = model.normalize(a), model.normalize(b)
    corr = pairlens.correspond(model, x1, x2, method="feature-grid")
    rand = pairlens.explain(model, x1, x2, method="random")
    got = {name: evaluate(model, x1, x2, exp, metrics=("PEPG",), masks=(m1, m2), pair_grid=16)
           ["PEPG"] for name, exp in (("feature-grid", corr), ("random", rand))}
    direct = pair_energy_pointing_game((m1, m2), relevance=corr.relevance, grids=corr.grids,
                                       grid=16)
    torch.testing.assert_close(got["feature-grid"], direct)
    # the relevance lies on the object pair only; the score is below 1 only through the regions
    # the object's outline cuts (their fractions f < 1); random maps stay near chance (the product
    # of the two area fractions, below 0.01 here)
    chance = m1.float().mean((1, 2)) * m2.float().mean((1, 2))
    assert bool((got["feature-grid"] > 0.4).all())
    assert bool((got["random"] < 3 * chance).all())
