"""Opt-in progress bars for long loops (the CLI turns them on; the library is quiet by default).

A long command shows **one** overall bar with an ETA (:func:`overall`). Loops inside the work
(a method's batches, say) use :func:`track`; while an overall bar of several steps is active they
stay silent, so the screen holds one bar, not a stack of them. When the overall work is a single
step (one method on one pair), the inner loop's bar is shown instead, since it is the only one
with something to measure. Bars go to stderr (stdout stays clean for ``--json``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")
_enabled: ContextVar[bool] = ContextVar("pairlens_progress", default=False)
_outer: ContextVar[Any] = ContextVar("pairlens_progress_outer", default=None)


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[None]:
    """Within this context, :func:`overall` and :func:`track` show tqdm progress bars."""
    token = _enabled.set(enabled)
    try:
        yield
    finally:
        _enabled.reset(token)


class _Silent:
    """Stands in for a bar when bars are off."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def set_description_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def write(self, s: str) -> None:
        import sys

        print(s, file=sys.stderr, flush=True)


@contextmanager
def overall(total: int, desc: str, unit: str = "it") -> Iterator[Any]:
    """The one bar of a long piece of work: ``total`` steps, updated with ``bar.update(n)``.

    Yields a tqdm bar, or a silent stand-in when bars are off, ``total`` <= 1 or an overall bar
    is already active (nested work is counted by the outer bar). Inner :func:`track` loops are
    silent while a bar is active.
    """
    if not _enabled.get() or total <= 1 or _outer.get() is not None:
        yield _Silent()  # off, trivial, or inside an outer bar that already counts this work
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, smoothing=0.1)
    token = _outer.set(bar)
    try:
        yield bar
    finally:
        _outer.reset(token)
        bar.close()


def active_bar() -> Any:
    """The overall bar currently shown, or None."""
    return _outer.get()


def note(message: str) -> None:
    """A progress message on stderr (above the bar, if one is shown); silent when bars are off."""
    import sys

    if not _enabled.get():
        return
    bar = _outer.get()
    if bar is not None:
        bar.write(message, file=sys.stderr)  # tqdm.write's default is stdout (--json's)
    else:
        print(message, file=sys.stderr, flush=True)


def track(items: Iterable[T], desc: str = "", total: int | None = None) -> Iterable[T]:
    """``items`` wrapped in a transient tqdm bar when bars are on, no overall bar is active and
    there is more than one step."""
    if not _enabled.get() or _outer.get() is not None:
        return items
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if total is not None and total <= 1:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)
