"""The bundled data and the shipped ``digits`` / ``photos`` models."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import pairlens
from pairlens.data import bundled as data
from pairlens.models.bundled import backbone_features, weights_path
from pairlens.training.augment import AugmentConfig
from pairlens.training.simclr import augmented_view_cosines

torch.set_num_threads(2)


# ---------------------------------------------------------------------- data
def test_digits_splits_are_disjoint_stratified_and_fixed():
    parts = {s: data.digits(s) for s in ("train", "val", "test")}
    x_all, y_all = data.digits("all")
    assert x_all.shape == (1797, 3, 32, 32) and x_all.dtype == torch.float32
    assert 0.0 <= float(x_all.min()) and float(x_all.max()) <= 1.0
    assert torch.equal(x_all[:, 0], x_all[:, 1]) and torch.equal(x_all[:, 0], x_all[:, 2])
    sizes = {s: len(y) for s, (_, y) in parts.items()}
    assert sum(sizes.values()) == 1797
    assert abs(sizes["train"] - 0.7 * 1797) <= 1 and abs(sizes["test"] - 0.15 * 1797) <= 2
    index = data._digits_split_indices(0)
    train, val, test = (set(index[s].tolist()) for s in ("train", "val", "test"))
    assert not train & test and not train & val and not val & test
    assert torch.equal(parts["test"][0], x_all[torch.from_numpy(index["test"])])
    for _, y in parts.values():  # stratified: every class present in proportion
        counts = torch.bincount(y, minlength=10).float()
        assert counts.min() >= 0.8 * counts.mean()
    again = data.digits("test")
    assert torch.equal(again[0], parts["test"][0])
    assert not torch.equal(data.digits("test", seed=1)[1], parts["test"][1])
    with pytest.raises(ValueError):
        data.digits("validation")


def test_photos_offline_rgb():
    imgs = data.photos()
    assert set(imgs) == set(data.ALL_PHOTOS) and "motorcycle_right" not in data.TRAIN_PHOTOS
    for img in imgs.values():
        assert img.mode == "RGB" and min(img.size) >= 100
    x, names = data.photos_tensor(64)
    assert x.shape == (len(data.TRAIN_PHOTOS), 3, 64, 64) and names == list(data.TRAIN_PHOTOS)


def test_example_pairs_and_files():
    pairs = data.example_pairs()
    assert len(pairs) == 3
    for name1, img1, name2, _img2 in pairs:
        assert isinstance(img1, Image.Image) and img1.mode == "RGB" and name1 != name2
        assert pairlens.io.load_image(name1).size == img1.size  # names are readable paths
    paths = data.example_image_paths()
    assert all(p.is_file() for p in paths)
    assert sum(p.stat().st_size for p in paths) <= 300_000
    digit_pairs = data.example_pairs("digits")
    assert digit_pairs[0].image1.size == (32, 32)


# ---------------------------------------------------------------------- digits model
@pytest.fixture(scope="module")
def digits_model():
    return pairlens.load_model("digits")


def test_digits_probe_accuracy_on_held_out_test_split(digits_model):
    x, y = data.digits("test", seed=0)
    with torch.no_grad():
        logits = digits_model.classifier(backbone_features(digits_model, digits_model.normalize(x)))
    accuracy = float((logits.argmax(1) == y).float().mean())
    assert accuracy >= 0.95
    # the same probe through embedding="backbone"
    backbone = pairlens.load_model("digits", embedding="backbone")
    with torch.no_grad():
        again = backbone.classifier(backbone.embed(backbone.normalize(x)))
    assert torch.allclose(again, logits, atol=1e-5)


def test_digits_model_shapes_finite_deterministic(digits_model):
    x, _ = data.digits("val")
    xs = digits_model.normalize(x[:3])
    with torch.no_grad():
        z = digits_model.embed(xs)
        z_again = digits_model.embed(xs)
        singles = torch.cat([digits_model.embed(xs[i : i + 1]) for i in range(3)])
        _, features = digits_model.embed_with_features(xs)
    assert z.shape == (3, 64) and torch.isfinite(z).all()
    assert torch.equal(z, z_again)
    assert torch.allclose(z, singles, atol=1e-5)  # eval mode: no batch dependence
    assert features.shape == (3, 128, 8, 8)
    assert digits_model.input_size == (32, 32) and digits_model.crop_fraction == 1.0
    # preprocess of a bundled example file reproduces the digits tensor scale
    img = data.example_pairs("digits")[0].image1
    assert digits_model.preprocess(img).shape == (1, 3, 32, 32)


def test_digits_same_class_more_similar(digits_model):
    x, y = data.digits("test")
    with torch.no_grad():
        z = torch.nn.functional.normalize(digits_model.embed(digits_model.normalize(x)), dim=1)
    sim = z @ z.T
    same = y[:, None] == y[None, :]
    eye = torch.eye(len(y), dtype=torch.bool)
    assert sim[same & ~eye].mean() > sim[~same].mean() + 0.1


# ---------------------------------------------------------------------- photos model
@pytest.fixture(scope="module")
def photos_model():
    return pairlens.load_model("photos")


def test_photos_weights_small_and_default():
    assert weights_path("photos").stat().st_size <= 25 * 2**20
    info = pairlens.model_info("photos")
    assert info.bundled and info.input_size[0] >= 96


def test_photos_same_vs_different_views(photos_model):
    x, _ = data.photos_tensor(160)
    cos = augmented_view_cosines(photos_model, x, AugmentConfig.photos(), views=4, seed=1)
    assert cos["same"] > cos["different"] + 0.3


def test_photos_example_pairs(photos_model):
    (c1, cat, c2, cat_view), (m1, left, m2, right), (_, cat2, _, coffee) = data.example_pairs()
    with torch.no_grad():
        s_view = photos_model.similarity(photos_model.preprocess(cat),
                                         photos_model.preprocess(cat_view))
        s_stereo = photos_model.similarity(photos_model.preprocess(left),
                                           photos_model.preprocess(right))
        s_diff = photos_model.similarity(photos_model.preprocess(cat2),
                                         photos_model.preprocess(coffee))
    assert float(s_view) > float(s_diff) and float(s_stereo) > float(s_diff)


def test_photos_model_finite_deterministic(photos_model):
    img = data.example_pairs()[0].image1
    x = photos_model.preprocess(img)
    with torch.no_grad():
        z1, feats = photos_model.embed_with_features(x)
        z2 = photos_model.embed(x)
    assert torch.isfinite(z1).all() and torch.equal(z1, z2)
    assert z1.shape == (1, 128) and feats.shape == (1, 256, 7, 7)
    backbone = pairlens.load_model("photos", embedding="backbone")
    assert backbone.embed(x).shape == (1, 256)


@pytest.mark.parametrize(
    "name, size, grid",
    [("digits-cnn", 32, (8, 8)), ("resnet-mini", 112, (7, 7)), ("resnet18", 112, (4, 4))],
)
def test_architectures_build_with_documented_shapes(name, size, grid):
    from pairlens.models.bundled import get_architecture, similarity_model_from_net

    arch = get_architecture(name)
    torch.manual_seed(0)
    net = arch.build().eval()
    x = torch.rand(2, 3, size, size)  # resnet18 (224 px) is checked at 112 px to stay fast
    with torch.no_grad():
        h, z = net(x)
    assert h.shape == (2, arch.backbone_dim) and z.shape == (2, arch.projector_dim)
    model = similarity_model_from_net(net, arch)
    with torch.no_grad():
        emb, feats = model.embed_with_features(x)
    assert torch.allclose(emb, z, atol=1e-5)
    assert tuple(feats.shape[2:]) == grid
    with pytest.raises(ValueError):
        similarity_model_from_net(net, arch, embedding="pooled")


# ---------------------------------------------------------------------- composites
def test_composites_model_depends_on_the_shared_object():
    """The model card's claim, re-measured on pairs it was not measured on (seed 2)."""
    import math

    from scipy import stats

    from pairlens.training.composites import removal_drops

    model = pairlens.load_model("composites")
    assert model.input_size == (64, 64) and model.feature_layer == "layer3"
    assert model.meta["drop_shared_projector"] > model.meta["drop_distractor_projector"] + 0.1
    res = removal_drops(model, n_pairs=40, seed=2)
    diff = (res["per_pair"]["drop_shared"] - res["per_pair"]["drop_distractor"]).flatten()
    half = stats.t.ppf(0.975, len(diff) - 1) * float(diff.std()) / math.sqrt(len(diff))
    assert float(diff.mean()) - half > 0.1
    assert res["shared_larger"] > 0.8
    assert res["partner_auc"] > 0.7


def test_composites_explanations_point_at_the_shared_object():
    from pairlens.data.composites import pair_batch

    model = pairlens.load_model("composites")
    x1, x2, m1, m2 = pair_batch(range(16), seed=3, size=64)
    x1, x2 = model.normalize(x1), model.normalize(x2)
    pg = {}
    for method in ("interaction-cam", "random"):
        exp = pairlens.explain(model, x1, x2, method=method)
        pg[method] = float(pairlens.evaluate(model, x1, x2, exp, metrics=("PG",),
                                             masks=(m1, m2))["PG"].mean())
    assert pg["random"] < 0.25
    assert pg["interaction-cam"] > pg["random"] + 0.2
