"""Explanation targets (seed 002 §3): definitions by brute force, Proposition 3.3, Appendix C."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pairlens import SimilarityModel, targets
from pairlens.models.similarity import cosine


def toy_model(seed: int = 0, size: int = 16) -> SimilarityModel:
    torch.manual_seed(seed)
    enc = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten()
    )
    return SimilarityModel(
        enc, input_size=(size, size), mean=(0.5,) * 3, std=(0.25,) * 3, crop_fraction=1.0
    )


def one_by_one(model: SimilarityModel, x: torch.Tensor) -> torch.Tensor:
    """Embeddings computed one image at a time (no batching shortcuts)."""
    with torch.no_grad():
        return torch.cat([model.embed(x[i : i + 1]) for i in range(len(x))])


@pytest.fixture(scope="module")
def setup():
    model = toy_model()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 16, 16, generator=g)
    corpus = torch.randn(7, 3, 16, 16, generator=g)
    foil = torch.randn(11, 3, 16, 16, generator=g)
    return model, x, corpus, foil


def test_contrastive_corpus_equals_brute_force_definition(setup):
    model, x, corpus, foil = setup
    zx, zc, zf = one_by_one(model, x), one_by_one(model, corpus), one_by_one(model, foil)
    for similarity in ("cosine", "dot"):
        t = targets.ContrastiveCorpus(model, corpus, foil, similarity=similarity)
        with torch.no_grad():
            got = t(x)
        expected = []
        for i in range(len(x)):
            if similarity == "cosine":
                s_c = [float(cosine(zx[i : i + 1], zc[j : j + 1])) for j in range(len(zc))]
                s_f = [float(cosine(zx[i : i + 1], zf[j : j + 1])) for j in range(len(zf))]
            else:
                s_c = [float(zx[i] @ zc[j]) for j in range(len(zc))]
                s_f = [float(zx[i] @ zf[j]) for j in range(len(zf))]
            expected.append(sum(s_c) / len(s_c) - sum(s_f) / len(s_f))  # eq. (3)
        torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-4, atol=1e-5)
        assert t.info == {"corpus": 7, "foil": 11}


def test_other_targets_equal_their_definitions(setup):
    model, x, corpus, foil = setup
    zx, zc, zf = one_by_one(model, x), one_by_one(model, corpus), one_by_one(model, foil)
    y = x + 0.3 * torch.randn_like(x)  # perturbed explicands
    zy = one_by_one(model, y)
    with torch.no_grad():
        lf_cos = targets.LabelFree(model, x)(y)
        lf_dot = targets.LabelFree(model, x, similarity="dot")(y)
        clf = targets.ContrastiveLabelFree(model, x, foil)(y)
        corp = targets.Corpus(model, corpus)(y)
    for i in range(len(x)):
        own = float(cosine(zy[i : i + 1], zx[i : i + 1]))
        foil_mean = float(np.mean([float(cosine(zy[i : i + 1], zf[j : j + 1])) for j in range(11)]))
        corpus_mean = float(
            np.mean([float(cosine(zy[i : i + 1], zc[j : j + 1])) for j in range(7)])
        )
        assert float(lf_cos[i]) == pytest.approx(own, abs=1e-5)  # RELAX
        assert float(lf_dot[i]) == pytest.approx(float(zy[i] @ zx[i]), rel=1e-4)  # label-free
        assert float(clf[i]) == pytest.approx(own - foil_mean, abs=1e-5)
        assert float(corp[i]) == pytest.approx(corpus_mean, abs=1e-5)


def test_proposition_3_3_contrastive_direction(setup):
    """gamma(x) = (f(x)/|f(x)|) . (mean_c f(x_c)/|f(x_c)| - mean_i f(x_i)/|f(x_i)|) (eq. 5)."""
    model, x, corpus, foil = setup
    zx, zc, zf = one_by_one(model, x), one_by_one(model, corpus), one_by_one(model, foil)
    t = targets.ContrastiveCorpus(model, corpus, foil)
    unit = lambda z: z / z.norm(dim=1, keepdim=True)  # noqa: E731
    direction = unit(zc).mean(0) - unit(zf).mean(0)
    torch.testing.assert_close(t.direction, direction, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(t(x), unit(zx) @ direction, rtol=1e-4, atol=1e-6)
    # and the estimator is the difference of two corpus similarities (corpus minus foil-as-corpus)
    with torch.no_grad():
        diff = targets.Corpus(model, corpus)(x) - targets.Corpus(model, foil)(x)
    torch.testing.assert_close(t(x).detach(), diff, rtol=1e-4, atol=1e-6)


def test_foil_estimator_is_unbiased_and_concentrates():
    """Proposition C.1 (unbiasedness) and C.2 (Hoeffding bound), with a finite foil distribution
    (uniform over a population of embeddings) so the true value is computable."""
    model = toy_model()
    g = torch.Generator().manual_seed(3)
    population = torch.randn(500, 24, generator=g) + 0.5  # foil distribution (embeddings)
    corpus = torch.randn(9, 24, generator=g) - 0.2
    x = torch.randn(3, 3, 16, 16, generator=g)
    with torch.no_grad():
        zx = model.embed(x)
    unit = lambda z: z / z.norm(dim=1, keepdim=True)  # noqa: E731
    truth = unit(zx) @ (unit(corpus).mean(0) - unit(population).mean(0))
    with torch.no_grad():  # the encoder path is the same as in the brute-force tests
        torch.testing.assert_close(targets.ContrastiveCorpus(model, corpus, population)(x), truth)
    m, reps = 10, 1500
    estimates = []
    for _r in range(reps):
        idx = torch.randint(0, len(population), (m,), generator=g)  # i.i.d. draws
        t = targets.ContrastiveCorpus(model, corpus, population[idx])
        estimates.append(t.score_embeddings(zx))
    est = torch.stack(estimates)  # (reps, 3)
    se = est.std(0) / math.sqrt(reps)
    assert bool(((est.mean(0) - truth).abs() < 4 * se).all()), (est.mean(0), truth, se)
    assert float(est.std(0).min()) > 0.01  # the estimator does vary (the test can fail)
    # Proposition C.2: with m from foil_size, deviations >= epsilon happen at most delta often
    delta, epsilon = 0.1, 0.2
    m = targets.foil_size(delta, epsilon)
    devs = []
    for _r in range(200):
        idx = torch.randint(0, len(population), (m,), generator=g)
        t = targets.ContrastiveCorpus(model, corpus, population[idx])
        devs.append((t.score_embeddings(zx) - truth).abs())
    assert float((torch.stack(devs) >= epsilon).float().mean()) <= delta


@pytest.mark.parametrize("delta,epsilon", [(0.01, 0.05), (0.05, 0.1), (0.2, 0.01)])
def test_foil_size_is_the_smallest_size_meeting_the_bound(delta, epsilon):
    general = 2 * math.log(2 / delta) / epsilon**2  # (C.1)
    nonneg = math.log(2 / delta) / (2 * epsilon**2)  # (C.3)
    for bound, flag in ((general, False), (nonneg, True)):
        m = targets.foil_size(delta, epsilon, nonnegative=flag)
        assert m >= bound > m - 1
    assert targets.foil_size(0.01, 0.05, nonnegative=True) == 1060  # the paper's setting
    with pytest.raises(ValueError):
        targets.foil_size(1.5, 0.1)


def test_per_explicand_targets_select_and_check_batch(setup):
    model, x, corpus, foil = setup
    t = targets.LabelFree(model, x)
    assert t.n_explicands == 5
    with torch.no_grad():
        torch.testing.assert_close(t(x), torch.ones(5), atol=1e-5, rtol=0)
        one = t.select(2)
        assert one.n_explicands is None
        torch.testing.assert_close(one(x[2:3].repeat(4, 1, 1, 1)), torch.ones(4), atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="select"):
            t(x[:3])
    shared = targets.Corpus(model, corpus)
    assert shared.select(3) is shared


def test_corpus_from_folder_files_and_random_images(tmp_path, setup):
    model, _, _, _ = setup
    rng = np.random.default_rng(0)
    files = []
    for i in range(4):
        arr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        path = tmp_path / f"img{i}.png"
        Image.fromarray(arr).save(path)
        files.append(path)
    (tmp_path / "notes.txt").write_text("not an image")
    from_folder = targets.Corpus(model, tmp_path)
    from_files = targets.Corpus(model, [str(f) for f in files])
    from_tensor = targets.Corpus(model, model.preprocess(files))
    torch.testing.assert_close(from_folder.direction, from_files.direction)
    torch.testing.assert_close(from_folder.direction, from_tensor.direction)
    assert from_folder.info["corpus"] == 4
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        targets.Corpus(model, empty)

    images = torch.arange(10).float().view(10, 1, 1, 1).expand(10, 3, 2, 2)
    labels = torch.tensor([0, 1] * 5)
    picked = targets.random_images((images, labels), 3, seed=1, exclude=[1])
    assert len(picked) == 3 and set(picked[:, 0, 0, 0].long().tolist()) <= {0, 2, 4, 6, 8}
    again = targets.random_images((images, labels), 3, seed=1, exclude=[1])
    torch.testing.assert_close(picked, again)
    assert len(targets.random_images(images, 50, seed=0)) == 10  # capped at what exists


def test_text_corpus_direction_and_cifar100_captions():
    model = toy_model()
    g = torch.Generator().manual_seed(0)
    tc, tf = torch.randn(2, 24, generator=g), torch.randn(5, 24, generator=g)
    t = targets.TextCorpus(model, tc, tf)
    unit = lambda z: z / z.norm(dim=1, keepdim=True)  # noqa: E731
    torch.testing.assert_close(t.direction, unit(tc).mean(0) - unit(tf).mean(0))
    x = torch.randn(3, 3, 16, 16, generator=g)
    with torch.no_grad():
        zx = model.embed(x)
    expected = torch.stack(
        [  # eq. (6) by brute force
            torch.stack([cosine(zx[i : i + 1], tc[j : j + 1])[0] for j in range(2)]).mean()
            - torch.stack([cosine(zx[i : i + 1], tf[j : j + 1])[0] for j in range(5)]).mean()
            for i in range(3)
        ]
    )
    with torch.no_grad():
        torch.testing.assert_close(t(x), expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="text_encoder"):
        targets.TextCorpus(model, ["a photo of a cat"])

    names = targets.cifar100_classes()
    assert len(names) == 100 and names[0] == "apple" and "aquarium_fish" in names
    foil = targets.cifar100_foil_captions(["This is a photo of a bicycle"])
    assert len(foil) == 99 and "This is a photo of a bicycle" not in foil
    assert "This is a photo of a aquarium fish" in foil
    assert len(targets.cifar100_foil_captions(["a photo of a zebra"])) == 100
