"""Comparison tables rendered from hand-built records (expected cells computed from the same
fixtures, never typed as results)."""

from __future__ import annotations

import csv
import io
import re
import statistics

import pytest

from conftest import make_record, typed
from harness.core.errors import DDBenchError
from harness.report.tables import (BASELINE, FORMATS, bold, check_format, latex_text, method_order, pm, pooled,
                                   render_view, summarize, tabulate_rows)
from harness.report.views.main import render


def _records() -> list:
    return typed([
        # rat_bptt, digits IPC 1: two seeds with different numbers of models (pooled, not averaged)
        make_record("rat_bptt", "digits", 1, seed=0, accs=(0.5, 0.7), seconds_per_step=0.1, peak=100 * 2**20),
        make_record("rat_bptt", "digits", 1, seed=1, accs=(0.9,), seconds_per_step=0.3, peak=300 * 2**20),
        make_record("rat_bptt", "digits", 10, accs=(0.8, 0.82)),
        make_record("bptt", "digits", 1, accs=(0.4, 0.6)),
        make_record("random_real", "digits", 1, accs=(0.3, 0.31), outer_steps=0, seconds_per_step=0.0),
        make_record("random_real", "digits", 10, accs=(0.6, 0.62), outer_steps=0, seconds_per_step=0.0),
        make_record("random_real", "mnist", 1, accs=(0.6, 0.64), outer_steps=0, seconds_per_step=0.0),
    ])


def _table_rows(text: str) -> dict[str, list[str]]:
    """A github table as {first cell: other cells}."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("|") and not set(line) <= set("|-: "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def _value(cell: str) -> str:
    """An accuracy cell without its rank (``=1 ``) and bold: ``61.00 ± 1.00 (2x1, 10 steps)``."""
    return re.sub(r"^=?\d+ ", "", cell).replace("**", "")


def _pooled(records, method, dataset, ipc):
    accs = [a for r in records if (r["method"], r["dataset"], r["ipc"]) == (method, dataset, ipc)
            for a in r["eval"]["accuracy_per_model"]]
    return 100 * statistics.fmean(accs), 100 * statistics.pstdev(accs)


def _behind(records, method, dataset, ipc) -> str:
    """What a cell says stands behind its number: models x seeds (or the totals), outer steps."""
    rs = [r for r in records if (r["method"], r["dataset"], r["ipc"]) == (method, dataset, ipc)]
    models = {len(r["eval"]["accuracy_per_model"]) for r in rs}
    count = f"{models.pop()}x{len(rs)}" if len(models) == 1 else (
        f"{sum(len(r['eval']['accuracy_per_model']) for r in rs)} models, {len(rs)} seeds")
    steps = statistics.median(r["distill"]["outer_steps"] for r in rs)
    return f"({count}, {steps:g} steps)" if steps else f"({count})"


def test_accuracy_table_layout_baseline_first_and_missing_cells():
    records = _records()
    accuracy = render(records, "github").split("Distillation cost")[0]
    rows = _table_rows(accuracy)
    assert list(rows)[0] == "method"
    assert rows["method"] == ["digits IPC 1", "digits IPC 10", "mnist IPC 1"]
    assert list(rows)[1:] == ["random_real", "bptt", "rat_bptt"]  # baseline first, then by name
    assert rows["bptt"][1] == "-" and rows["bptt"][2] == "-"
    assert rows["rat_bptt"][2] == "-"
    for method, cells in list(rows.items())[1:]:
        for cell, (d, k) in zip(cells, [("digits", 1), ("digits", 10), ("mnist", 1)]):
            if cell != "-":
                mean, std = _pooled(records, method, d, k)
                assert _value(cell) == f"{mean:.2f} ± {std:.2f} {_behind(records, method, d, k)}"


def test_seeds_are_pooled_over_models():
    records = _records()
    cell = _value(_table_rows(render(records, "github").split("Distillation cost")[0])["rat_bptt"][0])
    pooled = statistics.fmean([0.5, 0.7, 0.9])
    mean_of_means = statistics.fmean([0.6, 0.9])
    assert cell.startswith(f"{100 * pooled:.2f} ± ")
    assert not cell.startswith(f"{100 * mean_of_means:.2f}")
    s = summarize([r for r in records if r["method"] == "rat_bptt" and r["ipc"] == 1])
    assert (s["n_models"], s["n_seeds"]) == (3, 2)
    assert s["accuracy_std"] == pytest.approx(statistics.pstdev([0.5, 0.7, 0.9]))


def test_cost_table_medians_and_no_distillation():
    records = _records()
    cost = _table_rows(render(records, "github").split("Distillation cost")[1])
    # Two seeds: the median of 100 and 300 MiB, of 0.1 and 0.3 s/step.
    assert cost["rat_bptt"][0] == f"{200:.0f} MiB, {0.2:.3f} s/step"
    assert cost["random_real"] == ["no distillation"] * 3
    assert cost["bptt"][1] == "-"


def test_latex_escapes_names_and_uses_pm():
    latex = render(_records(), "latex")
    assert r"\begin{tabular}" in latex and r"\end{tabular}" in latex
    assert r"$\pm$" in latex and "±" not in latex
    assert r"random\_real" in latex and r"rat\_bptt" in latex
    assert "random_real" not in latex.replace(r"random\_real", "")  # every underscore escaped
    mean, std = _pooled(_records(), "bptt", "digits", 1)
    assert f"{mean:.2f} $\\pm$ {std:.2f}" in latex


def test_csv_has_one_row_per_cell():
    records = _records()
    rows = list(csv.DictReader(io.StringIO(render(records, "csv"))))
    cells = {(r["method"], r["dataset"], r["ipc"]) for r in records}
    assert len(rows) == len(cells)
    assert {(r["method"], r["dataset"], int(r["ipc"])) for r in rows} == cells
    assert [r["method"] for r in rows if (r["dataset"], r["ipc"]) == ("digits", "1")] == [
        "random_real", "bptt", "rat_bptt"]
    for row in rows:
        mean, std = _pooled(records, row["method"], row["dataset"], int(row["ipc"]))
        assert 100 * float(row["accuracy_mean"]) == pytest.approx(mean)
        assert 100 * float(row["accuracy_std"]) == pytest.approx(std)
    assert next(r for r in rows if r["method"] == "rat_bptt" and r["ipc"] == "1")["n_seeds"] == "2"


def test_devices_and_memory_kind_are_named():
    records = _records() + typed([make_record("bptt", "mnist", 1, device_name="Other GPU")])
    text = render(records, "github")
    assert "Test CPU" in text and "Other GPU" in text and "cpu_peak_rss" in text


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="github"):
        render(_records(), "html")


# ---------------------------------------------------------------------------- the shared helpers


def test_shared_helpers():
    assert FORMATS == ("github", "latex", "csv") and BASELINE == "random_real"
    assert method_order(["rat_bptt", "bptt", "random_real", "bptt"]) == ["random_real", "bptt", "rat_bptt"]
    assert (pm("latex"), pm("github"), pm("csv")) == (r" $\pm$ ", " ± ", " ± ")
    assert latex_text("random_real & 50% #1 {x} $y$ ~^\\") == (
        r"random\_real \& 50\% \#1 \{x\} \$y\$ \textasciitilde{}\textasciicircum{}\textbackslash{}")
    assert latex_text("random_real", "latex") == r"random\_real"
    assert latex_text("random_real", "github") == latex_text("random_real", "csv") == "random_real"
    assert pooled([]) is None and pooled(iter([])) is None
    assert pooled([0.5]) == (0.5, 0.0)
    mean, std = pooled([0.5, 0.7, 0.9])
    assert (mean, std) == (pytest.approx(0.7), pytest.approx(statistics.pstdev([0.5, 0.7, 0.9])))
    latex = tabulate_rows(["method", "a"], [[r"random\_real", r"1.00 $\pm$ 0.10"]], "latex")
    assert r"random\_real & 1.00 $\pm$ 0.10" in latex and r"\begin{tabular}" in latex
    assert latex.splitlines() == [r"\begin{tabular}{ll}", r"\toprule", r"method & a \\", r"\midrule",
                                  r"random\_real & 1.00 $\pm$ 0.10 \\", r"\bottomrule", r"\end{tabular}"]  # booktabs
    assert (bold("x", "github"), bold("x", "latex"), bold("x", "csv")) == ("**x**", r"\textbf{x}", "x")
    assert "| 007 " in tabulate_rows(["x"], [["007"]], "github")  # text cells: no number parsing
    for fmt in FORMATS:
        check_format(fmt)
    with pytest.raises(ValueError, match="github, latex, csv"):
        check_format("html")


# ---------------------------------------------------------------------------- views


def test_empty_views_are_refused_alone_and_skipped_in_all():
    """Records without subset curves or hardness sections: those views are "" in every format."""
    from harness.report.views.hardness import hardness_table
    from harness.report.views.margins import margins_table
    from harness.report.views.subsets import subset_table

    records = _records()
    for fmt in FORMATS:
        assert subset_table(records, fmt) == "" and hardness_table(records, fmt) == ""
        for view in ("subsets", "hardness"):
            with pytest.raises(DDBenchError) as err:
                render_view(records, view, fmt)
            assert err.value.field == "--view" and view in str(err.value)
        # all: the views with something to show (main, and the margins over the best baseline)
        shown = [part for part in (render(records, fmt), margins_table(records, fmt)) if part.strip()]
        assert render_view(records, "all", fmt) == "\n\n".join(shown)
        assert render_view(records, "main", fmt) == render(records, fmt)
    with pytest.raises(ValueError, match="view"):
        render_view(records, "nope")


def test_records_of_different_configs_are_not_pooled_as_seeds():
    same = typed([make_record(seed=0, config_id="aaaa"), make_record(seed=1, config_id="aaaa")])
    assert "60.00" in render(same)  # two seeds of one config: pooled
    # Two configs that differ in a recorded field: two rows, named by it, never pooled.
    two = typed([make_record(seed=0, config_id="aaaa", run_id="aaaa0", accs=(0.5, 0.7)),
                 make_record(seed=0, config_id="bbbb", run_id="bbbb0", accs=(0.9, 0.9), suite="other")])
    rows = _table_rows(render(two).split("Distillation cost")[0])
    assert _value(rows["tbptt (suite unit)"][0]).startswith("60.00") and _value(rows["tbptt (suite other)"][0]) \
        .startswith("90.00")
    # Two config ids with nothing recorded to tell them apart contradict each other: refused, named.
    mixed = typed([make_record(seed=0, config_id="aaaa", run_id="aaaa0"),
                   make_record(seed=0, config_id="bbbb", run_id="bbbb0")])
    with pytest.raises(DDBenchError) as err:
        render(mixed)
    assert err.value.field == "config_id" and "aaaa, bbbb" in err.value.message


def test_a_run_found_twice_counts_once_and_two_results_of_one_run_are_refused():
    """A local folder and a published copy of it: the same records twice are one set of seeds."""
    records = _records()
    twice = render(records + _records(), "github")
    assert twice == render(records, "github")
    rerun = make_record("bptt", "digits", 1, accs=(0.1, 0.2))  # same run id, another result
    with pytest.raises(DDBenchError) as err:
        render(records + typed([{**rerun, "finished_at": "2024-02-01T00:00:00+00:00"}]))
    assert err.value.field == "run_id" and "bptt-digits-1-0" in err.value.message


def test_a_single_model_is_not_shown_as_plus_minus_zero():
    cell = _table_rows(render(typed([make_record(accs=(0.5,))])).split("Distillation cost")[0])["tbptt"][0]
    assert cell == "50.00 (1x1, 10 steps)" and "±" not in cell


def test_a_diverged_run_shows_as_diverged_never_as_a_number():
    diverged = make_record("rat_bptt", seed=1, run_id="r1", status="diverged", accs=(0.1,))
    diverged["eval"].update(accuracy_mean=None, accuracy_std=None, accuracy_per_model=[])
    records = typed([make_record("rat_bptt", seed=0, run_id="r0"), diverged, make_record("bptt", run_id="b0")])
    rows = _table_rows(render(records).split("Distillation cost")[0])
    assert rows["rat_bptt"] == ["diverged (1 of 2 seeds)"] and rows["bptt"][0].startswith("60.00")
    csv_rows = {r["method"]: r for r in csv.DictReader(io.StringIO(render(records, "csv")))}
    assert csv_rows["rat_bptt"]["status"] == "diverged (1 of 2 seeds)" and csv_rows["rat_bptt"]["accuracy_mean"] == ""


def test_a_failed_cell_is_failed_in_the_cost_table_too():
    """A run that failed before its first outer step is "failed" there, never "no distillation"."""
    failed = make_record("mtt", "digits", 1, run_id="mtt-failed", status="failed", outer_steps=0, accs=(0.1,))
    failed["eval"].update(accuracy_mean=None, accuracy_std=None, accuracy_per_model=[])
    records = _records() + typed([failed])
    text = render(records, "github")
    accuracy, cost = (_table_rows(part) for part in text.split("Distillation cost"))
    assert accuracy["mtt"][0] == "failed" and cost["mtt"][0] == "failed"
    assert cost["random_real"][0] == "no distillation"
