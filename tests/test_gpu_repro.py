"""``benchmarks/gpu_repro.py``: its ``--tiny`` run on a CPU writes the JSON and the markdown table
the GPU run will, with every part done; its time limits stop what overruns; its readers count right.

Timings are never asserted (they are the script's to report); what is checked is that every part
ran and that the table says what the JSON and the run records say.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_repro.py"


@pytest.fixture(scope="module")
def repro():
    spec = importlib.util.spec_from_file_location("gpu_repro", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def cuda_tests() -> int:
    """How many tests carry the cuda mark (what ``pytest -m cuda`` selects)."""
    return sum(len(re.findall(r"^@pytest\.mark\.cuda\b", p.read_text(), re.M)) for p in (REPO / "tests").glob("test_*.py"))


@pytest.mark.slow
def test_tiny_run_writes_the_json_and_the_table_with_every_part(repro, tmp_path, capsys):
    out, export = tmp_path / "out", tmp_path / "export"
    assert repro.main(["--tiny", "--out", str(out), "--export", str(export)]) == 0
    result = json.loads((out / "gpu_repro.json").read_text())
    table = (out / "gpu_repro.md").read_text()
    assert result["mode"] == "tiny" and result["wall_s"] <= repro.TINY.total_s
    assert set(result["parts"]) == {"prepare", "unroll", "distill rat_bptt", "pytest -m cuda", "random_real"}
    assert all(p["status"] == "ok" for p in result["parts"].values()), result["parts"]
    assert result["environment"]["dataset"]["train_images"] == 120  # the generated set: 10 classes x 12

    # (a) the unroll benchmark's JSON, embedded: the first window measured, the rest measured or skipped
    unroll = result["unroll"]
    assert unroll["shape_name"] == "tiny" and unroll["budget_s"] == repro.TINY.unroll_max_s
    first = [r for r in unroll["rows"] if r["window"] == unroll["shapes"]["windows"][0]]
    assert {r["variant"] for r in first} == {"higher", "full", "recompute", "floor"}
    assert "median_s" in first[0]  # the first measurement always runs
    assert all("median_s" in r or r.get("skipped") == "time budget" for r in unroll["rows"])
    checks = unroll["gradient_check"]  # float64: against higher, and K = 2 against the mean of single ones
    assert set(checks) == {"full", "recompute", "trajectories_vs_mean_of_singles"}
    assert all(err < 1e-8 for err in checks.values()), checks

    # (b) pytest -m cuda: every cuda-marked test selected, all skipped without a device
    pytest_cuda = result["pytest_cuda"]
    assert pytest_cuda["total"] == cuda_tests() > 0
    assert pytest_cuda["skipped"] == pytest_cuda["total"] and pytest_cuda["failed"] == pytest_cuda["errors"] == 0
    assert f"0 passed, 0 failed, 0 errors, {pytest_cuda['total']} skipped" in table

    # (c) both cells ran through ddbench run on the suite, evaluated by the ratbptt protocol
    rat, rnd = result["distillation"]["rat_bptt"], result["distillation"]["random_real"]
    assert rat["status"] == rnd["status"] == "ok"
    assert rat["outer_steps"] >= 1 and rat["models"] == rnd["models"] == 2
    assert rat["selected_budget"] in (5, 10) and rat["test_selected_budget"] in (5, 10)
    assert rat["test_selected_accuracy"] >= rat["accuracy_mean"] - 1e-12  # the maximum over the budgets
    record = json.loads((out / "runs" / rat["record"]).read_text())
    assert record["eval"]["protocol"]["protocol"] == "ratbptt" and record["suite"] == repro.SUITE_NAME
    assert rat["accuracy_mean"] == record["eval"]["accuracy_mean"]
    assert rat["test_selected_accuracy"] == record["eval"]["test_selected"]["accuracy_mean"]
    assert record["distill"]["stopped_by"] == "minutes"

    # The table shows the measured numbers beside the reference ones.
    for text in (repro._pct(rat["accuracy_mean"], rat["accuracy_std"]), repro._pct(rnd["accuracy_mean"], rnd["accuracy_std"]),
                 "53.3 ± 0.1", "33.1", "1.2-1.5", "26.8", "TINY CPU smoke run", f"| {rat['outer_steps']} |"):
        assert text in table, text
    assert table in capsys.readouterr().out
    assert sorted(p.name for p in export.iterdir()) == ["artifacts.tar.gz", "gpu_repro.json", "gpu_repro.md"]
    with tarfile.open(export / "artifacts.tar.gz") as tar:
        names = tar.getnames()
    assert "logs/rat_bptt.log" in names and "unroll.json" in names and f"runs/{rat['record']}" in names


def test_bad_arguments_exit_2_with_one_line(repro, tmp_path, capsys):
    assert repro.main(["--tiny"]) == 2
    assert repro.main(["--tiny", "--out", str(tmp_path), "--parts", "unroll,nope"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["gpu_repro.py: error: --out is required",
                   "gpu_repro.py: error: --parts: unknown 'nope' (known: unroll, pytest, distill)"]
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_job_past_its_deadline_is_stopped(repro, tmp_path):
    job = repro.Job("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "sleep.log", {})
    t0 = time.monotonic()
    job.start().wait(time.monotonic() + 1.0)
    assert time.monotonic() - t0 < 15
    summary = job.summary("1 s")
    assert summary["status"] == "stopped at its time limit" and summary["exit_code"] is not None


def test_junit_counts_separate_passed_failed_errors_and_skipped(repro, tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest" tests="5" failures="1" errors="1" skipped="1" time="2.5">'
        '<testcase classname="tests.test_a" name="test_ok"/><testcase classname="tests.test_a" name="test_ok2"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_b" name="test_err"><error message="y"/></testcase>'
        '<testcase classname="tests.test_b" name="test_skip"><skipped message="z"/></testcase>'
        '</testsuite></testsuites>')
    assert repro.junit_counts(xml) == {"total": 5, "passed": 2, "failed": 1, "errors": 1, "skipped": 1,
                                       "failing": ["tests.test_a::test_bad", "tests.test_b::test_err"], "seconds": 2.5}
    assert repro.junit_counts(tmp_path / "missing.xml") is None


def test_the_table_says_why_a_number_is_missing(repro):
    result = {"mode": "gpu", "started_at": "t", "wall_s": 470.0, "plan": {"total_s": 480}, "git": {"commit": None},
              "environment": {"device_name": "NVIDIA H200", "torch": "2.11", "cuda": "13.0"},
              "parts": {"prepare": {"status": "ok", "budget": "40 s", "wall_s": 12.0},
                        "distill rat_bptt": {"status": "stopped at its time limit", "budget": "300 s", "wall_s": 400}},
              "unroll": {"rows": [{"variant": "higher", "window": 60, "median_s": 1.25, "peak_bytes": 2**34,
                                   "speedup_vs_higher": 1.0, "memory_fraction_of_higher": 1.0},
                                  {"variant": "full", "window": 200, "error": "out of memory"},
                                  {"variant": "floor", "window": 200, "skipped": "time budget"}],
                         "trajectories": []},
              "pytest_cuda": None, "distillation": {"rat_bptt": None, "random_real": None}}
    table = repro.render_markdown(result)
    assert "| 60 | higher | 1.250 | 16.00 | 1.00x | 1.000 |" in table
    assert "| 200 | full | out of memory |" in table and "| 200 | floor | skipped (time) |" in table
    assert "| distill rat_bptt | 300 s | stopped at its time limit | 400 |" in table
    assert table.count("no record (see the part's status and log)") == 2 and "no result" in table


def test_the_data_is_extracted_inside_the_checkout_once(repro, tmp_path):
    source = tmp_path / "src"
    for split in ("train", "test"):
        (source / split / "cat").mkdir(parents=True)
        (source / split / "cat" / "0000.jpg").write_bytes(b"jpeg")
    archive = tmp_path / "shared" / repro.ARCHIVE
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(source / split, arcname=split)
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(FileNotFoundError, match="no cifar10-jpeg.tar.gz was found"):
        repro.cifar_root(data, (data / repro.ARCHIVE,))
    root = repro.cifar_root(data, (data / repro.ARCHIVE, archive))
    assert root == data / "cifar10-jpeg" and (root / "test" / "cat" / "0000.jpg").read_bytes() == b"jpeg"
    assert sorted(p.name for p in data.iterdir()) == ["cifar10-jpeg"]  # no temp folder left
    archive.unlink()
    assert repro.cifar_root(data, (archive,)) == root  # already there: not extracted again


def test_the_suite_has_the_papers_shapes_and_the_published_protocol(repro):
    from harness.run.suite import load_suite

    cells = {c.method_label: c for c in load_suite(repro.SUITE, check_data=False).cells()}
    assert set(cells) == {"rat_bptt", "random_real"}
    rat = cells["rat_bptt"]
    assert (rat.dataset.name, rat.ipc, rat.suite) == ("cifar10-jpeg", 10, repro.SUITE_NAME)
    cfg = rat.method_config
    assert (cfg.unroll, cfg.window, cfg.real_batch, cfg.init, cfg.outer_lr) == (200, 60, 5000, "gaussian", 1e-3)
    assert (cfg.inner.name, cfg.inner.lr) == ("adam", 1e-3)
    assert (rat.model.width, rat.model.depth) == (128, 3)
    assert (rat.dataset.normalize, rat.dataset.zca, rat.dataset.zca_regularization) == (False, True, 0.1)
    assert rat.budget.minutes * 60 == repro.GPU.distill_s and rat.budget.outer_steps == 0
    assert rat.eval.protocol == "ratbptt" and rat.eval.models == 8
    assert not rat.analyses["ddranking"].enabled and not rat.analyses["hardness"].enabled
    assert rat.hardware.device == "cuda"


def test_record_summary_reads_the_test_selected_maximum_or_finds_it_in_the_budgets(repro, tmp_path):
    folder = tmp_path / "runs" / "s" / "d" / "ipc10" / "rat_bptt"
    folder.mkdir(parents=True)
    budgets = [{"steps": 300, "test_accuracy": 0.40, "validation_accuracy": 0.41},
               {"steps": 600, "test_accuracy": 0.45, "validation_accuracy": 0.40}]
    record = {"status": "ok", "distill": {"outer_steps": 210, "wall_clock_s": 300.5, "peak_memory_bytes": 2**30,
                                          "median_seconds_per_outer_step": 1.4, "memory_kind": "k"},
              "eval": {"accuracy_mean": 0.40, "accuracy_std": 0.01, "accuracy_per_model": [0.39, 0.41],
                       "details": {"selected_budget": 300, "budgets": budgets}}}
    (folder / "seed0-abc.json").write_text(json.dumps(record))
    got = repro.record_summary(tmp_path / "runs", "rat_bptt")
    assert (got["accuracy_mean"], got["selected_budget"], got["models"]) == (0.40, 300, 2)
    assert (got["test_selected_accuracy"], got["test_selected_budget"]) == (0.45, 600)  # the best budget on test
    record["eval"]["test_selected"] = {"accuracy_mean": 0.47, "accuracy_std": 0.02, "budget": 600}
    (folder / "seed0-abc.json").write_text(json.dumps(record))
    got = repro.record_summary(tmp_path / "runs", "rat_bptt")
    assert (got["test_selected_accuracy"], got["test_selected_std"]) == (0.47, 0.02)  # the record's own
    assert repro.record_summary(tmp_path / "runs", "random_real") is None
