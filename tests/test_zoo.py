"""Published checkpoints through the model registry (issue 6).

For each entry: the reference architecture is built the way the official repository builds it
(torchvision / timm / open_clip, or a functional re-implementation for SimCLRv2's converted
ResNet), given random weights and random BatchNorm statistics, written in the published file
layout (nesting, ``module.`` prefixes, optimizer / scaler entries), loaded through
``pairlens.load_model`` and compared embedding by embedding. Broken and foreign files must give
one-line errors naming the file.
"""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import pairlens
from pairlens.models.checkpoint import CheckpointError
from pairlens.models.registry import list_models, model_info

ATOL = 1e-4
ZOO = [n for n in list_models() if not model_info(n).bundled]


# ---------------------------------------------------------------- helpers
def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere, and non-trivial BatchNorm statistics / affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return module.eval()


def fake_optimizer(module: nn.Module) -> dict:
    """An SGD optimizer state dict like the training scripts save (with momentum buffers)."""
    params = list(module.parameters())
    return {
        "state": {i: {"momentum_buffer": torch.zeros_like(p)} for i, p in enumerate(params[:3])},
        "param_groups": [
            {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "params": list(range(len(params)))}
        ],
    }


def ddp(sd: dict, prefix: str) -> dict:
    return {f"module.{prefix}{k}": v for k, v in sd.items()}


def images(n: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-4)


def one_line_error(name: str, path: Path, **kw) -> str:
    with pytest.raises((CheckpointError, ValueError)) as info:
        pairlens.load_model(name, checkpoint=path, **kw)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def truncate(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def mlp(num_layers: int, input_dim: int, mlp_dim: int, output_dim: int, last_bn: bool = True):
    """MoCo v3's ``_build_mlp`` written from its description (moco/builder.py)."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        d1 = input_dim if i == 0 else mlp_dim
        d2 = output_dim if i == num_layers - 1 else mlp_dim
        layers.append(nn.Linear(d1, d2, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(d2), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(d2, affine=False))
    return nn.Sequential(*layers)


def pooled(resnet: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
    body = nn.Sequential(*list(resnet.children())[:-1])
    return body(x).flatten(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo")


# ---------------------------------------------------------------- SimCLRv2
def simclr_functional(sd: dict, head: dict, x: torch.Tensor, sk: bool):
    """Forward pass of the converted SimCLRv2 ResNet straight from the state dict's key names."""

    def bn(t, p, relu=True):
        t = F.batch_norm(
            t, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"],
            False, 0.0, 1e-5,
        )
        return F.relu(t) if relu else t

    def conv(t, p, stride=1):
        w = sd[p + "weight"]
        return F.conv2d(t, w, stride=stride, padding=(w.shape[-1] - 1) // 2)

    if sk:
        h = bn(conv(x, "net.0.0.", 2), "net.0.1.0.")
        h = bn(conv(h, "net.0.2."), "net.0.3.0.")
        h = bn(conv(h, "net.0.4."), "net.0.5.0.")
    else:
        h = bn(conv(x, "net.0.0.", 2), "net.0.1.0.")
    h = F.max_pool2d(h, 3, 2, 1)
    for s in range(1, 5):
        b = 0
        while f"net.{s}.blocks.{b}.net.0.weight" in sd:
            p = f"net.{s}.blocks.{b}."
            stride = 2 if s > 1 and b == 0 else 1
            if b == 0:
                if sk:
                    sc = F.avg_pool2d(F.pad(h, (0, 1, 0, 1)), 2, stride)
                    sc = conv(sc, p + "projection.shortcut.2.")
                else:
                    sc = conv(h, p + "projection.shortcut.", stride)
                sc = bn(sc, p + "projection.bn.0.", relu=False)
            else:
                sc = h
            y = bn(conv(h, p + "net.0."), p + "net.1.0.")
            if sk:
                m = bn(conv(y, p + "net.2.main_conv.0.", stride), p + "net.2.main_conv.1.0.")
                a, c = m.chunk(2, dim=1)
                g = (a + c).mean((2, 3), keepdim=True)
                g = bn(conv(g, p + "net.2.mixing_conv.0."), p + "net.2.mixing_conv.1.0.")
                ga, gc = conv(g, p + "net.2.mixing_conv.2.").chunk(2, dim=1)
                wa = torch.softmax(torch.stack([ga, gc]), dim=0)
                y = bn(conv(wa[0] * a + wa[1] * c, p + "net.3."), p + "net.4.0.", relu=False)
            else:
                y = bn(conv(y, p + "net.2.", stride), p + "net.3.0.")
                y = bn(conv(y, p + "net.4."), p + "net.5.0.", relu=False)
            h = F.relu(sc + y)
            b += 1
    feat = h.mean((2, 3))
    z = feat
    for lin, bnk, relu in ((0, 1, True), (3, 4, True), (6, 7, False)):
        z = z @ head[f"layers.{lin}.weight"].T
        z = F.batch_norm(
            z, head[f"layers.{bnk}.running_mean"], head[f"layers.{bnk}.running_var"],
            head[f"layers.{bnk}.weight"], head[f"layers.{bnk}.bias"], False, 0.0, 1e-5,
        )
        z = F.relu(z) if relu else z
    return feat, z, feat @ sd["fc.weight"].T + sd["fc.bias"]


# README of google-research/simclr, "Param (M)" of each pre-trained SimCLRv2 ResNet (no heads)
SIMCLR_PARAMS_M = {
    (50, 1, 0): 24, (50, 1, 1): 35, (50, 2, 0): 94, (50, 2, 1): 140,
    (101, 1, 0): 43, (101, 1, 1): 65, (101, 2, 0): 170, (101, 2, 1): 257,
    (152, 1, 0): 58, (152, 1, 1): 89, (152, 2, 0): 233, (152, 2, 1): 354, (152, 3, 1): 795,
}  # fmt: skip


def test_simclr_every_published_variant_is_registered_with_the_published_size():
    from pairlens.models.zoo.simclrv2 import SK_RATIO, SimCLRv2ResNet

    names = {n for n in ZOO if n.startswith("simclr-v2-")}
    assert len(names) == len(SIMCLR_PARAMS_M) == 13
    for (depth, width, sk), millions in SIMCLR_PARAMS_M.items():
        name = f"simclr-v2-r{depth}-{width}x" + ("-sk1" if sk else "")
        assert name in names
        info = model_info(name)
        assert info.normalization.startswith("none") and info.feature_layer == "net.4"
        with torch.device("meta"):
            net = SimCLRv2ResNet(depth, width, SK_RATIO if sk else 0.0)
        n = sum(p.numel() for k, p in net.named_parameters() if not k.startswith("fc."))
        assert abs(n / 1e6 - millions) < 1.0, (name, n)  # the README rounds to 1M


def _simclr_roundtrip(files: Path, depth: int, width: int, sk: bool):
    from pairlens.models.zoo.simclrv2 import SK_RATIO, ContrastiveHead, SimCLRv2ResNet

    name = f"simclr-v2-r{depth}-{width}x" + ("-sk1" if sk else "")
    torch.manual_seed(depth + width + sk)
    resnet = randomize(SimCLRv2ResNet(depth, width, SK_RATIO if sk else 0.0), seed=3)
    head = randomize(ContrastiveHead(resnet.out_dim), seed=4)
    path = files / f"r{depth}_{width}x_sk{int(sk)}_ema.pth"
    torch.save({"resnet": resnet.state_dict(), "head": head.state_dict()}, path)
    sd, hd = torch.load(path, weights_only=True).values()
    x01 = images(2, 32).clamp(0, 1)  # SimCLRv2 takes [0, 1] inputs without normalisation
    with torch.no_grad():
        feat, z, logits = simclr_functional(sd, hd, x01, sk)
        model = pairlens.load_model(name, checkpoint=path)
        assert model.mean.abs().sum() == 0 and torch.all(model.std == 1)
        close(model.embed(model.normalize(x01)), z)
        back = pairlens.load_model(name, checkpoint=path, embedding="backbone")
        close(back.embed(x01), feat)
        close(back.classifier(back.embed(x01)), logits)
    return path


@pytest.mark.parametrize("sk", [False, True], ids=["sk0", "sk1"])
def test_simclr_r50_1x_loads_converted_checkpoint(files, sk):
    path = _simclr_roundtrip(files, 50, 1, sk)
    msg = one_line_error(f"simclr-v2-r50-1x{'' if sk else '-sk1'}", path)
    assert "does not match" in msg and ("missing keys" in msg or "unexpected keys" in msg)


@pytest.mark.slow
@pytest.mark.parametrize("depth,width,sk", [k for k in SIMCLR_PARAMS_M if k[:2] != (50, 1)])
def test_simclr_large_variants_load(files, depth, width, sk):
    path = _simclr_roundtrip(files, depth, width, bool(sk))
    path.unlink()


def test_simclr_wrong_format_is_described(files):
    path = files / "not_simclr.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    msg = one_line_error("simclr-v2-r50-1x", path)
    assert "'resnet' and 'head'" in msg and "state_dict" in msg


# ---------------------------------------------------------------- Barlow Twins
@pytest.fixture(scope="module")
def barlow(files):
    torch.manual_seed(0)

    class BarlowTwins(nn.Module):  # facebookresearch/barlowtwins main.py, small projector
        def __init__(self, sizes):
            super().__init__()
            self.backbone = torchvision.models.resnet50(zero_init_residual=True)
            self.backbone.fc = nn.Identity()
            layers: list[nn.Module] = []
            for i in range(len(sizes) - 2):
                layers += [nn.Linear(sizes[i], sizes[i + 1], bias=False),
                           nn.BatchNorm1d(sizes[i + 1]), nn.ReLU(inplace=True)]  # fmt: skip
            layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
            self.projector = nn.Sequential(*layers)
            self.bn = nn.BatchNorm1d(sizes[-1], affine=False)

    ref = randomize(BarlowTwins([2048, 96, 96, 64]), seed=5)
    full = files / "checkpoint.pth"
    torch.save({"epoch": 1000, "model": ddp(ref.state_dict(), ""), "optimizer":
                fake_optimizer(ref)}, full)  # fmt: skip
    hub = files / "resnet50.pth"
    torch.save(ref.backbone.state_dict(), hub)
    return ref, full, hub


def test_barlow_twins_full_checkpoint_and_hub_backbone(barlow):
    ref, full, hub = barlow
    x = images()
    with torch.no_grad():
        feat = ref.backbone(x)
        z = ref.projector(feat)
        close(pairlens.load_model("barlow-twins-r50", checkpoint=full).embed(x), z)
        m = pairlens.load_model("barlow-twins-r50", checkpoint=full, embedding="projector-bn")
        close(m.embed(x), ref.bn(z))
        close(pairlens.load_model("barlow-twins-r50", checkpoint=hub, embedding="backbone")
              .embed(x), feat)  # fmt: skip
    assert model_info("barlow-twins-r50").default_embedding == "projector"
    msg = one_line_error("barlow-twins-r50", hub)  # default embedding needs the projector
    assert "backbone" in msg and "checkpoint.pth" in msg


# ---------------------------------------------------------------- SimSiam
@pytest.fixture(scope="module")
def simsiam(files):
    torch.manual_seed(1)
    dim, pred_dim = 64, 16  # published: 2048, 512 (sizes are read from the file)

    class SimSiam(nn.Module):  # facebookresearch/simsiam simsiam/builder.py
        def __init__(self):
            super().__init__()
            self.encoder = torchvision.models.resnet50(num_classes=dim, zero_init_residual=True)
            prev = self.encoder.fc.weight.shape[1]
            self.encoder.fc = nn.Sequential(
                nn.Linear(prev, prev, bias=False), nn.BatchNorm1d(prev), nn.ReLU(inplace=True),
                nn.Linear(prev, prev, bias=False), nn.BatchNorm1d(prev), nn.ReLU(inplace=True),
                self.encoder.fc, nn.BatchNorm1d(dim, affine=False),
            )  # fmt: skip
            self.predictor = nn.Sequential(
                nn.Linear(dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim),
                nn.ReLU(inplace=True), nn.Linear(pred_dim, dim),
            )  # fmt: skip

    ref = randomize(SimSiam(), seed=6)
    path = files / "checkpoint_0099.pth.tar"
    torch.save({"epoch": 100, "arch": "resnet50", "state_dict": ddp(ref.state_dict(), ""),
                "optimizer": fake_optimizer(ref)}, path)  # fmt: skip
    return ref, path


def test_simsiam_checkpoint(simsiam):
    ref, path = simsiam
    x = images()
    with torch.no_grad():
        z = ref.encoder(x)
        close(pairlens.load_model("simsiam-r50", checkpoint=path).embed(x), z)
        close(pairlens.load_model("simsiam-r50", checkpoint=path, embedding="predictor")
              .embed(x), ref.predictor(z))  # fmt: skip
        close(pairlens.load_model("simsiam-r50", checkpoint=path, embedding="backbone")
              .embed(x), pooled(ref.encoder, x))  # fmt: skip


# ---------------------------------------------------------------- MoCo v3
@pytest.fixture(scope="module")
def mocov3_r50(files):
    torch.manual_seed(2)
    dim, mlp_dim = 32, 96  # published: 256, 4096

    class MoCoResNet(nn.Module):  # facebookresearch/moco-v3 moco/builder.py MoCo_ResNet
        def __init__(self):
            super().__init__()
            self.base_encoder = torchvision.models.resnet50(num_classes=mlp_dim,
                                                            zero_init_residual=True)
            self.momentum_encoder = torchvision.models.resnet50(num_classes=mlp_dim,
                                                                zero_init_residual=True)
            hidden = self.base_encoder.fc.weight.shape[1]
            del self.base_encoder.fc, self.momentum_encoder.fc
            self.base_encoder.fc = mlp(2, hidden, mlp_dim, dim)
            self.momentum_encoder.fc = mlp(2, hidden, mlp_dim, dim)
            self.predictor = mlp(2, dim, mlp_dim, dim, last_bn=False)

    ref = MoCoResNet()
    randomize(ref.base_encoder, seed=7)
    randomize(ref.momentum_encoder, seed=8)
    randomize(ref.predictor, seed=9)
    path = files / "r-50-1000ep.pth.tar"
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
              "growth_interval": 2000, "_growth_tracker": 0}  # fmt: skip
    torch.save({"epoch": 1000, "arch": "resnet50", "state_dict": ddp(ref.state_dict(), ""),
                "optimizer": fake_optimizer(ref), "scaler": scaler}, path)  # fmt: skip
    return ref, path


def test_mocov3_r50_checkpoint(mocov3_r50):
    ref, path = mocov3_r50
    x = images()
    with torch.no_grad():
        z = ref.base_encoder(x)
        close(pairlens.load_model("mocov3-r50", checkpoint=path).embed(x), z)
        close(pairlens.load_model("mocov3-r50", checkpoint=path, embedding="predictor")
              .embed(x), ref.predictor(z))  # fmt: skip
        close(pairlens.load_model("mocov3-r50", checkpoint=path, embedding="backbone")
              .embed(x), pooled(ref.base_encoder, x))  # fmt: skip
        momentum = pairlens.load_model("mocov3-r50", checkpoint=path, encoder="momentum")
        close(momentum.embed(x), ref.momentum_encoder(x))


def timm_vit(embed_dim: int, num_heads: int, patch: int = 16, num_classes: int = 0):
    timm = pytest.importorskip("timm")
    return timm.models.vision_transformer.VisionTransformer(
        img_size=224, patch_size=patch, embed_dim=embed_dim, depth=12, num_heads=num_heads,
        mlp_ratio=4, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_classes=num_classes,
    )  # fmt: skip


def make_mocov3_vit(files: Path, embed_dim: int, tag: str, seed: int):
    dim, mlp_dim = 32, 64  # published: 256, 4096
    torch.manual_seed(seed)

    class MoCoViT(nn.Module):  # moco/builder.py MoCo_ViT on timm's VisionTransformer (vits.py)
        def __init__(self):
            super().__init__()
            self.base_encoder = timm_vit(embed_dim, 12, num_classes=mlp_dim)
            self.momentum_encoder = copy.deepcopy(self.base_encoder)
            hidden = self.base_encoder.head.weight.shape[1]
            del self.base_encoder.head, self.momentum_encoder.head
            self.base_encoder.head = mlp(3, hidden, mlp_dim, dim)
            self.momentum_encoder.head = mlp(3, hidden, mlp_dim, dim)
            self.predictor = mlp(2, dim, mlp_dim, dim)

    ref = MoCoViT()
    randomize(ref.base_encoder, seed=seed)
    randomize(ref.momentum_encoder, seed=seed + 1)
    randomize(ref.predictor, seed=seed + 2)
    path = files / f"{tag}.pth.tar"
    torch.save({"epoch": 300, "arch": f"vit_{tag[4]}", "state_dict": ddp(ref.state_dict(), ""),
                "optimizer": fake_optimizer(ref), "scaler": {"scale": 1024.0}}, path)  # fmt: skip
    return ref, path


@pytest.fixture(scope="module")
def mocov3_vit_b(files):
    return make_mocov3_vit(files, 768, "vit-b-300ep", seed=20)


def check_mocov3_vit(name: str, ref, path: Path, all_embeddings: bool) -> None:
    x = images(1, 224)
    with torch.no_grad():
        z = ref.base_encoder(x)
        model = pairlens.load_model(name, checkpoint=path)
        close(model.embed(x), z)
        # CAM layer: last block tokens, class token dropped, 14x14 grid at 224 px
        _, a = model.embed_with_features(x)
        assert model.feature_layer == "blocks.11.norm1" and a.shape[1] == 197
        grid = model.to_grid(a, (224, 224))
        assert grid.shape == (1, ref.base_encoder.embed_dim, 14, 14)
        close(grid[:, :, 0, 1], a[:, 2])
        if not all_embeddings:
            return
        close(pairlens.load_model(name, checkpoint=path, embedding="predictor").embed(x),
              ref.predictor(z))  # fmt: skip
        close(pairlens.load_model(name, checkpoint=path, embedding="backbone").embed(x),
              ref.base_encoder.forward_features(x)[:, 0])  # fmt: skip


def test_mocov3_vit_s_checkpoint(files):
    ref, path = make_mocov3_vit(files, 384, "vit-s-300ep", seed=10)
    check_mocov3_vit("mocov3-vit-s", ref, path, all_embeddings=True)
    msg = one_line_error("mocov3-vit-b", path)  # a ViT-S file is not a ViT-B
    assert "shape mismatch" in msg and "vit-b-300ep" in msg
    path.unlink()


def test_mocov3_vit_b_checkpoint(mocov3_vit_b):
    check_mocov3_vit("mocov3-vit-b", *mocov3_vit_b, all_embeddings=False)


def test_vit_grid_is_inferred_from_the_input_size():
    model = pairlens.load_model("dino-vit-s16", random_weights=True)
    x = images(1, 160)
    with torch.no_grad():
        z, a = model.embed_with_features(x)
    assert a.shape[1] == 1 + 10 * 10 and model.to_grid(a, (160, 160)).shape[-2:] == (10, 10)


# ---------------------------------------------------------------- DINO
def test_dino_resnet50_backbone(files):
    torch.manual_seed(3)
    ref = torchvision.models.resnet50()
    ref.fc = nn.Identity()  # dino hubconf.py: resnet50 with fc = Identity
    randomize(ref, seed=11)
    path = files / "dino_resnet50_pretrain.pth"
    torch.save(ref.state_dict(), path)
    x = images()
    with torch.no_grad():
        close(pairlens.load_model("dino-r50", checkpoint=path).embed(x), ref(x))


@pytest.mark.parametrize(
    "name,dim,heads,patch",
    [
        ("dino-vit-s16", 384, 6, 16),
        ("dino-vit-b16", 768, 12, 16),
        pytest.param("dino-vit-s8", 384, 6, 8, marks=pytest.mark.slow),
        pytest.param("dino-vit-b8", 768, 12, 8, marks=pytest.mark.slow),
    ],
)
def test_dino_vit_backbones(files, name, dim, heads, patch):
    torch.manual_seed(4)
    ref = randomize(timm_vit(dim, heads, patch), seed=12)
    path = files / f"{model_info(name).checkpoint_name}"
    torch.save(ref.state_dict(), path)  # DINO keys: cls_token, pos_embed, patch_embed, blocks, norm
    x = images(1, 224)
    with torch.no_grad():
        model = pairlens.load_model(name, checkpoint=path)
        close(model.embed(x), ref.forward_features(x)[:, 0])
        assert set(model.encoder.state_dict()) == set(ref.state_dict())
    if name == "dino-vit-s16":  # 6-head DINO ViT-S is not MoCo v3's 12-head one: same shapes,
        msg = one_line_error("mocov3-vit-s", path)  # but another file layout
        assert "missing keys" in msg and "unexpected keys" in msg
    path.unlink()


# ---------------------------------------------------------------- CLIP
@pytest.mark.parametrize(
    "name,grid",
    [
        ("clip-vit-b32", 7),
        pytest.param("clip-vit-b16", 14, marks=pytest.mark.slow),
        pytest.param("clip-vit-l14", 16, marks=pytest.mark.slow),
        pytest.param("clip-rn50", 7, marks=pytest.mark.slow),
    ],
)
def test_clip_openai_entries_image_and_text_towers(files, name, grid):
    open_clip = pytest.importorskip("open_clip")
    arch = model_info(name).extras["open_clip_arch"]
    torch.manual_seed(5)
    ref = open_clip.create_model(arch, pretrained=None, force_quick_gelu=True).eval()
    path = files / "open_clip_pytorch_model.bin"
    torch.save(ref.state_dict(), path)
    x = images(1, 224)
    texts = ["a photo of a dog", "a zebra"]
    with torch.no_grad():
        model = pairlens.load_model(name, checkpoint=path)
        close(model.embed(x), ref.encode_image(x))
        tokens = open_clip.get_tokenizer(arch)(texts)
        close(model.embed_text(texts), ref.encode_text(tokens))
        z, a = model.embed_with_features(x)
        assert model.to_grid(a, (224, 224)).shape[-2:] == (grid, grid)
        if "backbone" in model_info(name).embeddings:
            pre = pairlens.load_model(name, checkpoint=path, embedding="backbone").embed(x)
            close(pre @ ref.visual.proj, ref.encode_image(x))
    if name == "clip-vit-b32":
        msg = one_line_error("clip-vit-b16", path)
        assert "shape mismatch" in msg
    path.unlink()


def test_clip_any_open_clip_architecture(files):
    """A small ResNet-tower open_clip configuration (same layout as RN50), from an open_clip
    training checkpoint ({'epoch', 'name', 'state_dict': module.*})."""
    import json

    open_clip = pytest.importorskip("open_clip")
    cfg = files / "pairlens-tiny-rn.json"
    cfg.write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                     "layers": 1},
    }))  # fmt: skip
    open_clip.add_model_config(cfg)
    torch.manual_seed(6)
    ref = open_clip.create_model("pairlens-tiny-rn", pretrained=None).eval()
    path = files / "tiny_rn_training.pt"
    torch.save({"epoch": 3, "name": "tiny", "state_dict": ddp(ref.state_dict(), "")}, path)
    x = images(2, 64)
    with torch.no_grad():
        model = pairlens.load_model("clip:pairlens-tiny-rn", checkpoint=path)
        close(model.embed(x), ref.encode_image(x))
        tokens = open_clip.get_tokenizer("pairlens-tiny-rn")(["a cat"])
        close(model.embed_text("a cat"), ref.encode_text(tokens))
    assert model.feature_layer == "visual.layer4" and model.name == "clip:pairlens-tiny-rn"
    assert model.input_size == (64, 64)
    path.unlink()


# ---------------------------------------------------------------- generic
def test_torchvision_architecture_from_a_state_dict(files):
    torch.manual_seed(7)
    ref = randomize(torchvision.models.resnet18(num_classes=10), seed=13)
    path = files / "resnet18_mine.pth"
    torch.save({"state_dict": ddp(ref.state_dict(), "")}, path)
    x = images()
    with torch.no_grad():
        logits = pairlens.load_model("torchvision:resnet18", checkpoint=path, embedding="logits")
        close(logits.embed(x), ref(x))
        model = pairlens.load_model("torchvision:resnet18", checkpoint=path)
        close(model.embed(x), pooled(ref, x))
    assert model.feature_layer == "layer4" and model.name == "torchvision:resnet18"
    msg = one_line_error("torchvision:resnet34", path)
    assert "missing keys" in msg


def test_timm_architecture_from_a_state_dict(files):
    timm = pytest.importorskip("timm")
    torch.manual_seed(8)
    ref = randomize(timm.create_model("vit_tiny_patch16_224", num_classes=7), seed=14)
    path = files / "vit_tiny.pth"
    torch.save(ref.state_dict(), path)
    x = images(1, 224)
    with torch.no_grad():
        model = pairlens.load_model("timm:vit_tiny_patch16_224", checkpoint=path)
        close(model.embed(x), ref.forward_head(ref.forward_features(x), pre_logits=True))
        logits = pairlens.load_model(
            "timm:vit_tiny_patch16_224", checkpoint=path, embedding="logits"
        )
        close(logits.embed(x), ref(x))
    assert model.feature_layer == "blocks.11.norm1"


def test_any_module_through_similarity_model():
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    model = pairlens.SimilarityModel(net, feature_layer="layer4")
    x = images()
    with torch.no_grad():
        close(model.embed(x), net(x))


# ---------------------------------------------------------------- errors, for every entry
def test_every_entry_is_documented():
    for name in ZOO:
        info = model_info(name)
        assert info.summary and info.architecture and info.checkpoint_format
        assert info.default_embedding in info.embeddings
        assert info.download_url or info.extras.get("source") or info.extras.get("takes_arch")


@pytest.fixture(scope="module")
def foreign(files) -> Path:
    """A checkpoint of another model: a torchvision ResNet-18 classifier."""
    path = files / "someone_elses_resnet18.pth"
    torch.save({"epoch": 1, "state_dict": torchvision.models.resnet18().state_dict()}, path)
    return path


def _needs(name: str) -> None:
    if name == "hf":
        pytest.skip("hf: reads a save_pretrained folder, not a checkpoint file (tests/test_hf.py)")
    extra = model_info(name).extras.get("requires")
    if extra == "open_clip_torch":
        pytest.importorskip("open_clip")
    elif extra == "timm":
        pytest.importorskip("timm")


ARCH = {"clip": "ViT-B-32", "timm": "vit_tiny_patch16_224", "torchvision": "resnet50"}


def _arch_kw(name: str) -> dict:
    return {"arch": ARCH[name]} if model_info(name).extras.get("takes_arch") else {}


@pytest.mark.parametrize("name", ZOO)
def test_truncated_file_gives_one_line_error(files, foreign, name):
    _needs(name)
    path = truncate(foreign, files / f"truncated_{name}.pth")
    msg = one_line_error(name, path, **_arch_kw(name))
    assert "truncated or corrupt" in msg


@pytest.mark.parametrize("name", ZOO)
def test_checkpoint_of_another_model_gives_one_line_error(foreign, name):
    _needs(name)
    msg = one_line_error(name, foreign, **_arch_kw(name))
    assert "does not match" in msg or "expected" in msg
    if not name.startswith("simclr"):
        assert "missing keys" in msg or "shape mismatch" in msg, msg


def test_missing_checkpoint_and_unsafe_pickles(files):
    with pytest.raises(CheckpointError, match="needs its checkpoint file.*checkpoint_0099"):
        pairlens.load_model("simsiam-r50")
    path = files / "pickled_object.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "config": _Config()}, path)
    msg = one_line_error("simsiam-r50", path)
    assert "pickled Python objects" in msg and str(path) in msg
    assert "weights_only" not in msg  # never the advice to load it with weights_only=False
    text = files / "notes.pth"
    text.write_text("hello")
    assert "not a" in one_line_error("dino-r50", text)
    assert "no such" in one_line_error("dino-r50", files / "absent.pth")
    empty = files / "empty.pth"
    empty.write_bytes(b"")
    assert "empty" in one_line_error("dino-r50", empty)


class _Config:
    """A Python object pickled into a checkpoint (refused by weights_only=True)."""


# ---------------------------------------------------------------- CLI
def test_cli_explain_mocov3_vit_b_interaction_cam(mocov3_vit_b, tmp_path, capsys):
    from PIL import Image

    from pairlens.cli import main

    _, path = mocov3_vit_b
    rng = torch.Generator().manual_seed(0)
    paths = []
    for i in range(2):
        arr = (torch.rand(256, 300, 3, generator=rng) * 255).to(torch.uint8).numpy()
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(arr).save(paths[-1])
    out = tmp_path / "out"
    code = main(["explain", str(paths[0]), str(paths[1]), "--model", "mocov3-vit-b",
                 "--checkpoint", str(path), "--methods", "interaction-cam", "--out", str(out),
                 "--device", "cpu", "--quiet"])  # fmt: skip
    assert code == 0
    pngs = list(out.glob("*.png"))
    assert pngs, list(out.iterdir())
    import numpy as np

    (npz,) = out.glob("*.npz")
    maps = np.load(npz)
    arrays = [maps[k] for k in maps.files]
    assert any(a.shape[-2:] == (224, 224) and np.isfinite(a).all() and a.std() > 0
               for a in arrays)  # fmt: skip
    bad = truncate(path, tmp_path / "bad.pth.tar")
    code = main(["explain", str(paths[0]), str(paths[1]), "--model", "mocov3-vit-b",
                 "--checkpoint", str(bad), "--out", str(out), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("pairlens: error:") and str(bad) in err[-1]


def test_cli_models_list_and_info(capsys):
    from pairlens.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("simclr-v2-r50-1x", "barlow-twins-r50", "simsiam-r50", "mocov3-vit-b",
                 "dino-vit-s16", "clip-vit-b32"):  # fmt: skip
        assert name in out
    assert main(["models", "info", "simsiam-r50"]) == 0
    out = capsys.readouterr().out
    assert "checkpoint_0099.pth.tar" in out and "projector, predictor, backbone" in out
    assert "layer4" in out and "ImageNet" in out


def test_models_page_has_one_row_per_entry():
    page = (Path(__file__).parents[1] / "docs" / "models.md").read_text()
    for name in ZOO:
        info = model_info(name)
        arg = "PATH" if name == "hf" else "ARCH"  # hf: takes a folder
        label = f"`{name}:{arg}`" if info.extras.get("takes_arch") else f"`{name}`"
        (row,) = [line for line in page.splitlines() if line.startswith(f"| {label} |")]
        assert (info.download_url or info.extras.get("source") or "your own file") in row
        assert f"**{info.default_embedding}**" in row
        assert info.feature_layer in row


def test_torchvision_headless_backbone_file(files):
    torch.manual_seed(9)
    ref = randomize(torchvision.models.resnet18(), seed=15)
    ref.fc = nn.Identity()
    path = files / "resnet18_backbone.pth"
    torch.save(ref.state_dict(), path)  # no fc.* keys
    x = images()
    with torch.no_grad():
        close(pairlens.load_model("torchvision:resnet18", checkpoint=path).embed(x), ref(x))
    assert "no classifier" in one_line_error("torchvision:resnet18", path, embedding="logits")


FAST = {
    "smoothgrad": {"n_samples": 3},
    "averaged-transforms": {"steps": 3},
    "pairwise-occlusion": {"n_samples": 6},
    "conditional-occlusion": {"window": 32, "stride": 32},
}
CHEAP = ("grad-cam", "interaction-cam", "deep-similarity", "input-x-gradient")


def _vit_methods(names) -> None:
    model = pairlens.load_model("dino-vit-s16", random_weights=True)
    g = torch.Generator().manual_seed(3)
    x1, x2 = (model.normalize(torch.rand(1, 3, 96, 96, generator=g)) for _ in range(2))
    for name in names:
        if name == "bilrp":  # LRP has no rules for attention: refused with a clear error
            from pairlens.methods.registry import NotApplicableError

            with pytest.raises(NotApplicableError, match="transformer"):
                pairlens.explain(model, x1, x2, method=name)
            continue
        exp = pairlens.explain(model, x1, x2, method=name, **FAST.get(name, {}))
        for m in exp.maps:
            assert m.shape == (1, 96, 96) and torch.isfinite(m).all(), name
        if name in CHEAP:
            assert exp.maps[0].abs().sum() > 0, name  # CAM layer gradients reach the embedding
    exp = pairlens.explain(model, x1, x2, method="interaction-cam")
    scores = pairlens.evaluate(model, x1, x2, exp, metrics=("SI", "CD"), step=1152)
    for k, v in scores.items():
        assert v.shape == (1,) and torch.isfinite(v).all(), k


def test_cam_and_gradient_methods_and_metrics_on_a_vit_entry():
    """Issue 6, item 3: pair methods and metrics work with the ViT entries, the grid being
    inferred (random-weight DINO ViT-S/16 at 96 px: 6x6 patches, interpolated positions)."""
    _vit_methods(CHEAP)


@pytest.mark.slow
def test_every_method_on_a_vit_entry():
    _vit_methods(pairlens.methods())


# ---------------------------------------------------------------- issue 10: more ecosystems
def test_dino_training_checkpoint_loads_its_teacher_backbone(files):
    """main_dino.py's checkpoint.pth: {'student' (DDP), 'teacher', 'optimizer', 'epoch', 'args',
    'dino_loss'}; DINO's evaluation code takes the teacher without module. / backbone. / head."""
    import argparse

    torch.manual_seed(21)
    teacher = randomize(timm_vit(384, 6), seed=22)
    student = {k: v + 0.01 for k, v in teacher.state_dict().items()}  # another backbone
    head = nn.Sequential(nn.Linear(384, 64), nn.GELU(), nn.Linear(64, 32))  # a small DINO head
    with_head = lambda sd, p: {**{f"{p}backbone.{k}": v for k, v in sd.items()},  # noqa: E731
                               **{f"{p}head.{k}": v for k, v in head.state_dict().items()}}
    path = files / "checkpoint.pth"
    torch.save({"student": with_head(student, "module."),
                "teacher": with_head(teacher.state_dict(), ""),
                "optimizer": fake_optimizer(head), "epoch": 100,
                "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=32),
                "dino_loss": {"center": torch.zeros(1, 32)}}, path)  # fmt: skip
    x = images(1, 224)
    with torch.no_grad():
        model = pairlens.load_model("dino-vit-s16", checkpoint=path)
        close(model.embed(x), teacher.forward_features(x)[:, 0])
    path.unlink()


@pytest.fixture(scope="module")
def tiny_vit_clip(files):
    """A tiny open_clip ViT architecture 'pairlens-tiny-vit-clip' (registered with open_clip)."""
    from regions import tiny_open_clip

    return tiny_open_clip(files, "pairlens-tiny-vit-clip")


def test_clip_openai_weights_with_a_gelu_architecture_are_caught(tiny_vit_clip, tmp_path):
    """OpenAI's weights need QuickGELU: an open_clip_config.json beside the file picks it (with a
    warning); a file whose path says openai and a GELU architecture gives a warning."""
    import json
    import warnings

    open_clip = tiny_vit_clip
    torch.manual_seed(24)
    ref = open_clip.create_model("pairlens-tiny-vit-clip", pretrained=None,
                                 force_quick_gelu=True).eval()
    hub = tmp_path / "vit_tiny_clip.openai"
    hub.mkdir()
    torch.save(ref.state_dict(), hub / "open_clip_pytorch_model.bin")
    (hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": True}}))
    x = images(1, 32)
    with pytest.warns(UserWarning, match="building it with QuickGELU"):
        model = pairlens.load_model("clip:pairlens-tiny-vit-clip",
                                    checkpoint=hub / "open_clip_pytorch_model.bin")
    with torch.no_grad():
        close(model.embed(x), ref.encode_image(x))
    (hub / "open_clip_config.json").unlink()
    with pytest.warns(UserWarning, match="trained with QuickGELU"):
        pairlens.load_model("clip:pairlens-tiny-vit-clip",
                            checkpoint=hub / "open_clip_pytorch_model.bin")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pairlens.load_model("clip:pairlens-tiny-vit-clip", checkpoint=hub /
                            "open_clip_pytorch_model.bin", quick_gelu=True)


def test_timm_pretrained_is_read_from_the_hf_cache_only(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    from huggingface_hub import constants
    from safetensors.torch import save_file

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="never downloads") as info:
        pairlens.load_model("timm:resnet18.a1_in1k", pretrained=True)
    assert "\n" not in str(info.value)
    torch.manual_seed(25)
    ref = randomize(timm.create_model("resnet18", num_classes=1000), seed=26)
    snap = tmp_path / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, snap / "model.safetensors")
    (tmp_path / "models--timm--resnet18.a1_in1k" / "refs").mkdir()
    (tmp_path / "models--timm--resnet18.a1_in1k" / "refs" / "main").write_text("abc123")
    x = images()
    with torch.no_grad():
        logits = pairlens.load_model("timm:resnet18.a1_in1k", pretrained=True, embedding="logits")
        close(logits.embed(x), ref(x))
    assert logits.input_size == (224, 224) and abs(logits.crop_fraction - 0.95) < 1e-6


def test_torchvision_weights_are_read_from_torchvisions_cache_only(tmp_path, monkeypatch):
    import os

    w = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(CheckpointError, match="never downloads"):
        pairlens.load_model("torchvision:resnet18", pretrained=True)
    torch.manual_seed(27)
    ref = randomize(torchvision.models.resnet18(), seed=28)
    (tmp_path / "checkpoints").mkdir()
    torch.save(ref.state_dict(), tmp_path / "checkpoints" / os.path.basename(w.url))
    x = images()
    with torch.no_grad():
        for kw in ({"pretrained": True}, {"weights": w}):
            model = pairlens.load_model("torchvision:resnet18", embedding="logits", **kw)
            close(model.embed(x), ref(x))
    with pytest.raises(ValueError, match="not both"):
        pairlens.load_model("torchvision:resnet18", pretrained=True, checkpoint=__file__)


def test_torchvision_and_timm_preprocessing_come_from_the_library():
    vit = pairlens.load_model("torchvision:vit_b_32", random_weights=True)
    assert vit.input_size == (224, 224) and abs(vit.crop_fraction - 224 / 256) < 1e-6
    eff = pairlens.load_model("torchvision:efficientnet_b1", random_weights=True)
    assert eff.input_size == (240, 240) and abs(eff.crop_fraction - 240 / 255) < 1e-6
    pytest.importorskip("timm")
    siglip = pairlens.load_model("timm:vit_base_patch16_siglip_224", random_weights=True,
                                 depth=1)
    assert siglip.mean.flatten().tolist() == [0.5, 0.5, 0.5]


def test_timm_headless_checkpoint_asked_for_logits_is_an_error(files):
    timm = pytest.importorskip("timm")
    net = timm.create_model("resnet18", num_classes=0).eval()
    path = files / "resnet18_headless.pth"
    torch.save(net.state_dict(), path)
    assert "no classifier" in one_line_error("timm:resnet18", path, embedding="logits")
    with torch.no_grad():
        close(pairlens.load_model("timm:resnet18", checkpoint=path).embed(images()), net(images()))


DEFAULT_LAYER_ENTRIES = [
    "dino-r50", "dino-vit-s16",
    pytest.param("simsiam-r50", marks=pytest.mark.slow),
    pytest.param("mocov3-vit-s", marks=pytest.mark.slow),
    pytest.param("simclr-v2-r50-1x", marks=pytest.mark.slow),
    pytest.param("barlow-twins-r50", marks=pytest.mark.slow),
    pytest.param("mocov3-r50", marks=pytest.mark.slow),
    pytest.param("clip-vit-b32", marks=pytest.mark.slow),
    pytest.param("clip-rn50", marks=pytest.mark.slow),
]  # fmt: skip


@pytest.mark.parametrize("name", DEFAULT_LAYER_ENTRIES)
def test_every_zoo_familys_default_cam_layer_reaches_the_embedding(name):
    """With random weights: no BlankGradientError, a non-empty map, and for ViTs the layer is the
    norm entering the last block (the only one whose patch tokens reach the class token)."""
    model = pairlens.load_model(name, random_weights=True)
    size = model.input_size if name.startswith("clip") else (64, 64)
    x1, x2 = images(1, size[0]), images(1, size[0], seed=2)
    exp = pairlens.explain(model, x1, x2, method="grad-cam")
    assert exp.maps[0].abs().sum() > 0 and exp.maps[1].abs().sum() > 0
    if "vit" in name:
        assert model.feature_layer.endswith(("norm1", "ln_1"))


def test_cli_explain_an_image_against_a_caption(tiny_vit_clip, tmp_path, capsys):
    """pairlens explain img.jpg --text "a photo of a cat" --model clip:ARCH --checkpoint FILE"""
    import json

    from pairlens.cli import main
    from pairlens.data.bundled import example_image_paths

    torch.manual_seed(29)
    ref = tiny_vit_clip.create_model("pairlens-tiny-vit-clip", pretrained=None).eval()
    ckpt = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(ref.state_dict(), ckpt)
    image = str(example_image_paths("photos")[0])
    base = ["explain", image, "--model", "clip:pairlens-tiny-vit-clip", "--checkpoint", str(ckpt),
            "--device", "cpu", "--quiet", "--out", str(tmp_path / "out")]
    assert main([*base, "--text", "a photo of a cat", "--methods", "grad-cam"]) == 0
    meta = json.loads((tmp_path / "out" / "grad-cam.json").read_text())
    assert meta["target"]["text"] == "a photo of a cat" and meta["sources"][1] == "a photo of a cat"
    model = pairlens.load_model("clip:pairlens-tiny-vit-clip", checkpoint=ckpt)
    with torch.no_grad():
        want = torch.nn.functional.cosine_similarity(
            model.embed(model.preprocess(image)), model.embed_text("a photo of a cat"))
    assert abs(meta["score"][0] - float(want[0])) < 1e-4
    capsys.readouterr()
    for args, message in (
        (["--text", "a cat", "--model", "digits"], "give one image"),  # two images: see below
        (["--text", "a cat", "--methods", "pairwise-occlusion"], "needs two images"),
        (["--text", "a cat"], "the target has 16 dimensions"),  # interaction-cam, C=32
    ):
        cmd = [*base, *args] if message != "give one image" else ["explain", image, image, *args]
        code = main(cmd)
        err = capsys.readouterr().err
        usage = message != "the target has 16 dimensions"  # found while running: exit 1
        assert code == (2 if usage else 1) and message in err and err.count("\n") == 1, err
    code = main(["explain", image, "--text", "a cat", "--model", "digits", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "no text tower" in err
    assert main([*base, "--text", "a cat", "--methods", "all", "--out", str(tmp_path / "all")]) == 0
    captured = capsys.readouterr()
    assert "warning: interaction-cam skipped: " in captured.err
    assert "pairwise-occlusion" not in captured.out + captured.err
    assert (tmp_path / "all" / "grid.png").is_file()
    assert (tmp_path / "all" / "averaged-transforms.png").is_file()
