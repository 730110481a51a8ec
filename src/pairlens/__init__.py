"""PairLens: explain why contrastive and self-supervised vision models find two images similar."""

from pairlens import methods as _methods  # noqa: F401  (registers the methods)
from pairlens import targets
from pairlens.attribution import attribute
from pairlens.explanation import PairExplanation, explain
from pairlens.methods.registry import methods
from pairlens.metrics import evaluate
from pairlens.models import SimilarityModel, list_models, load_model, model_info

__version__ = "0.1.0"

__all__ = [
    "PairExplanation",
    "SimilarityModel",
    "attribute",
    "evaluate",
    "explain",
    "list_models",
    "load_model",
    "methods",
    "model_info",
    "targets",
]
