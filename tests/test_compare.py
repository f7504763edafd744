"""Comparable groups: what may be ranked together, how groups are told apart, and selection;
through the command line as a user meets them (two configs of one cell in one folder)."""

from __future__ import annotations

import json

import pytest

from conftest import make_record, tiny_suite, typed
from harness.core.errors import DDBenchError
from harness.report.compare import comparable_groups, label_kind, select_records, setting
from harness.report.views.main import render


def _headers(table: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith("| method"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_two_configs_of_one_cell_in_one_folder_are_two_named_groups(write_suite, cli, tmp_path):
    """The runner's own folder: a full run, then the same suite with --set budget.outer_steps=1 into it."""
    suite = write_suite(tiny_suite())
    out = tmp_path / "runs"
    assert cli("run", suite, "--out", out, "-q")[0] == 0
    assert cli("run", suite, "--out", out, "-q", "--set", "budget.outer_steps=1")[0] == 0
    code, table, err = cli("table", out / "tiny")
    assert code == 0, err
    assert _headers(table.split("Distillation cost")[0]) == ["digits IPC 1 (budget.outer_steps 1)",
                                                            "digits IPC 1 (budget.outer_steps 2)"]
    assert "digits IPC 1: settings differ in budget.outer_steps 1 vs 2; never ranked together." in table
    code, _, err = cli("table", out / "tiny", "--view", "all")  # never an error for a folder the runner wrote
    assert code == 0, err
    code, latex, err = cli("table", out / "tiny", "--format", "latex")
    assert code == 0 and r"digits IPC 1 (budget.outer\_steps 1)" in latex, err
    code, tidy, err = cli("table", out / "tiny", "--format", "csv")
    assert code == 0 and tidy.count("budget.outer_steps 1") == 2, err  # random_real and tbptt

    # Selection: the newest config per cell, or configs by id prefix.
    code, latest, err = cli("table", out / "tiny", "--latest")
    assert code == 0 and _headers(latest.split("Distillation cost")[0]) == ["digits IPC 1"], err
    assert "(2x1, 1 steps)" in latest or "(1x1, 1 steps)" in latest
    ids = sorted({json.loads(p.read_text())["config_id"] for p in out.rglob("*.json")})
    assert len(ids) == 4  # random_real and tbptt, twice
    code, one, err = cli("table", out / "tiny", "--config", ids[0][:6])
    assert code == 0 and _headers(one.split("Distillation cost")[0]) == ["digits IPC 1"], err
    code, _, err = cli("table", out / "tiny", "--config", "zzzz")
    assert code == 2 and "--config" in err and "zzzz" in err and len(err.strip().splitlines()) == 1

    # Several folders at once, and publish: two boards, each headed by its budget.
    code, both, err = cli("table", out / "tiny", out / "tiny")
    assert code == 0 and both == table, err
    code, _, err = cli("publish", out, "--out", tmp_path / "site", "-q")
    assert code == 0, err
    md = (tmp_path / "site" / "leaderboard.md").read_text()
    assert "## digits, IPC 1 (budget.outer_steps 1)" in md and "## digits, IPC 1 (budget.outer_steps 2)" in md


def test_a_run_recorded_twice_with_different_results_is_still_refused():
    a = make_record(run_id="same", accs=(0.5, 0.6))
    b = {**make_record(run_id="same", accs=(0.1, 0.2)), "finished_at": "2025-01-01T00:00:00+00:00"}
    with pytest.raises(DDBenchError) as err:
        render(typed([a, b]))
    assert err.value.field == "run_id"


def _rec(method="tbptt", seed=0, accs=(0.5, 0.7), **extra):
    return make_record(method, seed=seed, accs=accs, run_id=f"{method}-{seed}-{json.dumps(extra, sort_keys=True)}",
                       **extra)


def test_what_splits_a_group_and_what_does_not():
    steps = {"protocol": "standard", "steps": 250}
    records = typed([
        _rec("tbptt", eval={"protocol": {**steps, "models": 5}, "accuracy_mean": 0.6, "accuracy_std": 0.1,
                            "accuracy_per_model": [0.5, 0.7]}),
        # Another number of evaluation networks (and test batch): more samples of the same thing.
        _rec("bptt", eval={"protocol": {**steps, "models": 2, "test_batch": 7}, "accuracy_mean": 0.6,
                           "accuracy_std": 0.1, "accuracy_per_model": [0.5, 0.7]}),
        # Other evaluation steps: another setting.
        _rec("rat_bptt", eval={"protocol": {**steps, "steps": 60, "models": 2}, "accuracy_mean": 0.6,
                               "accuracy_std": 0.1, "accuracy_per_model": [0.5, 0.7]}),
    ])
    groups = comparable_groups(records)
    assert [sorted(g.rows) for g in groups] == [["bptt", "tbptt"], ["rat_bptt"]]
    assert [g.heading for g in groups] == ["digits IPC 1 (eval.steps 250)", "digits IPC 1 (eval.steps 60)"]
    assert groups[0].differs_text() == "eval.steps 250 vs 60"


def test_budgets_labels_and_devices():
    minutes = {"outer_steps": 0, "minutes": 8.0}
    records = typed([
        _rec("tbptt", budget={"outer_steps": 120}),
        _rec("rat_bptt", budget={"outer_steps": 120}, method_config={"learn_labels": True}),
        _rec("boost_dd", budget={"outer_steps": 120}, method_config={"base_config": {"learn_labels": True}}),
        _rec("random_real", budget=minutes, outer_steps=0, device_name="A"),
        _rec("at_bptt", budget=minutes, device_name="A"),
        _rec("tbptt", budget=minutes, device_name="B"),  # eight minutes of another machine
        _rec("bptt", budget={"outer_steps": 120}, label_kind="teacher"),  # the set's own label kind
    ])
    assert [label_kind(r) for r in records] == ["hard", "learned", "learned", "hard", "hard", "hard", "teacher"]
    assert setting(records[3])["hardware.device_name"] == "A" and "hardware.device_name" not in setting(records[0])
    groups = {g.heading: sorted(g.rows) for g in comparable_groups(records)}
    assert len(groups) == 5
    for heading, rows in groups.items():  # every sibling says its labels, budget and device where they differ
        assert heading.startswith("digits IPC 1 (")
    assert any(rows == ["boost_dd", "rat_bptt"] and "labels learned" in h for h, rows in groups.items())
    assert any(rows == ["bptt"] and "labels teacher" in h for h, rows in groups.items())
    assert any(rows == ["at_bptt", "random_real"] and "hardware.device_name A" in h for h, rows in groups.items())
    (lone,) = comparable_groups(typed([_rec("rat_bptt", method_config={"learn_labels": True})]))
    assert lone.heading == "digits IPC 1 (labels learned)"  # soft labels are said even without siblings


def test_a_label_with_two_configs_in_one_group_is_two_named_rows():
    records = typed([
        _rec("rat_bptt", accs=(0.8, 0.82), method_config={"window": 10, "unroll": 30}, config_id="c10"),
        _rec("rat_bptt", seed=1, accs=(0.81, 0.83), method_config={"window": 10, "unroll": 30}, config_id="c10"),
        _rec("rat_bptt", accs=(0.6, 0.62), method_config={"window": 30, "unroll": 30}, config_id="c30"),
    ])
    (group,) = comparable_groups(records)
    assert list(group.rows) == ["rat_bptt (window 10)", "rat_bptt (window 30)"]
    assert [len(rs) for rs in group.rows.values()] == [2, 1]  # seeds of one config pooled, configs never
    text = render(records)
    assert "| rat_bptt (window 10) " in text and "| rat_bptt (window 30) " in text


def test_select_latest_and_by_config():
    old = {"finished_at": "2024-01-01T00:00:00+00:00"}
    new = {"finished_at": "2024-06-01T00:00:00+00:00"}
    records = typed([_rec("tbptt", config_id="aaa1", **old), _rec("tbptt", seed=1, config_id="aaa1", **old),
                     _rec("tbptt", config_id="bbb2", budget={"outer_steps": 8}, **new),
                     _rec("bptt", config_id="ccc3", **old)])
    assert [r.config_id for r in select_records(records, latest=True)] == ["bbb2", "ccc3"]
    assert [r.config_id for r in select_records(records, ["aaa", "ccc"])] == ["aaa1", "aaa1", "ccc3"]
    assert select_records(records) == records
    with pytest.raises(DDBenchError) as err:
        select_records(records, ["zz"])
    assert err.value.field == "--config"
