"""The one parameter-validation layer: method parameters, numeric CLI options, demo widgets.

A method declares its parameters in its signature, and this module reads them:

* the type: ``bool``, ``int``, ``float``, ``str``, ``tuple[float, float]`` (a pair), a
  ``Literal[...]`` of choices, any of them ``| None`` (then ``None`` is a valid value, usually
  "the default that depends on the input");
* constraints attached with ``typing.Annotated``: :class:`Range` (bounds, per element for a pair),
  :class:`Choices` (allowed strings), :class:`Ordered` (a pair with ``lo <= hi``).

Example::

    def pairwise_occlusion(model, x1, x2, *,
                           n_samples: Annotated[int, Range(1)] = 100,
                           area: Annotated[tuple[float, float], Range(0, 1, lo_open=True),
                                           Ordered()] = (0.1, 0.3), ...)

:func:`spec_for` turns one parameter into a :class:`Spec`, and :meth:`Spec.coerce` converts a
value given as text (CLI, demo) or as a Python value (API) into exactly the typed value used, or
raises :class:`ParamError` naming the parameter and its valid range. Rules:

* booleans are strict: ``True``/``False``, ``1``/``0`` and the words ``true/false/yes/no/1/0``
  (any case); anything else (``"maybe"``, ``2``, ``0.5``) is an error;
* integers accept whole numbers (``8``, ``8.0``, ``"8"``), never booleans or fractions;
* numbers must be finite; a pair is two numbers (``(0.1, 0.3)``, ``"0.1,0.3"``, ``"0.1; 0.3"``);
* ``None``, ``"none"`` and ``""`` mean None where None is allowed.

:func:`argtype` gives the same rules to ``argparse`` options (``--epochs``, ``--batch-size``...).
This module imports neither torch nor numpy.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

__all__ = [
    "Annotated",
    "Choices",
    "Ordered",
    "ParamError",
    "Range",
    "Spec",
    "argtype",
    "dataclass_specs",
    "field_argtype",
    "parse_bool",
    "signature_specs",
    "spec_for",
    "validate_call",
    "validate_fields",
]

Kind = Literal["bool", "int", "float", "str", "choice", "pair", "any"]

TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")


class ParamError(ValueError):
    """A parameter value of the wrong type or outside its valid range (one-line message)."""


@dataclass(frozen=True)
class Range:
    """Bounds of a number (or of each element of a pair); ``None`` means unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, x: float) -> bool:
        if self.lo is not None and (x < self.lo or (self.lo_open and x == self.lo)):
            return False
        return not (self.hi is not None and (x > self.hi or (self.hi_open and x == self.hi)))

    def describe(self) -> str:
        """``>= 1``, ``> 0``, ``<= 5`` or ``in (0, 1]``."""
        lo, hi = _num(self.lo), _num(self.hi)
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {lo}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {hi}"
        return "any value"


@dataclass(frozen=True)
class Choices:
    """The allowed values of a string parameter."""

    values: tuple[str, ...]

    def __init__(self, *values: str) -> None:
        flat = values[0] if len(values) == 1 and not isinstance(values[0], str) else values
        object.__setattr__(self, "values", tuple(flat))


@dataclass(frozen=True)
class Ordered:
    """A pair ``(lo, hi)`` must have ``lo <= hi``."""


def _num(v: float | None) -> str:
    if v is None:
        return ""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


@dataclass(frozen=True)
class Spec:
    """One validated parameter: its kind, default and constraints."""

    name: str
    kind: Kind
    default: Any = None
    optional: bool = False
    range: Range | None = None
    choices: tuple[Any, ...] = ()
    ordered: bool = False
    element: Literal["int", "float"] = "float"  # kind of a pair's elements

    def describe(self) -> str:
        """What a valid value is, e.g. ``an integer >= 1 (or none)``."""
        if self.kind == "bool":
            text = "true or false (also yes/no/1/0)"
        elif self.kind == "choice":
            text = "one of " + ", ".join(map(str, self.choices))
        elif self.kind == "pair":
            what = "integers" if self.element == "int" else "numbers"
            text = f"two {what} 'lo,hi'"
            conds = []
            if self.range is not None and (self.range.lo is not None or self.range.hi is not None):
                conds.append(f"each {self.range.describe()}")
            if self.ordered:
                conds.append("lo <= hi")
            if conds:
                text += " with " + " and ".join(conds)
        elif self.kind == "str":
            text = "a text"
        elif self.kind == "any":
            text = "a value"
        else:
            text = "an integer" if self.kind == "int" else "a number"
            if self.range is not None and (self.range.lo is not None or self.range.hi is not None):
                text += f" {self.range.describe()}"
        return text + (" (or none)" if self.optional else "")

    def coerce(self, value: Any, owner: str = "") -> Any:
        """``value`` (text or Python value) as the typed value to use; :class:`ParamError`
        naming ``owner`` (e.g. the method) and the parameter otherwise."""
        try:
            return self._coerce(value)
        except _Invalid:
            who = f"{owner}: " if owner else ""
            raise ParamError(f"{who}parameter {self.name} must be {self.describe()}; "
                             f"got {_show(value)}") from None

    def _coerce(self, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
        if value is None or (isinstance(value, str) and value.lower() in ("", "none")):
            if self.optional:
                return None
            if self.kind == "str" and value == "":
                return ""
            raise _Invalid
        if self.kind == "any":  # a union of several types: not checked here
            return value
        if self.kind == "bool":
            return _bool(value)
        if self.kind in ("int", "float"):
            number = _number(value, self.kind)
            if self.range is not None and not self.range.contains(number):
                raise _Invalid
            return number
        if self.kind == "choice":
            if isinstance(value, str):
                for c in self.choices:
                    if isinstance(c, str) and c.lower() == value.lower():
                        return c
            if value in self.choices and not isinstance(value, bool):
                return value
            raise _Invalid
        if self.kind == "pair":
            return self._pair(value)
        if not isinstance(value, str):
            raise _Invalid
        return value

    def _pair(self, value: Any) -> tuple[Any, Any]:
        if isinstance(value, str):
            text = value.strip().strip("()[]").replace(";", ",")
            parts: Any = [p for p in text.split(",")]
        elif isinstance(value, (list, tuple)):
            parts = list(value)
        else:
            raise _Invalid
        if len(parts) != 2:
            raise _Invalid
        pair = tuple(_number(p, self.element) for p in parts)
        if self.range is not None and not all(self.range.contains(v) for v in pair):
            raise _Invalid
        if self.ordered and pair[0] > pair[1]:
            raise _Invalid
        return pair  # type: ignore[return-value]


class _Invalid(Exception):
    pass


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_bool(value: Any) -> bool:
    """Strict boolean: True/False, 1/0, or true/false/yes/no/1/0 in any case; else
    :class:`ParamError`."""
    try:
        return _bool(value)
    except _Invalid:
        raise ParamError(f"expected true or false (also yes/no/1/0); got {_show(value)}") from None


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if type(value).__name__ == "bool_":  # numpy.bool_, without importing numpy
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.lower()
        if low in TRUE_WORDS:
            return True
        if low in FALSE_WORDS:
            return False
    raise _Invalid


def _number(value: Any, kind: str) -> Any:
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise _Invalid
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise _Invalid from None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _Invalid from None
    if not math.isfinite(number):
        raise _Invalid
    if kind == "int":
        if isinstance(value, int):
            return int(value)
        if not number.is_integer():
            raise _Invalid
        return int(number)
    return number


# ---------------------------------------------------------------------- reading signatures
def spec_for(name: str, annotation: Any, default: Any) -> Spec:
    """The :class:`Spec` of a parameter from its (resolved) annotation and default.

    Without an annotation, the kind is taken from the default's type (``None`` default: any
    text, optional).
    """
    constraints: list[Any] = []
    ann = annotation
    if typing.get_origin(ann) is Annotated:
        ann, *constraints = typing.get_args(ann)
    optional = default is None
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        optional = optional or len(args) < len(typing.get_args(ann))
        if len(args) > 1:
            return Spec(name, "any", default=default, optional=optional)
        ann = args[0]
        if typing.get_origin(ann) is Annotated:
            ann, *more = typing.get_args(ann)
            constraints += more
    rng = next((c for c in constraints if isinstance(c, Range)), None)
    choices = next((c.values for c in constraints if isinstance(c, Choices)), ())
    ordered = any(isinstance(c, Ordered) for c in constraints)
    common = {"default": default, "optional": optional, "range": rng}
    if ann is inspect.Parameter.empty or ann is None or ann is Any:
        ann = type(default) if default is not None else str
    if typing.get_origin(ann) is Literal:
        return Spec(name, "choice", choices=typing.get_args(ann), **common)
    if choices:
        return Spec(name, "choice", choices=choices, **common)
    if ann is bool:
        return Spec(name, "bool", **common)
    if ann is int:
        return Spec(name, "int", **common)
    if ann is float:
        return Spec(name, "float", **common)
    if ann is tuple or typing.get_origin(ann) is tuple:
        elems = typing.get_args(ann)
        element = "int" if elems and all(e is int for e in elems if e is not Ellipsis) else "float"
        return Spec(name, "pair", ordered=ordered, element=element, **common)
    return Spec(name, "str", **common)


def signature_specs(fn: Callable[..., Any], skip: int = 0, keyword: bool = False
                    ) -> dict[str, Spec]:
    """Specs of the keyword-only parameters of ``fn`` (also the positional-or-keyword ones with
    ``keyword=True``) after the first ``skip`` parameters, in signature order, read from its
    annotations (``typing.get_type_hints``)."""
    target = inspect.unwrap(fn)
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the defaults
        hints = {}
    out = {}
    for p in list(inspect.signature(fn).parameters.values())[skip:]:
        if p.kind is not p.KEYWORD_ONLY and not (keyword and p.kind is p.POSITIONAL_OR_KEYWORD):
            continue
        default = None if p.default is p.empty else p.default
        out[p.name] = spec_for(p.name, hints.get(p.name, p.annotation), default)
    return out


def validate_call(specs: Mapping[str, Spec], given: Mapping[str, Any], owner: str,
                  defaults: bool = True) -> dict[str, Any]:
    """Check and convert ``given`` against ``specs``: unknown names and invalid values raise
    :class:`ParamError` naming ``owner``. Returns every parameter (defaults filled in, in
    signature order) when ``defaults``, else only the given ones, converted."""
    unknown = [k for k in given if k not in specs]
    if unknown:
        raise ParamError(f"{owner} has no parameter {', '.join(sorted(unknown))}; its "
                         f"parameters: {', '.join(specs) or '(none)'}")
    out = {}
    for name, spec in specs.items():
        if name in given:
            out[name] = spec.coerce(given[name], owner)
        elif defaults:
            out[name] = spec.default
    return out


def parse_assignments(items: list[str], what: str = "--param") -> dict[str, str]:
    """``["key=value", ...]`` to ``{key: value}`` (text values, converted later by the specs);
    dashes in keys become underscores."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ParamError(f"{what} expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if not key:
            raise ParamError(f"{what} expects KEY=VALUE, got {item!r}")
        out[key] = raw.strip()
    return out


def dataclass_specs(cls: type) -> dict[str, Spec]:
    """Specs of a dataclass's fields from their annotations (``Annotated[int, Range(1)]``...),
    so that a configuration object (e.g. the trainer's) is checked by the same rules."""
    import dataclasses

    hints = typing.get_type_hints(cls, include_extras=True)
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        out[f.name] = spec_for(f.name, hints.get(f.name, Any), default)
    return out


def validate_fields(obj: Any, names: typing.Iterable[str] | None = None) -> None:
    """Check (and convert in place) the fields ``names`` (default: those declaring a
    :class:`Range` or choices) of dataclass instance ``obj`` with :func:`dataclass_specs`;
    :class:`ParamError` names the first invalid field."""
    specs = dataclass_specs(type(obj))
    chosen = list(names) if names is not None else [
        k for k, sp in specs.items() if sp.range is not None or sp.kind == "choice"]
    for name in chosen:
        setattr(obj, name, specs[name].coerce(getattr(obj, name), type(obj).__name__))


# ---------------------------------------------------------------------- argparse
def argtype(kind: Literal["int", "float"] | Spec, lo: float | None = None,
            hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
            optional: bool = False) -> Callable[[str], Any]:
    """An ``argparse`` ``type=`` converter applying the rules above, e.g.
    ``argtype("int", 1)`` for ``--epochs`` (or ``argtype(spec)`` with a field's or parameter's
    :class:`Spec`); a bad value is a usage error naming the valid range."""
    import argparse

    if isinstance(kind, Spec):
        spec = kind
    else:
        spec = Spec("value", kind, range=Range(lo, hi, lo_open, hi_open), optional=optional)

    def convert(text: str) -> Any:
        try:
            return spec.coerce(text)
        except ParamError:
            raise argparse.ArgumentTypeError(
                f"must be {spec.describe()}; got {text!r}"
            ) from None

    convert.__name__ = spec.describe()
    return convert


def field_argtype(where: str, field: str) -> Callable[[str], Any]:
    """An ``argparse`` converter checking a value against the declared spec of ``field`` of the
    dataclass ``where`` (``"module:Class"``), so an option and the library share one rule. The
    module is imported only when a value is converted (``--help`` stays free of torch)."""

    def convert(text: str) -> Any:
        import importlib

        module, _, name = where.partition(":")
        spec = dataclass_specs(getattr(importlib.import_module(module), name))[field]
        return argtype(spec)(text)

    convert.__name__ = field
    return convert
