"""What a run shows while it runs: a progress bar per cell (steps, or seconds for a run bounded
by minutes), the inner steps of a long outer step, a long part of an analysis with its own
ETA (``CellProgress.work``), the warning when a cell will far outlast its budget, and one line
per finished cell.

A cell reports through a :class:`CellProgress`; the local executor shows it with tqdm, the Ray
executor forwards it to the driver (``harness.run.ray_executor``), ``--quiet`` shows nothing.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm

INNER_AFTER_S = 2.0  # show an outer step's inner steps once outer steps take this long
WARN_FACTOR = 2.0  # warn when the step budget needs this many times the minutes budget
WARN_UNBOUNDED_HOURS = 12.0  # ... or, without a minutes budget, more than this


@dataclass
class CellProgress:
    """Progress of one cell; this base class shows nothing (``--quiet``)."""

    desc: str = ""
    total: int = 0  # outer steps; 0: no step count (a minutes budget stops the cell)
    limit_s: float | None = None
    work_clock: "WorkClock | None" = None  # the long part of an analysis now reported by `work`

    def begin(self, desc: str, total: int, initial: int, limit_s: float | None) -> None:
        """The cell starts (again: first for its setup, with no steps known, then for its steps)."""
        self.desc, self.total, self.limit_s = desc, total, limit_s

    def step(self, step: int, elapsed: float, metrics: dict[str, float]) -> None:
        """Outer step ``step`` is done, ``elapsed`` seconds of distillation so far."""

    def inner(self, done: int, total: int, phase: str) -> None:
        """Inside a long outer step: ``done`` of ``total`` inner steps of ``phase``."""

    def phase(self, text: str) -> None:
        """The cell moved on (``evaluating``, ``analysing``)."""

    def work(self, what: str, done: int, total: int) -> None:
        """A long part of an analysis (the full-data training): ``done`` of ``total`` units, shown as
        a phase with its own ETA (every sink that shows phases shows it), a few redraws a second
        at most."""
        if self.work_clock is None or self.work_clock.what != what or done < self.work_clock.start_done:
            self.work_clock = WorkClock(what, done, time.perf_counter())
        clock = self.work_clock
        now = time.perf_counter()
        if now - clock.last_shown > 0.5 or done == total:
            clock.last_shown = now
            self.phase(clock.text(done, total, now))

    def end(self) -> None:
        pass


@dataclass
class WorkClock:
    """Elapsed time of one long part: its rate so far gives its ETA."""

    what: str
    start_done: int  # units done when it started being reported
    start: float  # time.perf_counter() then
    last_shown: float = float("-inf")  # when a phase text was last shown (the first is always shown)

    def text(self, done: int, total: int, now: float) -> str:
        """``what done/total, ETA 3 min`` (``ETA ?`` before the first unit is done)."""
        rate = (done - self.start_done) / (now - self.start) if now > self.start else 0.0
        eta = human_seconds((total - done) / rate) if rate > 0 else "?"
        return f"{self.what} {done}/{total}, ETA {eta}"


@dataclass
class BarProgress(CellProgress):
    """A tqdm bar: steps done of the step budget, or, with a minutes budget, seconds of it (the
    steps done in the postfix: a run bounded by 10 minutes does not show an ETA of 200 hours)."""

    bar: tqdm | None = None
    step_count: int = 0
    last_inner: float = field(default=0.0)

    def begin(self, desc, total, initial, limit_s):
        super().begin(desc, total, initial, limit_s)
        self.end()  # the setup's bar
        self.step_count = initial
        by_time = limit_s is not None  # a minutes budget: the bar counts its seconds (steps in the postfix)
        self.bar = tqdm(total=int(limit_s) if by_time else total, initial=0 if by_time else initial, desc=desc,
                        unit="s" if by_time else "step", leave=False, dynamic_ncols=True,
                        bar_format=("{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s "
                                    "[{elapsed}<{remaining}{postfix}]") if by_time else None)

    def step(self, step, elapsed, metrics):
        self.step_count = step + 1
        post = {k: f"{v:.3g}" for k, v in metrics.items() if k in ("outer_loss", "outer_acc")}
        if self.limit_s is not None:
            post["step"] = f"{step + 1}" + (f"/{self.total}" if self.total else "")
            self.bar.n = min(elapsed, self.limit_s)
            self.bar.set_postfix(post, refresh=True)
        else:
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)

    def inner(self, done, total, phase):
        now = time.perf_counter()
        if now - self.last_inner > 0.5 or done == total:  # a few redraws a second at most
            self.last_inner = now
            self.bar.set_postfix_str(f"step {self.step_count + 1}: {phase} {done}/{total}")

    def phase(self, text):
        self.bar.set_postfix_str(text)

    def end(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def budget_warning(desc: str, device: str, step_times: list[float], done: int, total: int,
                   limit_s: float | None) -> str | None:
    """A one-line warning when the remaining steps will far outlast the cell's budget (minutes),
    or, without one, take more than :data:`WARN_UNBOUNDED_HOURS`; None otherwise."""
    if not step_times or total == 0:
        return None
    per_step = statistics.median(step_times)
    need = per_step * max(0, total - done)
    text = f"{desc}: {per_step:.3g} s per outer step on {device}; {total} steps need ~{human_seconds(need)}"
    if limit_s is not None and need > WARN_FACTOR * limit_s:
        return f"{text}; its minutes budget stops it after ~{int(limit_s / per_step)} steps"
    if limit_s is None and need > WARN_UNBOUNDED_HOURS * 3600:
        return f"{text} (no minutes budget bounds it; ddbench plan estimates a suite first)"
    return None


def human_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def say(line: str) -> None:
    """One line for the user, without breaking a live progress bar."""
    tqdm.write(line, file=sys.stderr)
