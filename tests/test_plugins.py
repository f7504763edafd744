"""One plug-in shape for the six registries, and ddbench never silently hidden by a user's folder.

* Every registry (methods, datasets, inner optimizers, protocols, analyses, table views) has its
  entry-point group and one built-in package, and every built-in it holds comes from that package.
* Each loads a plug-in from its entry-point group (a real dist-info on a sys.path entry, as pip
  leaves an installed package) and from ``DDBENCH_PLUGINS``; a broken one is one error naming it,
  after the others loaded, and it is reported again until it is fixed.
* A user's ``methods`` package first on sys.path hides no built-in method (a fresh interpreter
  in that folder), the built-in method classes pickle into a fresh process, and a ``harness``
  package that would shadow ddbench's is refused with one line where ddbench can see it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from harness.core.errors import DDBenchError
from harness.core.registry import PluginError, check_not_shadowed, shadowing_folder
from harness.data import DATASETS
from harness.engine import OPTIMIZERS
from harness.evaluation import ANALYSES, PROTOCOLS
from harness.method import METHODS, list_methods, method_class
from harness.report import VIEWS

REPO = Path(__file__).resolve().parents[1]

# kind -> (registry, entry-point group, built-in package, one built-in entry)
REGISTRIES = {
    "methods": (METHODS, "ddbench.methods", "harness.method.builtin", "rat_bptt"),
    "datasets": (DATASETS, "ddbench.datasets", "harness.data.sources", "digits"),
    "optimizers": (OPTIMIZERS, "ddbench.optimizers", "harness.engine.optim", "adam"),
    "protocols": (PROTOCOLS, "ddbench.protocols", "harness.evaluation.protocols", "standard"),
    "analyses": (ANALYSES, "ddbench.analyses", "harness.evaluation", "hardness"),
    "views": (VIEWS, "ddbench.views", "harness.report.views", "main"),
}

def kinds():
    """Every registry kind, as test parameters."""
    return [pytest.param(kind, id=kind) for kind in REGISTRIES]


# One valid plug-in per kind: registers the entry f"tp_{kind}" (NAME is replaced per test).
PLUGIN_SOURCES = {
    "methods": '''
        from pydantic import BaseModel
        from harness import Method, register_method

        class Config(BaseModel):
            pass

        @register_method("NAME")
        class TestPlugin(Method):
            """A test plug-in method."""
            Config = Config
    ''',
    "datasets": '''
        from harness import DatasetSource, register_dataset

        @register_dataset("NAME")
        class TestPlugin(DatasetSource):
            """A test plug-in dataset."""
    ''',
    "optimizers": '''
        from typing import Literal
        from harness.engine import OPTIMIZERS, InnerOptimizer, InnerOptimizerConfig

        class Config(InnerOptimizerConfig):
            name: Literal["NAME"] = "NAME"

        @OPTIMIZERS.register("NAME")
        class TestPlugin(InnerOptimizer):
            """A test plug-in inner optimizer."""
            Config = Config
    ''',
    "protocols": '''
        from harness.evaluation import Protocol, ProtocolConfig, register_protocol

        class Config(ProtocolConfig):
            protocol: str = "NAME"

        @register_protocol("NAME")
        class TestPlugin(Protocol):
            """A test plug-in evaluation protocol."""
            Config = Config
    ''',
    "analyses": '''
        from harness import Analysis, StrictModel, register_analysis

        class Config(StrictModel):
            enabled: bool = False

        @register_analysis("NAME")
        class TestPlugin(Analysis):
            """A test plug-in analysis."""
            Config = Config
            section = "NAME"
    ''',
    "views": '''
        from harness import register_view

        @register_view("NAME", help="a test plug-in view")
        def test_plugin(records, fmt="github"):
            return ""
    ''',
}


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder first on sys.path for plug-in modules (removed from sys.modules afterwards);
    ``DDBENCH_PLUGINS`` unset."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv("DDBENCH_PLUGINS", raising=False)
    yield folder
    for path in folder.glob("*.py"):
        sys.modules.pop(path.stem, None)


def write_plugin(folder: Path, kind: str, module: str, name: str) -> None:
    (folder / f"{module}.py").write_text(textwrap.dedent(PLUGIN_SOURCES[kind]).replace("NAME", name))


def write_dist(folder: Path, dist: str, group: str, entries: dict[str, str]) -> Path:
    """An installed distribution as pip leaves it: DIST-0.1.dist-info with METADATA and entry_points.txt
    (DIST without "-": the name is read from the folder name, up to its first "-")."""
    info = folder / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))
    importlib.invalidate_caches()
    return info


def _python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``python -c code`` in ``cwd`` (first on its sys.path), ddbench importable after it."""
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DDBENCH_PLUGINS")}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**base, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env})


def _module_of(entry: object) -> str:
    return getattr(getattr(entry, "render", entry), "__module__")  # a view is a View around its function


# ----------------------------------------------------------------------------- the shape


@pytest.mark.parametrize("kind", kinds())
def test_every_registry_has_its_entry_point_group_and_one_builtin_package(kind):
    registry, group, package, builtin = REGISTRIES[kind]
    assert registry.group == group
    assert registry.builtins == (package,)
    assert builtin in registry.names()
    for name, entry in registry.items():  # no built-in registered from elsewhere as a side effect
        assert _module_of(entry) == package or _module_of(entry).startswith(f"{package}."), (name, entry)


@pytest.mark.parametrize("kind", kinds())
def test_each_registry_loads_its_entry_point_group_and_names_a_broken_plugin(kind, plugin_dir, monkeypatch):
    registry, group, _, builtin = REGISTRIES[kind]
    good, broken = f"ddbench_tp_ep_{kind}", f"ddbench_tp_ep_broken_{kind}"
    write_plugin(plugin_dir, kind, good, f"tp_{kind}")
    (plugin_dir / f"{broken}.py").write_text("raise RuntimeError('broken on purpose')\n")
    write_dist(plugin_dir, f"tp_good_{kind}", group, {"good": good})
    broken_dist = write_dist(plugin_dir, f"tp_broken_{kind}", group, {"broken": f"{broken}:anything"})
    with registry.scoped():
        monkeypatch.setattr(registry, "_loaded", False)  # look at the entry points again
        with pytest.raises(PluginError) as exc:
            registry.names()
        message = str(exc.value)
        assert len(message.splitlines()) == 1
        assert f"entry point 'broken' = '{broken}:anything' of group '{group}'" in message
        assert "broken on purpose" in message and "'good'" not in message
        assert {f"tp_{kind}", builtin} <= set(registry._entries)  # loaded although the other failed
        with pytest.raises(PluginError, match="broken on purpose"):  # asked again: reported again
            registry.names()
        shutil.rmtree(broken_dist)
        importlib.invalidate_caches()
        assert f"tp_{kind}" in registry.names() and builtin in registry.names()
        assert _module_of(registry.get(f"tp_{kind}")) == good
    assert f"tp_{kind}" not in registry.names()


@pytest.mark.parametrize("kind", kinds())
def test_ddbench_plugins_are_imported_into_every_registry(kind, plugin_dir, monkeypatch):
    registry, _, _, builtin = REGISTRIES[kind]
    good, broken = f"ddbench_tp_env_{kind}", f"ddbench_tp_env_broken_{kind}"
    write_plugin(plugin_dir, kind, good, f"tp_env_{kind}")
    (plugin_dir / f"{broken}.py").write_text("raise RuntimeError('broken on purpose')\n")
    with registry.scoped():
        monkeypatch.setattr(registry, "_loaded", False)
        monkeypatch.setenv("DDBENCH_PLUGINS", f" {broken} ,{good},")
        with pytest.raises(PluginError) as exc:
            registry.names()  # this registry imports them itself: no other registry loaded them
        message = str(exc.value)
        assert len(message.splitlines()) == 1
        assert f"DDBENCH_PLUGINS module '{broken}'" in message and "broken on purpose" in message
        assert good not in message and {f"tp_env_{kind}", builtin} <= set(registry._entries)
        monkeypatch.setenv("DDBENCH_PLUGINS", good)
        assert f"tp_env_{kind}" in registry.names()
    assert f"tp_env_{kind}" not in registry.names()


def test_a_plugin_may_import_harness_while_harness_is_first_imported(tmp_path):
    """A DDBENCH_PLUGINS module that imports harness's public API at its top, in a fresh process
    whose first import is a harness layer: a registry asked during that import (a config default
    validated when its class is made) must not import the plug-in into a half-imported harness."""
    (tmp_path / "ddbench_tp_top_imports.py").write_text(textwrap.dedent('''
        from harness import UnrolledMethod, UnrollConfig, register_method
        from methods.tbptt import TBPTT

        @register_method("tp_top_imports")
        class TopImports(TBPTT):
            """A plug-in importing harness at its top."""
    '''))
    code = "import harness.method.unrolled, harness.method as m; print(','.join(m.list_methods()))"
    out = _python(code, tmp_path, DDBENCH_PLUGINS="ddbench_tp_top_imports")
    assert out.returncode == 0, out.stderr
    assert {"tp_top_imports", "tbptt", "rat_bptt"} <= set(out.stdout.strip().split(","))


# ----------------------------------------------------------------------------- shadowing


def _user_packages(folder: Path, *names: str) -> Path:
    """A user's own packages ``names`` in ``folder``: each with a module ``mine.py``."""
    for name in names:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text("USER = True\n")
        (folder / name / "mine.py").write_text("def f():\n    return 'mine'\n")
    return folder


def test_a_users_methods_package_first_on_sys_path_hides_no_builtin_method(tmp_path):
    """From a folder holding a user's own ``methods`` package (imported first, as a user's script
    would), a fresh interpreter still lists every built-in method; the user's package stays theirs.
    The built-in classes and configs pickled here unpickle there before anything else is imported
    (what a Ray worker does with a cell)."""
    user = _user_packages(tmp_path / "project", "methods")
    blob = tmp_path / "methods.pkl"
    classes = {name: method_class(name) for name in list_methods()}
    blob.write_bytes(pickle.dumps({name: (cls, cls.Config()) for name, cls in classes.items()}))
    code = textwrap.dedent(f"""
        import pickle
        shipped = pickle.loads(open({str(blob)!r}, "rb").read())
        import methods, methods.mine
        assert methods.USER and methods.mine.f() == "mine", methods.__file__
        import harness
        listed = harness.list_methods()
        for name, (cls, cfg) in shipped.items():
            assert harness.create_method(name).__class__ is cls and isinstance(cfg, cls.Config), name
        print(",".join(listed))
    """)
    out = _python(code, user)
    assert out.returncode == 0, out.stderr
    listed = out.stdout.strip().split(",")
    assert listed == sorted(classes) and {"random_real", "bptt", "tbptt", "rat_bptt"} <= set(listed)


def test_importing_ddbenchs_methods_package_by_name_gives_the_registered_modules():
    import methods
    import methods.rat_bptt

    assert methods.rat_bptt is sys.modules["harness.method.builtin.rat_bptt"]
    assert methods.rat_bptt.RaTBPTT is method_class("rat_bptt")
    assert method_class("rat_bptt").__module__ == "harness.method.builtin.rat_bptt"
    assert Path(methods.__file__).parent == Path(sys.modules["harness.method.builtin"].__path__[0])


def test_another_checkouts_methods_folder_is_refused_with_one_line(tmp_path):
    """A second copy of ddbench's ``methods/`` would register every method twice: its import is
    refused, naming both folders."""
    other = tmp_path / "other" / "methods"
    shutil.copytree(REPO / "methods", other, ignore=shutil.ignore_patterns("__pycache__"))
    spec = importlib.util.spec_from_file_location("ddbench_unit_other_methods", other / "__init__.py",
                                                  submodule_search_locations=[str(other)])
    with pytest.raises(ImportError) as exc:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    message = str(exc.value)
    assert len(message.splitlines()) == 1 and str(other) in message and str(REPO / "methods") in message


def test_a_folder_that_would_shadow_harness_is_named(tmp_path):
    package = _user_packages(tmp_path / "package", "harness")
    module = tmp_path / "module"
    module.mkdir()
    (module / "harness.py").write_text("")
    namespace = tmp_path / "namespace"
    (namespace / "harness").mkdir(parents=True)  # no __init__.py: never wins over a regular package
    assert shadowing_folder("harness", [REPO]) is None  # ddbench's own checkout
    assert shadowing_folder("harness", [namespace, tmp_path]) is None
    assert shadowing_folder("harness", [namespace, package]) == package / "harness"
    assert shadowing_folder("harness", [module, package]) == module / "harness.py"
    with pytest.raises(PluginError) as exc:
        check_not_shadowed("harness", [package], where="on the workers")
    message = str(exc.value)
    assert len(message.splitlines()) == 1 and isinstance(exc.value, DDBenchError)
    assert message.startswith(f"{package / 'harness'} would be imported on the workers instead of ddbench's")
    check_not_shadowed("harness", [REPO, namespace], where="on the workers")


def test_the_ddbench_command_is_not_shadowed_by_the_current_folder(tmp_path):
    """The console script does not put the current folder on sys.path: from a folder holding a
    user's own ``harness`` and ``methods`` packages, ``ddbench list`` lists ddbench's methods."""
    script = Path(sys.executable).with_name("ddbench")
    if not script.exists():
        pytest.skip("no ddbench console script beside this interpreter (ddbench not installed)")
    user = _user_packages(tmp_path / "project", "harness", "methods")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DDBENCH_PLUGINS")}
    out = subprocess.run([str(script), "list", "--suites", str(user)], cwd=user, capture_output=True, text=True,
                         timeout=600, env={**env, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ")}
    assert set(list_methods()) <= listed


def test_the_ray_executor_refuses_a_working_folder_that_would_shadow_harness(tmp_path, monkeypatch):
    """Ray puts the driver's working folder first on its workers' sys.path: a ``harness`` package
    there would be imported by every worker instead of ddbench's. Refused before Ray starts."""
    import harness.run.ray_executor as ray_executor
    from harness.run.suite import RayResources

    class NoRay:
        def is_initialized(self):
            return False

        def init(self, **kwargs):
            raise AssertionError("ray.init was reached")

    user = _user_packages(tmp_path / "project", "harness")
    monkeypatch.chdir(user)
    monkeypatch.setattr(ray_executor, "_ray", NoRay)
    executor = ray_executor.RayExecutor(RayResources(), progress=False)
    with pytest.raises(PluginError) as exc:
        executor.run([], {}, torch.device("cpu"), torch.float32, tmp_path / "out", None)
    message = str(exc.value)
    assert len(message.splitlines()) == 1 and message.startswith(str(user / "harness"))
    assert "Ray workers" in message
