"""MoCo v3 (Chen, Xie & He, 2021), facebookresearch/moco-v3.

Published files (CONFIG.md): ``r-50-1000ep.pth.tar`` (also 100ep / 300ep), ``vit-s-300ep.pth.tar``,
``vit-b-300ep.pth.tar``: ``{'epoch', 'arch', 'state_dict', 'optimizer', 'scaler'}`` with
``state_dict`` holding ``module.base_encoder.*``, ``module.momentum_encoder.*`` (same layout)
and ``module.predictor.*``. MLPs are built by ``_build_mlp``: Linear(no bias) + BatchNorm1d + ReLU
per hidden layer, then Linear(no bias) and, when ``last_bn``, BatchNorm1d(affine=False).

* ResNet-50: torchvision ResNet-50 whose ``fc`` is the 2-layer projector 2048-4096-256 (last BN);
  predictor 256-4096-256 (without last BN in the released code; with it in the first release -
  both are accepted, read from the file);
* ViT-S/16 (384-d, 12 blocks, **12 heads**) and ViT-B/16 (768-d, 12 blocks, 12 heads): timm
  ``VisionTransformer`` keys with fixed 2-D sin-cos ``pos_embed`` (stored in the file) and the
  3-layer projector D-4096-4096-256 as ``head``; predictor 256-4096-256 with last BN.

Embeddings: ``projector`` (default; the base encoder's projector output, the contrasted features
used by the paper), ``predictor`` (the query q = predictor(projector)), ``backbone`` (pooled
ResNet features / the ViT class token after the final norm). ``encoder="momentum"`` uses the
momentum encoder instead of the base encoder (``backbone`` and ``projector`` only). ImageNet
mean/std, 224 px. CAM layer: ``layer4`` (ResNet) / ``blocks.11.norm1`` (ViT: the tokens entering
the last block, 14x14 grid at 224 px after dropping the class token).
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
from pairlens.models.zoo.vit import vit_from_state_dict

EMBEDDINGS = ("projector", "predictor", "backbone")
BASE_URL = "https://dl.fbaipublicfiles.com/moco-v3/{tag}/{tag}.pth.tar"
ARCHS = {
    # name: (checkpoint tag, trunk kind)
    "mocov3-r50": ("r-50-1000ep", "resnet50"),
    "mocov3-vit-s": ("vit-s-300ep", "vit-s-mocov3"),
    "mocov3-vit-b": ("vit-b-300ep", "vit-b"),
}


class MoCoV3(nn.Module):
    """Published layout: ``base_encoder``, ``momentum_encoder`` (each with its projector as
    ``fc`` / ``head``) and ``predictor``."""

    def __init__(self, kind: str, sd, pred_last_bn: str | None):
        super().__init__()
        if kind == "resnet50":
            proj = mlp_dims(sd, "base_encoder.fc.", [2048, 4096, 256])
            self.base_encoder = ResNetTrunk("resnet50", fc=linear_bn_mlp(proj, "plain"))
            self.momentum_encoder = ResNetTrunk("resnet50", fc=linear_bn_mlp(proj, "plain"))
        else:
            width = {"vit-s-mocov3": 384, "vit-b": 768}[kind]
            proj = mlp_dims(sd, "base_encoder.head.", [width, 4096, 4096, 256])
            self.base_encoder = vit_from_state_dict(_sub(sd, "base_encoder."), 16, kind)
            self.momentum_encoder = vit_from_state_dict(_sub(sd, "momentum_encoder."), 16, kind)
            self.base_encoder.head = linear_bn_mlp(proj, "plain")
            self.momentum_encoder.head = linear_bn_mlp(proj, "plain")
        pred = mlp_dims(sd, "predictor.", [proj[-1], 4096, proj[-1]])
        self.predictor = linear_bn_mlp(pred, pred_last_bn)


def _sub(sd, prefix):
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)} if sd else None


def build_mocov3(
    name: str,
    checkpoint=None,
    embedding: str = "projector",
    encoder: str = "base",
    random_weights: bool = False,
) -> SimilarityModel:
    check_embedding(name, embedding, EMBEDDINGS)
    if encoder not in ("base", "momentum"):
        raise ValueError(f"encoder must be 'base' or 'momentum', not {encoder!r}")
    if encoder == "momentum" and embedding == "predictor":
        raise ValueError("the MoCo v3 momentum encoder has no predictor; use encoder='base'")
    tag, kind = ARCHS[name]
    url = BASE_URL.format(tag=tag)
    expected = (
        f"the MoCo v3 {kind.replace('-mocov3', '')} checkpoint ({tag}.pth.tar: state_dict with "
        "module.base_encoder.*, module.momentum_encoder.*, module.predictor.*)"
    )
    sd = open_state_dict(checkpoint, name, expected, random_weights, hint=f"download {url}")
    sd = unwrap_module(sd) if sd else sd
    n_pred = len(mlp_dims(sd, "predictor.", [0, 0, 0])) - 1
    if sd is None:
        pred_last_bn = None if kind == "resnet50" else "plain"
    else:
        pred_last_bn = "plain" if f"predictor.{3 * n_pred - 2}.running_mean" in sd else None
    tree = build_and_load(lambda: MoCoV3(kind, sd, pred_last_bn), sd, checkpoint, expected)
    trunk = tree.base_encoder if encoder == "base" else tree.momentum_encoder
    attr = "fc" if kind == "resnet50" else "head"
    projector = getattr(trunk, attr)
    delattr(trunk, attr)
    head = {"projector": projector, "predictor": Chain(projector, tree.predictor)}.get(embedding)
    layer = "layer4" if kind == "resnet50" else trunk.cam_layer
    return similarity_model(trunk, head, layer, name)


def _register(name: str) -> None:
    tag, kind = ARCHS[name]
    vit = kind != "resnet50"
    arch = {
        "resnet50": "torchvision ResNet-50 + projector 2048-4096-256 (as fc) + predictor "
        "256-4096-256",
        "vit-s-mocov3": "ViT-S/16 (384-d, 12 blocks, 12 heads, sin-cos positions) + projector "
        "384-4096-4096-256 (as head) + predictor 256-4096-256",
        "vit-b": "ViT-B/16 (768-d, 12 blocks, 12 heads, sin-cos positions) + projector "
        "768-4096-4096-256 (as head) + predictor 256-4096-256",
    }[kind]

    @register_model(
        name,
        summary=f"MoCo v3 {'ViT' if vit else 'ResNet-50'} ({tag}, facebookresearch/moco-v3)",
        architecture=arch,
        normalization="ImageNet mean/std",
        embeddings=EMBEDDINGS,
        default_embedding="projector",
        feature_layer="blocks.11.norm1" if vit else "layer4",
        checkpoint_format="{'epoch', 'arch', 'state_dict': {module.base_encoder.*, "
        "module.momentum_encoder.*, module.predictor.*}, 'optimizer', 'scaler'}",
        checkpoint_name=f"{tag}.pth.tar",
        download_url=BASE_URL.format(tag=tag),
        extras={"encoder": "base (default) or momentum"},
    )
    def builder(
        checkpoint=None,
        embedding: str = "projector",
        encoder: str = "base",
        random_weights: bool = False,
    ) -> SimilarityModel:
        return build_mocov3(name, checkpoint, embedding, encoder, random_weights)


for _name in ARCHS:
    _register(_name)
