"""Registry of pair explanation methods.

A method is a small function ``fn(model, x1, x2, *, **params) -> PairMaps`` taking a
:class:`~pairlens.models.SimilarityModel` and two (B, 3, H, W) batches in model-input space and
returning two (B, H, W) maps at input resolution, higher meaning more important, plus the
similarity of the unaltered pairs when the method computed it anyway. Register it with
:func:`register_method`; its keyword parameters, their defaults, types and valid ranges are read
from the signature (see :mod:`pairlens.validation`: ``Annotated[int, Range(1)]``, ``Literal[...]``),
and :meth:`MethodInfo.validate` is the one check every caller (API, CLI, evaluate, demo) uses.

Methods of the family ``"correspondence"`` return a :class:`PairRelevance` instead: the
contribution of every (region of image 1, region of image 2) pair, from which
:func:`pairlens.explain` derives the two maps (its marginals).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import Tensor

from pairlens.validation import Spec, signature_specs, validate_call


class NotApplicableError(ValueError):
    """A method cannot explain this model or target at all (for example interaction-cam against
    a target whose width differs from the feature layer's): another method can."""


class PairMaps(NamedTuple):
    """What a method returns: two (B, H, W) maps and, when it computed it anyway, the (B,)
    similarity of the unaltered pairs (so that :func:`pairlens.explain` need not recompute it)."""

    map1: Tensor
    map2: Tensor
    score: Tensor | None = None


class PairRelevance(NamedTuple):
    """What a correspondence method returns.

    Attributes:
        relevance: (B, h1*w1, h2*w2) float, the contribution of each (region i of image 1,
            region j of image 2) pair, regions numbered row-major on ``grids``.
        grids: ((h1, w1), (h2, w2)), the region grid of each image.
        maps: the two marginals (B, H, W) at input resolution if the method has them at a finer
            resolution than its grid, else None (the grid marginals are upsampled).
        score: (B,) similarity of the unaltered pairs, if computed anyway.
        extras: per-pair diagnostics, each (B,): at least ``target`` (what the relevance sums to
            in theory) and ``completeness_error`` (its sum minus ``target``).
    """

    relevance: Tensor
    grids: tuple[tuple[int, int], tuple[int, int]]
    maps: tuple[Tensor, Tensor] | None = None
    score: Tensor | None = None
    extras: dict[str, Tensor] | None = None


MethodFn = Callable[..., PairMaps | PairRelevance]

#: parameters that change speed and peak memory, results only by float rounding: ``batch_size``
#: (images per forward pass; pairs are independent and their random draws come from per-pair
#: generators). ``tests/test_performance.py`` checks this for every method that takes one; a
#: method whose result did depend on one would register with ``execution_params=()``.
EXECUTION_PARAMS = ("batch_size",)


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: its name, function, paper section and one-line summary."""

    name: str
    fn: MethodFn
    section: str
    summary: str
    family: str
    deterministic: bool
    pairs_only: bool = False  # needs two images: no explanation against a fixed target
    execution_params: tuple[str, ...] = EXECUTION_PARAMS  # no effect on results (see above)

    @property
    def params(self) -> dict[str, Any]:
        """Keyword parameters with their defaults, in signature order."""
        sig = inspect.signature(self.fn)
        return {
            p.name: p.default for p in list(sig.parameters.values())[3:] if p.kind is p.KEYWORD_ONLY
        }

    @property
    def specs(self) -> dict[str, Spec]:
        """Each keyword parameter's :class:`~pairlens.validation.Spec` (kind, range, choices)."""
        return dict(_specs(self.fn))

    def validate(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every parameter as it will be used: ``given`` converted and checked (strict booleans,
        ranges, choices; text values such as ``"no"`` or ``"0.1,0.3"`` are parsed), defaults
        filled in, in signature order. Raises :class:`~pairlens.validation.ParamError` (a
        ``ValueError``) naming the method, the parameter and its valid values."""
        return validate_call(self.specs, given, f"method {self.name}")

    def result_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` with every execution parameter (:data:`EXECUTION_PARAMS`) set back to its
        default: what identifies a result (the results store's key), so that the same pair
        explained at another ``batch_size`` is the same stored result."""
        defaults = self.params
        return {k: (defaults[k] if k in self.execution_params and k in defaults else v)
                for k, v in params.items()}


@functools.cache
def _specs(fn: MethodFn) -> dict[str, Spec]:
    return signature_specs(fn, skip=3)


_METHODS: dict[str, MethodInfo] = {}


def register_method(
    name: str,
    *,
    section: str,
    summary: str,
    family: str,
    deterministic: bool = True,
    pairs_only: bool = False,
    execution_params: tuple[str, ...] = EXECUTION_PARAMS,
) -> Callable[[MethodFn], MethodFn]:
    """Decorator registering a pair explanation method under ``name``. ``pairs_only``: the
    method needs two images and cannot explain an image against a fixed target embedding.
    ``execution_params``: its parameters that change results only by float rounding
    (:data:`EXECUTION_PARAMS`)."""

    def wrap(fn: MethodFn) -> MethodFn:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered")
        _METHODS[name] = MethodInfo(name, fn, section, summary, family, deterministic, pairs_only,
                                    tuple(execution_params))
        return fn

    return wrap


def get_method(name: str) -> MethodInfo:
    """Look up a method by name (underscores and case are forgiven)."""
    key = name.strip().lower().replace("_", "-")
    if key not in _METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(_METHODS)}")
    return _METHODS[key]


def methods() -> dict[str, str]:
    """Names of all registered methods mapped to their one-line descriptions."""
    return {name: info.summary for name, info in _METHODS.items()}


def method_infos() -> list[MethodInfo]:
    return list(_METHODS.values())


#: families that ``all`` leaves out (attributions of a single target, not pair maps)
EXCLUDED_FAMILIES = ("corpus",)


def parse_methods(text: str, assignments: Sequence[str] = ()) -> list[tuple[str, dict[str, Any]]]:
    """Method variants ``[(name, given parameters), ...]`` from a method list (``all``, names,
    variants ``name[key=value;...]``) and ``[method.]key=value`` assignments (the syntax of
    :mod:`pairlens.params`), the values converted and checked by each method's declared types
    and ranges (:meth:`MethodInfo.validate`). Distinct variants, in the order given: variants
    differing only in execution parameters (``batch_size``) give the same result
    (:meth:`MethodInfo.result_params`) and are one, the first kept. Raises ValueError
    (:class:`~pairlens.validation.ParamError`) naming the method and parameter."""
    from pairlens.params import parse_method_list

    known = {info.name: info.params for info in method_infos()}
    everything = [info.name for info in method_infos() if info.family not in EXCLUDED_FAMILIES]
    out: list[tuple[str, dict[str, Any]]] = []
    results: list[tuple[str, dict[str, Any]]] = []
    for name, given in parse_method_list(text, known, assignments,
                                         resolve=lambda n: get_method(n).name,
                                         all_names=everything):
        info = get_method(name)
        given = validate_call(info.specs, given, f"method {name}", defaults=False)
        result = (name, info.result_params({**info.params, **given}))
        if result not in results:
            results.append(result)
            out.append((name, given))
    return out
