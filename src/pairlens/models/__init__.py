"""Models: the `SimilarityModel` wrapper, the model registry and the bundled models.

The registry knows nothing of its entries: importing this package imports the modules holding
the ``@register_model`` builders (bundled models and the zoo of published checkpoints), which fill
it. Any import of ``pairlens.models.*`` runs this file first, so the registry is always full.
"""

from pairlens.models import bundled, zoo  # noqa: F401  (register the builders)
from pairlens.models.registry import ModelInfo, list_models, load_model, model_info, register_model
from pairlens.models.similarity import NonFiniteError, SimilarityModel, cosine

__all__ = [
    "ModelInfo",
    "NonFiniteError",
    "SimilarityModel",
    "cosine",
    "list_models",
    "load_model",
    "model_info",
    "register_model",
]
