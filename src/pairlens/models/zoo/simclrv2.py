"""SimCLRv2 (Chen et al., 2020) ResNets from the PyTorch conversion of the TensorFlow checkpoints.

Published format (Separius/SimCLRv2-Pytorch ``convert.py``, files such as ``r50_1x_sk0_ema.pth``):
``{'resnet': state_dict, 'head': state_dict}``.

* ``resnet``: ``net.0`` is the stem (7x7 conv, or three 3x3 convs with selective kernels),
  ``net.1`` ... ``net.4`` hold ``blocks.N`` bottleneck blocks with ``projection.shortcut`` /
  ``projection.bn`` (first block of a stage) and ``net`` (conv / BN sequence, with a selective
  kernel ``main_conv`` + ``mixing_conv`` for sk1), and ``fc`` is the 1000-class linear head trained
  on frozen features during pre-training;
* ``head``: ``layers`` = Linear(no bias) + BatchNorm1d (+ ReLU) three times, the last 128-d.

Depths 50/101/152, widths 1x/2x/3x, selective kernels sk0/sk1 (``sk_ratio`` 0.0625). Inputs are
RGB in [0, 1] *without* mean/std normalisation; BatchNorm eps 1e-5. The embedding is the output of
the 3-layer projection head (``projector``, the contrasted features, used by the paper) or the
pooled ResNet features (``backbone``). The CAM layer is ``net.4`` (the last stage, 7x7 at 224 px).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pairlens.models.checkpoint import (
    CheckpointError,
    describe_object,
    is_state_dict,
    read_checkpoint,
)
from pairlens.models.registry import register_model
from pairlens.models.similarity import SimilarityModel
from pairlens.models.zoo.common import (
    build_and_load,
    check_embedding,
    linear_bn_mlp,
    similarity_model,
)

SK_RATIO = 0.0625
LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
EMBEDDINGS = ("projector", "backbone")
SOURCE = "https://storage.googleapis.com/simclr-checkpoints/simclrv2/pretrained/{tag}/"
CONVERTER = "https://github.com/Separius/SimCLRv2-Pytorch"


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2, bias=False)


def _bn(channels: int, relu: bool = True) -> nn.Sequential:
    # "BatchNormRelu": index 0 BatchNorm2d, index 1 ReLU or Identity (keys net.*.N.0.*)
    return nn.Sequential(nn.BatchNorm2d(channels, eps=1e-5), nn.ReLU() if relu else nn.Identity())


class SelectiveKernel(nn.Module):
    """Two 3x3 branches (one conv producing 2C channels) mixed by a softmax over branches."""

    def __init__(self, cin: int, cout: int, stride: int, sk_ratio: float, min_dim: int = 32):
        super().__init__()
        mid = max(int(cout * sk_ratio), min_dim)
        self.main_conv = nn.Sequential(_conv(cin, 2 * cout, 3, stride), _bn(2 * cout))
        self.mixing_conv = nn.Sequential(_conv(cout, mid, 1), _bn(mid), _conv(mid, 2 * cout, 1))

    def forward(self, x: Tensor) -> Tensor:
        branches = torch.stack(self.main_conv(x).chunk(2, dim=1))  # (2, B, C, h, w)
        gate = self.mixing_conv(branches.sum(0).mean(dim=(2, 3), keepdim=True))
        weights = torch.stack(gate.chunk(2, dim=1)).softmax(dim=0)  # (2, B, C, 1, 1)
        return (branches * weights).sum(0)


class Shortcut(nn.Module):
    """Projection shortcut of a stage's first block (average-pool + 1x1 conv with sk)."""

    def __init__(self, cin: int, cout: int, stride: int, sk_ratio: float):
        super().__init__()
        if sk_ratio > 0:
            self.shortcut = nn.Sequential(
                nn.ZeroPad2d((0, 1, 0, 1)), nn.AvgPool2d(2, stride=stride), _conv(cin, cout, 1)
            )
        else:
            self.shortcut = _conv(cin, cout, 1, stride)
        self.bn = _bn(cout, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.shortcut(x))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int, sk_ratio: float, project: bool):
        super().__init__()
        self.projection = Shortcut(cin, 4 * width, stride, sk_ratio) if project else nn.Identity()
        ops: list[nn.Module] = [_conv(cin, width, 1), _bn(width)]
        if sk_ratio > 0:
            ops.append(SelectiveKernel(width, width, stride, sk_ratio))
        else:
            ops += [_conv(width, width, 3, stride), _bn(width)]
        ops += [_conv(width, 4 * width, 1), _bn(4 * width, relu=False)]
        self.net = nn.Sequential(*ops)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.projection(x) + self.net(x))


class Stage(nn.Module):
    def __init__(self, n: int, cin: int, width: int, stride: int, sk_ratio: float):
        super().__init__()
        blocks = [Bottleneck(cin, width, stride, sk_ratio, project=True)]
        blocks += [Bottleneck(4 * width, width, 1, sk_ratio, project=False) for _ in range(n - 1)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        for b in self.blocks:
            x = b(x)
        return x


def _stem(width_multiplier: int, sk_ratio: float) -> nn.Sequential:
    c = 64 * width_multiplier // 2
    if sk_ratio > 0:
        ops = [_conv(3, c, 3, 2), _bn(c), _conv(c, c), _bn(c), _conv(c, 2 * c)]
    else:
        ops = [_conv(3, 2 * c, 7, 2)]
    return nn.Sequential(*ops, _bn(2 * c), nn.MaxPool2d(3, stride=2, padding=1))


class SimCLRv2ResNet(nn.Module):
    """The converted SimCLRv2 ResNet: ``forward`` returns the last stage's map (B, C, h, w)."""

    def __init__(self, depth: int = 50, width_multiplier: int = 1, sk_ratio: float = 0.0):
        super().__init__()
        stages: list[nn.Module] = [_stem(width_multiplier, sk_ratio)]
        cin = 64 * width_multiplier
        for i, n in enumerate(LAYERS[depth]):
            width = 64 * width_multiplier * 2**i
            stages.append(Stage(n, cin, width, 1 if i == 0 else 2, sk_ratio))
            cin = 4 * width
        self.out_dim = cin
        self.net = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, 1000)  # supervised head in the file, not part of the embedding

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ContrastiveHead(nn.Module):
    """``layers``: [Linear(C, C), BN, ReLU, Linear(C, C), BN, ReLU, Linear(C, 128), BN]."""

    def __init__(self, cin: int, out_dim: int = 128):
        super().__init__()
        self.layers = linear_bn_mlp([cin, cin, cin, out_dim], last_bn="affine")

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class _Pooled(nn.Module):
    """Classifier on pooled features (the file's supervised ``fc``)."""

    def __init__(self, fc: nn.Linear):
        super().__init__()
        self.fc = fc

    def forward(self, z: Tensor) -> Tensor:
        return self.fc(z)


def build_simclrv2(
    depth: int,
    width: int,
    sk: bool,
    checkpoint=None,
    embedding: str = "projector",
    random_weights: bool = False,
    name: str = "simclr-v2",
) -> SimilarityModel:
    """Build the SimCLRv2 ResNet ``depth``-``width``x (selective kernels if ``sk``) and its head,
    load ``checkpoint`` (the converted ``{'resnet', 'head'}`` file) and wrap them."""
    check_embedding(name, embedding, EMBEDDINGS)
    tag = f"r{depth}_{width}x_sk{int(sk)}"
    expected = f"the SimCLRv2 {tag} PyTorch checkpoint ({{'resnet', 'head'}} from {CONVERTER})"
    if checkpoint is None and not random_weights:
        raise CheckpointError(
            f"model {name!r} needs its checkpoint file: pass checkpoint=PATH (CLI: --checkpoint "
            f"PATH), a file {tag}_ema.pth or {tag}.pth converted with {CONVERTER} from "
            f"{SOURCE.format(tag=tag)}"
        )
    resnet_sd = head_sd = None
    if checkpoint is not None:
        obj = read_checkpoint(checkpoint, expected)
        if not (
            isinstance(obj, dict)
            and is_state_dict(obj.get("resnet"))
            and is_state_dict(obj.get("head"))
        ):
            raise CheckpointError(
                f"{checkpoint}: {describe_object(obj)}; expected {expected}, a dict with "
                "'resnet' and 'head' state dicts"
            )
        resnet_sd, head_sd = obj["resnet"], obj["head"]
    sk_ratio = SK_RATIO if sk else 0.0
    resnet = build_and_load(
        lambda: SimCLRv2ResNet(depth, width, sk_ratio),
        resnet_sd,
        checkpoint,
        f"{expected} ['resnet']",
    )
    head = build_and_load(
        lambda: ContrastiveHead(resnet.out_dim), head_sd, checkpoint, f"{expected} ['head']"
    )
    model = similarity_model(
        resnet,
        head if embedding == "projector" else None,
        feature_layer="net.4",
        name=name,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    if embedding == "backbone":
        model.classifier = _Pooled(resnet.fc)
    return model


def _register(depth: int, width: int, sk: bool) -> None:
    name = f"simclr-v2-r{depth}-{width}x" + ("-sk1" if sk else "")
    tag = f"r{depth}_{width}x_sk{int(sk)}"

    @register_model(
        name,
        summary=f"SimCLRv2 ResNet-{depth} {width}x{' with selective kernels' if sk else ''} "
        "(converted TF checkpoint)",
        architecture=f"SimCLRv2 ResNet-{depth} width {width}x, sk{int(sk)} + 3-layer projection "
        "head (Linear+BN, 128-d)",
        input_size=(224, 224),
        normalization="none: RGB in [0, 1] (mean 0, std 1)",
        embeddings=EMBEDDINGS,
        default_embedding="projector",
        feature_layer="net.4",
        checkpoint_format="{'resnet': state_dict, 'head': state_dict} (Separius/SimCLRv2-Pytorch "
        "convert.py)",
        checkpoint_name=f"{tag}_ema.pth (or {tag}.pth)",
        download_url="",
        extras={
            "source": SOURCE.format(tag=tag),
            "convert": f"python convert.py {tag}/model.ckpt-250228 --ema  ({CONVERTER})",
            "depth": depth,
            "width": width,
            "sk": sk,
        },
    )
    def builder(checkpoint=None, embedding: str = "projector", random_weights: bool = False):
        return build_simclrv2(depth, width, sk, checkpoint, embedding, random_weights, name)


# the 13 published pre-trained models (google-research/simclr, SimCLRv2 README)
PUBLISHED = [(d, w, sk) for d in (50, 101, 152) for w in (1, 2) for sk in (False, True)]
PUBLISHED.append((152, 3, True))
for _d, _w, _sk in PUBLISHED:
    _register(_d, _w, _sk)
