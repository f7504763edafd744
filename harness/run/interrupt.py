"""Preemption: SIGTERM (what Slurm, Kubernetes and Ray send) and SIGINT (Ctrl-C) stop a run at
once, and the runner checkpoints the last completed outer step before it exits.

Inside :func:`stop_on_signals` the two signals raise :class:`StopRequested` in the main thread,
wherever it is (mid-step included): the runner keeps the state of the last completed step in
memory, so the checkpoint it writes is never half a step. The CLI turns the exception into one
line and the exit status a shell expects (128 + the signal's number).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class StopRequested(BaseException):
    """A signal asked the run to stop (a ``BaseException``: no ``except Exception`` swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.reported = False  # whether a line already told the user what was kept

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


_requested: list[int] = []  # the signals received inside the block, in order


def raise_if_stop_requested() -> None:
    """Raise the :class:`StopRequested` a signal asked for when its own raise was lost: a signal
    that lands in a finalizer or ``__del__`` has its exception printed ("Exception ignored") and
    swallowed by Python. The runner calls this between outer steps."""
    if _requested:
        raise StopRequested(_requested[-1])


@contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Raise :class:`StopRequested` on ``signals`` inside the block (main thread only; elsewhere,
    and for a Ray worker's own threads, the block runs with the handlers it found)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        _requested.append(signum)
        raise StopRequested(signum)

    _requested.clear()
    saved = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        _requested.clear()
        for s, old in saved.items():
            signal.signal(s, old)
