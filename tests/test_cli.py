"""Bad input through the real command line: exit status 2, one line naming the file and the
field, no traceback, and nothing written under --out.

Every case goes through ``harness.run.cli.main``; a few also through a real ``python -m
harness.run.cli`` process, to see the exit status and stderr a user sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import files_under, tiny_suite
from harness.method.registry import list_methods
from harness.run.cell import cell_paths
from harness.run.suite import load_suite

REPO = Path(__file__).resolve().parents[1]


def assert_usage_error(code: int, out: str, err: str, *names: str) -> str:
    """Exit 2 with one line on stderr that contains every one of ``names``; returns the line."""
    assert code == 2, (code, out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    line = lines[0]
    assert line.startswith("ddbench: error: ")
    for name in names:
        assert name in line, (name, line)
    return line


def with_changes(edit) -> dict:
    data = tiny_suite()
    edit(data)
    return data


# (id, edit of the tiny suite, the dotted field the message must name)
BAD_SUITES = [
    ("unknown-method", lambda d: d["methods"].update({"nope": {}}), "methods.nope"),
    ("unknown-method-name", lambda d: d["methods"].update({"mine": {"method": "nope"}}), "methods.mine.method"),
    ("unknown-dataset", lambda d: d["grid"].update(datasets=["no_such_dataset"]), "grid.datasets"),
    ("window-gt-unroll", lambda d: d["methods"]["tbptt"].update(window=4), "methods.tbptt.window"),
    ("rat-window-gt-unroll", lambda d: d["methods"].update(rat_bptt={"unroll": 3, "window": 5}),
     "methods.rat_bptt.window"),
    ("window-zero", lambda d: d["methods"]["tbptt"].update(window=0), "methods.tbptt.window"),
    ("ipc-zero", lambda d: d["grid"].update(ipcs=[1, 0]), "grid.ipcs"),
    ("ipc-negative", lambda d: d["grid"].update(ipcs=[-3]), "grid.ipcs"),
    ("ipc-duplicate", lambda d: d["grid"].update(ipcs=[1, 1]), "grid.ipcs"),
    ("ipcs-empty", lambda d: d["grid"].update(ipcs=[]), "grid.ipcs"),
    ("seed-negative", lambda d: d["grid"].update(seeds=[-1]), "grid.seeds"),
    ("seeds-empty", lambda d: d["grid"].update(seeds=[]), "grid.seeds"),
    ("unknown-top-field", lambda d: d.update(extra={"x": 1}), "extra"),
    ("unknown-budget-field", lambda d: d["budget"].update(steps=3), "budget.steps"),
    ("unknown-method-field", lambda d: d["methods"]["tbptt"].update(windw=1), "methods.tbptt.windw"),
    ("unknown-data-field", lambda d: d.update(data={"digits": {"colour": True}}), "data.digits.colour"),
    ("unknown-eval-field", lambda d: d["eval"].update(model_count=2), "eval.model_count"),
    ("data-for-unlisted-dataset", lambda d: d.update(data={"mnist": {}}), "data.mnist"),
    ("digits-with-root", lambda d: d.update(data={"digits": {"root": "x"}}), "data.digits.root"),
    ("default-nobody-has", lambda d: d["method_defaults"].update(bogus=1), "method_defaults.bogus"),
    ("bad-default-value", lambda d: d["method_defaults"].update(real_batch=0), "method_defaults.real_batch"),
    ("method-overrides-default", lambda d: d["methods"]["tbptt"].update(real_batch=-1), "methods.tbptt.real_batch"),
    ("by-ipc-not-in-grid", lambda d: d["methods"]["tbptt"].update(by_ipc={"10": {"window": 1}}),
     "methods.tbptt.by_ipc.10"),
    ("by-ipc-bad-value", lambda d: d["methods"]["tbptt"].update(by_ipc={"1": {"window": 9}}),
     "methods.tbptt.by_ipc.1.window"),
    ("by-ipc-not-a-table", lambda d: d["methods"]["tbptt"].update(by_ipc=3), "methods.tbptt.by_ipc"),
    ("budget-by-ipc-not-in-grid", lambda d: d["budget"].update(by_ipc={"10": {"outer_steps": 1}}),
     "budget.by_ipc.10"),
    ("budget-negative-steps", lambda d: d["budget"].update(outer_steps=-1), "budget.outer_steps"),
    ("checkpoint-minutes-zero", lambda d: d["budget"].update(checkpoint_minutes=0), "budget.checkpoint_minutes"),
    ("eval-models-zero", lambda d: d["eval"].update(models=0), "eval.models"),
    ("model-width-zero", lambda d: d["model"].update(width=0), "model.width"),
    ("bad-device", lambda d: d["hardware"].update(device="tpu"), "hardware.device"),
    ("threads-zero", lambda d: d["hardware"].update(threads=0), "hardware.threads"),
    ("suite-name-traversal", lambda d: d["suite"].update(name=".."), "suite.name"),
    ("method-label-traversal", lambda d: d["methods"].update({"../escape": {"method": "tbptt", "unroll": 2,
                                                                            "window": 1}}),
     "methods.../escape"),
    ("no-methods", lambda d: d.update(methods={}), "methods"),
    ("missing-grid", lambda d: d.pop("grid"), "grid"),
    # Only found once the data is known: checked before the first cell runs.
    ("convnet-too-deep", lambda d: d["model"].update(depth=5), "model"),
    ("ipc-above-class-size", lambda d: d["grid"].update(ipcs=[1000]), "methods.random_real"),
]


@pytest.mark.parametrize("edit, field", [c[1:] for c in BAD_SUITES], ids=[c[0] for c in BAD_SUITES])
def test_bad_suite_exits_2_naming_file_and_field(edit, field, write_suite, cli, tmp_path):
    path = write_suite(with_changes(edit))
    out = tmp_path / "out"
    line = assert_usage_error(*cli("run", path, "--out", out, "-q"), str(path), f": {field}: ")
    assert "\n" not in line
    assert files_under(out) == []
    # Nothing anywhere else either (a method label must not lead outside --out).
    assert {p.name for p in files_under(tmp_path)} == {path.name}


def test_missing_dataset_root_names_data_root(write_suite, cli, tmp_path):
    missing = tmp_path / "no" / "such" / "root"
    path = write_suite(tiny_suite(grid={"datasets": ["mnist"], "ipcs": [1]}, data={"mnist": {"root": str(missing)}}))
    line = assert_usage_error(*cli("run", path, "--out", tmp_path / "out", "-q"), str(path), ": data.mnist.root: ")
    assert str(missing) in line  # the message says which folder is missing
    assert files_under(tmp_path / "out") == []


def test_default_dataset_root_missing_also_names_data_root(write_suite, cli, tmp_path, monkeypatch):
    # No [data.mnist] table at all: the default root ("data", relative) is checked and named.
    monkeypatch.chdir(tmp_path)
    path = write_suite(tiny_suite(grid={"datasets": ["mnist"], "ipcs": [1]}))
    assert_usage_error(*cli("run", path, "--out", tmp_path / "out", "-q"), str(path), ": data.mnist.root: ")


@pytest.mark.parametrize("text, where", [
    ("[suite\nname = 'x'\n", "line 1"),
    ("[suite]\nname = \n", "line 2"),
    ("[suite]\nname = 'a'\nname = 'b'\n", "line 3"),
])
def test_malformed_toml(text, where, write_suite, cli, tmp_path):
    path = write_suite(text)
    assert_usage_error(*cli("run", path, "--out", tmp_path / "out", "-q"), str(path), "malformed TOML", where)
    assert files_under(tmp_path / "out") == []


def test_not_utf8_suite(write_suite, cli, tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes("[suite]\nname = 'caf\xe9'\n".encode("latin-1"))
    assert_usage_error(*cli("run", path, "--out", tmp_path / "out", "-q"), str(path), "malformed TOML")


def test_nonexistent_suite_file(cli, tmp_path):
    path = tmp_path / "nope.toml"
    assert_usage_error(*cli("run", path, "--out", tmp_path / "out", "-q"), str(path), "not found")
    assert not (tmp_path / "out").exists()


def test_suite_path_is_a_directory(cli, tmp_path):
    assert_usage_error(*cli("run", tmp_path, "--out", tmp_path / "out", "-q"), str(tmp_path), "not found")


@pytest.mark.parametrize("methods, says", [
    ("nope", "unknown method 'nope'"),
    ("random_real,nope", "unknown method 'nope'"),
    ("bptt", "not in this suite"),  # registered, but the suite does not list it
    (",", "no method"),
])
def test_bad_methods_option(methods, says, write_suite, cli, tmp_path):
    path = write_suite(tiny_suite())
    line = assert_usage_error(*cli("run", path, "--out", tmp_path / "out", "--methods", methods, "-q"),
                              str(path), ": --methods: ", says)
    if "unknown" in says:
        assert "tbptt" in line and "random_real" in line  # lists what there is
    assert files_under(tmp_path / "out") == []


def test_out_is_a_file(write_suite, cli, tmp_path):
    path = write_suite(tiny_suite())
    out = tmp_path / "out.txt"
    out.write_text("not a folder")
    assert_usage_error(*cli("run", path, "--out", out, "-q"), str(out), "--out")
    assert out.read_text() == "not a folder"


@pytest.mark.parametrize("command", ["run", "plan"])
def test_cuda_requested_without_cuda_says_how_to_run_on_the_cpu(command, write_suite, cli, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without CUDA, even on a GPU one
    path = write_suite(tiny_suite(hardware={"device": "cuda"}))
    code, out, err = cli(command, path, "--out", tmp_path / "out", *(["-q"] if command == "run" else []))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{path}: hardware.device: " in err and "run on the CPU with --set hardware.device=cpu" in err
    assert files_under(tmp_path / "out") == []
    if command == "plan":  # the cells were listed before the device was needed
        assert "| digits" in out and "estimated total" not in out


def test_eval_on_cuda_without_cuda_says_how_to_evaluate_on_the_cpu(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert_usage_error(*cli("eval", tmp_path, "--device", "cuda"), "--device: ", "run on the CPU with --device cpu")


def test_a_setup_time_config_error_names_the_methods_field(write_suite, cli, tmp_path, monkeypatch):
    # Some checks need the task (e.g. a block layout that must divide the IPC): a method raises a
    # ConfigError from its check, which runs before any cell and is named inside methods.LABEL.
    from harness.core.errors import ConfigError
    from harness.method.registry import method_class

    def check(self, task, **kwargs):
        raise ConfigError(f"IPC {task.ipc} does not fit", field="window")

    monkeypatch.setattr(method_class("tbptt"), "check", check)
    path = write_suite(tiny_suite())
    assert_usage_error(*cli("run", path, "--out", tmp_path / "out", "-q"), str(path), ": methods.tbptt.window: ",
                       "digits IPC 1")
    assert files_under(tmp_path / "out") == []


# ----------------------------------------------------------------------------- checkpoints and records


def _cell_files(path: Path, out: Path, index: int = -1) -> dict[str, Path]:
    cell = load_suite(path).cells()[index]
    return cell_paths(out, cell)


def test_corrupt_checkpoint_exits_2_and_writes_nothing(write_suite, cli, tmp_path):
    path = write_suite(tiny_suite())
    out = tmp_path / "out"
    ckpt = _cell_files(path, out)["checkpoint"]  # the last cell: checked before the first runs
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"\x00garbage, not a torch file\xff" * 10)
    assert_usage_error(*cli("run", path, "--out", out, "-q"), str(ckpt), "corrupt checkpoint")
    assert files_under(out) == [ckpt]  # no record, no distilled set, the checkpoint left as it was


def test_checkpoint_that_is_not_ours(write_suite, cli, tmp_path):
    path = write_suite(tiny_suite())
    out = tmp_path / "out"
    ckpt = _cell_files(path, out)["checkpoint"]
    ckpt.parent.mkdir(parents=True)
    torch.save({"weights": torch.zeros(3)}, ckpt)  # a valid torch file, but no ddbench checkpoint
    assert_usage_error(*cli("run", path, "--out", out, "-q"), str(ckpt), "not a ddbench checkpoint")
    assert files_under(out) == [ckpt]


def test_checkpoint_of_another_run_is_rejected(write_suite, cli, tmp_path):
    path = write_suite(tiny_suite())
    out = tmp_path / "out"
    ckpt = _cell_files(path, out)["checkpoint"]
    ckpt.parent.mkdir(parents=True)
    torch.save({"run_id": "0123456789abcdef", "step": 1, "method_state": {}, "elapsed_s": 0.0,
                "peak_memory_bytes": 0, "step_times": [], "history": [], "started_at": "x"}, ckpt)
    assert_usage_error(*cli("run", path, "--out", out, "-q"), str(ckpt), ": run_id: ", "0123456789abcdef")
    assert files_under(out) == [ckpt]


@pytest.mark.parametrize("content, says", [
    ("{not json", "unreadable run record"),
    ("[1, 2]", "JSON object"),
    ('{"schema_version": 1}', ": run_id: "),
    ('{"hello": "a foreign file"}', ": schema_version: "),
])
def test_corrupt_record_at_a_cell_path(content, says, write_suite, cli, tmp_path):
    path = write_suite(tiny_suite())
    out = tmp_path / "out"
    record = _cell_files(path, out)["record"]
    record.parent.mkdir(parents=True)
    record.write_text(content)
    assert_usage_error(*cli("run", path, "--out", out, "-q"), str(record), says)
    assert files_under(out) == [record] and record.read_text() == content


def test_record_of_another_run_at_a_cell_path(write_suite, cli, tmp_path):
    # A complete record, but written by a different config (its run id is not the path's).
    path = write_suite(tiny_suite(methods={"random_real": {}}, method_defaults=None))
    out = tmp_path / "out"
    assert cli("run", path, "--out", out, "-q")[0] == 0
    record = _cell_files(path, out)["record"]
    data = json.loads(record.read_text())
    data["run_id"] = "ffffffffffffffff"
    record.write_text(json.dumps(data))
    before = {p: p.read_bytes() for p in files_under(out)}
    assert_usage_error(*cli("run", path, "--out", out, "-q"), str(record), ": run_id: ")
    assert {p: p.read_bytes() for p in files_under(out)} == before


# ----------------------------------------------------------------------------- ddbench table / list


def test_table_on_missing_and_empty_dirs(cli, tmp_path):
    assert_usage_error(*cli("table", tmp_path / "nope"), str(tmp_path / "nope"), "not a directory")
    (tmp_path / "empty").mkdir()
    assert_usage_error(*cli("table", tmp_path / "empty"), str(tmp_path / "empty"), "no run records")


def test_table_skips_foreign_json_and_rejects_corrupt_records(cli, tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    (root / "package.json").write_text('{"name": "not a record"}')
    assert_usage_error(*cli("table", root), str(root), "no run records")  # skipped, so nothing left
    bad = root / "x.json"
    bad.write_text('{"schema_version": 1, "run_id": "a"}')
    assert_usage_error(*cli("table", root), str(bad), "lacks a required field")
    bad.write_text("{truncated")
    assert_usage_error(*cli("table", root), str(bad), "unreadable run record")


def test_list_shows_every_registered_method_and_the_suites(cli):
    code, out, err = cli("list", "--suites", REPO / "suites")
    assert code == 0 and err == ""
    for name in list_methods():
        assert f"  {name} " in out
    assert "digits" in out and "smoke.toml" in out


def test_argparse_errors_exit_2(cli):
    with pytest.raises(SystemExit) as exc:
        cli("run")  # the suite argument is missing
    assert exc.value.code == 2


# ----------------------------------------------------------------------------- a real process


def _subprocess(argv: list, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _ddbench_script() -> list[str]:
    # The console script installed beside this interpreter, else the module (same main()).
    script = Path(sys.executable).with_name("ddbench")
    return [str(script)] if script.exists() else [sys.executable, "-m", "harness.run.cli"]


# Two cases only: every process start imports torch and torchvision (seconds each).
@pytest.mark.parametrize("case", ["window-gt-unroll", "corrupt-checkpoint"])
def test_real_process_exit_status_and_stderr(case, write_suite, tmp_path):
    out = tmp_path / "out"
    if case == "window-gt-unroll":
        path = write_suite(with_changes(lambda d: d["methods"]["tbptt"].update(window=7)))
        names = (str(path), ": methods.tbptt.window: ")
        command = [sys.executable, "-m", "harness.run.cli"]
        expected = []
    else:
        path = write_suite(tiny_suite())
        ckpt = _cell_files(path, out, 0)["checkpoint"]
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"PK\x03\x04 truncated zip")
        names = (str(ckpt), "corrupt checkpoint")
        command = _ddbench_script()
        expected = [ckpt]
    proc = _subprocess([*command, "run", path, "--out", out, "-q"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for name in names:
        assert name in proc.stderr
    assert files_under(out) == expected


# ----------------------------------------------------------------------------- cutting a suite down


def test_filters_and_overrides_cut_a_suite_down(write_suite, cli, tmp_path):
    data = tiny_suite(grid={"datasets": ["digits"], "ipcs": [1, 2], "seeds": [0, 1]})
    data["methods"]["tbptt"]["by_ipc"] = {"2": {"unroll": 4}}  # an override for an IPC the run leaves out
    path = write_suite(data)
    out = tmp_path / "out"
    code, stdout, err = cli("run", path, "--out", out, "-q", "--ipcs", "1", "--seeds", "1", "--methods", "tbptt",
                            "--set", "budget.outer_steps=3", "--set", "methods.tbptt.window=1")
    assert code == 0, err
    (record_path,) = out.rglob("*.json")
    record = json.loads(record_path.read_text())
    assert (record["ipc"], record["seed"], record["method"]) == (1, 1, "tbptt")
    assert record["method_config"]["window"] == 1 and record["distill"]["outer_steps"] == 3
    assert record["suite_overrides"] == ["budget.outer_steps=3", "methods.tbptt.window=1"]
    plain = load_suite(path).cells(["tbptt"], ipcs=[1], seeds=[1])[0]
    assert record["run_id"] != plain.run_id  # an override is part of the config, and of the run id
    assert "1 done" in stdout and "tbptt s1: " in err


@pytest.mark.parametrize("argv, field", [
    (["--ipcs", "3"], "--ipcs"), (["--seeds", "x"], "--seeds"), (["--datasets", "mnist"], "--datasets"),
    (["--set", "budget.outer_steps=-1"], "budget.outer_steps"), (["--set", "methods.tbptt.windoww=2"],
                                                                 "methods.tbptt.windoww"),
    (["--set", "nonsense"], "--set"), (["--ipcs", ""], "--ipcs"),
])
def test_bad_filters_and_overrides_exit_2_naming_the_option(argv, field, write_suite, cli, tmp_path):
    path = write_suite(tiny_suite())
    code, out, err = cli("run", path, "--out", tmp_path / "out", "-q", *argv)
    assert code == 2 and f": {field}: " in err and len(err.strip().splitlines()) == 1, err
    assert files_under(tmp_path / "out") == []


def _tables(text: str) -> list[dict[str, list[str]]]:
    """Every github table of ``text``: method -> its cells."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("| dataset"):
            current = {}
            tables.append(current)
        elif line.startswith("| digits") and current is not None:
            cells = [c.strip() for c in line.strip("|").split("|")]
            current[cells[2]] = cells
    return tables


def test_plan_lists_the_cells_and_estimates_without_writing(write_suite, cli, tmp_path, monkeypatch):
    import harness.run.plan as plan

    monkeypatch.setattr(plan, "load_average", lambda: [0.0, 0.0, 0.0])  # an idle machine: no warning
    path = write_suite(tiny_suite(grid={"datasets": ["digits"], "ipcs": [1], "seeds": [0, 1]},
                                  budget={"outer_steps": 50, "checkpoint_minutes": 10.0}))
    out = tmp_path / "out"
    assert cli("run", path, "--out", out, "-q", "--seeds", "0", "--methods", "random_real")[0] == 0
    before = files_under(out)
    code, text, err = cli("plan", path, "--out", out)
    assert code == 0, err
    listing, timed = _tables(text)
    assert text.index("4 cells in 2 settings, 3 pending") < text.index("timed on cpu")  # listed before timing
    assert "1 new, 1 recorded" in listing["random_real"] and "2 new" in listing["tbptt"]
    assert set(timed) == {"random_real", "tbptt"} and timed["random_real"][3] == "1" and timed["tbptt"][3] == "2"
    per_step = float(timed["tbptt"][5])
    assert per_step > 0 and timed["random_real"][5] == "-" and "estimated total for the pending cells" in text
    assert "ddranking" in timed["tbptt"][8] and "warning" not in text + err
    # Progress without a terminal: a plain line per step on stderr.
    assert "plan: loading digits" in err and "plan: timing digits IPC 1 tbptt (2/2)" in err
    assert files_under(out) == before  # nothing written
    code, dry, _ = cli("run", path, "--out", out, "--dry-run")
    assert code == 0 and "estimated total" in dry and files_under(out) == before


def test_plan_no_timing_lists_and_counts_without_setting_anything_up(write_suite, cli, tmp_path, monkeypatch):
    import harness.run.plan as plan

    def refuse(*args, **kwargs):
        raise AssertionError("--no-timing set something up")

    for name in ("_time_setting", "load_cell_dataset", "check_cell", "resolve_device"):
        monkeypatch.setattr(plan, name, refuse)
    path = write_suite(tiny_suite(grid={"datasets": ["digits"], "ipcs": [1, 2], "seeds": [0, 1, 2]}))
    code, text, err = cli("plan", path, "--out", tmp_path / "out", "--no-timing")
    assert code == 0, err
    (listing,) = _tables(text)
    assert "12 cells in 4 settings, 12 pending" in text and "estimated" not in text and err == ""
    assert [cells[3] for cells in listing.values()] == ["3", "3"]  # by method: the last IPC's row of each


def test_plan_warns_when_the_machine_is_busy(write_suite, cli, tmp_path, monkeypatch):
    import harness.run.plan as plan

    monkeypatch.setattr(plan, "load_average", lambda: [2.0 * os.cpu_count() + 1, 1.0, 1.0])
    path = write_suite(tiny_suite())
    code, text, err = cli("plan", path, "--out", tmp_path / "out", "--methods", "random_real")
    assert code == 0, err
    assert "ddbench: warning: the 1-minute load average is" in err and f"on {os.cpu_count()} CPUs" in err
    assert "warning: the 1-minute load average" in text  # and beside the estimate it spoils
