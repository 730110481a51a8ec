"""SimSiam (Chen & He, 2021), facebookresearch/simsiam.

Published file ``checkpoint_0099.pth.tar`` (100 epochs, batch 256): ``{'epoch', 'arch',
'state_dict', 'optimizer'}`` with ``state_dict`` holding

* ``module.encoder.*``: torchvision ResNet-50 whose ``fc`` is the 3-layer projector
  ``[Linear(2048, 2048, no bias), BN, ReLU, Linear(2048, 2048, no bias), BN, ReLU,
  Linear(2048, 2048), BN(affine=False)]`` (indices 0-7);
* ``module.predictor.*``: ``[Linear(2048, 512, no bias), BN, ReLU, Linear(512, 2048)]``.

Embeddings: ``projector`` (default; z, the paper's "final contrasted features" and the target
of the SimSiam loss), ``predictor`` (p = h(z)) and ``backbone`` (pooled ResNet-50 features).
ImageNet mean/std, 224 px, CAM layer ``layer4``.
"""

from __future__ import annotations

from torch import nn

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

NAME = "simsiam-r50"
EMBEDDINGS = ("projector", "predictor", "backbone")
URL = "https://dl.fbaipublicfiles.com/simsiam/models/100ep/pretrain/checkpoint_0099.pth.tar"
EXPECTED = (
    "the SimSiam ResNet-50 checkpoint (checkpoint_0099.pth.tar: state_dict with "
    "module.encoder.* and module.predictor.*)"
)


class SimSiam(nn.Module):
    """Published layout: ``encoder`` (ResNet-50 with the projector as ``fc``) and ``predictor``."""

    def __init__(self, proj: list[int], pred: list[int]):
        super().__init__()
        fc = linear_bn_mlp(proj, last_bn="plain", last_bias=True)
        self.encoder = ResNetTrunk("resnet50", fc=fc)
        self.predictor = linear_bn_mlp(pred, last_bias=True)


@register_model(
    NAME,
    summary="SimSiam ResNet-50 (facebookresearch/simsiam, 100 epochs)",
    architecture="torchvision ResNet-50 + 3-layer projector 2048-2048-2048 (as encoder.fc) + "
    "predictor 2048-512-2048",
    normalization="ImageNet mean/std",
    embeddings=EMBEDDINGS,
    default_embedding="projector",
    feature_layer="layer4",
    checkpoint_format="{'epoch', 'arch', 'state_dict': {module.encoder.*, module.predictor.*}, "
    "'optimizer'}",
    checkpoint_name="checkpoint_0099.pth.tar",
    download_url=URL,
)
def simsiam_r50(
    checkpoint=None, embedding: str = "projector", random_weights: bool = False
) -> SimilarityModel:
    check_embedding(NAME, embedding, EMBEDDINGS)
    sd = open_state_dict(checkpoint, NAME, EXPECTED, random_weights, hint=f"download {URL}")
    sd = unwrap_module(sd) if sd else sd
    proj = mlp_dims(sd, "encoder.fc.", [2048, 2048, 2048, 2048])
    pred = mlp_dims(sd, "predictor.", [2048, 512, 2048])
    tree = build_and_load(lambda: SimSiam(proj, pred), sd, checkpoint, EXPECTED)
    trunk = tree.encoder
    projector = trunk.fc
    del trunk.fc
    head = {"projector": projector, "predictor": Chain(projector, tree.predictor)}.get(embedding)
    return similarity_model(trunk, head, "layer4", NAME)
