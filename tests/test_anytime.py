"""Accuracy at budget: the curve recorded during distillation, its time kept apart, its resume,
and the budget view; the hook during the distillation that any analysis has (the curve's)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

import harness.run.cell as cell_module
from conftest import files_under, make_record, tiny_suite, typed
from harness.core.config import StrictModel
from harness.engine.memory import PeakMemory
from harness.evaluation import ANALYSES, Analysis, register_analysis
from harness.method import method_class
from harness.report import iter_records
from harness.report.views.budget import budget_table
from harness.run.cell import cell_paths
from harness.run.suite import load_suite

ANYTIME = {"enabled": True, "every_steps": 2, "protocol": {"protocol": "standard", "models": 1, "steps": 3,
                                                           "augment": {"ops": []}}}


def test_the_curve_is_recorded_every_k_steps_and_at_the_end(write_suite, cli, tmp_path):
    suite = tiny_suite(methods={"random_real": {}, "tbptt": {"unroll": 3, "window": 2}},
                       budget={"outer_steps": 5, "checkpoint_minutes": 10.0}, anytime=ANYTIME)
    assert cli("run", write_suite(suite), "--out", tmp_path / "out", "-q")[0] == 0
    records = {r.method: r for _, r in iter_records(tmp_path / "out")}
    curve = records["tbptt"].anytime.curve
    assert [p.step for p in curve] == [2, 4, 5]  # every 2 steps, and the end
    seconds = [p.seconds for p in curve]
    assert seconds == sorted(seconds) and seconds[-1] == pytest.approx(records["tbptt"].distill.wall_clock_s)
    assert records["tbptt"].anytime.eval_seconds > 0 and records["tbptt"].anytime.protocol["models"] == 1
    assert records["random_real"].anytime.curve == []  # nothing distilled, no curve
    code, table, err = cli("table", tmp_path / "out", "--view", "budget")
    assert code == 0 and "equal outer steps" in table and "equal distillation wall-clock" in table, err


def test_a_resumed_run_keeps_its_curve(write_suite, cli, tmp_path, monkeypatch):
    suite = tiny_suite(methods={"tbptt": {"unroll": 3, "window": 2}},
                       budget={"outer_steps": 6, "checkpoint_minutes": 1e-9}, anytime=ANYTIME)
    path = write_suite(suite)
    assert cli("run", path, "--out", tmp_path / "a", "-q")[0] == 0
    cls = method_class("tbptt")
    original = cls.step

    def interrupted(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(cls, "step", interrupted)
    assert cli("run", path, "--out", tmp_path / "b", "-q")[0] == 130
    monkeypatch.setattr(cls, "step", original)
    assert cli("run", path, "--out", tmp_path / "b", "-q")[0] == 0
    cell = load_suite(path).cells()[0]
    a, b = ((r for _, r in iter_records(tmp_path / root)) for root in ("a", "b"))
    a, b = next(a), next(b)
    assert [p.step for p in b.anytime.curve] == [2, 4, 6]
    assert [p.accuracy_per_model for p in a.anytime.curve] == [p.accuracy_per_model for p in b.anytime.curve]
    assert cell_paths(tmp_path / "b", cell)["record"].exists()


def test_every_minutes_and_the_config_checks(write_suite, cli, tmp_path):
    suite = tiny_suite(methods={"tbptt": {"unroll": 3, "window": 2}}, budget={"outer_steps": 0, "minutes": 0.03},
                       anytime={**ANYTIME, "every_steps": None, "every_minutes": 0.01})
    suite["anytime"].pop("every_steps")
    assert cli("run", write_suite(suite), "--out", tmp_path / "out", "-q")[0] == 0
    (record,) = [r for _, r in iter_records(tmp_path / "out")]
    points = record.anytime.curve
    assert len(points) >= 3 and all(p.seconds >= 0.6 * i for i, p in enumerate(points[:-1], 1))
    bad = tiny_suite(anytime={"enabled": True})
    code, _, err = cli("run", write_suite(bad, "bad.toml"), "--out", tmp_path / "bad", "-q")
    assert code == 2 and "anytime" in err and "every_steps" in err


def _curve(steps_seconds_accs):
    return [{"step": s, "seconds": t, "accuracy_mean": a, "accuracy_std": 0.0, "accuracy_per_model": [a]}
            for s, t, a in steps_seconds_accs]


def test_the_budget_view_compares_at_equal_steps_and_equal_time():
    fast = make_record("rat_bptt", run_id="f", anytime={"config": {}, "protocol": {"protocol": "standard"},
                                                         "curve": _curve([(10, 1.0, 0.5), (20, 2.0, 0.6)])})
    slow = make_record("at_bptt", run_id="s", anytime={"config": {}, "protocol": {"protocol": "standard"},
                                                        "curve": _curve([(10, 2.0, 0.55), (20, 4.0, 0.7)])})
    text = budget_table(typed([fast, slow]), "csv")
    rows = {(r.split(",")[2], r.split(",")[3], r.split(",")[4]): float(r.split(",")[5])
            for r in text.strip().splitlines()[1:]}
    assert rows[("rat_bptt", "steps", "20")] == pytest.approx(0.6) and rows[("at_bptt", "steps", "20")] == 0.7
    # At 2 s of distillation rat_bptt had done 20 steps (0.6), at_bptt only 10 (0.55).
    assert rows[("rat_bptt", "s", "2.0")] == pytest.approx(0.6) and rows[("at_bptt", "s", "2.0")] == 0.55
    assert budget_table(typed([make_record()]), "github") == ""


# ----------------------------------------------------------------------------- the hook any analysis has


class _StepsConfig(StrictModel):
    enabled: bool = True


class _StepsSeen(Analysis):
    """Test analysis: every step its `during` hook saw, and the distillation seconds then."""

    Config = _StepsConfig
    section = "steps_seen"
    calls: list = []

    def during(self, cfg, state, ctx):
        with ctx.apart("counting"):
            _StepsSeen.calls.append(ctx.step)
            cell_module.time.perf_counter.offset += 1000.0  # a long measurement (never distillation time)
        return {"steps": [*state.get("steps", []), ctx.step], "elapsed": [*state.get("elapsed", []), ctx.elapsed],
                "final": ctx.final}

    def run(self, cfg, ctx):
        return {**ctx.during, "images": ctx.distilled.images.shape[0]}


class _Clock:
    """time.perf_counter for harness.run.cell, moved on by the test analysis."""

    def __init__(self):
        self.offset = 0.0

    def __call__(self):
        return time.perf_counter() + self.offset


def test_an_analysis_measures_during_the_distillation_by_its_hook_alone(write_suite, cli, tmp_path, monkeypatch):
    """The runner knows no analysis by name: a plug-in's ``during`` sees every completed step and the
    end, apart from the distillation (its time not counted, the memory meter excluding it while the
    meter runs), its running state checkpointed and handed back on resume, and in its section."""
    monkeypatch.setattr(cell_module, "time", SimpleNamespace(perf_counter=_Clock()))
    _StepsSeen.calls.clear()
    excluded = []
    real_excluding = PeakMemory.excluding
    monkeypatch.setattr(PeakMemory, "excluding", lambda self: excluded.append(1) or real_excluding(self))
    suite = tiny_suite(methods={"tbptt": {"unroll": 3, "window": 2}},
                       budget={"outer_steps": 5, "checkpoint_minutes": 1e9})
    path = write_suite(suite)
    cls = method_class("tbptt")
    original = cls.step

    def interrupted(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return original(self, step)

    with ANALYSES.scoped():
        register_analysis("steps_seen")(_StepsSeen)
        assert cli("run", path, "--out", tmp_path / "a", "-q")[0] == 0
        assert _StepsSeen.calls == [1, 2, 3, 4, 5, 5] and len(excluded) == 5  # the end: after the meter stopped
        (a,) = [r for _, r in iter_records(tmp_path / "a")]
        assert a.steps_seen["steps"] == [1, 2, 3, 4, 5, 5] and a.steps_seen["final"] is True
        assert a.steps_seen["images"] == 10 and a.distill.wall_clock_s < 1000  # none of the hook's "1000 s"
        assert a.steps_seen["elapsed"][-1] == a.distill.wall_clock_s
        monkeypatch.setattr(cls, "step", interrupted)
        assert cli("run", path, "--out", tmp_path / "b", "-q")[0] == 130  # checkpointed at step 3
        _StepsSeen.calls.clear()
        monkeypatch.setattr(cls, "step", original)
        code, _, err = cli("run", path, "--out", tmp_path / "b", "-q")
        assert code == 0 and "resuming digits ipc1 tbptt s0 from outer step 3" in err
        assert _StepsSeen.calls == [4, 5, 5]  # the state of steps 1-3 came back from the checkpoint
        (b,) = [r for _, r in iter_records(tmp_path / "b")]
        assert b.steps_seen["steps"] == a.steps_seen["steps"]


def test_a_checkpoint_of_the_earlier_format_is_refused_in_one_line(write_suite, cli, tmp_path):
    """Checkpoints written before the cell state (the anytime curve under its own key, no format) do
    not load: one line naming the file and the field, exit 2, nothing written."""
    path = write_suite(tiny_suite(methods={"tbptt": {"unroll": 3, "window": 2}}))
    cell = load_suite(path).cells()[0]
    ckpt = cell_paths(tmp_path / "out", cell)["checkpoint"]
    ckpt.parent.mkdir(parents=True)
    torch.save({"run_id": cell.run_id, "step": 1, "method_state": {}, "elapsed_s": 0.1, "peak_memory_bytes": 0,
                "step_times": [0.1], "history": [], "history_stride": 1, "started_at": "2024-01-01T00:00:00+00:00",
                "anytime": {"points": [], "next_s": None, "eval_seconds": 0.0}}, ckpt)
    code, _, err = cli("run", path, "--out", tmp_path / "out", "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert str(ckpt) in err and ": format: " in err and "format 1" in err and "delete it" in err
    assert files_under(tmp_path / "out") == [ckpt]
