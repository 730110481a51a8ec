"""Registry of named models (timm style): names map to builders and descriptive configs.

``register_model`` decorates a builder ``fn(checkpoint=None, embedding=None, **kw) ->
SimilarityModel``; :func:`load_model` looks it up, :func:`list_models` lists the names and
:func:`model_info` returns the :class:`ModelInfo` shown by ``pairlens models info NAME``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pairlens.models.similarity import SimilarityModel

Builder = Callable[..., SimilarityModel]


@dataclass(frozen=True)
class ModelInfo:
    """What a registered model is and how to get its weights."""

    name: str
    builder: Builder
    summary: str
    architecture: str = ""
    input_size: tuple[int, int] = (224, 224)
    normalization: str = "ImageNet mean/std"
    embeddings: tuple[str, ...] = ("default",)
    default_embedding: str = "default"
    feature_layer: str | None = None
    checkpoint_format: str = ""
    checkpoint_name: str = ""
    download_url: str = ""
    sha256: str = ""
    bundled: bool = False
    extras: dict[str, Any] = field(default_factory=dict)


_MODELS: dict[str, ModelInfo] = {}


def register_model(name: str, **info: Any) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder`` under ``name`` with the :class:`ModelInfo` fields."""

    def wrap(builder: Builder) -> Builder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = ModelInfo(name=name, builder=builder, **info)
        return builder

    return wrap


def list_models() -> list[str]:
    """Names of all registered models, bundled ones first."""
    return sorted(_MODELS, key=lambda n: (not _MODELS[n].bundled, n))


def model_info(name: str) -> ModelInfo:
    key = name.strip().lower()
    family = key.split(":", 1)[0]  # "torchvision:resnet50": a family entry taking arch=
    if key not in _MODELS and ":" in key and _MODELS.get(family, None) is not None:
        if _MODELS[family].extras.get("takes_arch"):
            key = family
    if key not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _MODELS[key]


def load_model(
    name: str,
    checkpoint: str | Path | None = None,
    embedding: str | None = None,
    device: str | None = "cpu",
    **kwargs: Any,
) -> SimilarityModel:
    """Build the registered model ``name`` (in eval mode, on ``device``; ``"auto"`` picks CUDA
    when present). Bundled models need no checkpoint; others load ``checkpoint`` from a local path
    with ``torch.load(..., weights_only=True)``. Nothing is ever downloaded."""
    from pairlens.models.similarity import resolve_device

    info = model_info(name)
    if ":" in name and info.extras.get("takes_arch"):
        kwargs.setdefault("arch", name.split(":", 1)[1].strip())
    if embedding is not None and embedding not in info.embeddings:
        raise ValueError(
            f"model {info.name!r} has no embedding {embedding!r}; choose from "
            f"{', '.join(info.embeddings)}"
        )
    model = info.builder(
        checkpoint=checkpoint, embedding=embedding or info.default_embedding, **kwargs
    )
    model.name = name.strip() if info.extras.get("takes_arch") else info.name
    return model.to(resolve_device(device)).eval()
