"""The docs' worked examples run as written, each from the file its heading line names: the
method saved in a checkout's methods/, the dataset, analysis and view in a plug-in package found
through docs/extending.md's entry points (a dist-info on a sys.path entry of its own, as pip
leaves an installed package), each through a real suite run or table; the engine example of
docs/engine.md runs as a script. The CPU result tables of docs/results.md and the README say what
the committed records say.

Examples are marked ``<!-- example-NAME -->`` before their code block (and the line naming their
file, where they have one); tests/test_doc_commands.py checks that every Python block of the docs
is one of :data:`EXECUTED_EXAMPLES`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_record, tiny_suite
from harness.core.errors import ConfigError
from harness.data import DATASETS, DataConfig, load_dataset
from harness.evaluation import ANALYSES
from harness.method import METHODS, DistillTask, create_method
from harness.models import ModelConfig
from harness.report import VIEWS, iter_records
from test_methods import assert_recompute_equals_full

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
EXTENDING = DOCS / "extending.md"
RESULTS = DOCS / "results.md"
# Every <!-- example-NAME --> Python block of the docs, and the test that runs it.
EXECUTED_EXAMPLES = {
    "method": "test_docs_method_registers_validates_and_runs",
    "dataset": "test_docs_dataset_plugin_runs_in_a_suite",
    "analysis": "test_docs_analysis_plugin_runs_in_a_suite",
    "view": "test_docs_view_plugin_renders_the_per_class_sections",
    "engine": "test_docs_engine_example_runs",
}


def doc_pages() -> list[Path]:
    """The README and every page of docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


def example(name: str) -> tuple[str | None, str]:
    """The docs' example ``name``: the path its heading line names (None if it names none), and
    its source. Exactly one page holds it."""
    pattern = re.compile(rf"<!-- example-{name} -->\n(?:[^\n`]*`([^`]+)`[^\n]*\n+)?```python\n(.*?)```", re.S)
    found = [m for page in doc_pages() for m in pattern.finditer(page.read_text())]
    assert len(found) == 1, f"the docs hold {len(found)} <!-- example-{name} --> Python blocks, not one"
    return found[0].group(1), found[0].group(2)


def entry_points() -> dict[str, dict[str, str]]:
    """docs/extending.md's ``[project.entry-points.GROUP]`` tables: group -> {name: "module"}."""
    match = re.search(r"<!-- example-entry-points -->\n```toml\n(.*?)```", EXTENDING.read_text(), re.S)
    assert match, "docs/extending.md lost its <!-- example-entry-points --> block"
    return tomllib.loads(match.group(1))["project"]["entry-points"]


def _module_of(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


# ----------------------------------------------------------------------------- a method, in methods/


def test_docs_method_saved_in_a_checkouts_methods_folder_is_listed(tmp_path):
    """A clone of ddbench (its harness/ and methods/) with the example saved where the docs say:
    ``ddbench list`` run there shows it, with no list or test edited."""
    path, source = example("method")
    assert path.startswith("methods/") and path.endswith(".py"), path
    checkout = tmp_path / "checkout"
    for package in ("harness", "methods"):
        shutil.copytree(REPO / package, checkout / package, ignore=shutil.ignore_patterns("__pycache__"))
    assert not (checkout / path).exists()
    (checkout / path).write_text(source)
    # python -m puts the clone first on sys.path, ahead of the ddbench this test runs.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DDBENCH_PLUGINS")}
    out = subprocess.run([sys.executable, "-m", "harness.run.cli", "list", "--suites", str(checkout)], cwd=checkout,
                         env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    listed = {line.split()[0]: line for line in out.stdout.splitlines() if line.startswith("  ")}
    assert "Truncated BPTT whose window slides" in listed["curriculum_bptt"]
    assert {"bptt", "tbptt", "rat_bptt"} <= set(listed)


@pytest.fixture
def curriculum_method(tmp_path, monkeypatch):
    """The example saved as a checkout's methods/curriculum_bptt.py, that folder on the built-in
    methods package's path (what the registry walks), and the registry loaded again."""
    import harness.method.builtin as builtin

    path, source = example("method")
    (tmp_path / path).parent.mkdir(parents=True)
    (tmp_path / path).write_text(source)
    module = f"{builtin.__name__}.{Path(path).stem}"
    with METHODS.scoped():
        # A user who saved the example in this checkout has it registered already: the docs'
        # file replaces it for this test (and it is put back afterwards).
        METHODS.unregister("curriculum_bptt")
        monkeypatch.delitem(sys.modules, module, raising=False)
        monkeypatch.setattr(builtin, "__path__", [*builtin.__path__, str((tmp_path / path).parent)])
        monkeypatch.setattr(METHODS, "_loaded", False)
        cls = METHODS.get("curriculum_bptt")
        yield cls
    sys.modules.pop(module, None)


def test_docs_method_registers_validates_and_runs(curriculum_method):
    assert curriculum_method.__module__ == "harness.method.builtin.curriculum_bptt"
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


# ----------------------------------------------------------------------------- a plug-in package

PLUGIN_EXAMPLES = {"dataset": "ddbench.datasets", "analysis": "ddbench.analyses", "view": "ddbench.views"}


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    """The docs' dataset, analysis and view written where their files say (my_package/...) and
    installed as pip would leave them: a dist-info whose entry_points.txt is docs/extending.md's
    pyproject table, on a sys.path entry of its own. The registries look at their groups again."""
    site = tmp_path / "site"
    groups = entry_points()
    for name, group in PLUGIN_EXAMPLES.items():
        path, source = example(name)
        assert _module_of(path) in groups[group].values(), (name, path, groups)  # the file its entry point names
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).write_text(source)
    package = sorted({_module_of(example(name)[0]).split(".")[0] for name in PLUGIN_EXAMPLES})
    assert package == ["my_package"]
    (site / "my_package" / "__init__.py").touch()
    dist = site / "my_package-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-package\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in eps.items()) + "\n"
        for group, eps in groups.items()))
    monkeypatch.delenv("DDBENCH_PLUGINS", raising=False)
    with contextlib.ExitStack() as stack:
        for registry in (DATASETS, ANALYSES, VIEWS):
            stack.enter_context(registry.scoped())  # loaded without the package: restored so afterwards
        monkeypatch.syspath_prepend(str(site))
        for registry in (DATASETS, ANALYSES, VIEWS):
            monkeypatch.setattr(registry, "_loaded", False)  # look at the entry points again
        yield site
        for name in [m for m in sys.modules if m == "my_package" or m.startswith("my_package.")]:
            del sys.modules[name]


def _write_npz(root: Path) -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images * 15).astype(np.uint8)[:, None]  # 0..16 -> 0..240
    root.mkdir()
    np.savez(root / "train.npz", x=x[:1400], y=bunch.target[:1400])
    np.savez(root / "test.npz", x=x[1400:], y=bunch.target[1400:])


def test_docs_dataset_plugin_runs_in_a_suite(plugin_package, write_suite, cli, tmp_path):
    root = tmp_path / "npz"
    suite = tiny_suite(grid={"datasets": ["npz"], "ipcs": [1], "seeds": [0]}, data={"npz": {"root": str(root)}})
    # The root does not exist yet: the suite is refused before anything runs, naming the field.
    code, _, err = cli("run", write_suite(suite), "--out", tmp_path / "out", "-q")
    assert code == 2 and "data.npz.root" in err and "train.npz" in err
    _write_npz(root)
    assert DATASETS.get("npz").__module__ == "my_package.npz_dataset"
    code, _, err = cli("run", write_suite(suite), "--out", tmp_path / "out", "-q")
    assert code == 0, err
    records = [r for _, r in iter_records(tmp_path / "out")]
    assert sorted(r.method for r in records) == ["random_real", "tbptt"]
    assert all(r.dataset == "npz" and r.preprocessing["source"] == "numpy .npz arrays" for r in records)
    assert all(0 <= r.eval.accuracy_mean <= 1 for r in records)


def test_docs_analysis_plugin_runs_in_a_suite(plugin_package, write_suite, cli, tmp_path):
    assert ANALYSES.get("per_class").__module__ == "my_package.per_class"
    code, _, err = cli("run", write_suite(tiny_suite(per_class={"enabled": True})), "--out", tmp_path / "out", "-q")
    assert code == 0, err
    records = [r for _, r in iter_records(tmp_path / "out")]
    assert sorted(r.method for r in records) == ["random_real", "tbptt"]
    for r in records:
        section = r.per_class  # the analysis's section, in the typed record
        assert section["classes"] == [str(c) for c in range(10)] and len(section["accuracy"]) == 10
        # The evaluation's overall accuracy is the classes' accuracies weighted by class size.
        assert min(section["accuracy"]) <= r.eval.accuracy_mean <= max(section["accuracy"])
    # A bad value in the analysis's suite table is refused with its dotted field.
    code, _, err = cli("run", write_suite(tiny_suite(per_class={"enabled": "maybe"}), "bad.toml"), "--out",
                       tmp_path / "bad", "-q")
    assert code == 2 and "per_class.enabled" in err


def test_docs_view_plugin_renders_the_per_class_sections(plugin_package, cli, tmp_path):
    """``ddbench table DIR --view per_class`` offers the plug-in's view: per class, each method's
    accuracy pooled over its seeds."""
    out = tmp_path / "out"
    out.mkdir()
    accuracy = {("random_real", 0): [0.5, 0.25, 1.0], ("random_real", 1): [0.7, 0.25, 0.0], ("tbptt", 0): [0.9, 0.8, 0.7]}
    for (method, seed), acc in accuracy.items():
        record = make_record(method, seed=seed, per_class={"classes": ["a", "b", "c"], "accuracy": acc})
        (out / f"{method}-{seed}.json").write_text(json.dumps(record))
    code, table, err = cli("table", out, "--view", "per_class")
    assert code == 0, err
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| ")]
    assert rows == [["method", "dataset", "IPC", "a", "b", "c"],
                    ["random_real", "digits", "1", "60.0", "25.0", "50.0"],
                    ["tbptt", "digits", "1", "90.0", "80.0", "70.0"]]


# ----------------------------------------------------------------------------- the engine, as a script


def test_docs_engine_example_runs():
    """docs/engine.md's meta-gradient in float64, both modes: its own asserts check that they agree."""
    path, source = example("engine")
    assert path is None
    namespace: dict = {"__name__": "docs_engine_example"}
    exec(compile(source, "docs/engine.md:example-engine", "exec"), namespace)
    full, recompute = namespace["full"], namespace["recompute"]
    assert full.images.dtype == torch.float64 and recompute.images is not None
    assert torch.isfinite(full.images).all()


# ----------------------------------------------------------------------------- results on CPU


def _section(text: str, heading: str) -> str:
    """From ``heading`` to the next heading of the same level (or the end)."""
    start = text.index(heading)
    level = heading.split(" ")[0]
    end = text.find(f"\n{level} ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def _tables(text: str) -> list[str]:
    """Every markdown table in ``text``: its lines, header to last row."""
    return [m.group(0).strip() for m in re.finditer(r"(^\|.*\|\n)+", text + "\n", flags=re.M)]


@pytest.fixture(scope="module")
def cpu_views() -> str:
    """Every table view of the committed CPU records (the CPU suites and the smoke suite), rendered
    as ``ddbench table DIR --view all`` renders them."""
    from harness.report.tables import render_view

    root = REPO / "results"
    rendered = []
    for folder in ("cpu-mnist", "cpu-cifar10-jpeg", "smoke-cpu"):
        records = [r for _, r in iter_records(root / folder)]
        assert records, f"no committed records in results/{folder}"
        rendered.append(render_view(records, "all"))
    return "\n\n".join(rendered)


def test_the_results_page_says_what_the_committed_records_say(cpu_views):
    """docs/results.md's CPU tables are copies of rendered tables (``ddbench table DIR --view
    VIEW``): every one of them, verbatim, is what the records in results/ give today (a rerun
    that changes a number fails here until the page is updated)."""
    tables = _tables(_section(RESULTS.read_text(), "## Results on CPU"))
    assert len(tables) >= 8  # accuracy, cost and margins per CPU suite; the smoke suite's scores
    rendered = _tables(cpu_views)
    for table in tables:
        assert table in rendered, f"docs/results.md: a table the records do not give:\n{table[:400]}"


def test_the_readmes_results_at_a_glance_say_what_the_committed_records_say(cpu_views):
    """The README's copy of the accuracy tables, checked the same way."""
    tables = _tables(_section(README.read_text(), "## Results at a glance"))
    assert len(tables) == 2
    rendered = _tables(cpu_views)
    for table in tables:
        assert table in rendered, f"README.md: a table the records do not give:\n{table[:400]}"
