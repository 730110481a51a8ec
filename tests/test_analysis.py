"""The analyses of pairlens.analysis on inputs whose right answers are known."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import pair_batch, square_model
from torch import nn

import pairlens
from pairlens import SimilarityModel
from pairlens.analysis import augmentations as A
from pairlens.analysis import cocoa_augmentations as C
from pairlens.analysis import harmful as H
from pairlens.analysis import inversion as I
from pairlens.analysis import texture as T
from pairlens.analysis.common import (
    RunFolder,
    mass_in,
    mean_interval,
    normalized_entropy,
    proportion_interval,
)

SQUARE = (slice(4, 14), slice(4, 14))  # what square_model() sees


def square_mask(n: int = 1, size: int = 32) -> torch.Tensor:
    m = torch.zeros(n, size, size, dtype=torch.bool)
    m[:, SQUARE[0], SQUARE[1]] = True
    return m


# ---------------------------------------------------------------------- common
def test_intervals_and_map_statistics():
    iv = mean_interval([0.2, 0.4, float("nan"), 0.6])
    assert iv.n == 3 and iv.value == pytest.approx(0.4) and 0.2 <= iv.low < 0.4 < iv.high <= 0.6
    assert mean_interval([0.5]).low == 0.5 and math.isnan(mean_interval([]).value)
    p = proportion_interval(32, 50)
    assert p.value == 0.64 and 0.50 < p.low < 0.64 < p.high < 0.77  # Wilson
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0] = 3.0
    maps[0, 1, 1] = -5.0  # negative evidence is not mass
    maps[1] = 1.0
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, 0] = True
    assert mass_in(maps, mask).tolist() == pytest.approx([1.0, 0.25])
    assert normalized_entropy(maps).tolist() == pytest.approx([0.0, 1.0])
    assert math.isnan(float(mass_in(torch.zeros(1, 4, 4), mask[:1])[0]))


def test_stationary_pairs_get_nan_maps_and_the_others_their_own(square):
    from pairlens.analysis.common import explain_pairs

    x1, x2 = pair_batch(3)
    x2 = torch.stack([x1[0], x2[1], x1[2]])  # pairs 0 and 2: an image and itself
    score, m1, m2 = explain_pairs(square, x1, x2, "input-x-gradient")
    assert torch.isnan(m1.flatten(1)).all(1).tolist() == [True, False, True]
    assert torch.isnan(m2.flatten(1)).all(1).tolist() == [True, False, True]
    alone = pairlens.explain(square, x1[1:2], x2[1:2], method="input-x-gradient")
    torch.testing.assert_close(m1[1:2], alone.maps[0])
    assert score[[0, 2]].tolist() == pytest.approx([1.0, 1.0])


def test_run_folder_resumes_refuses_and_skips_a_cut_line(tmp_path):
    folder = RunFolder(tmp_path, {"a": 1})
    folder.add("u1", [{"x": 1}])
    with open(tmp_path / "records.jsonl", "a") as f:
        f.write('{"unit": "u2", "records": [{"x"')  # a crash in the middle of a line
    with pytest.raises(FileExistsError):
        RunFolder(tmp_path, {"a": 1})
    with pytest.raises(ValueError, match="settings differ"):
        RunFolder(tmp_path, {"a": 2}, resume=True)
    again = RunFolder(tmp_path, {"a": 1}, resume=True)
    assert list(again.units()) == ["u1"] and again.records() == [{"x": 1}]


# ---------------------------------------------------------------------- augmentations
def test_rotation_by_zero_leaves_the_scores_at_their_clean_values(square):
    x1, x2 = pair_batch(2)
    recs = A.dissect_augmentations(square, x1, x2, transforms=["rotation@0"], guided=[False])
    clean = [r for r in recs if r["transform"] == "none"]
    rot0 = [r for r in recs if r["transform"] == "rotation@0"]
    assert len(clean) == len(rot0) == 2 and not any(r["degenerate"] for r in clean)
    for a, b in zip(clean, rot0, strict=True):
        for m in ("similarity", "SI", "SD", "SAD"):
            assert b[m] == pytest.approx(a[m], abs=1e-4), m


def test_dissection_is_the_method_called_with_the_family(square):
    """Paper mode never differentiates through T: dissecting a precomputed T(x2) with the
    identity family gives exactly the maps of the method called with the family itself."""
    x1, x2 = pair_batch(2)
    spec = A.parse_transform("solarize@0.5")
    xt, m1, m2, bad = A.explain_dissection(square, x1, x2, spec, False, 10, 0, 256)
    ref = pairlens.explain(square, x1, x2, method="averaged-transforms", transform="solarize",
                           strength=(0.0, 0.5), interpolation="paper", steps=10)
    assert not bad.any()
    torch.testing.assert_close(m1, ref.maps[0], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(m2, ref.maps[1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("transform", ["horizontal-flip@1", "rotation@90", "rotation@180"])
def test_geometric_maps_land_where_the_encoder_looks(square, transform):
    """The square model only sees the top-left square of its input; map 2 is the gradient w.r.t.
    each view, laid on the last view (nine tenths T(x2)): all its mass must be on the square."""
    x, _ = pair_batch(2)
    xt, _, m2, bad = A.explain_dissection(square, x, x, A.parse_transform(transform), False, 10,
                                          0, 256)
    assert xt.shape == x.shape and not bad.any()
    assert mass_in(m2, square_mask(2)).min() > 0.99


def test_self_pairs_mark_the_identity_row_degenerate_and_resume(square, tmp_path):
    x, _ = pair_batch(2)
    kw = dict(transforms=["color-jitter@0.8"], guided=[False, True], pairs_per_unit=1,
              figure_pair=None)
    full = A.dissect_augmentations(square, x, out=tmp_path / "a", **kw)
    none = [r for r in full if r["transform"] == "none"]
    assert len(none) == 4 and all(r["degenerate"] and math.isnan(r["SI"]) for r in none)
    jitter = {(r["guided"], r["pair"]): r["similarity"] for r in full
              if r["transform"] == "color-jitter@0.8"}
    for pair in (0, 1):  # both variants score the same jittered image
        assert jitter[(False, pair)] == jitter[(True, pair)] < 1
    assert "degenerate" in (tmp_path / "a" / "table.md").read_text()
    # an interruption: keep the first five units only, then resume
    lines = (tmp_path / "a" / "records.jsonl").read_text().splitlines()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text((tmp_path / "a" / "config.json").read_text())
    (tmp_path / "b" / "records.jsonl").write_text("\n".join(lines[:5]) + "\n")
    resumed = A.dissect_augmentations(square, x, out=tmp_path / "b", resume=True, **kw)
    key = lambda r: (r["transform"], r["guided"], r["pair"])  # noqa: E731
    for a, b in zip(sorted(full, key=key), sorted(resumed, key=key), strict=True):
        assert key(a) == key(b)
        assert a["SD"] == pytest.approx(b["SD"], nan_ok=True)


def test_parse_transform_scales_blur_and_knows_the_families():
    assert A.parse_transform("gaussian-blur@5", (112, 112)).strength == pytest.approx(2.5)
    assert A.parse_transform("rotation@60").strength == 60
    assert A.parse_transform("simclr").strength == 1.0  # the family's top strength
    with pytest.raises(ValueError, match="unknown"):
        A.parse_transform("sepia@1")
    with pytest.raises(ValueError, match="not a number"):
        A.parse_transform("rotation@ninety")


# ---------------------------------------------------------------------- inversion
def _identity_model(size: int) -> SimilarityModel:
    enc = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    return SimilarityModel(enc, input_size=(size, size), mean=(0.5,) * 3, std=(0.25,) * 3)


def test_inverting_the_input_layer_reproduces_the_image():
    """Feature MSE on the image itself has curvature 2/n (n = 3 H W): SGD with momentum 0.9 is
    stable iff lr * 2/n < 3.8. At 96 px (and 224) the paper's lr 1e4 converges; at 32 px it must
    back off exactly once, to 1e3."""
    g = torch.Generator().manual_seed(0)
    big = torch.rand(1, 3, 96, 96, generator=g)
    model = _identity_model(96)
    inv = I.invert_features(model, model.normalize(big), "input", alpha_weight=0, tv_weight=0)
    assert inv.lr.tolist() == [1e4]
    assert (model.denormalize(inv.images) - big).abs().max() < 1e-3
    small = big[..., :32, :32]
    model = _identity_model(32)
    inv = I.invert_features(model, model.normalize(small), "input")  # the paper's priors too
    assert inv.lr.tolist() == [1e3]
    assert (model.denormalize(inv.images) - small).abs().mean() < 0.01
    with pytest.raises(ValueError, match="diverged"):
        I.invert_features(model, model.normalize(small), "input", lr=1e6, max_backoffs=1)


def test_colour_statistics_known_answers():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 16, 16, generator=g)
    grey = img.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    same = I.colour_statistics(img, img)
    assert float(same["luma_corr"][0]) == pytest.approx(1.0)
    assert float(same["chroma_corr"][0]) == pytest.approx(1.0)
    lost = I.colour_statistics(grey, img)  # colour removed: nothing of the chroma kept
    assert float(lost["saturation"][0]) == pytest.approx(0.0, abs=1e-9)
    assert float(lost["chroma_corr"][0]) == 0.0
    assert math.isnan(float(I.colour_statistics(img, grey)["chroma_corr"][0]))  # nothing to keep


def test_default_layers_resnet_digits_vit(tiny_vit):
    assert I.default_layers(pairlens.load_model("digits")) == ["stem", "block1", "block2"]
    from pairlens.models.bundled import get_architecture, similarity_model_from_net

    mini = similarity_model_from_net(get_architecture("resnet-mini").build(), "resnet-mini")
    assert I.default_layers(mini) == ["layer2", "layer3", "layer4"]
    layers = I.default_layers(tiny_vit)
    assert layers == ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    x = tiny_vit.normalize(torch.rand(1, 3, 32, 32))
    inv = I.invert_features(tiny_vit, x, layers[-1], steps=10, lr=1.0)  # tokens (B, N, C)
    assert inv.images.shape == x.shape and bool(torch.isfinite(inv.images).all())


def _other_encoder(kind: str) -> tuple[nn.Module, int]:
    if kind == "convnext":
        from torchvision.models import convnext_tiny

        return convnext_tiny(), 32
    timm = pytest.importorskip("timm")
    if kind == "vit-registers":
        return timm.models.vision_transformer.VisionTransformer(
            img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=0,
            reg_tokens=4, no_embed_class=True), 32
    if kind == "swin":
        return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0,
                                 img_size=56, embed_dim=16, depths=(1, 1), num_heads=(1, 2),
                                 window_size=7), 56
    transformers = pytest.importorskip("transformers")

    class HF(nn.Module):
        def __init__(self):
            super().__init__()
            cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32,
                                         num_hidden_layers=3, num_attention_heads=2,
                                         intermediate_size=64)
            self.vit = transformers.ViTModel(cfg, add_pooling_layer=False)

        def forward(self, x):
            return self.vit(pixel_values=x).last_hidden_state

    return HF(), 32


@pytest.mark.parametrize("kind", ["vit-registers", "swin", "convnext", "hugging-face-vit"])
def test_inversion_layers_of_other_architectures(kind):
    """Token sequences (with register tokens), channels-last Swin maps, ConvNeXt stages and a
    Hugging Face ViT (its layers return tuples): three layers are found and inverted."""
    torch.manual_seed(0)
    enc, size = _other_encoder(kind)
    model = SimilarityModel(enc, input_size=(size, size), name=kind)
    layers = I.default_layers(model)
    assert 2 <= len(layers) <= 3 and all(model.encoder.get_submodule(n) for n in layers)
    x = model.normalize(torch.rand(1, 3, size, size))
    inv = I.invert_features(model, x, layers[-1], steps=3, lr=1.0, max_backoffs=1)
    assert inv.images.shape == x.shape and float(inv.loss_end[0]) < float(inv.loss_start[0])


def test_supervised_twin_is_a_classifier_with_only_the_backbone_embedding():
    from pairlens.data.bundled import digits
    from pairlens.models.bundled import backbone_features

    model = pairlens.load_model("digits-supervised")
    x, y = digits("test")
    with torch.no_grad():
        acc = (model.classifier(backbone_features(model, model.normalize(x))).argmax(1) == y)
    assert float(acc.float().mean()) >= 0.98  # model card: 1.000
    with pytest.raises(ValueError, match="embedding"):
        pairlens.load_model("digits-supervised", embedding="projector")
    twin = pairlens.load_model("digits")
    assert [n for n, _ in model.encoder.named_parameters()] == \
        [n for n, _ in twin.encoder.named_parameters()]


# ---------------------------------------------------------------------- texture
class HighPass(nn.Module):
    """A texture-only encoder: its features are the energy of a Laplacian, zero on flat colour."""

    def __init__(self):
        super().__init__()
        lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        with torch.no_grad():
            w = torch.zeros(6, 3, 3, 3)
            for k in range(6):
                w[k, k % 3] = lap * (1 + k)
            self.conv.weight.copy_(w)
        self.features = nn.Identity()

    def forward(self, x):
        return self.features(F.avg_pool2d(self.conv(x) ** 2, 4))


def test_a_texture_only_encoder_is_flagged_every_time():
    torch.manual_seed(0)
    model = SimilarityModel(HighPass(), feature_layer="features", input_size=(32, 32),
                            mean=(0.0,) * 3, std=(1.0,) * 3)
    colours = torch.rand(6, 3, 1, 1, generator=torch.Generator().manual_seed(1))
    objects = colours.expand(-1, -1, 32, 32).clone()  # six different flat objects
    noise = (torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    pairs = T.texture_pairs(objects, list(noise), 12, patch=0.35, seed=3)
    recs = T.texture_probe(model, pairs, "input-x-gradient,interaction-cam,random")
    for method in ("input-x-gradient", "interaction-cam"):
        flags = [r["texture"] for r in recs if r["method"] == method]
        assert flags == [True] * 12, method
    rand = [r for r in recs if r["method"] == "random"]
    assert not any(r["texture"] for r in rand)
    assert mean_interval(r["mass"] for r in rand).value == pytest.approx(rand[0]["chance"],
                                                                          abs=0.02)


def test_batch_size_never_changes_a_probe_result(square, monkeypatch):
    """batch_size (images per forward pass) reaches the methods and changes nothing."""
    import pairlens.explanation

    seen = []
    real = pairlens.explanation.explain

    def spy(*args, **kw):
        seen.append(kw.get("batch_size"))
        return real(*args, **kw)

    monkeypatch.setattr(pairlens.explanation, "explain", spy)
    x01 = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tex = [torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(1))]
    pairs = T.texture_pairs(x01, tex, 2, patch=0.35, seed=0)
    method = "conditional-occlusion[stride=4]"  # 36 windows per image
    runs = [T.texture_probe(square, pairs, method, batch_size=b) for b in (None, 7)]
    for a, b in zip(*runs, strict=True):
        assert a["mass"] == pytest.approx(b["mass"], abs=1e-4)  # float32 batching
    views = H.harmful_views(x01, seed=0)
    runs = [H.harmful_probe(square, x01, views, None, method, batch_size=b) for b in (None, 7)]
    for a, b in zip(*runs, strict=True):
        assert a["object_mass"] == pytest.approx(b["object_mass"], abs=1e-4, nan_ok=True)
    assert set(seen) == {None, 7}


def test_texture_pairs_share_the_exact_patch_on_different_objects():
    objects = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tex = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))]
    labels = ["a", "a", "b", "b", "c"]
    pairs = T.texture_pairs(objects, tex, 20, labels=labels, seed=0)
    for i, info in enumerate(pairs.info):
        assert labels[info["object1"]] != labels[info["object2"]]
        p1 = pairs.x1[i][:, pairs.mask1[i]]
        p2 = pairs.x2[i][:, pairs.mask2[i]]
        assert torch.equal(p1, p2)  # the very same pixels
        assert torch.equal(pairs.x1[i][:, ~pairs.mask1[i]],
                           objects[info["object1"]][:, ~pairs.mask1[i]])
    again = T.texture_pairs(objects, tex, 5, labels=labels, seed=0)
    assert torch.equal(again.x2, pairs.x2[:5])  # pair i does not depend on n


# ---------------------------------------------------------------------- harmful augmentations
def test_harmful_views_move_masks_with_the_crop_and_identity_settings_change_nothing():
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    masks = x[:, 0] > 0.5
    views = H.harmful_views(x, masks, brightness=1.0, blur_sigma=0.0, seed=1)
    assert torch.equal(views.clean, views.harmful)
    for i, (top, left, h, w) in enumerate(views.boxes):
        # nearest-neighbour resize of the crop of the mask: its pixels come from the crop box
        assert float(views.masks[i].float().mean()) == pytest.approx(
            float(masks[i, top : top + h, left : left + w].float().mean()), abs=0.1)
    dark = H.harmful_views(x, brightness=0.3, blur_sigma=1.0, seed=1)
    assert torch.equal(dark.clean, views.clean) and dark.harmful.mean() < 0.35 * x.mean()


def test_harmful_probe_flags_maps_off_the_object_and_not_on_it():
    model = square_model()
    x01 = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    on_object = square_mask(6)
    for masks, expected in ((on_object, False), (~on_object, True)):
        views = H.harmful_views(x01, masks, crop_scale=(1.0, 1.0), seed=0)
        recs = H.harmful_probe(model, x01, views, masks, "input-x-gradient")
        harm = [r for r in recs if r["condition"] == "harmful"]
        clean = [r for r in recs if r["condition"] == "clean"]
        assert len(harm) == len(clean) == 6
        assert {r["flagged"] for r in harm} == {expected}
        # without a crop the clean view is (nearly) the image itself; a pair whose similarity
        # is stationary is refused by the method and never scored (flag None)
        assert {r["flagged"] for r in clean} <= {expected, None}


# ---------------------------------------------------------------------- COCOA on augmentations
@pytest.mark.parametrize("name", C.AUGMENTATIONS)
def test_augmentation_maps_go_back_to_the_original_frame(name):
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 32, 32, generator=g)
    # a smooth map of the original frame, carried as an image through the same augmentation
    ramp = torch.linspace(0, 1, 32)
    smooth = ((ramp[:, None] + 2 * ramp[None, :]) / 3).expand(3, -1, -1)  # in [0, 1]
    aug_img = C.augment(img, name, seed=5)
    aug_map = C.augment(smooth.clone(), name, seed=5)
    back = aug_img.back(aug_map.image[0])
    ok = torch.isfinite(back)
    assert ok.float().mean() > (0.15 if "crop" in name else 0.99)
    tol = 0.05 if "crop" in name else 1e-6
    if name in ("grayscale", "jitter", "cutout"):  # photometric: the frame is unchanged
        back = aug_img.back(smooth[0])
        tol = 1e-6
    assert (back[ok] - smooth[0][ok]).abs().max() < tol


def test_cocoa_augmentations_on_digits(tmp_path):
    from pairlens.data.bundled import digits

    model = pairlens.load_model("digits")
    x, y = digits("test")
    foil = model.normalize(digits("train")[0][:200])
    recs = C.cocoa_augmentations(model, x[:2], foil, labels=y[:2].tolist(), n_masks=200,
                                 augmentations=["flip", "grayscale", "remasked"], out=tmp_path)
    assert [r["augmentation"] for r in recs] == ["original", "flip", "grayscale",
                                                 "remasked"] * 2
    orig = [r for r in recs if r["augmentation"] == "original"]
    assert all(r["class_kept"] and r["cosine"] == pytest.approx(1.0, abs=1e-5) for r in orig)
    # digits are grey: grayscale changes nothing, so its map is the original's
    grey = [r for r in recs if r["augmentation"] == "grayscale"]
    assert all(r["spearman"] > 0.99 for r in grey)
    # the control: the very same image with other masks; only the mask noise differs
    again = [r for r in recs if r["augmentation"] == "remasked"]
    assert all(r["cosine"] == pytest.approx(1.0, abs=1e-5) and r["spearman"] < 0.99
               for r in again)
    assert (tmp_path / "cocoa-augmentations.png").stat().st_size > 0
    assert "class kept" in (tmp_path / "table.md").read_text()


# ---------------------------------------------------------------------- command line
def test_analyze_commands_run_at_a_tiny_size(tmp_path, capsys):
    from pairlens.cli import main

    runs = {
        "augmentations": ["--pairs", "2", "--transforms", "rotation@90", "--variants",
                          "non-guided"],
        "invert": ["--compare", "digits-supervised", "--images", "1", "--layers", "stem",
                   "--iterations", "3"],
        "texture": ["--pairs", "2", "--methods", "grad-cam,random"],
        "harmful-augmentations": ["--pairs", "2", "--methods", "grad-cam"],
        "cocoa-augmentations": ["--images", "1", "--n-masks", "50", "--foil", "20",
                                "--augmentations", "flip"],
    }
    figures = {"augmentations": "dissection.png", "invert": "inversion.png",
               "texture": "texture.png", "harmful-augmentations": "harmful.png",
               "cocoa-augmentations": "cocoa-augmentations.png"}
    for name, extra in runs.items():
        out = tmp_path / name
        assert main(["analyze", name, "--out", str(out), "--quiet", "--threads", "1", *extra]) \
            == 0, name
        assert "|" in capsys.readouterr().out
        for f in ("table.md", "table.csv", "records.jsonl", "config.json", figures[name]):
            assert (out / f).stat().st_size > 0, (name, f)
    # the same command again: refused without --resume, a no-op with it
    args = ["analyze", "texture", "--out", str(tmp_path / "texture"), "--quiet", *runs["texture"]]
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["grad-cam", "random"]
    assert main(["analyze", "augmentations", "--transforms", "sepia", "--out",
                 str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pairlens: error:") and len(err.strip().splitlines()) == 1
