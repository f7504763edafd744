"""The method registry: names, typed configs, errors that name the field, plugins."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint

import pytest
from pydantic import BaseModel, ConfigDict

import harness.core.registry as core_registry
from harness.core.errors import ConfigError, UnknownNameError
from harness.core.registry import PluginError, Registry
from harness.method import Method
from harness.method.registry import (METHODS, create_method, list_methods, method_class, register_method,
                                     validate_method_config)

BUILTIN = ("random_real", "bptt", "tbptt", "rat_bptt")


@pytest.fixture
def isolated_registry():
    """The method registry, restored after the test (which may register classes)."""
    with METHODS.scoped() as methods:
        yield methods


def test_list_methods_shows_the_builtin_ones_with_a_description():
    methods = list_methods()
    for name in BUILTIN:
        assert name in methods
    assert list(methods) == sorted(methods)
    for name, doc in methods.items():
        assert doc and "\n" not in doc, name


@pytest.mark.parametrize("name", sorted(list_methods()))
def test_create_every_registered_method_with_defaults(name):
    method = create_method(name)
    cls = method_class(name)
    assert isinstance(method, cls) and isinstance(method, Method)
    assert isinstance(method.config, cls.Config)
    assert cls.name == name
    # The defaults survive a round trip through their JSON form (what a record stores).
    assert validate_method_config(name, method.config.model_dump(mode="json")) == method.config


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(UnknownNameError) as exc:
        create_method("no_such_method")
    assert "no_such_method" in str(exc.value)
    for name in list_methods():
        assert name in exc.value.message


@pytest.mark.parametrize("name", ["bptt", "tbptt", "rat_bptt"])
def test_unknown_field_is_named(name):
    with pytest.raises(ConfigError) as exc:
        create_method(name, windoww=3)
    assert exc.value.field == "windoww" and "unknown field" in exc.value.message


@pytest.mark.parametrize("name, cfg, field", [
    ("tbptt", {"unroll": 5, "window": 6}, "window"),
    ("rat_bptt", {"unroll": 5, "window": 6}, "window"),
    ("tbptt", {"unroll": 5, "window": 0}, "window"),
    ("rat_bptt", {"unroll": 0, "window": 0}, "window"),
    ("rat_bptt", {"unroll": 10, "window": 4, "min_unroll": 3}, "window"),
    ("rat_bptt", {"unroll": 10, "window": 4, "min_unroll": 11}, "min_unroll"),
    ("bptt", {"unroll": 0}, "unroll"),
    ("tbptt", {"real_batch": 0}, "real_batch"),
    ("tbptt", {"clip_ema": 1.0}, "clip_ema"),
    ("tbptt", {"inner": {"lr": "fast"}}, "inner.lr"),
    ("tbptt", {"inner": {"name": "rmsprop"}}, "inner.name"),
    ("tbptt", {"syn_augment": {"ops": ["blur"]}}, "syn_augment.ops"),
])
def test_bad_value_names_its_field(name, cfg, field):
    with pytest.raises(ConfigError) as exc:
        create_method(name, **cfg)
    assert exc.value.field == field
    assert len(str(exc.value).splitlines()) == 1


def test_random_real_takes_no_options():
    with pytest.raises(ConfigError) as exc:
        create_method("random_real", unroll=3)
    assert exc.value.field == "unroll"


def _method_class(doc: str = "A test method."):
    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        k: int = 1

    class TestMethod(Method):
        __doc__ = doc

        def setup(self, task):
            pass

        def step(self, step):
            return {}

        def distilled(self):
            raise NotImplementedError

    TestMethod.Config = Config
    return TestMethod


def test_registering_twice_under_one_name_raises(isolated_registry):
    first = register_method("unit_test_method")(_method_class())
    assert register_method("unit_test_method")(first) is first  # the same class again: harmless
    with pytest.raises(ValueError, match="registered twice"):
        register_method("unit_test_method")(_method_class())
    with pytest.raises(ValueError, match="registered twice"):
        register_method("bptt")(_method_class())
    assert method_class("unit_test_method") is first
    assert create_method("unit_test_method", k=4).config.k == 4


def test_config_must_be_a_pydantic_model(isolated_registry):
    cls = _method_class()
    cls.Config = dict
    with pytest.raises(TypeError):
        register_method("unit_bad_config")(cls)
    assert "unit_bad_config" not in isolated_registry.names()


def test_plugins_load_from_entry_points_of_either_form(tmp_path, monkeypatch, isolated_registry):
    # A third-party package may name a module ("pkg.mod") or an attribute ("pkg.mod:attr").
    (tmp_path / "ddbench_unit_plugin.py").write_text(
        "from harness import register_method\n"
        "from tests_plugin_base import make\n"
        "Plugin = register_method('unit_plugin')(make())\n"
    )
    (tmp_path / "ddbench_unit_plugin_b.py").write_text(
        "from harness import register_method\n"
        "from tests_plugin_base import make\n"
        "def register():\n"
        "    register_method('unit_plugin_b')(make())\n"
        "register()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    base = type(sys)("tests_plugin_base")
    base.make = _method_class
    monkeypatch.setitem(sys.modules, "tests_plugin_base", base)
    for name in ("ddbench_unit_plugin", "ddbench_unit_plugin_b"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    eps = [EntryPoint("a", "ddbench_unit_plugin", "ddbench.methods"),
           EntryPoint("b", "ddbench_unit_plugin_b:register", "ddbench.methods")]
    monkeypatch.setattr(core_registry, "entry_points", lambda group: eps if group == "ddbench.methods" else [])
    monkeypatch.setattr(METHODS, "_loaded", False)
    methods = list_methods()
    assert "unit_plugin" in methods and "unit_plugin_b" in methods


# ----------------------------------------------------------------------------- the Registry type


def _widget_registry(tmp_path, monkeypatch, modules: dict[str, str], eps: list[EntryPoint], builtins=()):
    """A fresh Registry whose plug-in modules (written under tmp_path) register into it."""
    registry = Registry("widget", group="ddbench.unit_widgets", builtins=builtins)
    holder = type(sys)("unit_widget_registry")
    holder.REG = registry
    monkeypatch.setitem(sys.modules, "unit_widget_registry", holder)
    for name, body in modules.items():  # "pkg/mod" is a module of a package under tmp_path
        (tmp_path / f"{name}.py").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"{name}.py").write_text(body)
        monkeypatch.delitem(sys.modules, name.replace("/", "."), raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(core_registry, "entry_points", lambda group: eps if group == "ddbench.unit_widgets" else [])
    return registry


def test_a_failing_plugin_is_named_and_hides_no_other(tmp_path, monkeypatch):
    registry = _widget_registry(tmp_path, monkeypatch, {
        "unit_widget_bad": "raise RuntimeError('broken on purpose')\n",
        "unit_widget_good": "import unit_widget_registry\nunit_widget_registry.REG.register('good', 1)\n",
    }, [EntryPoint("bad", "unit_widget_bad", "ddbench.unit_widgets"),
        EntryPoint("good", "unit_widget_good", "ddbench.unit_widgets")])
    with pytest.raises(PluginError) as exc:
        registry.names()
    message = str(exc.value)
    assert "'bad'" in message and "unit_widget_bad" in message and "broken on purpose" in message
    assert len(message.splitlines()) == 1
    assert registry._entries == {"good": 1}  # loaded although the other failed
    with pytest.raises(PluginError):  # and asked again, the broken one is reported again, not hidden
        registry.names()
    with pytest.raises(PluginError):
        registry.get("another")
    assert registry.get("good") == 1  # a registered name is found without loading anything


def test_builtins_register_without_any_entry_point(tmp_path, monkeypatch):
    registry = _widget_registry(tmp_path, monkeypatch, {
        "unit_widget_builtin": "import unit_widget_registry\nunit_widget_registry.REG.register('builtin', 2)\n",
    }, [], builtins="unit_widget_builtin")
    assert registry.names() == ["builtin"] and registry.get("builtin") == 2
    with pytest.raises(UnknownNameError, match="unknown widget 'nope' .registered: builtin."):
        registry.get("nope")


REGISTER = "import unit_widget_registry\nunit_widget_registry.REG.register({name!r}, {value!r})\n"


def test_a_builtin_package_is_walked_so_a_new_file_is_a_new_builtin(tmp_path, monkeypatch):
    registry = _widget_registry(tmp_path, monkeypatch, {
        "unit_widget_pkg/__init__": "",  # imports none of its modules: the registry does
        "unit_widget_pkg/one": REGISTER.format(name="one", value=1),
        "unit_widget_pkg/two": REGISTER.format(name="two", value=2),
    }, [], builtins="unit_widget_pkg")
    assert registry.names() == ["one", "two"]
    (tmp_path / "unit_widget_pkg" / "three.py").write_text(REGISTER.format(name="three", value=3))
    monkeypatch.setattr(registry, "_loaded", False)
    assert registry.names() == ["one", "three", "two"]  # no list of modules was edited
    for name in ("unit_widget_pkg", "unit_widget_pkg.one", "unit_widget_pkg.two", "unit_widget_pkg.three"):
        sys.modules.pop(name, None)


def test_a_broken_builtin_module_is_named_after_the_others_loaded(tmp_path, monkeypatch):
    registry = _widget_registry(tmp_path, monkeypatch, {
        "unit_widget_pkg2/__init__": "",
        "unit_widget_pkg2/bad": "raise RuntimeError('broken on purpose')\n",
        "unit_widget_pkg2/good": REGISTER.format(name="good", value=1),
        "unit_widget_bad_ep": "raise ValueError('also broken')\n",
    }, [EntryPoint("bad_ep", "unit_widget_bad_ep", "ddbench.unit_widgets")], builtins="unit_widget_pkg2")
    with pytest.raises(PluginError) as exc:
        registry.names()
    message = str(exc.value)
    assert len(message.splitlines()) == 1 and message.startswith("cannot load widget plug-ins: ")
    # Every failure is named, each with its cause: one broken plug-in hides no other broken one.
    assert "built-in module 'unit_widget_pkg2.bad': RuntimeError: broken on purpose" in message
    assert "entry point 'bad_ep' = 'unit_widget_bad_ep' of group 'ddbench.unit_widgets': ValueError: also broken" \
        in message
    assert registry._entries == {"good": 1}
    for name in ("unit_widget_pkg2", "unit_widget_pkg2.good"):
        sys.modules.pop(name, None)


def test_a_builtin_package_without_modules_is_an_error(tmp_path, monkeypatch):
    registry = _widget_registry(tmp_path, monkeypatch, {"unit_widget_empty/__init__": ""}, [],
                                builtins="unit_widget_empty")
    with pytest.raises(PluginError, match="built-in package 'unit_widget_empty': no modules in .*unit_widget_empty"):
        registry.names()
    sys.modules.pop("unit_widget_empty", None)


def test_a_checkout_without_installation_has_its_methods(tmp_path):
    """No ddbench entry points at all (a source checkout on PYTHONPATH): the built-ins still load."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    code = ("import importlib.metadata as md, harness.core.registry as r\n"
            "r.entry_points = lambda group: []\n"
            "from harness.method import list_methods\n"
            "from harness.data import list_datasets\n"
            "print(','.join(list_methods())); print(','.join(list_datasets()))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(repo), "PATH": "/usr/bin"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    methods, datasets = (line.split(",") for line in out.stdout.strip().splitlines())
    assert {"random_real", "bptt", "tbptt", "rat_bptt", "at_bptt", "boost_dd"} <= set(methods)
    assert {"digits", "mnist", "cifar10-jpeg"} <= set(datasets)
