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

DINO's own *training* checkpoint (``checkpoint.pth`` of ``main_dino.py``: ``{'student',
'teacher', 'optimizer', 'epoch', 'args', 'dino_loss'}``, the student wrapped by DDP) loads its
**teacher** backbone, as DINO's evaluation code does (``utils.load_pretrained_weights`` with
``checkpoint_key='teacher'``): the ``module.`` and ``backbone.`` prefixes are removed and the
DINO head (``head.*``) is left out. The backbone itself is then loaded strictly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pairlens.models.checkpoint import (
    StateDict,
    find_state_dict,
    is_state_dict,
    read_checkpoint,
    strip_prefix,
)
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
    if checkpoint is not None:
        sd = dino_backbone_state_dict(read_checkpoint(checkpoint, expected), checkpoint, expected)
    else:
        sd = open_state_dict(checkpoint, name, expected, random_weights, hint=f"download {url}")
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


def dino_backbone_state_dict(obj: Any, path: Any, expected: str) -> StateDict:
    """The backbone state dict in a DINO file: a released backbone file as it is, or the teacher
    of a training checkpoint without ``module.`` / ``backbone.`` prefixes and the DINO head."""
    if isinstance(obj, Mapping) and is_state_dict(obj.get("teacher")):
        sd = strip_prefix(obj["teacher"], "module.")
        return {
            k.removeprefix("backbone."): v for k, v in sd.items() if not k.startswith("head.")
        }
    return unwrap_module(find_state_dict(obj, path, expected))


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
        checkpoint_format=(
            "backbone state dict (torchvision ResNet keys)"
            if kind == "resnet50"
            else "backbone state dict (DINO vision_transformer keys, no head)"
        )
        + ", or DINO's training checkpoint.pth (its teacher backbone)",
        checkpoint_name=f"{tag}.pth",
        download_url=URL.format(tag=tag),
    )
    def builder(
        checkpoint=None, embedding: str = "backbone", random_weights: bool = False
    ) -> SimilarityModel:
        return build_dino(name, checkpoint, embedding, random_weights)


for _name in ARCHS:
    _register(_name)
