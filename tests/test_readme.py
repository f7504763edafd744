"""The README's worked examples run as written: a method, a dataset (as a plug-in found through
its entry point), an analysis and a table view, each through a real suite run."""

from __future__ import annotations

import re
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
import torch

import harness.core.registry as core_registry
from conftest import tiny_suite
from harness.core.errors import ConfigError
from harness.data import DATASETS, DataConfig, load_dataset
from harness.evaluation import ANALYSES
from harness.method import METHODS, DistillTask, create_method
from harness.models import ModelConfig
from harness.report import VIEWS, iter_records
from test_methods import assert_recompute_equals_full

README = Path(__file__).resolve().parents[1] / "README.md"


def example_source(name: str) -> str:
    match = re.search(rf"<!-- example-{name} -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert match, f"README.md lost its <!-- example-{name} --> code block"
    return match.group(1)


def run_example(name: str) -> dict:
    namespace: dict = {"__name__": f"readme_{name}"}
    exec(compile(example_source(name), f"{README}#{name}", "exec"), namespace)
    return namespace


@pytest.fixture
def curriculum_method():
    with METHODS.scoped():
        # A user who saved the example as methods/curriculum_bptt.py has it registered already:
        # the README's code replaces it for this test (and it is put back afterwards).
        METHODS.unregister("curriculum_bptt")
        yield run_example("method")["CurriculumBPTT"]


def test_readme_method_registers_validates_and_runs(curriculum_method):
    assert "curriculum_bptt" in METHODS.names()
    with pytest.raises(ConfigError, match="window"):
        create_method("curriculum_bptt", unroll=10, window=20)
    method = create_method("curriculum_bptt", unroll=8, window=3, stride=2, every=2, real_batch=64)
    assert isinstance(method, curriculum_method)
    assert [method.plan(step, torch.Generator())[0] for step in range(8)] == [3, 3, 5, 5, 7, 7, 8, 8]
    data = load_dataset(DataConfig(name="digits"))
    method.setup(DistillTask(data=data, ipc=1, seed=0, model=ModelConfig(width=4, depth=1), outer_steps=2))
    before = method.images.detach().clone()
    metrics = method.step(0)
    assert metrics["unroll"] == 3 and metrics["window"] == 3
    assert not torch.equal(method.images.detach(), before)
    # The engine check of tests/test_methods.py covers it through its declared tiny_config.
    assert_recompute_equals_full("curriculum_bptt", "adam", data.to("cpu", torch.float64))


@pytest.fixture
def npz_plugin(tmp_path, monkeypatch):
    """The README's dataset as a module outside ddbench, found through a ddbench.datasets entry point."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "readme_npz_dataset.py").write_text(example_source("dataset"))
    monkeypatch.syspath_prepend(str(plugins))
    monkeypatch.delitem(sys.modules, "readme_npz_dataset", raising=False)
    eps = [EntryPoint("npz", "readme_npz_dataset", "ddbench.datasets")]
    real = core_registry.entry_points
    monkeypatch.setattr(core_registry, "entry_points", lambda group: eps if group == "ddbench.datasets" else real(group=group))
    with DATASETS.scoped():
        monkeypatch.setattr(DATASETS, "_loaded", False)  # look at the entry points again
        yield tmp_path / "npz"


def _write_npz(root: Path) -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images * 15).astype(np.uint8)[:, None]  # 0..16 -> 0..240
    root.mkdir()
    np.savez(root / "train.npz", x=x[:1400], y=bunch.target[:1400])
    np.savez(root / "test.npz", x=x[1400:], y=bunch.target[1400:])


def test_readme_dataset_plugin_runs_in_a_suite(npz_plugin, write_suite, cli, tmp_path):
    root = npz_plugin
    suite = tiny_suite(grid={"datasets": ["npz"], "ipcs": [1], "seeds": [0]}, data={"npz": {"root": str(root)}})
    # The root does not exist yet: the suite is refused before anything runs, naming the field.
    code, _, err = cli("run", write_suite(suite), "--out", tmp_path / "out", "-q")
    assert code == 2 and "data.npz.root" in err and "train.npz" in err
    _write_npz(root)
    assert "npz" in DATASETS.names()
    code, _, err = cli("run", write_suite(suite), "--out", tmp_path / "out", "-q")
    assert code == 0, err
    records = [r for _, r in iter_records(tmp_path / "out")]
    assert sorted(r.method for r in records) == ["random_real", "tbptt"]
    assert all(r.dataset == "npz" and r.preprocessing["source"] == "numpy .npz arrays" for r in records)
    assert all(0 <= r.eval.accuracy_mean <= 1 for r in records)


@pytest.fixture
def per_class_plugins():
    with ANALYSES.scoped(), VIEWS.scoped():
        namespace = run_example("analysis")
        run_example("view")
        yield namespace["PerClass"]


def test_readme_analysis_and_view(per_class_plugins, write_suite, cli, tmp_path):
    suite = tiny_suite(per_class={"enabled": True})
    code, _, err = cli("run", write_suite(suite), "--out", tmp_path / "out", "-q")
    assert code == 0, err
    records = [r for _, r in iter_records(tmp_path / "out")]
    for r in records:
        section = r.per_class  # the analysis's section, in the typed record
        assert section["classes"] == [str(c) for c in range(10)] and len(section["accuracy"]) == 10
        # The evaluation's overall accuracy is the classes' accuracies weighted by class size.
        assert min(section["accuracy"]) <= r.eval.accuracy_mean <= max(section["accuracy"])
    code, table, err = cli("table", tmp_path / "out", "--view", "per_class")
    assert code == 0, err
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert [c.strip() for c in lines[0].strip("|").split("|")][:4] == ["method", "dataset", "IPC", "0"]
    assert [line.split("|")[1].strip() for line in lines[1:]] == ["random_real", "tbptt"]
    # A bad value in the analysis's suite table is refused with its dotted field.
    code, _, err = cli("run", write_suite(tiny_suite(per_class={"enabled": "maybe"}), "bad.toml"), "--out",
                       tmp_path / "bad", "-q")
    assert code == 2 and "per_class.enabled" in err


def _results_section() -> str:
    text = README.read_text()
    start = text.index("## Results on CPU")
    return text[start:text.index("\n## ", start + 1)]


def _cells(section: str, heading: str) -> list[list[str]]:
    """The body rows of the first markdown table after ``heading``, split into cells."""
    after = section[section.index(heading):]
    table = re.search(r"\n(\|.*\|\n)+", after).group(0).strip().splitlines()
    return [[c.strip() for c in row.strip("|").split("|")] for row in table[2:]]


def test_the_results_section_says_what_the_committed_records_say():
    """The README's CPU result tables are copies of rendered tables: every accuracy, step count and
    score in them is what the records in results/ give today (a rerun that changes a number fails
    here until the README is updated)."""
    from harness.report.tables import group, summarize

    root = README.parent / "results"
    records = [r for folder in ("cpu-mnist", "cpu-cifar10-jpeg") for _, r in iter_records(root / folder)]
    cells = group(records)
    assert cells, "no committed CPU-suite records"

    def acc(method: str, dataset: str, ipc: int) -> tuple[str, int]:
        rs = cells[(method, dataset, ipc)]
        s = summarize(rs)
        return f"{100 * s['accuracy_mean']:.2f} ± {100 * s['accuracy_std']:.2f}", rs[0].distill.outer_steps

    section = _results_section()
    checked = 0
    for row in _cells(section, "**cifar10-jpeg, IPC 10**"):
        text, steps = acc(row[0], "cifar10-jpeg", 10)
        assert row[1].strip("*") == text, row
        assert row[2] == (str(steps) if steps else "-"), row
        checked += 1
    for row in _cells(section, "**MNIST**"):
        for ipc, cell in zip((1, 10), row[1:]):
            text, steps = acc(row[0], "mnist", ipc)
            assert cell.strip("*").startswith(text), (row, ipc)
            assert not steps or f"({steps} steps)" in cell, (row, ipc)
            checked += 1
    for row in _cells(section, "DD-Ranking scores"):
        dataset, ipc = row[0].split(", ")
        rs = cells[(row[1], dataset, int(ipc))]
        scores = rs[0].scores
        shown = [f"{100 * v:.2f}" for v in (scores.lrs, scores.ars, scores.hlr, scores.ior)]
        assert row[2:6] == shown, row
        checked += 1
    assert checked == 3 + 8 + 11
