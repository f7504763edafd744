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
