"""Two towers and fixed targets (issue 10, item 4)."""

from __future__ import annotations

import json

import pytest
import torch
from regions import REGION1, REGION2, SIZE, ToyEncoder, concentration, pair

import pairlens
from pairlens.methods.cam import reduce_activation

FAST = {
    "conditional-occlusion": {"window": 8, "stride": 8},
    "smoothgrad": {"n_samples": 3},
    "averaged-transforms": {"steps": 3, "transform": "gaussian-blur"},
    "pairwise-occlusion": {"n_samples": 8},
}


def one_tower():
    return pairlens.SimilarityModel(ToyEncoder("first", REGION1), feature_layer="features",
                                    input_size=SIZE, name="one")


def two_towers():
    return pairlens.SimilarityModel(
        ToyEncoder("first", REGION1), feature_layer="features", input_size=SIZE, name="two",
        encoder2=ToyEncoder("tokens-1", REGION2, seed=1), feature_layer2="features",
        mean2=(0.2, 0.3, 0.4), std2=(0.5, 0.5, 0.5),
    )


def _count_calls(module):
    calls = []
    module.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    return calls


def test_one_tower_models_embed_both_images_in_one_pass():
    model = one_tower()
    calls = _count_calls(model.encoder)
    x1, x2 = pair()
    for method in ("grad-cam", "input-x-gradient", "interaction-cam"):
        calls.clear()
        pairlens.explain(model, x1, x2, method=method)
        assert calls == [4], (method, calls)


def test_two_towers_send_each_image_through_its_own_tower_and_preprocessing(tmp_path):
    from PIL import Image

    model = two_towers()
    calls1, calls2 = _count_calls(model.encoder), _count_calls(model.encoder2)
    x1, x2 = pair()
    exp = pairlens.explain(model, x1, x2, method="grad-cam")
    assert calls1 == [2] and calls2 == [2]
    with torch.no_grad():
        want = torch.nn.functional.cosine_similarity(model.embed(x1, 1), model.embed(x2, 2))
    torch.testing.assert_close(exp.score, want)
    assert not torch.allclose(want, model.similarity(x1, x1.clone()))  # the towers differ
    torch.testing.assert_close(exp.images[1], model.denormalize(x2, 2).clamp(0, 1))
    assert exp.model["tower2"]["mean"] == [0.2, 0.3, 0.4]
    path = tmp_path / "a.png"
    Image.new("RGB", (96, 64), (255, 0, 0)).save(path)
    torch.testing.assert_close(model.preprocess(path, tower=2)[0, :, 0, 0],
                               torch.tensor([1.6, -0.6, -0.8]))
    torch.testing.assert_close(model.preprocess(path)[0, :, 0, 0],
                               torch.tensor([2.2489, -2.0357, -1.8044]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", sorted(pairlens.methods()))
def test_every_method_works_with_two_towers(method):
    model = two_towers()
    x1, x2 = pair()
    exp = pairlens.explain(model, x1, x2, method=method, **FAST.get(method, {}))
    assert all(torch.isfinite(m).all() and m.shape == (2, *SIZE) for m in exp.maps)
    if method not in ("random", "pairwise-occlusion"):
        assert concentration(exp.maps[0][0], REGION1) > 0.9
        assert concentration(exp.maps[1][0], REGION2) > 0.9


def test_metrics_and_sanity_check_use_both_towers():
    model = two_towers()
    x1, x2 = pair()
    exp = pairlens.explain(model, x1, x2, method="grad-cam")
    out = pairlens.evaluate(model, x1, x2, exp, metrics=("SD", "CD", "SAD"), step=1536,
                            return_curves=True)
    sim = torch.nn.functional.cosine_similarity
    with torch.no_grad():
        z1, z2 = model.embed(x1, 1), model.embed(x2, 2)
        zero1, zero2 = model.embed(torch.zeros_like(x1), 1), model.embed(torch.zeros_like(x2), 2)
    torch.testing.assert_close(out["SD_curve"][:, 0], sim(z1, z2))
    torch.testing.assert_close(out["SD_curve"][:, -1], sim(zero1, zero2))
    torch.testing.assert_close(out["CD_curve"][:, -1], (sim(zero1, z2) + sim(z1, zero2)) / 2)
    from pairlens.metrics import sanity_check

    result = sanity_check(model, x1, x2, "grad-cam", max_steps=10)
    layers = {name for step in result.steps for name in step}
    assert {"encoder.proj", "encoder2.proj"} <= layers


# ---------------------------------------------------------------- fixed targets
def test_explaining_images_against_a_fixed_embedding():
    model = one_tower()
    x1, _ = pair()
    target = torch.randn(16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = torch.nn.functional.cosine_similarity(model.embed(x1), target[None].expand(2, -1))
    for method in ("input-x-gradient", "smoothgrad", "averaged-transforms",
                   "conditional-occlusion", "grad-cam", "interaction-cam", "deep-similarity"):
        exp = pairlens.explain(model, x1, target=target, method=method, **FAST.get(method, {}))
        assert exp.maps[1] is None and exp.images[1] is None
        torch.testing.assert_close(exp.score, want)
        for m in exp.maps[0]:
            assert concentration(m, REGION1) > 0.9, method
    with pytest.raises(ValueError, match="conditional-occlusion"):
        pairlens.explain(model, x1, target=target, method="pairwise-occlusion")
    with pytest.raises(ValueError, match="has 5 dimensions"):
        pairlens.explain(model, x1, target=torch.randn(5), method="grad-cam")
    with pytest.raises(ValueError, match="not both"):
        pairlens.explain(model, x1, x1, target=target)
    with pytest.raises(ValueError, match="fixed target"):
        pairlens.evaluate(model, x1, x1, exp)


def test_averaged_transforms_against_a_target_transforms_the_image():
    model = one_tower()
    x1, _ = pair()
    t = torch.randn(16)
    at = pairlens.explain(model, x1, target=t, method="averaged-transforms", steps=4,
                          transform="gaussian-blur", strength=(2.0, 5.0))
    ixg = pairlens.explain(model, x1, target=t, method="input-x-gradient")
    assert not torch.allclose(at.maps[0], ixg.maps[0], rtol=0.05, atol=1e-6)
    one = pairlens.explain(model, x1, target=t, method="averaged-transforms", steps=1,
                           transform="gaussian-blur", strength=(0.0, 1e-6),
                           interpolation="strength")
    torch.testing.assert_close(one.maps[0], ixg.maps[0], rtol=1e-3, atol=1e-6)  # identity view


def test_interaction_cam_against_a_target_is_eq2_with_the_target_as_a_1x1_map():
    """Brute force: the target is image 2's feature map on a 1x1 grid, so
    J = red(A1) * t and G^{kl} = sum_u dS/dA1^k(u) dS/dt_l."""
    model = one_tower()  # embedding = mean-pooled feature map: D = C = 16
    x1, _ = pair()
    t = torch.randn(16, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    exp = pairlens.explain(model, x1, target=t.detach(), method="interaction-cam",
                           reduction="max", grad_interaction=True)
    _, a = model.embed_with_features(x1)
    a = a.detach().requires_grad_(True)
    s = torch.nn.functional.cosine_similarity(a.mean((2, 3)), t[None].expand(2, -1))
    (ga,) = torch.autograd.grad(s.sum(), a, retain_graph=True)
    j = reduce_activation(a.detach(), "max") * t.detach()
    gt_rows = [torch.autograd.grad(s[i], t, retain_graph=True)[0] for i in range(2)]
    gram = ga.sum((2, 3))[:, :, None] * torch.stack(gt_rows)[:, None, :]  # (B, C, C)
    e = ((j * gram.amax(2)).clamp(min=0)[:, :, None, None] * a.detach()).sum(1)
    want = torch.nn.functional.interpolate(e[:, None], size=SIZE, mode="bilinear")[:, 0]
    torch.testing.assert_close(exp.maps[0], want, rtol=1e-4, atol=1e-6)


def test_per_image_targets_equal_one_call_per_image(tmp_path):
    model = one_tower()
    x1, _ = pair()
    targets = torch.randn(2, 16, generator=torch.Generator().manual_seed(5))
    both = pairlens.explain(model, x1, target=targets, method="grad-cam")
    for i in range(2):
        alone = pairlens.explain(model, x1[i : i + 1], target=targets[i], method="grad-cam")
        torch.testing.assert_close(both.maps[0][i], alone.maps[0][0])
        torch.testing.assert_close(both.score[i], alone.score[0])
    both.save(tmp_path)
    meta = json.loads((tmp_path / "grad-cam.json").read_text())
    assert meta["target"] == {"embedding_dim": 16} and (tmp_path / "grad-cam_1.png").is_file()


def test_interaction_cam_refuses_a_target_of_another_width():
    model = pairlens.SimilarityModel(
        ToyEncoder("first", REGION1), head=torch.nn.Linear(16, 8), feature_layer="features",
        input_size=SIZE,
    )
    x1, _ = pair()
    with pytest.raises(ValueError, match="use grad-cam"):
        pairlens.explain(model, x1, target=torch.randn(8), method="interaction-cam")
    exp = pairlens.explain(model, x1, target=torch.randn(8), method="grad-cam")
    assert concentration(exp.maps[0][0], REGION1) > 0.9
