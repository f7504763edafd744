"""``benchmarks/unroll.py --tiny`` runs on CPU and its meta-gradients agree with the baseline.

This checks the benchmark's output, never its timings (numbers are for the benchmark to
report, not for a test to assert).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "unroll.py"


@pytest.fixture(scope="module")
def unroll():
    spec = importlib.util.spec_from_file_location("unroll_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_tiny_benchmark_writes_every_row_and_exact_gradients(unroll, tmp_path, capsys):
    out = tmp_path / "unroll.json"
    assert unroll.main(["--tiny", "--steps", "1", "--json", str(out), "--methods", "rat_bptt:full,at_bptt",
                        "--trajectories", "1,2"]) == 0
    result = json.loads(out.read_text())
    windows = list(unroll.TINY.windows)
    variants = {(r["variant"], r["window"]) for r in result["rows"]}
    assert variants == {(v, w) for v in ("higher", "full", "recompute", "floor") for w in windows}
    for name in ("full", "recompute"):  # float64, same init and data as the higher baseline
        assert result["gradient_check"][name] < 1e-8
    by = {(r["variant"], r["window"]): r for r in result["rows"]}
    for r in result["rows"]:
        assert r["median_s"] > 0 and r["peak_bytes"] > 0
        assert r["memory_fraction_of_higher"] == pytest.approx(r["peak_bytes"] / by[("higher", r["window"])]["peak_bytes"])
    # Tensor bytes are exact on CPU: one step's graph at a time holds less than the whole window's.
    longest = windows[-1]
    assert by[("recompute", longest)]["peak_bytes"] < by[("full", longest)]["peak_bytes"]
    assert [r["method"] for r in result["methods"]] == ["rat_bptt", "at_bptt"]
    # K trajectories: a row per (variant, window, K), meta-gradients per second = K / seconds,
    # and the batched meta-gradient is the mean of the single ones.
    assert {(r["variant"], r["window"], r["trajectories"]) for r in result["trajectories"]} == {
        (v, w, k) for v in ("full", "recompute") for w in windows for k in (1, 2)}
    for r in result["trajectories"]:
        assert r["meta_gradients_per_s"] == pytest.approx(r["trajectories"] / r["median_s"])
    assert result["gradient_check"]["trajectories_vs_mean_of_singles"] < 1e-10
    table = capsys.readouterr().out
    assert "speedup vs higher" in table and "tensor_peak_bytes" in table


def test_bad_arguments_exit_2(unroll, capsys):
    assert unroll.main(["--tiny", "--variants", "nope"]) == 2
    assert unroll.main(["--tiny", "--windows", "999"]) == 2
    assert unroll.main(["--tiny", "--trajectories", "0"]) == 2
    err = capsys.readouterr().err
    assert "--variants" in err and "--windows" in err and "--trajectories" in err


def test_a_time_budget_skips_what_does_not_fit_and_says_so(unroll, tmp_path):
    out = tmp_path / "unroll.json"
    # No time at all: every measurement is recorded as skipped, none is taken, the JSON is complete.
    assert unroll.main(["--tiny", "--no-check", "--budget-s", "0", "--trajectories", "1,2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    windows = list(unroll.TINY.windows)
    assert {(r["variant"], r["window"]) for r in result["rows"]} == {
        (v, w) for v in ("higher", "full", "recompute", "floor") for w in windows}
    assert all(r == {"variant": r["variant"], "window": r["window"], "skipped": "time budget"} for r in result["rows"])
    assert len(result["trajectories"]) == 2 * 2 * len(windows)
    assert all(r["skipped"] == "time budget" and "median_s" not in r for r in result["trajectories"])


def test_time_budget_predicts_from_the_last_measurement_of_a_variant(unroll):
    budget = unroll.TimeBudget(10.0)
    assert budget.allows("rows:full", calls=3)  # never measured: started while time is left
    budget.record("trajectories:full", {"median_s": 2.0}, scale=2)  # 1 s per call and trajectory
    assert budget.allows("trajectories:full", calls=3, scale=2)  # ~6 s
    assert not budget.allows("trajectories:full", calls=3, scale=4)  # ~12 s > 10 s left
    assert unroll.TimeBudget(None).allows("rows:full", calls=10**6)


def test_named_shapes(unroll, capsys):
    shape = unroll.SHAPES["mnist-w64"]  # issue 17's CPU speed check
    assert (shape.channels, shape.size, shape.width, shape.depth, shape.ipc) == (1, 28, 64, 3, 10)
    assert (shape.unroll, shape.windows, shape.real_batch, shape.threads) == (60, (20,), 1000, 2)
    assert unroll.main(["--shape", "nope"]) == 2
    assert "--shape: unknown 'nope' (known: cifar10, tiny, mnist-w64)" in capsys.readouterr().err


def test_commit_speed_times_and_profiles_a_method_at_a_named_shape(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("commit_speed", SCRIPT.with_name("commit_speed.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "speed.json"
    assert module.main(["--shape", "tiny", "--mode", "full", "--warmup", "0", "--steps", "2", "--profile",
                        "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["harness"]["folder"] == str(SCRIPT.parents[1])  # the checkout that was timed
    assert len(result["seconds_per_step"]) == 2 and [p["window"] for p in result["plans"]] == [6, 6]
    parts = result["profile_parts"]
    step, engine, autograd = (parts["method.step (whole outer step)"], parts["meta_gradient (the engine)"],
                              parts["autograd (torch.autograd.grad / backward)"])
    assert 0 < engine <= step and 0 < autograd <= step  # the parts nest inside the step
    assert parts["  window with graph + its backward (full mode)"] > 0 and parts["  reverse steps (recompute mode)"] == 0
    assert result["profile_ops"] and all(r["self_cpu_s"] >= 0 for r in result["profile_ops"])
    assert module.main(["--shape", "nope"]) == 2


def test_a_setting_out_of_memory_is_recorded_and_other_errors_on_cpu_raise(unroll):
    def oom():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB")

    assert unroll.attempt(oom, 1, torch.device("cpu")) == {"error": "out of memory"}
    assert unroll._cell({"variant": "full", "window": 200, "error": "out of memory"}, "median_s", "{:.4f}") == \
        "out of memory"
    with pytest.raises(ZeroDivisionError):
        unroll.attempt(lambda: 1 / 0, 1, torch.device("cpu"))
