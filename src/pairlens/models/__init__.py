"""Models: the `SimilarityModel` wrapper, the model registry and the bundled models."""

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
