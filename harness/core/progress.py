"""Whether long work shows progress bars: one switch for every layer (``ddbench run --quiet``
turns it off), so that a data source decoding 60000 images or a ZCA fit can show its progress
without being told through every call."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_SHOW: ContextVar[bool] = ContextVar("ddbench_show_progress", default=False)


@contextmanager
def showing_progress(show: bool) -> Iterator[None]:
    token = _SHOW.set(show)
    try:
        yield
    finally:
        _SHOW.reset(token)


def progress_bar(iterable: Iterable[T], **kwargs) -> Iterable[T]:
    """``tqdm(iterable, **kwargs)`` when progress is shown, else ``iterable`` itself."""
    if not _SHOW.get():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)
