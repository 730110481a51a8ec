"""Pieces shared by the model-zoo loaders: ResNet trunks, Linear+BatchNorm MLP heads, checkpoint
plumbing and the assembly of a :class:`SimilarityModel` from a loaded tree."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from pairlens.models.checkpoint import (
    CheckpointError,
    StateDict,
    find_state_dict,
    load_strict,
    read_checkpoint,
    strip_prefix,
)
from pairlens.models.similarity import IMAGENET_MEAN, IMAGENET_STD, SimilarityModel


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without ``avgpool`` / ``fc``: (B, 3, H, W) -> layer4 map (B, C, h, w).

    Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1`` ... ``layer4``), so the
    backbone files of Barlow Twins, SimSiam, MoCo v3 and DINO load as they are. ``fc`` may be
    attached for loading a checkpoint whose projector lives there (SimSiam, MoCo v3); ``forward``
    never uses it. The CAM feature layer is ``layer4``.
    """

    def __init__(self, arch: str = "resnet50", fc: nn.Module | None = None) -> None:
        super().__init__()
        import torchvision  # lazy: importing torchvision costs seconds

        net = getattr(torchvision.models, arch)(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.out_dim = net.fc.in_features
        if fc is not None:
            self.fc = fc

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def linear_bn_mlp(
    dims: list[int], last_bn: str | None = None, last_bias: bool = False, bn_eps: float = 1e-5
) -> nn.Sequential:
    """Linear(no bias) + BatchNorm1d + ReLU for every hidden layer, then a last Linear.

    ``last_bn``: None, ``"affine"`` or ``"plain"`` (BatchNorm1d without affine parameters) after
    the last Linear; ``last_bias`` gives the last Linear a bias. Indices of the Sequential follow
    the published heads (Linear 0, BN 1, ReLU 2, Linear 3, ...).
    """
    layers: list[nn.Module] = []
    n = len(dims) - 1
    for i in range(n):
        last = i == n - 1
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=last_bias if last else False))
        if not last:
            layers += [nn.BatchNorm1d(dims[i + 1], eps=bn_eps), nn.ReLU(inplace=False)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(dims[i + 1], eps=bn_eps, affine=last_bn == "affine"))
    return nn.Sequential(*layers)


def shape_dim(sd: Mapping[str, Tensor] | None, key: str, axis: int, default: int) -> int:
    """``sd[key].shape[axis]`` when present (heads are sized from the file), else ``default``."""
    if sd and key in sd and sd[key].dim() > axis:
        return int(sd[key].shape[axis])
    return default


def open_state_dict(
    checkpoint: str | Path | None,
    name: str,
    expected: str,
    random_weights: bool,
    hint: str = "",
    keys: tuple[str, ...] = ("state_dict", "model"),
) -> StateDict | None:
    """Read ``checkpoint`` and return its (unwrapped) state dict; None for ``random_weights``.

    Without a checkpoint (and without ``random_weights=True``) raise a one-line error telling the
    user which file to get: nothing is ever downloaded implicitly.
    """
    if checkpoint is None:
        if random_weights:
            return None
        raise CheckpointError(
            f"model {name!r} needs its checkpoint file: pass checkpoint=PATH "
            f"(CLI: --checkpoint PATH){'; ' + hint if hint else ''}"
        )
    obj = read_checkpoint(checkpoint, expected)
    return find_state_dict(obj, checkpoint, expected, keys)


def only_prefixed(sd: StateDict, prefixes: tuple[str, ...]) -> bool:
    return any(k.startswith(prefixes) for k in sd)


def unwrap_module(sd: StateDict) -> StateDict:
    """Strip DistributedDataParallel's ``module.`` prefix when every key has it."""
    if sd and all(k.startswith("module.") for k in sd):
        return strip_prefix(sd, "module.")
    return sd


class Chain(nn.Sequential):
    """Heads applied one after the other (for example SimSiam's projector then predictor)."""


def similarity_model(
    encoder: nn.Module,
    head: nn.Module | None,
    feature_layer: str,
    name: str,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    crop_fraction: float = 0.875,
) -> SimilarityModel:
    model = SimilarityModel(
        encoder,
        head=head,
        feature_layer=feature_layer,
        input_size=(224, 224),
        mean=mean,
        std=std,
        crop_fraction=crop_fraction,
        name=name,
    )
    return model.eval()


def check_embedding(name: str, embedding: str, choices: tuple[str, ...]) -> None:
    if embedding not in choices:
        raise ValueError(
            f"model {name!r} has no embedding {embedding!r}; choose from {', '.join(choices)}"
        )


def mlp_dims(sd: Mapping[str, Tensor] | None, prefix: str, default: list[int]) -> list[int]:
    """Layer widths [in, h1, ..., out] of a Linear MLP stored under ``prefix`` (``"projector."``):
    read from the 2-D ``prefix.N.weight`` tensors, in index order; ``default`` when absent or when
    the file has another number of layers."""
    if not sd:
        return list(default)
    weights = []
    for k, v in sd.items():
        rest = k[len(prefix) :] if k.startswith(prefix) else None
        if rest is None or v.dim() != 2:
            continue
        idx, _, leaf = rest.partition(".")
        if idx.isdigit() and leaf == "weight":
            weights.append((int(idx), v))
    if not weights:
        return list(default)
    weights.sort(key=lambda t: t[0])
    dims = [int(weights[0][1].shape[1])] + [int(w.shape[0]) for _, w in weights]
    # another number of layers is another architecture: keep the default so that strict loading
    # reports the difference instead of silently building what the file holds
    return dims if len(dims) == len(default) else list(default)


def build_and_load(
    build: Callable[[], nn.Module],
    sd: Mapping[str, Tensor] | None,
    path,
    expected: str,
    optional: tuple[str, ...] = (),
) -> nn.Module:
    """``build()`` with the weights of ``sd`` (random initial weights when ``sd`` is None).

    The module is first built on the ``meta`` device, so a file of another model is rejected by
    :func:`load_strict`'s key / shape report without allocating or initialising anything; the
    file's tensors are then assigned as the parameters (float32), so loading costs no random
    initialisation. Every parameter and buffer of the published layout must be in the file (an
    ``optional`` key absent from the file stays on the meta device: the caller replaces it).
    Modules with non-persistent buffers (computed, never saved) are then built for real and
    loaded normally.
    """
    if sd is None:
        return build()
    with torch.device("meta"):
        tree = build()
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    load_strict(tree, sd, path, expected, optional=optional, assign=True)
    tensors = list(tree.named_parameters()) + list(tree.named_buffers())
    left = [n for n, t in tensors if t.is_meta and n not in optional]
    if left:
        saved = tree.state_dict()
        if any(n in saved for n in left):
            raise CheckpointError(f"{path}: does not hold {', '.join(left[:4])} ({expected})")
        tree = build()  # only non-persistent buffers are missing: they need the real constructor
        load_strict(tree, sd, path, expected, optional=optional)
    return tree
