"""Ranks that share a place within noise, bold best, paired per-seed comparisons, booktabs LaTeX:
from records whose per-seed means and spreads are chosen here, the tests' p-values recomputed
from their formulas (float64) with only the t distribution taken from scipy."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats

from conftest import make_record, typed
from harness.core.errors import DDBenchError
from harness.report.ranking import ON_MODELS, ON_SEEDS, Sample, compare, paired, rank, welch_p
from harness.report.tables import render_view
from harness.report.views.main import render
from harness.report.views.paired import paired_table

# Per-seed means, three seeds each: A clearly above every other; B and C within noise of each
# other; D clearly below B and C. Each seed evaluates two networks at mean +- 0.01.
MEANS = {"rat_bptt": (0.90, 0.91, 0.92), "tbptt": (0.80, 0.83, 0.77), "at_bptt": (0.81, 0.79, 0.82),
         "random_real": (0.60, 0.61, 0.62)}


def _records(means=MEANS, spread=0.01):
    return typed([make_record(m, seed=s, run_id=f"{m}-{s}", accs=(mu - spread, mu + spread),
                              outer_steps=0 if m == "random_real" else 10)
                  for m, mus in means.items() for s, mu in enumerate(mus)])


def _welch_reference(x, y) -> float:
    """Welch's t and Welch-Satterthwaite df from their formulas; p from the t distribution."""
    vx, vy = statistics.variance(x) / len(x), statistics.variance(y) / len(y)
    t = (statistics.fmean(x) - statistics.fmean(y)) / math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    return 2 * stats.t.sf(abs(t), df)


def test_welch_p_matches_its_formula_and_degenerate_cases_are_ties():
    x, y = [0.90, 0.91, 0.92], [0.80, 0.83, 0.77]
    assert welch_p(x, y) == pytest.approx(_welch_reference(x, y), rel=1e-12)
    assert welch_p(x, [0.5, 0.52, 0.55, 0.51]) == pytest.approx(_welch_reference(x, [0.5, 0.52, 0.55, 0.51]),
                                                                 rel=1e-12)
    assert math.isnan(welch_p([0.5], [0.6, 0.7]))  # one value: no spread to judge
    assert math.isnan(welch_p([0.5, 0.5], [0.5, 0.5]))
    a, b = Sample.of([[0.5]]), Sample.of([[0.6]])
    assert rank({"a": a, "b": b}).places["a"].tied  # cannot judge: a shared place, not a win


def test_clear_win_and_clear_tie_from_per_seed_means():
    samples = {m: Sample.of([[mu - 0.01, mu + 0.01] for mu in mus], range(3)) for m, mus in MEANS.items()}
    c = compare(samples["tbptt"], samples["at_bptt"])
    assert c.on == ON_SEEDS and c.p == pytest.approx(_welch_reference(MEANS["tbptt"], MEANS["at_bptt"]), rel=1e-12)
    assert c.p > 0.5  # the tie
    win = compare(samples["rat_bptt"], samples["tbptt"])
    assert win.p == pytest.approx(_welch_reference(MEANS["rat_bptt"], MEANS["tbptt"]), rel=1e-12) and win.p < 0.05
    ranking = rank(samples)
    assert {k: p.text for k, p in ranking.places.items()} == {"rat_bptt": "1", "tbptt": "=2", "at_bptt": "=2",
                                                              "random_real": "4"}
    assert ranking.order == ["rat_bptt", "at_bptt", "tbptt", "random_real"]  # by place, then mean
    assert ranking.tests == {ON_SEEDS} and "per-seed means" in ranking.footnote()


def test_the_main_table_shows_places_ties_and_bold_best():
    text = render(_records(), "github")
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in text.splitlines()
            if line.startswith("| ") and "IPC" not in line and "MiB" not in line and "no distillation" not in line}
    assert rows["rat_bptt"].startswith("1 **91.00 ± ") and rows["rat_bptt"].count("**") == 2  # best: bold
    assert rows["tbptt"].startswith("=2 80.00 ± ") and "**" not in rows["tbptt"]
    assert rows["at_bptt"].startswith("=2 80.67 ± ")
    assert rows["random_real"].startswith("4 61.00 ± ") and "(2x3)" in rows["random_real"]  # n: models x seeds
    assert "Welch t-test" in text and "per-seed means" in text and "evaluation noise only" not in text
    latex = render(_records(), "latex")
    assert r"1 \textbf{91.00 $\pm$ " in latex and r"=2 80.00 $\pm$ " in latex
    assert latex.count(r"\toprule") == 2 and latex.count(r"\midrule") == 2 and latex.count(r"\bottomrule") == 2
    assert r"random\_real" in latex and "random_real" not in latex.replace(r"random\_real", "")


def test_a_single_seed_is_compared_on_evaluation_noise_and_says_so():
    one_seed = {m: mus[:1] for m, mus in MEANS.items()}
    records = _records(one_seed, spread=0.002)
    samples = {m: Sample.of([[mus[0] - 0.002, mus[0] + 0.002]]) for m, mus in one_seed.items()}
    c = compare(samples["rat_bptt"], samples["tbptt"])
    x, y = samples["rat_bptt"].values, samples["tbptt"].values
    assert c.on == ON_MODELS and c.p == pytest.approx(_welch_reference(x, y), rel=1e-12) and c.p < 0.05
    text = render(records)
    assert "1 seed: evaluation noise only" in text and "per-seed means" not in text


def test_a_failed_row_has_no_place():
    diverged = make_record("bptt", run_id="d", status="diverged", accs=(0.1,))
    diverged["eval"].update(accuracy_mean=None, accuracy_std=None, accuracy_per_model=[])
    text = render(_records() + typed([diverged]))
    row = next(line for line in text.splitlines() if line.startswith("| bptt "))
    assert row.split("|")[2].strip() == "diverged"


def test_paired_differences_on_matched_seeds():
    a, b = Sample.of([[0.9], [0.8], [0.85]], [0, 1, 2]), Sample.of([[0.88], [0.77], [0.84]], [0, 1, 2])
    result = paired(a, b)
    diffs = [0.02, 0.03, 0.01]
    t = statistics.fmean(diffs) / (statistics.stdev(diffs) / math.sqrt(3))
    assert result.seeds == (0, 1, 2) and result.difference == pytest.approx(0.02)
    assert result.std == pytest.approx(statistics.stdev(diffs)) and result.p == pytest.approx(2 * stats.t.sf(t, 2))
    assert paired(a, Sample.of([[0.8]], [0])) is None  # one seed in common: nothing to pair
    assert paired(a, Sample.of([[0.8], [0.7]], [5, 6])) is None  # other seeds

    text = paired_table(_records())
    assert "vs best (rat_bptt)" in text and "vs random_real" in text
    tbptt = next(line for line in text.splitlines() if line.startswith("| tbptt "))
    assert "**-11.00 ± " in tbptt and "3 seeds" in tbptt  # 0.80 - 0.91 on average, every seed below
    one_seed = _records({m: mus[:1] for m, mus in MEANS.items()})
    assert paired_table(one_seed) == ""
    with pytest.raises(DDBenchError) as err:
        render_view(one_seed, "paired")
    assert "seeds" in str(err.value) and err.value.field == "--view"
