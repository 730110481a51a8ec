"""Pair explanation methods; importing this package registers all of them."""

from pairlens.methods import (  # noqa: F401  (registration)
    baseline,
    cam,
    perturbation,
    saliency,
    transforms,
)
from pairlens.methods.registry import (
    MethodInfo,
    PairMaps,
    get_method,
    method_infos,
    methods,
    register_method,
)

__all__ = ["MethodInfo", "PairMaps", "get_method", "method_infos", "methods", "register_method"]
