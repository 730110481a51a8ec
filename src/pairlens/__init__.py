"""PairLens: explain why contrastive and self-supervised vision models find two images similar.

The public names are imported lazily (PEP 562), so that ``import pairlens`` and ``pairlens --help``
do not pay for torch until a model, method or metric is actually used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module, attribute or None for the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "PairCorrespondence": ("pairlens.explanation", "PairCorrespondence"),
    "PairExplanation": ("pairlens.explanation", "PairExplanation"),
    "SimilarityModel": ("pairlens.models", "SimilarityModel"),
    "attribute": ("pairlens.attribution", "attribute"),
    "correspond": ("pairlens.explanation", "correspond"),
    "evaluate": ("pairlens.metrics", "evaluate"),
    "explain": ("pairlens.explanation", "explain"),
    "list_models": ("pairlens.models", "list_models"),
    "load_model": ("pairlens.models", "load_model"),
    "methods": ("pairlens.methods.registry", "methods"),
    "model_info": ("pairlens.models", "model_info"),
    "targets": ("pairlens.corpus.targets", None),
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from pairlens.attribution import attribute  # noqa: F401
    from pairlens.corpus import targets  # noqa: F401
    from pairlens.explanation import (  # noqa: F401
        PairCorrespondence,
        PairExplanation,
        correspond,
        explain,
    )
    from pairlens.methods.registry import methods  # noqa: F401
    from pairlens.metrics import evaluate  # noqa: F401
    from pairlens.models import SimilarityModel, list_models, load_model, model_info  # noqa: F401


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'pairlens' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    if module_name.startswith("pairlens.methods") or module_name == "pairlens.explanation":
        importlib.import_module("pairlens.methods")  # registers every method
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
