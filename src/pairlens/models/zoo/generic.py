"""Generic entries: any torchvision or timm architecture plus a local weight file.

``load_model("torchvision:resnet50", checkpoint=PATH)`` (or ``load_model("torchvision",
arch="resnet50", ...)``; CLI ``--model torchvision:resnet50``) and likewise ``timm:ARCH``
(optional extra ``pairlens[timm]``). The file is a state dict, possibly nested under
``state_dict`` / ``model`` and prefixed with ``module.``; the number of classes is read from the
file's classifier, and a file without a classifier (a headless backbone) is accepted.

Embeddings: ``backbone`` (default; the input of the last Linear classifier: pooled features) or
``logits`` (the classifier output). CAM layer: ``layer4`` for ResNets, the last encoder block for
torchvision ViTs (``encoder.layers.encoder_layer_{L-1}.ln_1``), ``blocks.{L-1}.norm1`` for timm ViTs
(the tokens entering the last block: the class-token embedding does not depend on the last
block's output patch tokens, so their gradients are zero), the last
stage from timm's ``feature_info`` otherwise, or ``feature_layer=`` given by the caller. Any other
``nn.Module`` can be wrapped directly: ``pairlens.SimilarityModel(module, feature_layer=...)``.
"""

from __future__ import annotations

import torch
from torch import nn

from pairlens.models.checkpoint import CheckpointError
from pairlens.models.registry import register_model
from pairlens.models.similarity import IMAGENET_MEAN, IMAGENET_STD, SimilarityModel
from pairlens.models.zoo.common import (
    build_and_load,
    check_embedding,
    open_state_dict,
    unwrap_module,
)

EMBEDDINGS = ("backbone", "logits")


def _last_linear(model: nn.Module) -> str | None:
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name = n
    return name


def _set_submodule(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def _guess_feature_layer(model: nn.Module) -> str | None:
    if hasattr(model, "layer4"):
        return "layer4"
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, (nn.ModuleList, nn.Sequential)) and len(blocks):
        return (
            f"blocks.{len(blocks) - 1}.norm1"
            if hasattr(blocks[-1], "norm1")
            else (f"blocks.{len(blocks) - 1}")
        )
    layers = getattr(getattr(model, "encoder", None), "layers", None)
    if isinstance(layers, nn.Sequential) and len(layers):
        return f"encoder.layers.{list(dict(layers.named_children()))[-1]}.ln_1"
    info = getattr(model, "feature_info", None)
    if info is not None:
        try:
            return info[-1]["module"]
        except (TypeError, KeyError, IndexError):
            pass
    if hasattr(model, "features"):
        return "features"
    return None


@register_model(
    "torchvision",
    summary="any torchvision classification architecture from a local state dict: "
    "--model torchvision:ARCH",
    architecture="torchvision.models ARCH (arch= argument)",
    normalization="ImageNet mean/std",
    embeddings=EMBEDDINGS,
    default_embedding="backbone",
    feature_layer="layer4 / encoder.layers.encoder_layer_{last}.ln_1 / features / feature_layer=",
    checkpoint_format="state dict (optionally under 'state_dict' or 'model', 'module.' prefix)",
    extras={"takes_arch": True},
)
def torchvision_any(
    checkpoint=None,
    embedding: str = "backbone",
    arch: str | None = None,
    feature_layer: str | None = None,
    random_weights: bool = False,
) -> SimilarityModel:
    import torchvision

    name = f"torchvision:{arch}"
    check_embedding(name, embedding, EMBEDDINGS)
    if not arch:
        raise ValueError("model 'torchvision' needs arch=NAME, e.g. --model torchvision:resnet50")
    try:
        builder = torchvision.models.get_model_builder(arch)
    except ValueError as err:
        raise ValueError(f"torchvision has no model {arch!r}") from err
    expected = f"a torchvision {arch} state dict"
    sd = open_state_dict(checkpoint, name, expected, random_weights)
    sd = unwrap_module(sd) if sd else sd
    with torch.device("meta"):
        skeleton = builder(weights=None)
    cls = _last_linear(skeleton)
    optional: tuple[str, ...] = ()
    kw = {}
    if sd is not None and cls is not None:
        key = f"{cls}.weight"
        if key in sd and sd[key].shape[0] != skeleton.get_submodule(cls).out_features:
            kw = {"num_classes": int(sd[key].shape[0])}
        elif key not in sd:
            optional = (key, f"{cls}.bias")  # headless backbone file
    if optional and embedding == "logits":
        raise CheckpointError(
            f"{checkpoint}: has no classifier ({cls}.weight); use embedding='backbone'"
        )
    model = build_and_load(lambda: builder(weights=None, **kw), sd, checkpoint, expected, optional)
    if embedding == "backbone" and cls is not None:
        _set_submodule(model, cls, nn.Identity())
    layer = feature_layer or _guess_feature_layer(model)
    return _wrap(model, layer, name, IMAGENET_MEAN, IMAGENET_STD, 0.875, (224, 224))


@register_model(
    "timm",
    summary="any timm architecture from a local state dict (extra pairlens[timm]): "
    "--model timm:ARCH",
    architecture="timm ARCH (arch= argument)",
    normalization="the architecture's timm pretrained_cfg mean/std",
    embeddings=EMBEDDINGS,
    default_embedding="backbone",
    feature_layer="blocks.{last}.norm1 for ViTs, last feature_info stage, or feature_layer=",
    checkpoint_format="state dict (optionally under 'state_dict' or 'model', 'module.' prefix)",
    extras={"takes_arch": True, "requires": "timm"},
)
def timm_any(
    checkpoint=None,
    embedding: str = "backbone",
    arch: str | None = None,
    feature_layer: str | None = None,
    random_weights: bool = False,
) -> SimilarityModel:
    try:
        import timm
    except ImportError as err:
        raise ImportError("timm models need timm: pip install 'pairlens[timm]'") from err
    name = f"timm:{arch}"
    check_embedding(name, embedding, EMBEDDINGS)
    if not arch:
        raise ValueError("model 'timm' needs arch=NAME, e.g. --model timm:vit_small_patch16_224")
    expected = f"a timm {arch} state dict"
    sd = open_state_dict(checkpoint, name, expected, random_weights)
    sd = unwrap_module(sd) if sd else sd
    try:
        with torch.device("meta"):
            skeleton = timm.create_model(arch, pretrained=False)
    except RuntimeError as err:
        raise ValueError(f"timm has no model {arch!r}") from err
    cfg = dict(getattr(skeleton, "pretrained_cfg", None) or {})
    cls = cfg.get("classifier")
    cls = cls[0] if isinstance(cls, (list, tuple)) else cls
    kw = {}
    if sd is not None and cls:
        key = f"{cls}.weight"
        n = int(sd[key].shape[0]) if key in sd else 0
        if n != skeleton.num_classes:
            kw = {"num_classes": n}
    model = build_and_load(
        lambda: timm.create_model(arch, pretrained=False, **kw), sd, checkpoint, expected
    )
    if embedding == "backbone":
        model.reset_classifier(0)
    layer = feature_layer or _guess_feature_layer(model)
    size = tuple(cfg.get("input_size", (3, 224, 224))[-2:])
    return _wrap(
        model,
        layer,
        name,
        tuple(cfg.get("mean", IMAGENET_MEAN)),
        tuple(cfg.get("std", IMAGENET_STD)),
        float(cfg.get("crop_pct", 0.875)),
        size,
    )


def _wrap(model, layer, name, mean, std, crop, size) -> SimilarityModel:
    return SimilarityModel(
        model,
        feature_layer=layer,
        input_size=size,
        mean=mean,
        std=std,
        crop_fraction=min(crop, 1.0),
        name=name,
    ).eval()
