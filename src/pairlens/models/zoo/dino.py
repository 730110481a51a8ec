"""DINO (Caron et al., 2021), facebookresearch/dino: the released backbone-only checkpoints.

* ``dino_resnet50_pretrain.pth``: a torchvision ResNet-50 state dict (the hub loads it with
  ``fc = Identity`` and ``strict=False``; ``fc.*`` keys are accepted and ignored if present);
* ``dino_deitsmall16_pretrain.pth`` / ``dino_deitsmall8_pretrain.pth`` (ViT-S: 384-d, 12 blocks,
  6 heads) and ``dino_vitbase16_pretrain.pth`` / ``dino_vitbase8_pretrain.pth`` (ViT-B: 768-d,
  12 blocks, 12 heads): DINO's ``vision_transformer.py`` keys (``cls_token``, ``pos_embed``,
  ``patch_embed.proj``, ``blocks.N.*``, ``norm``), no head; loaded strictly by the hub.

The released files hold no projection head, so the only embedding is ``backbone``: the pooled
ResNet features, or the ViT class token after the final norm (DINO's k-NN / linear features).
ImageNet mean/std, 224 px. CAM layer ``layer4`` / ``blocks.11.norm1`` (the tokens entering the
last block: see :class:`pairlens.models.zoo.vit.VisionTransformer`).
"""

from __future__ import annotations

from pairlens.models.registry import register_model
from pairlens.models.similarity import SimilarityModel
from pairlens.models.zoo.common import (
    ResNetTrunk,
    build_and_load,
    check_embedding,
    open_state_dict,
    similarity_model,
    unwrap_module,
)
from pairlens.models.zoo.vit import vit_from_state_dict

EMBEDDINGS = ("backbone",)
URL = "https://dl.fbaipublicfiles.com/dino/{tag}/{tag}.pth"
ARCHS = {
    # name: (file tag, kind, patch size, summary)
    "dino-r50": ("dino_resnet50_pretrain", "resnet50", 0, "ResNet-50"),
    "dino-vit-s16": ("dino_deitsmall16_pretrain", "vit-s-dino", 16, "ViT-S/16"),
    "dino-vit-s8": ("dino_deitsmall8_pretrain", "vit-s-dino", 8, "ViT-S/8"),
    "dino-vit-b16": ("dino_vitbase16_pretrain", "vit-b", 16, "ViT-B/16"),
    "dino-vit-b8": ("dino_vitbase8_pretrain", "vit-b", 8, "ViT-B/8"),
}


def build_dino(
    name: str, checkpoint=None, embedding: str = "backbone", random_weights: bool = False
) -> SimilarityModel:
    check_embedding(name, embedding, EMBEDDINGS)
    tag, kind, patch, label = ARCHS[name]
    url = URL.format(tag=tag)
    expected = f"the DINO {label} backbone checkpoint ({tag}.pth)"
    sd = open_state_dict(checkpoint, name, expected, random_weights, hint=f"download {url}")
    sd = unwrap_module(sd) if sd else sd
    if kind == "resnet50":
        trunk = build_and_load(
            lambda: ResNetTrunk("resnet50"), sd, checkpoint, expected, ("fc.weight", "fc.bias")
        )
        layer = "layer4"
    else:
        trunk = build_and_load(
            lambda: vit_from_state_dict(sd, patch, kind), sd, checkpoint, expected
        )
        layer = trunk.cam_layer
    return similarity_model(trunk, None, layer, name)


def _register(name: str) -> None:
    tag, kind, patch, label = ARCHS[name]
    arch = {
        "resnet50": "torchvision ResNet-50 backbone",
        "vit-s-dino": f"ViT-S/{patch} (384-d, 12 blocks, 6 heads)",
        "vit-b": f"ViT-B/{patch} (768-d, 12 blocks, 12 heads)",
    }[kind]

    @register_model(
        name,
        summary=f"DINO {label} backbone (facebookresearch/dino)",
        architecture=arch,
        normalization="ImageNet mean/std",
        embeddings=EMBEDDINGS,
        default_embedding="backbone",
        feature_layer="layer4" if kind == "resnet50" else "blocks.11.norm1",
        checkpoint_format="backbone state dict (torchvision ResNet keys)"
        if kind == "resnet50"
        else "backbone state dict (DINO vision_transformer keys, no head)",
        checkpoint_name=f"{tag}.pth",
        download_url=URL.format(tag=tag),
    )
    def builder(
        checkpoint=None, embedding: str = "backbone", random_weights: bool = False
    ) -> SimilarityModel:
        return build_dino(name, checkpoint, embedding, random_weights)


for _name in ARCHS:
    _register(_name)
