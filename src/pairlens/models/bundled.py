"""Bundled models ``digits``, ``photos`` and ``composites``, and the architectures PairLens's
trainer builds.

The bundled models were trained by ``pairlens train simclr`` (NT-Xent, :mod:`pairlens.training`;
``composites`` with ``--data composites``, whose positives are two scenes sharing an object) on
data that ships inside scikit-learn / scikit-image, and their weights ship in
``pairlens/models/weights`` next to a model card (``digits.md``, ``photos.md``,
``composites.md``) with the exact
command, seed and measured numbers. Loading never touches the network:
``torch.load(..., weights_only=True)`` of a file found with :mod:`importlib.resources`.

A trained network is a :class:`ContrastiveNet`: a convolutional ``backbone`` whose output is a
spatial map, average-pooled to the representation h, and a SimCLR ``projector`` MLP giving the
contrastive embedding z = g(h). As a :class:`SimilarityModel` the backbone is the ``encoder`` and
the embedding is chosen with ``embedding=``:

* ``"projector"`` (default): ``head`` = projector, so the similarity is the cosine of z, the space
  the NT-Xent loss was computed in (the space seed 000 explains: its methods are designed to capture
  the invariances the projection head encodes);
* ``"backbone"``: ``head`` = identity, the similarity is the cosine of h.

``digits-supervised`` is the ``digits`` architecture trained with plain cross-entropy
(``pairlens train cross-entropy``, :mod:`pairlens.training.classify`): the supervised twin used to
compare feature inversions of a contrastive and a supervised model (seed 000, appendix).

The ``digits`` model also carries ``model.classifier``, a linear probe (10 logits) fitted on the
pooled **backbone** features h of the training split. It takes (B, 128) backbone features: use
:func:`backbone_features` (works for either embedding), or load with ``embedding="backbone"`` and
call ``model.classifier(model.embed(x))``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pairlens.models.registry import register_model
from pairlens.models.similarity import IMAGENET_MEAN, IMAGENET_STD, SimilarityModel, pool_features

EMBEDDINGS = ("projector", "backbone")
WEIGHTS_PACKAGE = "pairlens.models"
WEIGHTS_FORMAT = "pairlens-bundled-v1"


# ---------------------------------------------------------------------- building blocks
def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (no bias), BatchNorm, ReLU (a module, so guided backprop sees it)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class DigitsCNN(nn.Module):
    """Small CNN for 32 px inputs: 32 -> 16 -> 8 px, output map (B, 128, 8, 8).

    ``block2`` (the last block, an 8x8 grid of 128 channels after ReLU) is the CAM feature layer.
    """

    out_dim = 128

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.stem = conv_bn_relu(3, w)
        self.block1 = nn.Sequential(conv_bn_relu(w, 2 * w, stride=2), conv_bn_relu(2 * w, 2 * w))
        self.block2 = nn.Sequential(
            conv_bn_relu(2 * w, 4 * w, stride=2), conv_bn_relu(4 * w, 4 * w)
        )
        self.out_dim = 4 * w

    def forward(self, x: Tensor) -> Tensor:
        return self.block2(self.block1(self.stem(x)))


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions, identity or 1x1 shortcut); every ReLU is a
    separate module so guided backpropagation and hooks see all of them."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class MiniResNet(nn.Module):
    """ResNet-style encoder for ~100 px inputs: a stride-2 3x3 stem (no max-pool), then four
    stages of ``blocks`` basic blocks with widths ``widths`` and strides 1, 2, 2, 2. At 112 px the
    stages give 56, 28, 14 and 7 px maps; ``layer4`` (B, 256, 7, 7) is the CAM feature layer, the
    same 7x7 grid as a ResNet-50 at 224 px."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), blocks: int = 1):
        super().__init__()
        self.stem = conv_bn_relu(3, widths[0], stride=2)
        c = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers = [BasicBlock(c, w, stride)] + [BasicBlock(w, w) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            c = w
        self.n_stages = len(widths)
        self.out_dim = c

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for i in range(self.n_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x


class TorchvisionResNet18(nn.Module):
    """torchvision ResNet-18 (random init) without its pooling and fc: output map (B, 512, h, w)."""

    out_dim = 512

    def __init__(self):
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1, net.layer2, net.layer3, net.layer4,
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def projection_head(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """SimCLR projection MLP g: Linear, BatchNorm1d, ReLU, Linear."""
    return nn.Sequential(
        nn.Linear(d_in, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
        nn.Linear(hidden, d_out),
    )


class ContrastiveNet(nn.Module):
    """Backbone f (a spatial map, average-pooled to h) and projector g; ``forward`` gives (h, z)."""

    def __init__(self, backbone: nn.Module, projector: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = pool_features(self.backbone(x))
        return h, self.projector(h)


# ---------------------------------------------------------------------- architectures
@dataclass(frozen=True)
class Architecture:
    """What ``pairlens train --arch NAME`` builds and how a trained net becomes a model."""

    name: str
    build_backbone: Callable[[], nn.Module]
    backbone_dim: int
    projector_hidden: int
    projector_dim: int
    feature_layer: str
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_fraction: float
    summary: str

    def build(self) -> ContrastiveNet:
        return ContrastiveNet(
            self.build_backbone(),
            projection_head(self.backbone_dim, self.projector_hidden, self.projector_dim),
        )


#: mean / std of the digits training split (seed 0), per channel (the three channels are equal)
DIGITS_MEAN = (0.306, 0.306, 0.306)
DIGITS_STD = (0.324, 0.324, 0.324)

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            "digits-cnn", lambda: DigitsCNN(32), 128, 128, 64, "block2", (32, 32),
            DIGITS_MEAN, DIGITS_STD, 1.0,
            "5-layer CNN, 32 px input, 8x8x128 feature map, 128-d backbone, 64-d projector",
        ),
        Architecture(
            "resnet-mini", lambda: MiniResNet((32, 64, 128, 256), blocks=1), 256, 256, 128,
            "layer4", (112, 112), IMAGENET_MEAN, IMAGENET_STD, 0.875,
            "ResNet-10-style (4 stages of 1 basic block, widths 32-256), 112 px input, 7x7x256 "
            "feature map, 256-d backbone, 128-d projector",
        ),
        Architecture(
            "resnet-mini-64", lambda: MiniResNet((32, 64, 128), blocks=1), 128, 128, 64,
            "layer3", (64, 64), IMAGENET_MEAN, IMAGENET_STD, 1.0,
            "ResNet-8-style (3 stages of 1 basic block, widths 32-128), 64 px input, 8x8x128 "
            "feature map, 128-d backbone, 64-d projector",
        ),
        Architecture(
            "resnet18", TorchvisionResNet18, 512, 512, 128, "layer4", (224, 224),
            IMAGENET_MEAN, IMAGENET_STD, 0.875,
            "torchvision ResNet-18 (random init), 224 px input, 7x7x512 feature map",
        ),
    )
}


def get_architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def similarity_model_from_net(
    net: ContrastiveNet, arch: Architecture | str, embedding: str = "projector", name: str = ""
) -> SimilarityModel:
    """Wrap a trained :class:`ContrastiveNet` as a :class:`SimilarityModel` (eval mode)."""
    arch = get_architecture(arch) if isinstance(arch, str) else arch
    if embedding not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {', '.join(EMBEDDINGS)}; got {embedding!r}")
    head = net.projector if embedding == "projector" else None
    model = SimilarityModel(
        net.backbone, head=head, feature_layer=arch.feature_layer, input_size=arch.input_size,
        mean=arch.mean, std=arch.std, crop_fraction=arch.crop_fraction, name=name or arch.name,
    )
    model.embedding = embedding
    return model.eval()


def backbone_features(model: SimilarityModel, x: Tensor) -> Tensor:
    """Pooled backbone representation h (B, D) of model-input images ``x``, whatever the model's
    embedding; this is what ``model.classifier`` (the digits linear probe) takes."""
    return pool_features(model.encoder(x))


# ---------------------------------------------------------------------- weights files
def weights_path(name: str) -> Path:
    """Path of a bundled weights file (``digits.pt``, ``photos.pt``, ...) inside the package."""
    return Path(str(resources.files(WEIGHTS_PACKAGE).joinpath("weights", f"{name}.pt")))


def preprocessing_of(arch: Architecture) -> dict[str, Any]:
    """The preprocessing a network of ``arch`` expects (saved in every weights file)."""
    return {
        "input_size": list(arch.input_size),
        "mean": [float(v) for v in arch.mean],
        "std": [float(v) for v in arch.std],
        "crop_fraction": float(arch.crop_fraction),
    }


def bundle_state(
    net: ContrastiveNet, arch: str, classifier: nn.Linear | None = None, **meta: Any
) -> dict[str, Any]:
    """The dict saved as a bundled weights file (tensors and plain values only): the format tag,
    the architecture name and its preprocessing, the weights and ``meta``."""
    state: dict[str, Any] = {
        "format": WEIGHTS_FORMAT,
        "arch": arch,
        "preprocessing": preprocessing_of(get_architecture(arch)),
        "backbone": net.backbone.state_dict(),
        "projector": net.projector.state_dict(),
        "meta": meta,
    }
    if classifier is not None:
        state["classifier"] = classifier.state_dict()
    return state


#: the architecture of each bundled model name (a checkpoint loaded under the name must match)
BUNDLED_ARCHITECTURES = {"digits": "digits-cnn", "photos": "resnet-mini",
                         "digits-supervised": "digits-cnn", "composites": "resnet-mini-64"}


def load_bundle(
    path: str | Path, expected_arch: str | None = None, model_name: str | None = None
) -> tuple[ContrastiveNet, Architecture, nn.Linear | None, dict]:
    """Read a bundled-format weights file: (net, architecture, classifier or None, meta).

    The file names its architecture and preprocessing; it is refused (a one-line
    :class:`~pairlens.models.checkpoint.CheckpointError` naming the file) if it is not a PairLens
    weights file, if its architecture is not ``expected_arch`` (when given: the file is loaded
    under ``model_name``, whose network it must be), if its preprocessing differs from what the
    architecture uses, or if its tensors do not fit the architecture.
    """
    from pairlens.models.checkpoint import CheckpointError, load_strict, read_checkpoint

    path = Path(path).expanduser()
    what = "a PairLens weights file (bundled, or model.pt of pairlens train)"
    state = read_checkpoint(path, what)
    if not isinstance(state, dict) or state.get("format") != WEIGHTS_FORMAT:
        from pairlens.models.checkpoint import describe_object

        raise CheckpointError(f"{path}: not a PairLens weights file ({describe_object(state)}); "
                              f"expected {what}")
    name = state.get("arch")
    if name not in ARCHITECTURES:
        raise CheckpointError(f"{path}: unknown architecture {name!r}; this PairLens knows "
                              f"{', '.join(ARCHITECTURES)}")
    if expected_arch is not None and name != expected_arch:
        owners = [m for m, a in BUNDLED_ARCHITECTURES.items() if a == name]
        how = (f"load it with --model {owners[0]}" if owners else
               "load it without --model (as a pairlens train output)")
        raise CheckpointError(
            f"{path}: holds a {name!r} network, not the {expected_arch!r} network of model "
            f"{model_name or expected_arch!r}; {how}")
    arch = get_architecture(name)
    saved = state.get("preprocessing")
    if saved is not None and saved != preprocessing_of(arch):
        diff = ", ".join(f"{k} {saved.get(k)} in the file vs {v} for {name}"
                         for k, v in preprocessing_of(arch).items() if saved.get(k) != v)
        raise CheckpointError(f"{path}: its preprocessing differs from architecture {name}'s "
                              f"({diff})")
    net = arch.build()
    for part in ("backbone", "projector"):
        if not isinstance(state.get(part), dict):
            raise CheckpointError(f"{path}: has no {part} weights; expected {what}")
        load_strict(getattr(net, part), state[part], path, f"the {part} of a {name} network")
    classifier = None
    if "classifier" in state:
        w = state["classifier"].get("weight")
        if not isinstance(w, torch.Tensor) or w.dim() != 2:
            raise CheckpointError(f"{path}: its classifier has no 2-d weight")
        classifier = nn.Linear(w.shape[1], w.shape[0])
        load_strict(classifier, state["classifier"], path, "a linear classifier")
        classifier.eval()
    return net.eval(), arch, classifier, dict(state.get("meta", {}))


def _build_bundled(name: str, checkpoint: str | Path | None, embedding: str) -> SimilarityModel:
    path = Path(checkpoint) if checkpoint is not None else weights_path(name)
    if checkpoint is None and not path.is_file():
        raise FileNotFoundError(
            f"bundled weights {path.name} are missing from this installation of pairlens"
        )
    net, arch, classifier, meta = load_bundle(path, BUNDLED_ARCHITECTURES[name], name)
    offered = meta.get("embeddings")  # a cross-entropy model: its projector is untrained
    if offered and embedding not in offered:
        raise ValueError(f"{path}: offers only the {', '.join(offered)} embedding (its projector "
                         f"was not trained); pass embedding='{offered[0]}'")
    model = similarity_model_from_net(net, arch, embedding=embedding, name=name)
    model.classifier = classifier
    model.meta = meta
    return model


@register_model(
    "digits",
    bundled=True,
    summary="small CNN trained with SimCLR on scikit-learn digits (32 px RGB), with a linear probe",
    architecture=ARCHITECTURES["digits-cnn"].summary,
    input_size=(32, 32),
    normalization=f"digits mean {DIGITS_MEAN[0]} / std {DIGITS_STD[0]}",
    embeddings=EMBEDDINGS,
    default_embedding="projector",
    feature_layer="block2",
    checkpoint_format=WEIGHTS_FORMAT,
    checkpoint_name="digits.pt",
)
def digits(checkpoint: str | Path | None = None, embedding: str = "projector") -> SimilarityModel:
    """Bundled ``digits`` model (see ``models/weights/digits.md``); ``model.classifier`` is the
    linear probe on backbone features (:func:`backbone_features`)."""
    return _build_bundled("digits", checkpoint, embedding)


@register_model(
    "digits-supervised",
    bundled=True,
    summary="the digits model's supervised twin: same CNN trained with cross-entropy (crop-only "
    "views), with its classifier; for feature-inversion comparisons",
    architecture=ARCHITECTURES["digits-cnn"].summary,
    input_size=(32, 32),
    normalization=f"digits mean {DIGITS_MEAN[0]} / std {DIGITS_STD[0]}",
    embeddings=("backbone",),
    default_embedding="backbone",
    feature_layer="block2",
    checkpoint_format=WEIGHTS_FORMAT,
    checkpoint_name="digits-supervised.pt",
)
def digits_supervised(
    checkpoint: str | Path | None = None, embedding: str = "backbone"
) -> SimilarityModel:
    """Bundled ``digits-supervised`` (see ``models/weights/digits-supervised.md``): the
    ``digits-cnn`` backbone and a linear classifier trained together with cross-entropy by
    ``pairlens train cross-entropy``. Its projection head is untrained, so the only embedding is
    the pooled backbone (``model.classifier`` takes it)."""
    return _build_bundled("digits-supervised", checkpoint, embedding)


@register_model(
    "photos",
    bundled=True,
    summary="ResNet-style encoder trained with SimCLR on the photographs bundled with "
    "scikit-image / scikit-learn (112 px); default model of `pairlens explain`",
    architecture=ARCHITECTURES["resnet-mini"].summary,
    input_size=(112, 112),
    normalization="ImageNet mean/std",
    embeddings=EMBEDDINGS,
    default_embedding="projector",
    feature_layer="layer4",
    checkpoint_format=WEIGHTS_FORMAT,
    checkpoint_name="photos.pt",
)
def photos(checkpoint: str | Path | None = None, embedding: str = "projector") -> SimilarityModel:
    """Bundled ``photos`` model (see ``models/weights/photos.md``)."""
    return _build_bundled("photos", checkpoint, embedding)


@register_model(
    "composites",
    bundled=True,
    summary="ResNet-style encoder trained on composites scenes (64 px) so that two scenes are "
    "similar when they share an object: the ground-truth benchmark's model",
    architecture=ARCHITECTURES["resnet-mini-64"].summary,
    input_size=(64, 64),
    normalization="ImageNet mean/std",
    embeddings=EMBEDDINGS,
    default_embedding="projector",
    feature_layer="layer3",
    checkpoint_format=WEIGHTS_FORMAT,
    checkpoint_name="composites.pt",
)
def composites(
    checkpoint: str | Path | None = None, embedding: str = "projector"
) -> SimilarityModel:
    """Bundled ``composites`` model (see ``models/weights/composites.md``)."""
    return _build_bundled("composites", checkpoint, embedding)
