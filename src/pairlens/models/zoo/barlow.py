"""Barlow Twins (Zbontar et al., 2021), facebookresearch/barlowtwins.

Two published files:

* ``resnet50.pth`` (torch hub): the torchvision ResNet-50 backbone state dict, no ``fc``
  (``model.module.backbone.state_dict()`` with ``fc = Identity``);
* ``checkpoint.pth`` (full training checkpoint): ``{'epoch', 'model', 'optimizer'}`` where
  ``model`` holds ``module.backbone.*`` (ResNet-50), ``module.projector.*`` (Linear(no bias) +
  BatchNorm1d + ReLU, twice, then Linear(no bias): 2048-8192-8192-8192) and ``module.bn.*``
  (BatchNorm1d without affine parameters, applied to the projector output in the loss).

Embeddings: ``projector`` (default: the projector output z, the features whose cross-correlation
is trained, in the spirit of the paper's choice of the contrasted features), ``projector-bn``
(``bn(z)`` with its running statistics, exactly what enters the cross-correlation matrix) and
``backbone`` (pooled 2048-d ResNet features; the only choice with the backbone-only file).
ImageNet mean/std, 224 px, CAM layer ``layer4``.
"""

from __future__ import annotations

from torch import nn

from pairlens.models.checkpoint import CheckpointError
from pairlens.models.registry import register_model
from pairlens.models.similarity import SimilarityModel
from pairlens.models.zoo.common import (
    Chain,
    ResNetTrunk,
    build_and_load,
    check_embedding,
    linear_bn_mlp,
    mlp_dims,
    open_state_dict,
    similarity_model,
    unwrap_module,
)

NAME = "barlow-twins-r50"
EMBEDDINGS = ("projector", "projector-bn", "backbone")
URL_FULL = "https://dl.fbaipublicfiles.com/barlowtwins/ljng/checkpoint.pth"
URL_BACKBONE = "https://dl.fbaipublicfiles.com/barlowtwins/ljng/resnet50.pth"
EXPECTED = (
    "a Barlow Twins ResNet-50 checkpoint (torch-hub resnet50.pth, or the training checkpoint.pth "
    "with model['module.backbone.*', 'module.projector.*', 'module.bn.*'])"
)


class BarlowTwins(nn.Module):
    """Published layout: ``backbone``, ``projector``, ``bn``."""

    def __init__(self, dims: list[int]):
        super().__init__()
        self.backbone = ResNetTrunk("resnet50")
        self.projector = linear_bn_mlp(dims)
        self.bn = nn.BatchNorm1d(dims[-1], affine=False)


@register_model(
    NAME,
    summary="Barlow Twins ResNet-50 (facebookresearch/barlowtwins, 1000 epochs)",
    architecture="torchvision ResNet-50 + projector 2048-8192-8192-8192 (Linear+BN+ReLU) + "
    "BatchNorm1d(affine=False)",
    normalization="ImageNet mean/std",
    embeddings=EMBEDDINGS,
    default_embedding="projector",
    feature_layer="layer4",
    checkpoint_format="full: {'epoch', 'model': {module.backbone.*, module.projector.*, "
    "module.bn.*}, 'optimizer'}; or torch-hub backbone state dict (torchvision keys, no fc)",
    checkpoint_name="checkpoint.pth (full) or resnet50.pth (backbone only)",
    download_url=URL_FULL,
    extras={"backbone_url": URL_BACKBONE},
)
def barlow_twins_r50(
    checkpoint=None, embedding: str = "projector", random_weights: bool = False
) -> SimilarityModel:
    check_embedding(NAME, embedding, EMBEDDINGS)
    sd = open_state_dict(
        checkpoint,
        NAME,
        EXPECTED,
        random_weights,
        hint=f"download {URL_FULL} (or {URL_BACKBONE})",
        keys=("model", "state_dict"),
    )
    sd = unwrap_module(sd) if sd else sd
    # a bare torchvision ResNet state dict is the backbone-only file; anything else is checked
    # strictly against the full layout (so another model's file gets a key report)
    full = sd is None or "conv1.weight" not in sd
    if full:
        dims = mlp_dims(sd, "projector.", [2048, 8192, 8192, 8192])
        tree = build_and_load(lambda: BarlowTwins(dims), sd, checkpoint, EXPECTED)
        trunk, heads = tree.backbone, {"projector": tree.projector, "bn": tree.bn}
    else:
        trunk = build_and_load(
            lambda: ResNetTrunk("resnet50"), sd, checkpoint, EXPECTED, ("fc.weight", "fc.bias")
        )
        if embedding != "backbone":
            raise CheckpointError(
                f"{checkpoint}: holds only the Barlow Twins ResNet-50 backbone (torch-hub "
                f"resnet50.pth); embedding {embedding!r} needs the full training checkpoint "
                f"({URL_FULL}); use embedding='backbone' with this file"
            )
        heads = {}
    head = None
    if embedding == "projector":
        head = heads["projector"]
    elif embedding == "projector-bn":
        head = Chain(heads["projector"], heads["bn"])
    return similarity_model(trunk, head, "layer4", NAME)
