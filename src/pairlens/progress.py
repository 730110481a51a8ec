"""Opt-in progress bars for long loops (the CLI turns them on; the library is quiet by default)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")
_enabled: ContextVar[bool] = ContextVar("pairlens_progress", default=False)


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[None]:
    """Within this context, :func:`track` shows tqdm progress bars."""
    token = _enabled.set(enabled)
    try:
        yield
    finally:
        _enabled.reset(token)


def track(items: Iterable[T], desc: str = "", total: int | None = None) -> Iterable[T]:
    """``items`` wrapped in a tqdm bar when progress bars are on and there is more than one step."""
    if not _enabled.get():
        return items
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if total is not None and total <= 1:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)
