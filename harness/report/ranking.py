"""Ranks that share a place when a difference is within noise, and paired per-seed comparisons.

A row of a comparison (a method's config in one comparable group) is a :class:`Sample`: per
distillation seed, the test accuracies of the networks evaluated on that seed's set. Two rows
are compared by a two-sided Welch t-test (``scipy.stats.ttest_ind(equal_var=False)``) at
``alpha`` = 0.05:

- on **per-seed means** when both rows have >= 2 seeds: the distillation's own noise (its seed)
  and the evaluation's are both in the spread, so a difference is one another distillation
  would likely reproduce;
- on the **pooled per-model accuracies** when a row has a single seed. Those networks all train
  on one distilled set: they are independent draws of the *evaluation* only (initialization,
  augmentation, batches), not of the distillation. A difference found this way says that the
  two sets differ beyond evaluation noise, not that the methods would (``1 seed: evaluation
  noise only``, said wherever it is used).

A row's **rank** is 1 + the number of rows significantly better than it; rows with the same
rank share the place (shown ``=2``); rank 1 (``best``: bold in the tables) is every row that no
other row beats. This is defined pair by pair, so it needs no order of comparison; the rows
are listed by (rank, mean). No correction for multiple comparisons: a tie says the data cannot
separate two rows at 5% in one test, a step in rank that one test can. A pair the test cannot
judge (fewer than two values on a side, or no spread at all on either side with equal means)
is a tie. A row without an accuracy (a diverged or failed run) has no rank.

Paired comparisons (:func:`paired`): where two rows ran the same distillation seeds, the
per-seed differences of their means, with a paired t-test (``scipy.stats.ttest_rel``): the
seed's shared randomness (its real-data init, its batches) cancels in each difference.
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass
from typing import Generic, Hashable, Mapping, Sequence, TypeVar

ALPHA = 0.05
ON_SEEDS = "per-seed means"
ON_MODELS = "per-model accuracies (1 seed: evaluation noise only)"

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Sample:
    """A row's accuracies: ``seeds[i]`` holds the per-model accuracies of seed ``seed_ids[i]``."""

    seeds: tuple[tuple[float, ...], ...]
    seed_ids: tuple[int, ...] = ()

    @classmethod
    def of(cls, per_seed: Sequence[Sequence[float]], seed_ids: Sequence[int] = ()) -> "Sample":
        return cls(tuple(tuple(map(float, accs)) for accs in per_seed), tuple(seed_ids))

    @property
    def values(self) -> list[float]:
        """Every network's accuracy, pooled over the seeds."""
        return [a for accs in self.seeds for a in accs]

    @property
    def seed_means(self) -> list[float]:
        return [statistics.fmean(accs) for accs in self.seeds]

    @property
    def mean(self) -> float:
        """The pooled mean (what the tables show)."""
        return statistics.fmean(self.values)


@dataclass(frozen=True)
class Comparison:
    on: str  # ON_SEEDS or ON_MODELS
    difference: float  # mean of a's test values - mean of b's
    p: float  # two-sided; nan when the test cannot judge

    def a_better(self, alpha: float = ALPHA) -> bool:
        return self.difference > 0 and self.p < alpha

    def b_better(self, alpha: float = ALPHA) -> bool:
        return self.difference < 0 and self.p < alpha


def welch_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided p of Welch's t-test; nan with fewer than two values on a side or no spread and equal means."""
    if len(x) < 2 or len(y) < 2:
        return math.nan
    from scipy import stats

    with warnings.catch_warnings():  # zero variance: scipy warns and returns inf (p 0) or nan
        warnings.simplefilter("ignore")
        return float(stats.ttest_ind(list(x), list(y), equal_var=False).pvalue)


def compare(a: Sample, b: Sample) -> Comparison:
    """``a`` against ``b``: Welch on per-seed means when both have >= 2 seeds, else on per-model accuracies."""
    if len(a.seeds) >= 2 and len(b.seeds) >= 2:
        x, y, on = a.seed_means, b.seed_means, ON_SEEDS
    else:
        x, y, on = a.values, b.values, ON_MODELS
    return Comparison(on, statistics.fmean(x) - statistics.fmean(y), welch_p(x, y))


@dataclass(frozen=True)
class Place:
    rank: int
    tied: bool  # another row has the same rank
    best: bool  # rank 1: no row is significantly better

    @property
    def text(self) -> str:
        return f"={self.rank}" if self.tied else str(self.rank)


@dataclass(frozen=True)
class Ranking(Generic[K]):
    places: dict[K, Place]  # the rows with an accuracy
    order: list[K]  # by (rank, -mean); rows without an accuracy last, as given
    tests: frozenset[str]  # ON_SEEDS / ON_MODELS: the tests some pair of rows used
    alpha: float = ALPHA

    @property
    def compared(self) -> bool:
        """Whether there was anything to rank (two or more rows with an accuracy)."""
        return len(self.places) > 1

    def footnote(self) -> str:
        """What the ranks mean, naming only the tests this ranking used."""
        return rank_footnote(self.tests, self.alpha)


def rank_footnote(tests: frozenset[str] | set[str], alpha: float = ALPHA, ranks: bool = True) -> str:
    """What ranks (or, ``ranks=False``, bold alone) mean under ``tests``; ``""`` without tests."""
    if not tests:
        return ""
    on = []
    if ON_SEEDS in tests:
        on.append("on per-seed means where both rows have >= 2 distillation seeds")
    if ON_MODELS in tests:
        on.append("on the per-model accuracies where a row has 1 seed (1 seed: evaluation noise only, "
                  "not a new distillation)")
    test = f"two-sided Welch t-test, alpha {alpha:g}, {'; '.join(on)}; no multiple-comparison correction"
    if not ranks:
        return f"Bold: no row of the column is significantly better ({test})."
    return f"Rank: 1 + the rows significantly better ({test}); =k: a shared place; bold: rank 1."


def rank(samples: Mapping[K, Sample | None], alpha: float = ALPHA) -> Ranking[K]:
    """Places of the rows of ``samples`` (``None`` or empty: no accuracy, no place)."""
    ok = {k: s for k, s in samples.items() if s is not None and s.values}
    beaten_by = {k: 0 for k in ok}
    tests: set[str] = set()
    keys = list(ok)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            c = compare(ok[a], ok[b])
            tests.add(c.on)
            if c.a_better(alpha):
                beaten_by[b] += 1
            elif c.b_better(alpha):
                beaten_by[a] += 1
    ranks = {k: 1 + n for k, n in beaten_by.items()}
    counts: dict[int, int] = {}
    for r in ranks.values():
        counts[r] = counts.get(r, 0) + 1
    places = {k: Place(r, counts[r] > 1, r == 1) for k, r in ranks.items()}
    position = {k: i for i, k in enumerate(samples)}
    order = sorted(ok, key=lambda k: (ranks[k], -ok[k].mean, position[k]))
    order += [k for k in samples if k not in ok]
    return Ranking(places, order, frozenset(tests), alpha)


@dataclass(frozen=True)
class Paired:
    seeds: tuple[int, ...]  # the seeds both rows ran
    difference: float  # mean over those seeds of (a's seed mean - b's)
    std: float  # sample std of the per-seed differences
    p: float  # paired t-test, two-sided (nan: all differences equal and zero)


def paired(a: Sample, b: Sample) -> Paired | None:
    """``a`` - ``b`` on the seeds both ran (matched by seed id); ``None`` with fewer than two."""
    ma, mb = dict(zip(a.seed_ids, a.seed_means)), dict(zip(b.seed_ids, b.seed_means))
    common = tuple(sorted(set(ma) & set(mb)))
    if len(common) < 2 or len(ma) != len(a.seeds) or len(mb) != len(b.seeds):  # ambiguous seed ids: not paired
        return None
    diffs = [ma[s] - mb[s] for s in common]
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(stats.ttest_rel([ma[s] for s in common], [mb[s] for s in common]).pvalue)
    return Paired(common, statistics.fmean(diffs), statistics.stdev(diffs), p)
