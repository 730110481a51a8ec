"""Generic entries: any torchvision or timm architecture plus a local weight file.

``load_model("torchvision:resnet50", checkpoint=PATH)`` (or ``load_model("torchvision",
arch="resnet50", ...)``; CLI ``--model torchvision:resnet50``) and likewise ``timm:ARCH``
(optional extra ``pairlens[timm]``). The file is a state dict, possibly nested under
``state_dict`` / ``model`` and prefixed with ``module.``; the number of classes is read from the
file's classifier, and a file without a classifier (a headless backbone) is accepted, except for
``embedding="logits"`` (an error: there are no logits to explain).

Library weights are an explicit opt-in: ``pretrained=True`` (timm: the architecture's default
pretrained tag, or the tag in the name, ``timm:resnet50.a1_in1k``; torchvision: the weights
enum's ``DEFAULT``) or ``weights=`` a torchvision weights enum or name (``"IMAGENET1K_V2"``). The
library's own loader reads them from its own cache (the Hugging Face hub cache for timm,
``torch.hub.get_dir()/checkpoints`` for torchvision); PairLens never downloads, so a file missing
from the cache is a one-line error saying how to fetch it.

Preprocessing comes from the library: timm's ``resolve_model_data_config`` (mean, std, input
size, crop fraction) and torchvision's weights-enum transforms (``DEFAULT`` when no weights are
loaded: the architecture's reference recipe). timm models that support it are built with
``dynamic_img_size=True``, so ViTs and Swins run at any input size (position embeddings
interpolated); torchvision's ViT has a fixed size and other sizes are refused up front.

Embeddings: ``backbone`` (default; the input of the last Linear classifier: pooled features) or
``logits`` (the classifier output). CAM layer: :func:`pairlens.models.layouts.suggest_feature_layer`
(``layer4`` for ResNets, the norm entering the last block of class-token ViTs, the last
``feature_info`` stage of other timm models, ``features`` of torchvision CNNs and Swins), or
``feature_layer=`` given by the caller. Any other ``nn.Module`` can be wrapped directly:
``pairlens.SimilarityModel(module, feature_layer=...)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pairlens.models.checkpoint import CheckpointError
from pairlens.models.layouts import suggest_feature_layer
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


def _no_checkpoint_with_weights(name: str, checkpoint: Any, library: bool) -> None:
    if checkpoint is not None and library:
        raise ValueError(
            f"model {name!r}: give either checkpoint=PATH or the library's weights "
            "(pretrained= / weights=), not both"
        )


def _headless(name: str, embedding: str, where: str) -> None:
    if embedding == "logits":
        raise CheckpointError(f"{where}: has no classifier, so model {name!r} has no logits; "
                              "use embedding='backbone'")


# ----------------------------------------------------------------------------- torchvision
def _torchvision_weights(arch: str, weights: Any, pretrained: bool) -> Any:
    """The weights enum member asked for (None: random or checkpoint)."""
    import torchvision

    if weights is None and not pretrained:
        return None
    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        raise ValueError(f"torchvision publishes no weights for {arch!r}") from None
    if weights is None or weights is True:
        return enum.DEFAULT
    if isinstance(weights, str):
        try:
            return enum[weights.rsplit(".", 1)[-1]]
        except KeyError:
            raise ValueError(
                f"torchvision {arch} has no weights {weights!r}; choose from "
                f"{', '.join(m.name for m in enum)}"
            ) from None
    if weights not in list(enum):
        raise ValueError(f"{weights!r} are not weights of torchvision {arch}")
    return weights


def _torchvision_cached(w: Any, arch: str) -> None:
    """Raise unless torchvision's own loader will find ``w`` in its cache (no download)."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
    if not path.is_file():
        raise CheckpointError(
            f"torchvision weights {type(w).__name__}.{w.name} are not in torchvision's cache "
            f"({path}); PairLens never downloads: fetch them once with `python -c \"import "
            f"torchvision; torchvision.models.get_model('{arch}', weights='{w.name}')\"` or pass "
            "checkpoint=PATH"
        )


def _torchvision_preprocessing(arch: str, w: Any) -> dict[str, Any]:
    """mean, std, input size and crop fraction from the weights' transforms (``DEFAULT`` when no
    weights are loaded; ImageNet 256 -> 224 for an architecture without published weights)."""
    import torchvision

    if w is None:
        try:
            w = torchvision.models.get_model_weights(arch).DEFAULT
        except (ValueError, KeyError, AttributeError):
            w = None
    out = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "size": (224, 224), "crop": 0.875}
    if w is not None:
        t = w.transforms()
        crop = int(t.crop_size[0])
        resize = int(t.resize_size[0]) if t.resize_size else crop
        out = {
            "mean": tuple(t.mean),
            "std": tuple(t.std),
            "size": (crop, crop),
            "crop": min(1.0, crop / resize),
        }
    return out


@register_model(
    "torchvision",
    summary="any torchvision classification architecture from a local state dict: "
    "--model torchvision:ARCH",
    architecture="torchvision.models ARCH (arch= argument)",
    normalization="the weights enum's transforms (mean/std, size, crop)",
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
    pretrained: bool = False,
    weights: Any = None,
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
    w = _torchvision_weights(arch, weights, pretrained)
    _no_checkpoint_with_weights(name, checkpoint, w is not None)
    with torch.device("meta"):
        skeleton = builder(weights=None)
    cls = _last_linear(skeleton)
    if w is not None:
        _torchvision_cached(w, arch)
        model = builder(weights=w)
    else:
        expected = f"a torchvision {arch} state dict"
        sd = open_state_dict(checkpoint, name, expected, random_weights)
        sd = unwrap_module(sd) if sd else sd
        optional: tuple[str, ...] = ()
        kw = {}
        if sd is not None and cls is not None:
            key = f"{cls}.weight"
            if key in sd and sd[key].shape[0] != skeleton.get_submodule(cls).out_features:
                kw = {"num_classes": int(sd[key].shape[0])}
            elif key not in sd:
                optional = (key, f"{cls}.bias")  # headless backbone file
                _headless(name, embedding, f"{checkpoint} (no {key})")
        model = build_and_load(
            lambda: builder(weights=None, **kw), sd, checkpoint, expected, optional
        )
    if cls is None:
        _headless(name, embedding, f"torchvision {arch}")
    elif embedding == "backbone":
        _set_submodule(model, cls, nn.Identity())
    prep = _torchvision_preprocessing(arch, w)
    layer = feature_layer or suggest_feature_layer(model)
    return _wrap(model, layer, name, prep["mean"], prep["std"], prep["crop"], prep["size"])


# ----------------------------------------------------------------------------- timm
def _timm_create(timm: Any, arch: str, **kw: Any) -> nn.Module:
    """``timm.create_model`` with ``dynamic_img_size=True`` when the architecture takes it (ViTs,
    Swin: any input size), else without."""
    try:
        return timm.create_model(arch, dynamic_img_size=True, **kw)
    except TypeError:
        return timm.create_model(arch, **kw)


def _timm_cached_file(timm: Any, arch: str) -> str:
    """The cached file of ``arch``'s pretrained weights in the Hugging Face cache (no download),
    or a one-line error."""
    from huggingface_hub import constants, try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(arch)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise CheckpointError(
            f"timm {arch!r} has no pretrained weights on the Hugging Face hub that PairLens can "
            "read from the cache; pass checkpoint=PATH"
        )
    names = [getattr(cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin"]
    for filename in [n for n in names if n]:
        found = try_to_load_from_cache(hub_id, filename, cache_dir=constants.HF_HUB_CACHE)
        if isinstance(found, str) and Path(found).is_file():
            return found
    raise CheckpointError(
        f"timm weights {hub_id} are not in the local Hugging Face cache "
        f"({constants.HF_HUB_CACHE}); PairLens never downloads: fetch them once with `python -c "
        f"\"import timm; timm.create_model('{arch}', pretrained=True)\"` or pass checkpoint=PATH"
    )


@register_model(
    "timm",
    summary="any timm architecture from a local state dict (extra pairlens[timm]): "
    "--model timm:ARCH",
    architecture="timm ARCH (arch= argument)",
    normalization="the architecture's timm data config (mean/std, size, crop)",
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
    pretrained: bool = False,
    **create_kwargs: Any,
) -> SimilarityModel:
    try:
        import timm
        import timm.data
    except ImportError as err:
        raise ImportError("timm models need timm: pip install 'pairlens[timm]'") from err
    name = f"timm:{arch}"
    check_embedding(name, embedding, EMBEDDINGS)
    if not arch:
        raise ValueError("model 'timm' needs arch=NAME, e.g. --model timm:vit_small_patch16_224")
    _no_checkpoint_with_weights(name, checkpoint, pretrained)
    try:
        with torch.device("meta"):
            skeleton = _timm_create(timm, arch, pretrained=False, **create_kwargs)
    except RuntimeError as err:
        raise ValueError(f"timm has no model {arch!r}") from err
    cfg = dict(getattr(skeleton, "pretrained_cfg", None) or {})
    cls = cfg.get("classifier")
    cls = cls[0] if isinstance(cls, (list, tuple)) else cls
    if pretrained:
        path = _timm_cached_file(timm, arch)
        model = _timm_create(
            timm, arch, pretrained=True, pretrained_cfg_overlay={"file": path, "source": ""},
            **create_kwargs,
        )
        if embedding == "logits" and not getattr(model, "num_classes", 0):
            _headless(name, embedding, path)
    else:
        expected = f"a timm {arch} state dict"
        sd = open_state_dict(checkpoint, name, expected, random_weights)
        sd = unwrap_module(sd) if sd else sd
        kw = dict(create_kwargs)
        if sd is not None and cls:
            key = f"{cls}.weight"
            n = int(sd[key].shape[0]) if key in sd else 0
            if n == 0:
                _headless(name, embedding, f"{checkpoint} (no {key})")
            if n != skeleton.num_classes:
                kw["num_classes"] = n
        model = build_and_load(
            lambda: _timm_create(timm, arch, pretrained=False, **kw), sd, checkpoint, expected
        )
    if embedding == "logits" and not getattr(model, "num_classes", 0):
        _headless(name, embedding, f"timm {arch}")
    if embedding == "backbone":
        model.reset_classifier(0)
    data = timm.data.resolve_model_data_config(model)
    layer = feature_layer or suggest_feature_layer(model)
    return _wrap(
        model,
        layer,
        name,
        tuple(data.get("mean", IMAGENET_MEAN)),
        tuple(data.get("std", IMAGENET_STD)),
        float(data.get("crop_pct", 0.875)),
        tuple(data.get("input_size", (3, 224, 224))[-2:]),
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
