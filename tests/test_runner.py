"""The runner end to end: the smoke suite on a tiny budget, records, tables, skipping, resuming."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch

from conftest import dump_toml, files_under, tiny_suite
from harness.method import DistilledSet
from harness.report.schema import SCHEMA_VERSION
from harness.report.records import read_record
from harness.method.registry import method_class
from harness.run.cell import cell_paths
from harness.run.suite import load_suite

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
MEMORY_KINDS = ("cuda_max_allocated_above_start", "cpu_tensor_peak_sampled", "cpu_peak_rss")


def smoke_on_a_tiny_budget() -> dict:
    """suites/smoke.toml with a few outer steps and a short evaluation; every method kept, so a
    method added to the smoke suite is covered here too."""
    data = tomllib.loads((REPO / "suites" / "smoke.toml").read_text())
    data["budget"]["outer_steps"] = 3
    data["budget"].pop("by_ipc", None)
    data["eval"]["models"] = 2
    data["eval"]["steps"] = 20
    # One thread: on a shared 2-core machine two intra-op threads per busy process oversubscribe
    # the cores and make the run many times slower; threads change no result (not in the run id).
    data["hardware"]["threads"] = 1
    return data


def _pm_cells(line: str, pm: str) -> list[tuple[float, float]]:
    return [(float(m), float(s)) for m, s in re.findall(rf"(\d+\.\d\d){re.escape(pm)}(\d+\.\d\d)", line)]


@pytest.mark.slow
def test_smoke_suite_end_to_end(write_suite, cli, tmp_path):
    data = smoke_on_a_tiny_budget()
    path = write_suite(dump_toml(data), "smoke-tiny.toml")
    out = tmp_path / "runs"
    code, stdout, err = cli("run", path, "--out", out, "-q")
    assert code == 0, err

    suite = load_suite(path)
    grid = data["grid"]
    labels = list(data["methods"])
    cells = suite.cells()
    assert len(cells) == len(grid["datasets"]) * len(grid["ipcs"]) * len(labels) * len(grid.get("seeds", [0]))
    records = sorted(out.rglob("*.json"))
    assert len(records) == len(cells)
    assert f"{len(cells)} records" in stdout

    seen = set()
    for cell in cells:
        paths = cell_paths(out, cell)
        record = read_record(paths["record"])
        seen.add((record["dataset"], record["ipc"], record["method"], record["seed"]))
        assert (record["dataset"], record["ipc"], record["method"], record["seed"]) == (
            cell.dataset.name, cell.ipc, cell.method_label, cell.seed)
        assert record["schema_version"] == SCHEMA_VERSION
        assert record["run_id"] == cell.run_id and record["suite"] == data["suite"]["name"]
        assert record["method_config"] == cell.method_config.model_dump(mode="json")
        assert record["status"] == "ok"
        started, finished = (datetime.fromisoformat(record[k]) for k in ("started_at", "finished_at"))
        assert started <= finished

        ev = record["eval"]
        assert ev["protocol"]["models"] == 2 and ev["protocol"]["steps"] == 20
        accs = ev["accuracy_per_model"]
        assert len(accs) == 2 and all(0.0 <= a <= 1.0 for a in accs)
        assert ev["accuracy_mean"] == pytest.approx(statistics.fmean(accs), abs=1e-12)
        assert ev["accuracy_std"] == pytest.approx(statistics.pstdev(accs), abs=1e-12)

        distill = record["distill"]
        assert distill["memory_kind"] in MEMORY_KINDS
        if distill["outer_steps"]:  # the CPU's distillations under ddbench's tensor meter; selections: RSS
            assert distill["memory_kind"] == "cpu_tensor_peak_sampled"
        assert distill["peak_memory_bytes"] > 0
        assert distill["wall_clock_s"] >= 0 and distill["seconds_per_outer_step"] >= 0
        if cell.method in ("random_real", "herding", "kcenter", "forgetting"):  # selections: no outer step
            assert distill["outer_steps"] == 0
        else:
            assert distill["outer_steps"] > 0
            assert distill["seconds_per_outer_step"] == pytest.approx(
                distill["wall_clock_s"] / distill["outer_steps"])

        hw = record["hardware"]
        for key in ("device_name", "torch", "torchopt", "python", "cpu_count"):
            assert hw[key], key
        assert hw["torch"] == torch.__version__

        distilled = DistilledSet.load(paths["distilled"])
        assert record["distilled_file"] == paths["distilled"].name
        assert distilled.images.shape[0] == distilled.num_classes * cell.ipc == 10 * cell.ipc
        assert distilled.meta["run_id"] == cell.run_id
        assert torch.isfinite(distilled.images).all()
    assert len(seen) == len(cells)
    # Nothing else is left: no checkpoint, no temp file.
    assert {p.name.split(".", 1)[1] for p in files_under(out)} == {"json", "distilled.pt"}

    # --- tables, from the records only
    by_cell = {(r["method"], r["dataset"], r["ipc"]): r for r in map(read_record, records)}
    columns = sorted({(d, k) for _, d, k in by_cell})

    code, table, err = cli("table", out, "--format", "github")
    assert code == 0, err
    acc_part, cost_part = table.split("Distillation cost")
    rows = [line for line in acc_part.splitlines() if line.startswith("| ") and "IPC" not in line]
    assert [row.split("|")[1].strip() for row in rows][0] == "random_real"
    assert sorted(row.split("|")[1].strip() for row in rows) == sorted(labels)
    header = next(line for line in acc_part.splitlines() if "IPC" in line)
    # Hard-label and teacher-labelled sets are different comparable groups: a column each.
    kinds = {(r["dataset"], r["ipc"]): set() for r in by_cell.values()}
    for r in by_cell.values():
        kinds[(r["dataset"], r["ipc"])].add(r["label_kind"])
    headers = [h.strip() for h in header.strip("|").split("|")[1:]]
    assert headers == [f"{d} IPC {k} (labels {kind})" for d, k in columns for kind in sorted(kinds[(d, k)])]
    for row in rows:
        method = row.split("|")[1].strip()
        shown = _pm_cells(row, " ± ")
        assert len(shown) == len(columns)  # one label kind per method
        for (mean, std), (d, k) in zip(shown, columns):
            accs = by_cell[(method, d, k)]["eval"]["accuracy_per_model"]
            assert mean == pytest.approx(100 * statistics.fmean(accs), abs=0.006)
            assert std == pytest.approx(100 * statistics.pstdev(accs), abs=0.006)
    assert "MiB" in cost_part and "s/step" in cost_part and "no distillation" in cost_part

    code, latex, err = cli("table", out, "--format", "latex")
    assert code == 0, err
    assert r"\begin{tabular}" in latex and r"$\pm$" in latex and "±" not in latex
    assert r"random\_real" in latex

    code, text, err = cli("table", out, "--format", "csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(by_cell)
    for row in rows:
        record = by_cell[(row["method"], row["dataset"], int(row["ipc"]))]
        assert float(row["accuracy_mean"]) == pytest.approx(record["eval"]["accuracy_mean"])
        assert float(row["peak_memory_bytes"]) == record["distill"]["peak_memory_bytes"]
    assert rows[0]["method"] == "random_real"

    # --- a rerun finds every record and writes nothing
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files_under(out)}
    code, stdout, err = cli("run", path, "--out", out, "-q", "--table")
    assert code == 0, err
    assert f"{len(cells)} records" in stdout and "random_real" in stdout  # --table printed the table
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files_under(out)} == before


# ----------------------------------------------------------------------------- resuming


RESUME_CONFIGS = {
    "tbptt": {"unroll": 4, "window": 2},
    "rat_bptt": {"unroll": 4, "window": 2},
    # Every piece of AT-BPTT's state: stage tracker (the outer-accuracy signal), the epoch's draw, norms, the
    # low-rank Hessian and its drift.
    "at_bptt": {"unroll": 6, "window": 3, "window_delta": 1, "steps_per_epoch": 2, "gain_threshold": 100.0,
                "patience_fraction": 0.3, "low_rank_hessian": True, "hessian_rank": 2, "hessian_refresh": 3,
                "hessian_drift": 0.3},
    # Interrupted at the start of its second block.
    "boost_dd": {"blocks": 2, "base_config": {"unroll": 4, "window": 2}},
}


def _resume_suite(method: str, steps: int) -> dict:
    ipc = 2 if method == "boost_dd" else 1
    return tiny_suite(methods={method: RESUME_CONFIGS[method]}, grid={"datasets": ["digits"], "ipcs": [ipc]},
                      budget={"outer_steps": steps, "checkpoint_minutes": 1e-9})  # a checkpoint every step


@pytest.mark.parametrize("method", list(RESUME_CONFIGS))
def test_interrupted_run_resumes_bit_identically(method, write_suite, cli, tmp_path, monkeypatch):
    steps, stop_at = 5, 3
    path = write_suite(_resume_suite(method, steps))
    cell = load_suite(path).cells()[0]
    cls = method_class(method)
    original = cls.step
    calls = []

    def counting(self, step):
        calls.append(step)
        return original(self, step)

    def interrupted(self, step):
        if step == stop_at:
            raise KeyboardInterrupt
        return counting(self, step)

    total = 2 * steps if method == "boost_dd" else steps  # Boost-DD's 2 blocks: a full run each (per_block)
    # The reference: one uninterrupted run.
    monkeypatch.setattr(cls, "step", counting)
    assert cli("run", path, "--out", tmp_path / "a", "-q")[0] == 0
    assert calls == list(range(total))
    reference = DistilledSet.load(cell_paths(tmp_path / "a", cell)["distilled"])

    # Interrupted at step 3: a checkpoint after step 2, no record, no distilled set.
    out = tmp_path / "b"
    paths = cell_paths(out, cell)
    calls.clear()
    monkeypatch.setattr(cls, "step", interrupted)
    code, stdout, err = cli("run", path, "--out", out, "-q")
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert files_under(out) == [paths["checkpoint"]]
    assert torch.load(paths["checkpoint"], weights_only=False)["step"] == stop_at

    # The rerun continues at step 3 (it does not start over) and ends where the reference did.
    calls.clear()
    monkeypatch.setattr(cls, "step", counting)
    assert cli("run", path, "--out", out, "-q")[0] == 0
    assert calls == list(range(stop_at, total))
    assert not paths["checkpoint"].exists()
    resumed = DistilledSet.load(paths["distilled"])
    assert torch.equal(resumed.images, reference.images)
    assert torch.equal(resumed.labels, reference.labels)
    record = read_record(paths["record"])
    assert record["distill"]["outer_steps"] == total
    assert [h["step"] for h in record["distill"]["history"]] == list(range(total))  # no step twice
    # The peak of both parts, of one kind; the setup of the part that started the cell.
    assert record["distill"]["memory_kind"] == "cpu_tensor_peak_sampled" and record["distill"]["peak_memory_bytes"] > 0
    reference_record = read_record(cell_paths(tmp_path / "a", cell)["record"])
    assert record["eval"]["accuracy_per_model"] == reference_record["eval"]["accuracy_per_model"]
    assert record["distill"]["history"] == reference_record["distill"]["history"]  # every metric of every step
    assert record["distill"]["method_summary"] == reference_record["distill"]["method_summary"]


def test_checkpoint_of_other_run_id_is_rejected_when_resuming(write_suite, cli, tmp_path, monkeypatch):
    # A real checkpoint of one config, moved to the path of a cell with another config.
    path = write_suite(_resume_suite("tbptt", 4))
    cls = method_class("tbptt")
    original = cls.step

    def interrupted(self, step):
        if step == 2:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(cls, "step", interrupted)
    out = tmp_path / "out"
    assert cli("run", path, "--out", out, "-q")[0] == 130
    old = cell_paths(out, load_suite(path).cells()[0])["checkpoint"]

    other = write_suite(_resume_suite("tbptt", 6), "other.toml")  # another budget: another run id
    new = cell_paths(out, load_suite(other).cells()[0])["checkpoint"]
    assert new != old
    old.rename(new)
    code, stdout, err = cli("run", other, "--out", out, "-q")
    assert code == 2 and str(new) in err and ": run_id: " in err and len(err.strip().splitlines()) == 1
    assert files_under(out) == [new]


def test_run_id_ignores_checkpoint_interval_but_not_the_budget(write_suite):
    base = load_suite(write_suite(_resume_suite("tbptt", 4), "a.toml")).cells()[0]
    often = tiny_suite(methods={"tbptt": {"unroll": 4, "window": 2}},
                       budget={"outer_steps": 4, "checkpoint_minutes": 30.0})
    assert load_suite(write_suite(often, "b.toml")).cells()[0].run_id == base.run_id
    assert load_suite(write_suite(_resume_suite("tbptt", 5), "c.toml")).cells()[0].run_id != base.run_id


def test_minutes_budget_stops_early_and_says_so(write_suite, cli, tmp_path):
    data = tiny_suite(methods={"tbptt": {"unroll": 3, "window": 2}},
                      budget={"outer_steps": 50, "minutes": 1e-9})
    path = write_suite(data)
    assert cli("run", path, "--out", tmp_path / "out", "-q")[0] == 0
    record = read_record(cell_paths(tmp_path / "out", load_suite(path).cells()[0])["record"])
    assert record["distill"]["stopped_by"] == "minutes"
    assert 1 <= record["distill"]["outer_steps"] < 50
    assert record["distill"]["seconds_per_outer_step"] == pytest.approx(
        record["distill"]["wall_clock_s"] / record["distill"]["outer_steps"])


def test_non_finite_metrics_stop_the_cell_as_diverged(write_suite, cli, tmp_path, monkeypatch):
    """A non-finite outer loss stops the cell at that step: the record says "diverged" with the
    step and no accuracy; the suite's other cells still run; the exit status is non-zero."""
    cls = method_class("tbptt")
    original = cls.step
    monkeypatch.setattr(cls, "step", lambda self, step: {**original(self, step), "outer_loss": math.nan,
                                                         "grad_norm": math.inf} if step == 1 else original(self, step))
    path = write_suite(tiny_suite(methods={"random_real": {}, "tbptt": {"unroll": 3, "window": 2}},
                                  budget={"outer_steps": 4, "checkpoint_minutes": 1e-9}))
    code, out, err = cli("run", path, "--out", tmp_path / "out", "-q")
    assert code == 1, err
    assert "tbptt s0 diverged at outer step 1: non-finite outer_loss" in err
    assert "1 done" in out and "1 diverged" in out
    cells = {c.method_label: cell_paths(tmp_path / "out", c) for c in load_suite(path).cells()}
    record_path = cells["tbptt"]["record"]
    record = read_record(record_path)
    assert record["status"] == "diverged" and record["distill"]["diverged_at"] == 1
    assert record["eval"]["accuracy_mean"] is None and record["eval"]["accuracy_per_model"] == []
    assert "NaN" not in record_path.read_text() and not cells["tbptt"]["checkpoint"].exists()
    assert read_record(cells["random_real"]["record"])["status"] == "ok"  # the other cell ran
    code, table, _ = cli("table", tmp_path / "out")
    row = next(line for line in table.splitlines() if line.startswith("| tbptt"))
    assert "diverged" in row and not re.search(r"\d+\.\d\d ±", row)  # never shown as a number
    assert cli("run", path, "--out", tmp_path / "out", "-q")[0] == 0  # final: not rerun, nothing new failed


def test_an_absurd_outer_lr_diverges_instead_of_recording_chance_accuracy(write_suite, cli, tmp_path):
    path = write_suite(tiny_suite(methods={"tbptt": {"unroll": 3, "window": 2, "outer_lr": 1e30}},
                                  budget={"outer_steps": 6, "checkpoint_minutes": 10.0}))
    code, out, err = cli("run", path, "--out", tmp_path / "out", "-q")
    assert code == 1 and "diverged at outer step" in err
    (record_path,) = (tmp_path / "out").rglob("*.json")
    record = read_record(record_path)
    assert record.status == "diverged" and record.eval.accuracy_mean is None
    assert not list((tmp_path / "out").rglob("*.distilled.pt"))  # no NaN set is kept


def test_methods_option_runs_only_the_named_labels(write_suite, cli, tmp_path):
    path = write_suite(tiny_suite())
    out = tmp_path / "out"
    assert cli("run", path, "--out", out, "--methods", "tbptt", "-q")[0] == 0
    assert [json.loads(p.read_text())["method"] for p in out.rglob("*.json")] == ["tbptt"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_measures_allocated_memory(write_suite, cli, tmp_path):
    data = tiny_suite(hardware={"device": "cuda", "dtype": "float32"})
    path = write_suite(data)
    assert cli("run", path, "--out", tmp_path / "out", "-q")[0] == 0
    for cell in load_suite(path).cells():
        record = read_record(cell_paths(tmp_path / "out", cell)["record"])
        assert record["distill"]["memory_kind"] == "cuda_max_allocated_above_start"
        assert record["hardware"]["device"].startswith("cuda") and record["hardware"]["cuda"]
        if cell.method != "random_real":
            assert record["distill"]["peak_memory_bytes"] > 0


def test_interrupted_evaluation_resumes_at_the_evaluation(write_suite, cli, tmp_path, monkeypatch):
    """The finished distillation is checkpointed before the evaluation: nothing is distilled twice."""
    import harness.run.cell as runner_module

    path = write_suite(tiny_suite(methods={"tbptt": {"unroll": 3, "window": 2}}))
    cell = load_suite(path).cells()[0]
    paths = cell_paths(tmp_path / "out", cell)
    real_evaluate = runner_module.evaluate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_module, "evaluate", interrupted)
    assert cli("run", path, "--out", tmp_path / "out", "-q")[0] == 130
    assert files_under(tmp_path / "out") == [paths["checkpoint"]]  # no distilled set without its record
    checkpoint = torch.load(paths["checkpoint"], weights_only=True)
    assert checkpoint["step"] == 2  # all of the budget
    assert checkpoint["memory_kind"] == "cpu_tensor_peak_sampled" and checkpoint["peak_memory_bytes"] > 0

    cls = method_class("tbptt")
    monkeypatch.setattr(cls, "step", lambda self, step: pytest.fail("the distillation ran again"))
    monkeypatch.setattr(runner_module, "evaluate", real_evaluate)
    assert cli("run", path, "--out", tmp_path / "out", "-q")[0] == 0
    record = read_record(paths["record"])
    assert record["distill"]["outer_steps"] == 2 and record["config_id"] == cell.config_id
    assert files_under(tmp_path / "out") == sorted([paths["record"], paths["distilled"]])
    # A run that took no step measured nothing of the distillation: the checkpoint's peak and kind, and setup.
    assert (record["distill"]["peak_memory_bytes"], record["distill"]["memory_kind"]) == (
        checkpoint["peak_memory_bytes"], checkpoint["memory_kind"])
    assert record["distill"]["setup_seconds"] == checkpoint["setup_s"]


def test_bad_analysis_network_is_refused_before_anything_runs(write_suite, cli, tmp_path):
    data = tiny_suite(hardness={"model": {"name": "convnet", "width": 4, "depth": 5}})  # 8x8 pooled 5 times
    code, _, err = cli("run", write_suite(data), "--out", tmp_path / "out", "-q")
    assert code == 2 and "hardness.model" in err and len(err.strip().splitlines()) == 1
    assert files_under(tmp_path / "out") == []


@pytest.mark.parametrize("inner, evaluation, refused", [
    ({"name": "sgd", "lr": 0.01}, {"name": "adam", "lr": 0.001}, True),  # an SGD lr is no Adam lr
    ({"name": "sgd", "lr": 0.01, "momentum": 0.5}, {"name": "sgd", "lr": 0.01}, True),  # nor another momentum's
    ({"name": "sgd", "lr": 0.01}, {"name": "sgd", "lr": 0.5}, False),  # the same optimizer: its lr is replaced
])
def test_a_learned_lr_is_used_only_with_the_optimizer_it_was_learned_for(inner, evaluation, refused, write_suite,
                                                                        cli, tmp_path):
    data = tiny_suite(methods={"tbptt": {"unroll": 3, "window": 2, "learn_lr": True, "inner": inner}},
                      eval={"models": 1, "steps": 3, "augment": {"ops": []}, "optimizer": evaluation})
    code, _, err = cli("run", write_suite(data), "--out", tmp_path / "out", "-q")
    if refused:
        assert code == 2 and ": eval.use_learned_lr: " in err and "methods.tbptt" in err
        assert len(err.strip().splitlines()) == 1 and files_under(tmp_path / "out") == []
    else:
        assert code == 0, err
        (record,) = [read_record(p) for p in (tmp_path / "out").rglob("*.json")]
        distilled = DistilledSet.load(next((tmp_path / "out").rglob("*.distilled.pt")))
        assert distilled.lr is not None and distilled.lr_optimizer["name"] == "sgd"
        assert record["status"] == "ok"
    # No pre-check at all (a saved set evaluated by hand): the evaluation itself refuses.
    from harness.core.errors import ConfigError
    from harness.evaluation.protocols import check_learned_lr
    from harness.engine.optim import InnerOptimizerConfig, optimizer_without_lr

    if refused:
        with pytest.raises(ConfigError):
            check_learned_lr(optimizer_without_lr(InnerOptimizerConfig(**inner)), InnerOptimizerConfig(**evaluation))


@pytest.mark.parametrize("anytime_uses_it", [True, False])
def test_an_analysis_protocol_that_cannot_use_the_learned_lr_is_refused_up_front(anytime_uses_it, write_suite, cli,
                                                                                 tmp_path):
    """The anytime curve trains with its own protocol: a learned SGD lr it would use under Adam is
    refused before any cell runs (once, a cell failed at its first anytime point), naming the field."""
    data = tiny_suite(methods={"tbptt": {"unroll": 3, "window": 2, "learn_lr": True, "inner": {"name": "sgd", "lr": 0.01}}},
                      eval={"models": 1, "steps": 3, "augment": {"ops": []}, "use_learned_lr": False},
                      anytime={"enabled": True, "every_steps": 1,
                               "protocol": {"protocol": "standard", "models": 1, "steps": 2,
                                            "use_learned_lr": anytime_uses_it}})
    code, _, err = cli("run", write_suite(data), "--out", tmp_path / "out", "-q")
    if anytime_uses_it:
        assert code == 2 and ": anytime.protocol.use_learned_lr: " in err and "methods.tbptt" in err
        assert len(err.strip().splitlines()) == 1 and files_under(tmp_path / "out") == []
    else:
        assert code == 0, err
        (record,) = [read_record(p) for p in (tmp_path / "out").rglob("*.json")]
        assert record["status"] == "ok" and len(record["anytime"]["curve"]) >= 2


def test_run_cell_is_a_short_loop_around_the_cell_state():
    """Issue 20's budget: the cell's loop reads in one screen (its state, checkpoint and record live
    in harness.run.recording.CellState; the analyses are reached through their hooks, none by name)."""
    import inspect

    import harness.run.cell as cell_module

    assert len(inspect.getsource(cell_module.run_cell).splitlines()) <= 60
    code = inspect.getsource(cell_module).replace(cell_module.__doc__, "")  # the module's code, not its docstring
    assert not any(name in code for name in ("anytime", "hardness", "subsets", "ddranking"))


def test_the_peak_memory_of_a_resumed_cell_never_mixes_kinds(write_suite):
    """CellState.measured: this run's peak with the checkpoint's of the same kind; a run that took
    no step keeps the checkpoint's; another kind (resumed on another device) replaces it."""
    from types import SimpleNamespace

    from harness.run.recording import CellState

    def meter(kind, peak):
        return SimpleNamespace(kind=kind, current_peak=lambda: peak)

    cell = load_suite(write_suite(tiny_suite())).cells()[1]
    state = CellState(cell, torch.device("cpu"), torch.float32, total=10)
    state.measured(meter("cpu_peak_rss", 500), start=0)  # no step, nothing before: what the meter saw
    assert (state.peak, state.memory_kind) == (500, "cpu_peak_rss")
    state = CellState(cell, torch.device("cpu"), torch.float32, total=10, step=4, peak=300,
                      memory_kind="cpu_tensor_peak_sampled")
    state.measured(meter("cpu_peak_rss", 900), start=4)  # resumed at the evaluation: no step
    assert (state.peak, state.memory_kind) == (300, "cpu_tensor_peak_sampled")
    state.step = 6
    state.measured(meter("cpu_tensor_peak_sampled", 200), start=4)
    assert (state.peak, state.memory_kind) == (300, "cpu_tensor_peak_sampled")  # the larger of the two parts
    state.measured(meter("cuda_max_allocated_above_start", 100), start=4)
    assert (state.peak, state.memory_kind) == (100, "cuda_max_allocated_above_start")


def test_a_methods_setup_is_timed_and_shows_its_progress(write_suite, tmp_path, monkeypatch):
    """A selection method's work is its setup (random_real's teacher, herding's full-data networks):
    its seconds are recorded apart from the distillation's (none) and its ``report`` reaches the
    cell's progress as a phase."""
    import time

    from harness.data import load_dataset
    from harness.run.cell import cell_task, run_cell
    from harness.run.progress import CellProgress

    cls = method_class("random_real")
    original = cls.setup

    def slow_setup(self, task):
        time.sleep(0.3)
        self.report("training the full-data networks", 2, 2)
        return original(self, task)

    monkeypatch.setattr(cls, "setup", slow_setup)

    class Phases(CellProgress):
        def __init__(self):
            super().__init__()
            self.phases = []

        def phase(self, text):
            self.phases.append(text)

    (cell,) = load_suite(write_suite(tiny_suite())).cells(["random_real"])
    progress = Phases()
    record = run_cell(cell, cell_task(cell, load_dataset(cell.dataset), torch.device("cpu"), torch.float32),
                      tmp_path / "out", progress)
    assert record.distill.setup_seconds >= 0.3 and record.distill.wall_clock_s == 0.0
    assert "setting up" in progress.phases
    assert any(p.startswith("training the full-data networks 2/2") for p in progress.phases)
