"""What ``pairlens.explain`` keeps between calls, or computes late, must never go stale (issue 16,
per-call overhead): the feature grid read per input size, the encoder's fixed input size, the
modules switched to eval mode, the model description, the lazy display images; and the fast
sufficient tests of the guards must agree with the exact ones."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from regions import concentration
from torch import nn

import pairlens
from pairlens.methods.cam import _contract
from pairlens.methods.common import upsample, upsample_pair
from pairlens.models.similarity import (
    STATIONARY_TOL,
    ZeroEmbeddingError,
    _all_clear,
    check_embeddings,
)

PATCH = 8
REGION = (slice(8, 24), slice(16, 40))  # rows, cols: patch-aligned, inside 64x96 and 96x64


class RegionTokens(nn.Module):
    """A ViT-like encoder for any input size: patch tokens (one class token in front) that see
    only ``REGION``; the embedding is the class token plus a readout of the patch tokens."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = nn.Conv2d(3, 16, PATCH, stride=PATCH)
        self.cls = nn.Parameter(torch.randn(1, 1, 16, generator=g))
        self.readout = nn.Linear(16, 16)
        self.features = nn.Identity()
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=g) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(x.shape[-2:])
        mask[REGION] = 1.0
        cells = F.avg_pool2d(mask[None, None], PATCH).round()
        a = F.gelu(self.proj(x * mask)) * cells  # (B, C, h, w), zero outside the region
        t = self.features(torch.cat([self.cls.expand(len(x), -1, -1),
                                     a.flatten(2).transpose(1, 2)], dim=1))
        return torch.cat([t[:, :1] + self.readout(t[:, 1:].mean(1))[:, None], t[:, 1:]], 1)


def images(size: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, *size, generator=g), torch.randn(2, 3, *size, generator=g)


def test_token_grids_follow_the_input_size_between_calls():
    # 64x96 and 96x64 both give 96 patch tokens: a grid kept from the first size would put the
    # second call's map on the transposed (wrong) grid
    model = pairlens.SimilarityModel(RegionTokens(), feature_layer="features", input_size=(64, 96))
    for size in ((64, 96), (96, 64), (64, 96)):
        exp = pairlens.explain(model, *images(size), method="grad-cam")
        assert exp.maps[0].shape[-2:] == size
        for m in exp.maps:
            assert concentration(m[0], REGION) > 0.9
        z, a = model.embed_with_features(images(size)[0])
        assert model.to_grid(a, size).shape[-2:] == (size[0] // PATCH, size[1] // PATCH)


class TwoLayers(nn.Module):
    """``early`` sees only the left half of the image, ``late`` only the right half."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.early = nn.Identity()
        self.late = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.early(torch.relu(self.conv(x)))
        w = a.shape[-1] // 2
        left = a * (torch.arange(a.shape[-1]) < w)
        return self.late(left.flip(-1))  # the left half's features, mirrored to the right


def test_switching_the_feature_layer_or_reshape_transform_between_calls():
    x1, x2 = images((16, 16))
    model = pairlens.SimilarityModel(TwoLayers(), feature_layer="early", input_size=(16, 16))
    early = pairlens.explain(model, x1, x2, method="grad-cam")
    model.feature_layer = "late"
    late = pairlens.explain(model, x1, x2, method="grad-cam")
    fresh = pairlens.SimilarityModel(TwoLayers(), feature_layer="late", input_size=(16, 16))
    torch.testing.assert_close(late.maps[0], pairlens.explain(fresh, x1, x2,
                                                              method="grad-cam").maps[0])
    # early sees the left half, late holds it mirrored on the right half
    assert early.maps[0][..., 8:].abs().sum() < 0.05 * early.maps[0].abs().sum()
    assert late.maps[0][..., :8].abs().sum() < 0.05 * late.maps[0].abs().sum()
    model.reshape_transform = lambda t: t.flip(-1)  # read now, not kept from the last call
    flipped = pairlens.explain(model, x1, x2, method="grad-cam")
    torch.testing.assert_close(flipped.maps[0], late.maps[0].flip(-1))


class Dropper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.features = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(torch.relu(self.conv(x)))


def test_modules_put_in_train_mode_or_added_between_calls_still_run_in_eval_mode():
    x1, x2 = images((16, 16))
    model = pairlens.SimilarityModel(Dropper(), head=nn.Sequential(nn.Dropout(0.9)),
                                     feature_layer="features", input_size=(16, 16))
    reference = pairlens.explain(model, x1, x2, method="grad-cam")
    model.head[0].train()  # one submodule, after a first call
    again = pairlens.explain(model, x1, x2, method="grad-cam")
    torch.testing.assert_close(again.maps[0], reference.maps[0])
    assert model.head[0].training and not model.training
    # a new head (new modules are in train mode): dropout would change every call's result
    model.head = nn.Sequential(nn.Identity(), nn.Dropout(0.9))
    assert model.head.training
    new = [pairlens.explain(model, x1, x2, method="grad-cam").score for _ in range(2)]
    torch.testing.assert_close(new[0], reference.score)
    torch.testing.assert_close(new[1], reference.score)
    assert model.head.training and model.head[1].training


class FixedSize(nn.Module):
    """Declares a fixed input size as timm's patch embeddings do."""

    strict_img_size = True
    img_size = (16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_a_replaced_encoder_is_checked_for_its_fixed_input_size():
    model = pairlens.SimilarityModel(Dropper(), input_size=(16, 16))
    x = torch.randn(1, 3, 32, 32)
    model.check_input(x)  # any size
    model.encoder = nn.Sequential(FixedSize(), Dropper())
    with pytest.raises(ValueError, match="runs at 16x16 only"):
        model.check_input(x)


def test_display_images_are_computed_late_from_copies_taken_at_call_time():
    """A reused input buffer -- changed in place, through ``.data`` or through a NumPy array that
    shares its memory -- or a changed mean never alters an explanation's pictures."""
    model = pairlens.SimilarityModel(Dropper(), feature_layer="features", input_size=(16, 16),
                                     mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    x1, x2 = images((16, 16))
    exp = pairlens.explain(model, x1, x2, method="grad-cam")
    expected = [model.denormalize(x, tower).clamp(0, 1) for x, tower in ((x1, 1), (x2, 2))]
    for img, want in zip(exp.images, expected, strict=True):
        torch.testing.assert_close(img, want, rtol=0, atol=0)
    assert len(exp.images) == 2 and exp.select(1).images[0].shape == (1, 3, 16, 16)
    buffer = x1.numpy().copy()
    shared = torch.from_numpy(buffer)  # a loader's reused NumPy buffer
    second = x2.clone()
    later = pairlens.explain(model, shared, second, method="grad-cam")
    buffer[:] = 0  # no torch op: the tensor's version counter does not change
    second.data.zero_()  # nor does a write through .data
    with torch.no_grad():
        model.mean.add_(1.0)  # and the model's preprocessing changed afterwards
    for img, want in zip(later.images, expected, strict=True):
        torch.testing.assert_close(img, want, rtol=0, atol=0)
    with torch.no_grad():
        model.mean.sub_(1.0)
    target = pairlens.explain(model, x2, target=torch.randn(8), method="grad-cam")
    assert target.images[1] is None and target.images[0].shape == x2.shape


def test_the_model_description_follows_changes_of_the_model():
    model = pairlens.SimilarityModel(Dropper(), feature_layer="features", input_size=(16, 16))
    x1, x2 = images((16, 16))
    first = pairlens.explain(model, x1, x2, method="grad-cam").model
    first["mean"].append(9.0)  # the caller's copy, not the cache
    model.mean.mul_(0.5)  # in place: a new version of the same buffer
    model.name = "renamed"
    second = pairlens.explain(model, x1, x2, method="grad-cam").model
    assert second["name"] == "renamed"
    assert second["mean"] == [round(v * 0.5, 6) for v in (0.485, 0.456, 0.406)]
    model.std.data.fill_(0.25)  # a write that no version counter sees
    third = pairlens.explain(model, x1, x2, method="grad-cam").model
    assert third["std"] == [0.25, 0.25, 0.25]


def _exact_clear(s, z, dz, g):
    """The conditions of ``_all_clear`` element by element."""
    b = len(s)
    n = z.norm(dim=1)
    tol = STATIONARY_TOL * s.abs().clamp_min(1e-12).repeat(2)
    v = torch.stack([n, dz.norm(dim=1) * n - tol, g.flatten(1).abs().amax(1)])
    assert v.shape == (3, 2 * b)
    return bool(((v > 0) & (v < math.inf)).all())


@pytest.mark.parametrize("case", ["ok", "zero-z", "nan-z", "inf-grad", "nan-grad",
                                  "zero-grad-row", "stationary", "tiny-s"])
def test_the_fast_all_clear_test_agrees_with_the_exact_conditions(case):
    g = torch.Generator().manual_seed(0)
    b = 3
    s = torch.rand(b, generator=g) + 0.1
    z, dz = torch.randn(2 * b, 5, generator=g), torch.randn(2 * b, 5, generator=g)
    grads = torch.randn(2 * b, 4, 3, 3, generator=g)
    if case == "zero-z":
        z[4] = 0
    elif case == "nan-z":
        z[1, 2] = math.nan
    elif case == "inf-grad":
        grads[5, 1, 0, 0] = math.inf
    elif case == "nan-grad":
        grads[0, 3, 2, 2] = math.nan
    elif case == "zero-grad-row":
        grads[b + 1] = 0
    elif case == "stationary":
        dz[b + 2] = 1e-9  # pair 2, image 2 (uses s[2])
    elif case == "tiny-s":
        s[1], dz[1] = 0.0, 1e-19  # |dz| |z| ~ 5e-19 < 1e-5 * 1e-12 (the clamp of |s|)
    assert _all_clear(s, z, dz, grads) == _exact_clear(s, z, dz, grads) == (case == "ok")


def test_the_fast_embedding_test_leaves_tiny_embeddings_alone_and_catches_zero_ones():
    tiny = torch.full((2, 8), 1e-30)  # its norm underflows to 0: the exact tests decide
    check_embeddings(tiny, "image 1", "m", tiny.clone())
    zero = tiny.clone()
    zero[1] = 0
    with pytest.raises(ZeroEmbeddingError, match=r"image 2 .*row\(s\) 1"):
        check_embeddings(tiny, "image 1", "m", zero)


def test_rewritten_map_arithmetic_equals_the_plain_formulas():
    g = torch.Generator().manual_seed(0)
    a, f = torch.randn(3, 32, 5, 7, generator=g), torch.randn(3, 32, generator=g)
    torch.testing.assert_close(_contract(a, f), torch.einsum("bchw,bc->bhw", a, f))
    e1, e2 = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    for got, want in zip(upsample_pair(e1, e2, (16, 24)),
                         (upsample(e1, (16, 24)), upsample(e2, (16, 24))), strict=True):
        assert torch.equal(got, want)
    small = torch.randn(2, 1, 1, generator=g)  # grids of different sizes (a fixed target)
    got = upsample_pair(e1, small, (16, 24))
    assert torch.equal(got[1], upsample(small, (16, 24)))


@pytest.mark.parametrize("method", ["grad-cam", "deep-similarity", "interaction-cam",
                                    "input-x-gradient"])
def test_one_tower_joint_maps_equal_the_two_tower_path(method):
    # the one-tower fast paths compute both images' maps in one batch; the same encoder declared
    # as two towers (head2 given) runs the per-image path
    x1, x2 = images((16, 16))
    enc = Dropper()
    one = pairlens.SimilarityModel(enc, feature_layer="features", input_size=(16, 16))
    two = pairlens.SimilarityModel(enc, feature_layer="features", input_size=(16, 16),
                                   head2=nn.Identity())
    assert two.two_towers and not one.two_towers
    a, b = (pairlens.explain(m, x1, x2, method=method) for m in (one, two))
    for got, want in zip((*a.maps, a.score), (*b.maps, b.score), strict=True):
        torch.testing.assert_close(got, want)


def test_explanations_pickle_with_their_display_images():
    import copy
    import pickle

    model = pairlens.SimilarityModel(Dropper(), feature_layer="features", input_size=(16, 16))
    x1, x2 = images((16, 16))
    x1.mul_(1.0)  # an input whose version counter is not 0 (it would be after unpickling)
    exp = pairlens.explain(model, x1, x2, method="grad-cam")
    for other in (pickle.loads(pickle.dumps(exp)), copy.deepcopy(exp)):
        for got, want in zip(other.images, exp.images, strict=True):
            assert torch.equal(got, want)
