"""The budget view of minutes-bounded cells: compared on the budget's own axis (the times the anytime
curve was due, up to the end of the budget), best in bold; step-bounded cells as before."""

from __future__ import annotations

import csv
import io

from conftest import make_record, typed
from harness.report.views.budget import budget_table

MINUTES = {"outer_steps": 0, "minutes": 4.0}


def _curve(points):
    return [{"step": s, "seconds": t, "accuracy_mean": sum(a) / len(a), "accuracy_std": 0.0,
             "accuracy_per_model": list(a)} for s, t, a in points]


def _record(method, points, **extra):
    return make_record(method, run_id=method, budget=MINUTES, outer_steps=points[-1][0],
                       anytime={"config": {"every_minutes": 1.0}, "protocol": {"protocol": "standard"},
                                "curve": _curve(points)}, **extra)


def test_minutes_budget_columns_are_the_due_times_and_the_end():
    # fast: 1 s per step; slow: 4 s per step; each evaluated when its elapsed time crossed a minute.
    fast = _record("rat_bptt", [(60, 60.0, (0.50, 0.51, 0.52)), (120, 120.0, (0.60, 0.61, 0.62)),
                                (180, 180.0, (0.70, 0.71, 0.72)), (240, 240.0, (0.80, 0.81, 0.82))])
    slow = _record("at_bptt", [(16, 64.0, (0.55, 0.56, 0.57)), (31, 124.0, (0.58, 0.59, 0.60)),
                               (46, 184.0, (0.60, 0.61, 0.62)), (60, 240.0, (0.601, 0.611, 0.621))])
    text, by_steps, note = budget_table(typed([fast, slow]), "github").split("\n\n")
    assert "equal outer steps" in by_steps and "| 60 steps " in by_steps  # the one step count both reached
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["method", "1 min", "2 min", "3 min", "end (4 min)"]
    assert "the budget: 4 min" in text.splitlines()[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")[1:]]
            for line in text.splitlines() if line.startswith("| ") and "min" not in line}
    # At one minute at_bptt is ahead beyond evaluation noise; at the end rat_bptt is.
    assert rows["at_bptt"][0] == "**56.00 ± 0.82**" and rows["rat_bptt"][0] == "51.00 ± 0.82"
    assert rows["rat_bptt"][3] == "**81.00 ± 0.82**" and rows["at_bptt"][3] == "61.10 ± 0.82"
    assert "1 seed: evaluation noise only" in note and note.startswith("Bold: ")
    tidy = list(csv.DictReader(io.StringIO(budget_table(typed([fast, slow]), "csv"))))
    end = [r for r in tidy if r["by"] == "s" and r["budget"] == "inf"]
    assert {r["method"]: r["rank"] for r in end} == {"rat_bptt": "1", "at_bptt": "2"}
