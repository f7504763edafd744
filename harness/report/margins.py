"""Margins over the best baseline: every distilled row beside the best cheap alternative of its group.

Within a comparable group (:mod:`harness.report.compare`: one dataset, IPC, setting and label
kind; hard- and soft-label rows are never in one group), the **baselines** are the rows whose
records took no outer step (``distill.outer_steps == 0``: the selection methods
``random_real``, ``herding``, ``kcenter``, ``forgetting``, whatever their labels); every other
row is **distilled**. The **best baseline** is the finished baseline row of the highest pooled
mean accuracy (ties by name). A distilled row's **margin** is its pooled mean minus the best
baseline's (the numbers the tables show, in accuracy units: x 100 for points), tested as the
ranks are (:func:`harness.report.ranking.compare`): a two-sided Welch t-test on per-seed means
when both rows have >= 2 distillation seeds, else on the per-model accuracies (``1 seed:
evaluation noise only``: the networks of one distilled set differ by evaluation randomness
only). A margin is ``above`` or ``below`` the baseline when the test rejects at ``alpha``,
else ``within noise`` (also when the test cannot judge: a single value on a side).

A row that did not finish (diverged, failed) has no margin; a group without a finished
baseline has none either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from harness.report.compare import sample_of
from harness.report.ranking import ALPHA, ON_MODELS, ON_SEEDS, Comparison, compare
from harness.report.schema import RunRecord

# The registry's selection methods (what a baseline usually is); a row is a baseline by its
# records (no outer step), not by this list.
SELECTION_METHODS = ("random_real", "herding", "kcenter", "forgetting")
VS = "vs best coreset"  # how a margin is named in every table


def is_baseline(runs: Sequence[RunRecord]) -> bool:
    """Whether a row's records took no outer step (a selection of real images, no distillation)."""
    return bool(runs) and all(r.distill.outer_steps == 0 for r in runs)


@dataclass(frozen=True)
class Margin:
    """One distilled row against its group's best baseline."""

    row: str
    baseline: str  # the best baseline's row name
    margin: float  # pooled mean of the row - pooled mean of the baseline (accuracy, not points)
    comparison: Comparison  # the test: on per-seed means or per-model accuracies, its p
    alpha: float = ALPHA

    @property
    def verdict(self) -> str:
        """``above``, ``below`` or ``within noise`` (at ``alpha``; a test that cannot judge: within noise)."""
        if self.comparison.a_better(self.alpha):
            return "above"
        if self.comparison.b_better(self.alpha):
            return "below"
        return "within noise"

    @property
    def one_seed(self) -> bool:
        """Tested on the per-model accuracies of a single seed: evaluation noise only."""
        return self.comparison.on == ON_MODELS

    def points(self) -> str:
        """``+3.20`` (percentage points)."""
        return f"{100 * self.margin:+.2f}"

    def p_text(self) -> str:
        """``p 0.003`` (``p n/a`` when the test cannot judge), with ``1 seed`` when it is evaluation noise only."""
        p = "p n/a" if math.isnan(self.comparison.p) else f"p {self.comparison.p:.2g}"
        return p + (", 1 seed" if self.one_seed else "")

    def text(self) -> str:
        """``+3.20 vs best coreset (herding), p 0.003``: the whole claim in one line."""
        return f"{self.points()} {VS} ({self.baseline}), {self.p_text()}"


@dataclass(frozen=True)
class GroupMargins:
    """A group's baselines, its best baseline and every distilled row's margin over it."""

    baselines: tuple[str, ...]  # every baseline row, finished or not
    best: str | None  # the best finished baseline; None: no margins
    best_mean: float | None
    margins: dict[str, Margin]  # distilled row -> its margin (finished rows only)

    @property
    def tests(self) -> frozenset[str]:
        return frozenset(m.comparison.on for m in self.margins.values())


def group_margins(rows: Mapping[str, Sequence[RunRecord]], alpha: float = ALPHA) -> GroupMargins:
    """Margins of the distilled rows of one comparable group (``rows``: row name -> its seeds' records)."""
    baselines = tuple(name for name, runs in rows.items() if is_baseline(runs))
    samples = {name: sample_of(list(runs)) for name, runs in rows.items()}
    finished = [name for name in baselines if samples[name] is not None and samples[name].values]
    if not finished:
        return GroupMargins(baselines, None, None, {})
    best = min(finished, key=lambda name: (-samples[name].mean, name))
    reference = samples[best]
    margins = {}
    for name in rows:
        sample = samples[name]
        if name in baselines or sample is None or not sample.values:
            continue
        margins[name] = Margin(name, best, sample.mean - reference.mean, compare(sample, reference), alpha)
    return GroupMargins(baselines, best, reference.mean, margins)


def margins_footnote(tests: frozenset[str] | set[str], alpha: float = ALPHA) -> str:
    """What a margin and its p mean, naming only the tests used; ``""`` without margins."""
    if not tests:
        return ""
    on = []
    if ON_SEEDS in tests:
        on.append("on per-seed means where both rows have >= 2 distillation seeds")
    if ON_MODELS in tests:
        on.append("on the per-model accuracies where a row has 1 seed ('1 seed': evaluation noise only, "
                  "not a new distillation)")
    return (f"Margin: the row's pooled mean minus the best baseline's (percentage points; baselines: the rows "
            f"that took no outer step, e.g. {', '.join(SELECTION_METHODS)}), two-sided Welch t-test, "
            f"alpha {alpha:g}, {'; '.join(on)}.")

