"""Margins over the best baseline (issue 19.4): from records whose per-seed means are chosen here,
the best baseline found by its records (no outer step), each distilled row's margin and its
Welch p recomputed from the formula (float64; only the t distribution from scipy), in the
`margins` view and on the site's rows."""

from __future__ import annotations

import csv
import io
import math
import statistics

import pytest
from scipy import stats

from conftest import make_record, typed
from harness.core.errors import DDBenchError
from harness.report.compare import comparable_groups
from harness.report.margins import group_margins, is_baseline
from harness.report.ranking import ON_MODELS, ON_SEEDS
from harness.report.site.rows import leaderboard_rows, margin_text
from harness.report.tables import render_view
from harness.report.views.margins import margins_table

# Per-seed means, three seeds, two networks each at mean +- 0.01. herding is the best baseline;
# rat_bptt clearly above it, tbptt within noise of it, bptt clearly below.
MEANS = {"random_real": (0.55, 0.56, 0.57), "herding": (0.60, 0.61, 0.62), "rat_bptt": (0.70, 0.71, 0.72),
         "tbptt": (0.61, 0.59, 0.63), "bptt": (0.50, 0.51, 0.52)}
BASELINES = ("random_real", "herding")


def _records(means=MEANS, spread=0.01, **extra):
    return typed([make_record(m, seed=s, run_id=f"{m}-{s}-{sorted(extra.items())}", accs=(mu - spread, mu + spread),
                              outer_steps=0 if m in BASELINES else 10, **extra)
                  for m, mus in means.items() for s, mu in enumerate(mus)])


def _welch_p(x, y) -> float:
    vx, vy = statistics.variance(x) / len(x), statistics.variance(y) / len(y)
    t = (statistics.fmean(x) - statistics.fmean(y)) / math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    return 2 * stats.t.sf(abs(t), df)


def test_clear_win_tie_and_loss_against_the_best_baseline():
    (group,) = comparable_groups(_records())
    m = group_margins(group.rows)
    assert set(m.baselines) == {"random_real", "herding"} and m.best == "herding"  # by records, the higher mean
    assert m.best_mean == pytest.approx(0.61) and set(m.margins) == {"rat_bptt", "tbptt", "bptt"}
    win, tie, loss = m.margins["rat_bptt"], m.margins["tbptt"], m.margins["bptt"]
    assert win.margin == pytest.approx(0.10) and win.comparison.on == ON_SEEDS
    assert win.comparison.p == pytest.approx(_welch_p(MEANS["rat_bptt"], MEANS["herding"]), rel=1e-12)
    assert win.verdict == "above" and win.points() == "+10.00" and not win.one_seed
    assert tie.verdict == "within noise" and tie.comparison.p > 0.5
    assert tie.comparison.p == pytest.approx(_welch_p(MEANS["tbptt"], MEANS["herding"]), rel=1e-12)
    assert loss.verdict == "below" and loss.points() == "-10.00"
    assert win.text().startswith("+10.00 vs best coreset (herding), p ")


def test_one_seed_is_evaluation_noise_and_says_so():
    one = {k: v[:1] for k, v in MEANS.items()}
    (group,) = comparable_groups(_records(one, spread=0.002))
    win = group_margins(group.rows).margins["rat_bptt"]
    x, y = [0.698, 0.702], [0.598, 0.602]
    assert win.comparison.on == ON_MODELS and win.one_seed
    assert win.comparison.p == pytest.approx(_welch_p(x, y), rel=1e-9) and win.verdict == "above"
    assert "1 seed" in win.text()


def test_no_baseline_failed_rows_and_label_kinds():
    only_distilled = {k: v for k, v in MEANS.items() if k not in BASELINES}
    (group,) = comparable_groups(_records(only_distilled))
    assert group_margins(group.rows).best is None and group_margins(group.rows).margins == {}
    failed = make_record("herding", run_id="h-failed", status="failed", outer_steps=0, accs=(0.1,))
    failed["eval"].update(accuracy_mean=None, accuracy_std=None, accuracy_per_model=[])
    records = _records({"herding": (0.6,), "rat_bptt": (0.7,)}) + typed([failed])
    (group,) = comparable_groups(records)
    assert is_baseline(group.rows["herding"]) and group_margins(group.rows).best is None  # no finished baseline
    # A teacher-labelled random subset above every hard-label row is another group: never the hard rows' baseline.
    teacher = _records({"random_real": (0.95, 0.96, 0.97)}, label_kind="teacher")
    groups = comparable_groups(_records() + teacher)
    hard = next(g for g in groups if g.setting["labels"] == "hard")
    assert group_margins(hard.rows).best == "herding"
    soft = next(g for g in groups if g.setting["labels"] == "teacher")
    assert group_margins(soft.rows).margins == {}  # a baseline alone


def test_the_margins_view_and_the_site_rows():
    records = _records()
    text = margins_table(records)
    assert text == render_view(records, "margins")
    row = next(line for line in text.splitlines() if line.startswith("| digits IPC 1"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = [c.strip() for c in next(line for line in text.splitlines() if line.startswith("| comparable"))
              .strip("|").split("|")]
    by = dict(zip(header, cells))
    best = by["best coreset (accuracy %)"]
    assert best.startswith("herding 61.00 ± ") and best.endswith("(2x3)")
    assert by["rat_bptt"].startswith("**+10.00** (p ") and by["bptt"].startswith("-10.00 (p ")
    assert by["tbptt"].startswith("+0.00 (within noise, p ")
    assert "per-seed means" in text and "evaluation noise only" not in text
    latex = margins_table(records, "latex")
    assert r"\textbf{+10.00}" in latex and r"rat\_bptt" in latex and "rat_bptt" not in latex.replace(r"rat\_bptt", "")
    tidy = {r["method"]: r for r in csv.DictReader(io.StringIO(margins_table(records, "csv")))}
    assert set(tidy) == {"rat_bptt", "tbptt", "bptt"} and tidy["rat_bptt"]["baseline"] == "herding"
    assert float(tidy["rat_bptt"]["margin"]) == pytest.approx(0.10) and tidy["bptt"]["verdict"] == "below"
    # The site's rows carry the same margins.
    rows = {r.name: r for r in leaderboard_rows(records)}
    assert rows["rat_bptt"].margin.comparison.p == pytest.approx(_welch_p(MEANS["rat_bptt"], MEANS["herding"]))
    assert rows["herding"].baseline and margin_text(rows["herding"]) == "best coreset"
    assert margin_text(rows["random_real"]) == "coreset" and margin_text(rows["tbptt"]).endswith("(within noise)")
    # Nothing to compare: the view is empty, and asked for alone it says what would fill it.
    alone = _records({"rat_bptt": (0.7, 0.71)})
    assert margins_table(alone) == ""
    with pytest.raises(DDBenchError) as err:
        render_view(alone, "margins")
    assert err.value.field == "--view" and "baseline" in str(err.value)
