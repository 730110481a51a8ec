"""Pair explanation methods; importing this package registers all of them."""

import sys
import types

from pairlens.methods import (  # noqa: F401  (registration)
    baseline,
    cam,
    correspondence,
    perturbation,
    saliency,
    transforms,
)
from pairlens.methods.registry import (
    MethodInfo,
    PairMaps,
    PairRelevance,
    get_method,
    method_infos,
    methods,
    register_method,
)

__all__ = [
    "MethodInfo",
    "PairMaps",
    "PairRelevance",
    "get_method",
    "method_infos",
    "methods",
    "register_method",
]


class _MethodsPackage(types.ModuleType):
    """``pairlens.methods`` is both this package and the public function ``pairlens.methods()``
    (DESIGN.md): importing the package binds the name to the module, so the module is callable."""

    def __call__(self) -> dict[str, str]:
        return methods()


sys.modules[__name__].__class__ = _MethodsPackage
