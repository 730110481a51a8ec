"""The text syntax of method lists and parameters, shared by the command line and the study
runner. Pure string handling: no torch, no registry imports (the caller passes the known
methods), so that any layer may use it. Values stay text here; each method's declared types and
ranges convert and check them (:mod:`pairlens.validation`, :meth:`MethodInfo.validate`), so
``guided=no``, ``strength=0,90`` and ``window=none`` mean what the method says they mean.

* A method list is ``all`` or comma-separated items ``name`` or ``name[key=value;key=value]``
  (a variant; ``,`` also separates parameters inside the brackets).
* A parameter assignment is ``[method.]key=value``: without ``method.`` it applies to every
  selected method that has ``key``; inside brackets a value wins over an assignment.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any


def format_value(value: Any) -> str:
    """A parameter value as typed on the command line: ``true``, ``0.1,0.3``, ``max``; ``None``
    (a default chosen from the input) is shown as ``auto``."""
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return ",".join(format_value(v) for v in value)
    return str(value)


def parse_assignment(item: str, allow_method: bool = True) -> tuple[str | None, str, str]:
    """``"[method.]key=value"`` to ``(method or None, key, value text)``; dashes in ``key``
    become underscores. Raises ValueError naming the expected form."""
    form = "[METHOD.]KEY=VALUE" if allow_method else "KEY=VALUE"
    head, sep, raw = item.partition("=")
    if not sep or not head.strip():
        raise ValueError(f"--param expects {form}, got {item!r}")
    method, dot, key = head.strip().rpartition(".")
    if dot and not allow_method:
        raise ValueError(f"--param expects {form}, got {item!r}")
    key = key.strip().replace("-", "_")
    if not key.isidentifier():
        raise ValueError(f"--param expects {form}, got {item!r}")
    return (method.strip() or None) if dot else None, key, raw.strip()


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split ``text`` at ``sep`` outside square brackets; empty items are dropped."""
    items, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if depth < 0:
            raise ValueError(f"unbalanced brackets in {text!r}")
        if ch == sep and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise ValueError(f"unbalanced brackets in {text!r}")
    items.append(cur)
    return [i.strip() for i in items if i.strip()]


def parse_method_list(
    text: str | Sequence[str],
    known: Mapping[str, Mapping[str, Any]],
    assignments: Sequence[str] = (),
    resolve: Callable[[str], str] | None = None,
    all_names: Sequence[str] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """Method variants ``[(name, given parameters), ...]`` from a method list and assignments.

    Args:
        text: the method list (see the module doc), or several lists joined.
        known: every method name mapped to its parameters with defaults.
        assignments: ``[method.]key=value`` items (``--param``).
        resolve: maps a user-typed name to a key of ``known`` (raise ValueError if unknown);
            default: exact lookup.
        all_names: what ``all`` selects (default: every key of ``known``).

    Returns:
        Distinct variants in the order given. Raises ValueError for an unknown method or
        parameter, a method-scoped assignment whose method is not selected, an assignment no
        selected method takes, and an empty selection.
    """
    resolve = resolve or _exact(known)
    if not isinstance(text, str):
        text = ",".join(text)
    picked: list[tuple[str, dict[str, Any]]] = []
    for item in split_top_level(text):
        if item.lower() == "all":
            picked += [(n, {}) for n in (all_names if all_names is not None else known)]
            continue
        name, _, rest = item.partition("[")
        given: dict[str, Any] = {}
        if rest:
            if not rest.endswith("]"):
                raise ValueError(f"unbalanced brackets in {item!r}")
            for part in split_top_level(rest[:-1].replace(";", ",")):
                _, key, value = parse_assignment(part, allow_method=False)
                given[key] = value
        picked.append((resolve(name.strip()), given))
    if not picked:
        raise ValueError("no method selected")
    names = {n for n, _ in picked}
    scoped: dict[str, dict[str, Any]] = {}
    shared: dict[str, Any] = {}
    for item in assignments:
        method, key, value = parse_assignment(item)
        if method is None:
            if not any(key in known[n] for n in names):
                raise ValueError(
                    f"no selected method has a parameter {key!r} "
                    f"(selected: {', '.join(sorted(names))})"
                )
            shared[key] = value
            continue
        name = resolve(method)
        if name not in names:
            raise ValueError(f"--param given for {name}, which is not among the selected methods")
        scoped.setdefault(name, {})[key] = value
    out: list[tuple[str, dict[str, Any]]] = []
    for name, given in picked:
        params = {k: v for k, v in shared.items() if k in known[name]}
        params.update(scoped.get(name, {}))
        params.update(given)
        unknown = sorted(set(params) - set(known[name]))
        if unknown:
            raise ValueError(
                f"method {name!r} has no parameter {', '.join(unknown)}; its parameters: "
                f"{', '.join(known[name]) or '(none)'}"
            )
        if (name, params) not in out:
            out.append((name, params))
    return out


def _exact(known: Mapping[str, Any]) -> Callable[[str], str]:
    def resolve(name: str) -> str:
        key = name.strip().lower().replace("_", "-")
        if key not in known:
            raise ValueError(f"unknown method {name!r}; available: {', '.join(known)}")
        return key

    return resolve


def parse_int_list(text: str | Sequence[str], what: str = "--seeds") -> list[int]:
    """``"0,1,2"``, ``"0-4"`` (inclusive range) or a mix (``"0-2,7"``) to a list of integers,
    duplicates removed, order kept. Raises ValueError on anything else or an empty list."""
    if not isinstance(text, str):
        text = ",".join(text)
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        try:
            if dash and lo.strip():
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                values = list(range(a, b + 1))
            else:
                values = [int(part)]
        except ValueError:
            raise ValueError(
                f"{what} expects integers, comma-separated, or a range A-B; got {part!r}"
            ) from None
        out += [v for v in values if v not in out]
    if not out:
        raise ValueError(f"{what} is empty")
    return out
