"""Suite files: which datasets, IPCs, methods and seeds to run, on what hardware, for how long.

A suite is a TOML file (see ``suites/smoke.toml`` for a commented example)::

    [suite]        name, description
    [grid]         datasets, ipcs, seeds
    [hardware]     device ("cpu" | "cuda" | "auto"), dtype, threads
    [budget]       outer_steps, minutes (per cell), checkpoint_minutes; [budget.by_ipc.10] overrides
    [model]        the network distilled with (harness.models.ModelConfig)
    [eval]         the evaluation protocol: protocol = "standard" | "ratbptt" | "dsa" and its options
                   (harness.evaluation.protocols)
    [data.NAME]    options of dataset NAME (harness.data.DataConfig, without ``name``)
    [ANALYSIS]     the config of a registered analysis of every distilled set, e.g. [hardness]
                   (harness.evaluation.hardness), [subsets] (harness.evaluation.subsets) and
                   [anytime], accuracy at budget: the set evaluated every k outer steps / m minutes
                   of its distillation (harness.evaluation.anytime)
    [method_defaults]  settings given to every method whose config has that field (e.g. the
                   inner optimizer, the real batch), and to the method a wrapper wraps (its
                   ``Method.wraps``); a method's own table overrides them
    [methods.LABEL]  a method's config; ``method = "registry name"`` (default: LABEL);
                     ``[methods.LABEL.by_ipc.10]`` overrides for IPC 10

The whole file is validated when it is loaded, every method config for every IPC included,
and the dataset roots are checked, so a mistake stops the run before anything is written.
Errors name the file and the dotted field: ``suites/x.toml: methods.tbptt.window: ...``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from harness.core.config import merge, validate_config
from harness.core.errors import ConfigError, DDBenchError, UnknownNameError
from harness.data import DataConfig, check_dataset
from harness.evaluation import ANALYSES, AnyProtocol, ProtocolConfig
from harness.evaluation.protocols.builtin import StandardConfig
from harness.method import method_class, validate_method_config
from harness.models import ModelConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RESERVED_METHOD_KEYS = ("method", "by_ipc")


def _is_slug(name: str) -> bool:
    return bool(name) and all(ch.isalnum() or ch in "-_." for ch in name) and name not in (".", "..")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SuiteInfo(_Strict):
    name: str
    description: str = ""

    @field_validator("name")
    @classmethod
    def _slug(cls, name: str) -> str:
        if not _is_slug(name):  # the suite's name is a folder of the output
            raise ValueError(f"name must be non-empty letters, digits, '-', '_' or '.', got {name!r}")
        return name


class Grid(_Strict):
    datasets: list[str] = Field(min_length=1)
    ipcs: list[int] = Field(min_length=1)
    seeds: list[int] = Field([0], min_length=1)

    @field_validator("datasets", "ipcs", "seeds")
    @classmethod
    def _distinct(cls, values: list) -> list:
        dup = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if dup is not None:
            raise ValueError(f"{dup!r} is listed twice")
        return values

    @field_validator("ipcs")
    @classmethod
    def _positive(cls, ipcs: list[int]) -> list[int]:
        for ipc in ipcs:
            if ipc <= 0:
                raise ValueError(f"every IPC must be > 0, got {ipc}")
        return ipcs

    @field_validator("seeds")
    @classmethod
    def _non_negative(cls, seeds: list[int]) -> list[int]:
        # step_seed feeds seeds to numpy's SeedSequence, which takes non-negative integers only.
        for seed in seeds:
            if seed < 0:
                raise ValueError(f"every seed must be >= 0, got {seed}")
        return seeds


class RayResources(_Strict):
    """What one cell asks of a Ray cluster (``ddbench run --executor ray``); not in the run id."""

    gpus_per_cell: float = Field(0.0, ge=0)  # fractional for small cells: 0.25 puts four on one GPU
    cpus_per_cell: float = Field(1.0, gt=0)
    max_retries: int = Field(3, ge=0)  # a cell whose worker dies is rerun (from its checkpoint) this often


class Hardware(_Strict):
    device: Literal["cpu", "cuda", "auto"] = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    threads: int | None = Field(None, ge=1)
    ray: RayResources = RayResources()


class BudgetValues(_Strict):
    outer_steps: int | None = None
    minutes: float | None = None

    @model_validator(mode="after")
    def _positive(self):
        if self.outer_steps is not None and self.outer_steps < 0:
            raise ValueError(f"outer_steps must be >= 0, got {self.outer_steps}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes}")
        return self


class Budget(BudgetValues):
    outer_steps: int = 1000
    checkpoint_minutes: float = 10.0
    by_ipc: dict[int, BudgetValues] = {}

    @model_validator(mode="after")
    def _checkpoint_positive(self):
        if not self.checkpoint_minutes > 0:
            raise ValueError(f"checkpoint_minutes must be > 0, got {self.checkpoint_minutes}")
        return self

    def for_ipc(self, ipc: int) -> BudgetValues:
        override = self.by_ipc.get(ipc, BudgetValues())
        return BudgetValues(outer_steps=override.outer_steps if override.outer_steps is not None else self.outer_steps,
                            minutes=override.minutes if override.minutes is not None else self.minutes)


class SuiteFile(_Strict):
    suite: SuiteInfo
    grid: Grid
    hardware: Hardware = Hardware()
    budget: Budget = Budget()
    model: ModelConfig = ModelConfig()
    eval: AnyProtocol = StandardConfig()
    data: dict[str, dict[str, Any]] = {}
    method_defaults: dict[str, Any] = {}
    methods: dict[str, dict[str, Any]] = Field(min_length=1)


@dataclass(frozen=True)
class Cell:
    """One run: (dataset, ipc, method, seed) with everything that determines its result."""

    suite: str
    dataset: DataConfig
    ipc: int
    method_label: str
    method: str
    method_config: BaseModel
    seed: int
    model: ModelConfig
    eval: ProtocolConfig
    budget: BudgetValues
    hardware: Hardware
    checkpoint_minutes: float  # how often a long run checkpoints; not part of the run id
    # Analyses of the distilled set (registry name -> config): they add sections to the record
    # but do not change the distilled set, so they stay out of the run id (delete a record to
    # redo its analyses). An analysis the suite does not configure runs with its defaults.
    analyses: dict[str, BaseModel] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()  # ``--set`` options the suite was loaded with (their values are in the config)

    def normalized(self) -> dict[str, Any]:
        """The cell's config in a canonical JSON form: hashed into the run id."""
        return {
            "suite": self.suite,
            "dataset": self.dataset.model_dump(mode="json"),
            "ipc": self.ipc,
            "method": self.method,
            "method_config": self.method_config.model_dump(mode="json"),
            "seed": self.seed,
            "model": self.model.model_dump(mode="json"),
            "eval": self.eval.model_dump(mode="json"),
            "budget": self.budget.model_dump(mode="json"),
            "hardware": {"device": self.hardware.device, "dtype": self.hardware.dtype},
        }

    @property
    def run_id(self) -> str:
        return _digest(self.normalized())

    @property
    def config_id(self) -> str:
        """The run id without the seed: records with the same config_id are seeds of one setting."""
        return _digest({k: v for k, v in self.normalized().items() if k != "seed"})


@dataclass(frozen=True)
class Suite:
    path: Path
    spec: SuiteFile
    datasets: dict[str, DataConfig]
    method_configs: dict[tuple[str, int], BaseModel]  # (label, ipc) -> validated config
    analyses: dict[str, BaseModel]  # every registered analysis -> its config (the suite's table or defaults)
    overrides: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.spec.suite.name

    def method_name(self, label: str) -> str:
        return self.spec.methods[label].get("method", label)

    def cells(self, methods: list[str] | None = None, *, datasets: list[str] | None = None,
              ipcs: list[int] | None = None, seeds: list[int] | None = None) -> list[Cell]:
        """The grid's cells, optionally only the named methods, datasets, IPCs and seeds (each
        checked against the grid: ``--ipcs 10`` runs a suite's IPC 10 cells as the whole file
        defines them, its per-IPC overrides for other IPCs included)."""
        grid = self.spec.grid
        labels = list(self.spec.methods) if methods is None else methods
        datasets = self._select(datasets, grid.datasets, "--datasets")
        ipcs = self._select(ipcs, grid.ipcs, "--ipcs")
        seeds = self._select(seeds, grid.seeds, "--seeds")
        out = []
        for dataset in datasets:
            for ipc in ipcs:
                for label in labels:
                    for seed in seeds:
                        out.append(Cell(self.name, self.datasets[dataset], ipc, label, self.method_name(label),
                                        self.method_configs[(label, ipc)], seed, self.spec.model, self.spec.eval,
                                        self.spec.budget.for_ipc(ipc), self.spec.hardware,
                                        self.spec.budget.checkpoint_minutes, dict(self.analyses),
                                        self.overrides))
        return out

    def _select(self, wanted: list | None, grid: list, option: str) -> list:
        if wanted is None:
            return list(grid)
        if not wanted:
            raise ConfigError("nothing selected", file=str(self.path), field=option)
        missing = [w for w in wanted if w not in grid]
        if missing:
            raise ConfigError(f"{missing[0]!r} is not in this suite's grid ({', '.join(map(str, grid))})",
                              file=str(self.path), field=option)
        return [g for g in grid if g in wanted]

    def select_methods(self, names: list[str]) -> list[str]:
        """Method labels named on the command line, checked against the suite."""
        if not names:
            raise ConfigError("no method named", file=str(self.path), field="--methods")
        for name in names:
            if name not in self.spec.methods:
                has = f"this suite has: {', '.join(self.spec.methods)}"
                try:
                    method_class(name)
                except UnknownNameError as err:  # not even a registered method: say so, with the registry
                    raise ConfigError(f"{err.message}; {has}", file=str(self.path), field="--methods") from None
                raise ConfigError(f"method {name!r} is not in this suite ({has})", file=str(self.path),
                                  field="--methods")
        return list(dict.fromkeys(names))  # a label named twice runs once


def load_suite(path: str | Path, *, check_data: bool = True, overrides: list[str] | tuple[str, ...] = ()) -> Suite:
    """Read and validate a suite file; every error is a :class:`DDBenchError` naming ``path``.

    ``overrides`` are ``dotted.field=value`` strings (``ddbench run --set``), applied to the
    file's tables before validation: they are checked like the file and end up in every cell's
    config (and so in its run id and record). ``value`` is read as TOML (``30``, ``[10]``,
    ``"sgd"``, ``{ name = "sgd" }``), or as a string where that fails.
    """
    path = Path(path)
    try:
        return _load(path, check_data, tuple(overrides))
    except DDBenchError as err:
        raise err.located(file=str(path)) from None


def apply_override(raw: dict, override: str) -> None:
    """Set ``dotted.field=value`` in the raw TOML tables (creating tables on the way)."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set takes dotted.field=value, got {override!r}", field="--set")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # a bare word: a string
    *parents, last = key.split(".")
    table = raw
    for part in parents:
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise ConfigError(f"--set {key}: {part} is not a table", field=key)
    table[last] = value


def _load(path: Path, check_data: bool, overrides: tuple[str, ...] = ()) -> Suite:
    raw = _read_toml(path)
    for override in overrides:
        apply_override(raw, override)
    # A top-level table named after a registered analysis is that analysis's config.
    analyses = {}
    for name, cls in ANALYSES.items():
        table = raw.pop(name, {})
        if not isinstance(table, dict):
            raise ConfigError("must be a table", field=name)
        analyses[name] = validate_config(cls.Config, table, prefix=name)
    spec = validate_config(SuiteFile, raw)
    datasets = _datasets(spec, check_data)
    for ipc in spec.budget.by_ipc:
        if ipc not in spec.grid.ipcs:
            raise ConfigError(f"override for IPC {ipc}, which grid.ipcs does not list", field=f"budget.by_ipc.{ipc}")
    method_configs = {}
    used_defaults: set[str] = set()  # the [method_defaults] fields some method has
    for label, table in spec.methods.items():
        method_configs.update(_method_configs(spec, label, table, used_defaults))
    for key in spec.method_defaults:
        if key not in used_defaults:
            raise ConfigError("no method of this suite has this field", field=f"method_defaults.{key}")
    return Suite(path, spec, datasets, method_configs, analyses, overrides)


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError("suite file not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"malformed TOML: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError("malformed TOML: not UTF-8 text") from None
    except OSError as err:
        raise ConfigError(f"cannot read the suite file ({err.strerror or err})") from None


def _datasets(spec: SuiteFile, check_data: bool) -> dict[str, DataConfig]:
    """Every grid dataset's config (its ``[data.NAME]`` options), its files checked with ``check_data``."""
    datasets = {}
    for name in spec.grid.datasets:
        options = dict(spec.data.get(name, {}))
        if "name" in options:
            raise ConfigError("unknown field (the dataset's name is its table's name)", field=f"data.{name}.name")
        datasets[name] = validate_config(DataConfig, {"name": name, **options}, prefix=f"data.{name}")
    for name in spec.data:
        if name not in spec.grid.datasets:
            raise ConfigError(f"options for dataset {name!r}, which grid.datasets does not list", field=f"data.{name}")
    if check_data:
        for name, cfg in datasets.items():
            try:
                check_dataset(cfg)
            except DDBenchError as err:
                # check_dataset names the DataConfig field ("name", "root"); say where it is in the suite.
                raise err.at(dataset_error_field(name, err)) from None
    return datasets


def _method_configs(spec: SuiteFile, label: str, table: dict[str, Any],
                    used_defaults: set[str]) -> dict[tuple[str, int], BaseModel]:
    """``[methods.LABEL]``'s validated config for every IPC of the grid (``[method_defaults]``, the
    table, its ``by_ipc`` override, merged in that order); the defaults it used added to ``used_defaults``."""
    if not _is_slug(label):
        # The label is a folder name of the output: no '/', no '..'.
        raise ConfigError("a method label must be letters, digits, '-', '_' or '.'", field=f"methods.{label}")
    name = table.get("method", label)
    if not isinstance(name, str):
        raise ConfigError(f"must be a registered method name, got {name!r}", field=f"methods.{label}.method")
    try:
        fields = method_class(name).Config.model_fields
    except DDBenchError as err:
        raise err.at(f"methods.{label}" + (".method" if "method" in table else "")) from None
    defaults = {k: v for k, v in spec.method_defaults.items() if k in fields}
    used_defaults |= set(defaults)
    own = {k: v for k, v in table.items() if k not in RESERVED_METHOD_KEYS}
    wrapped = _wrapped_defaults(method_class(name), spec.method_defaults, own)
    if wrapped:  # a wrapper (Boost-DD): the defaults reach the method it wraps
        config_field, wrapped_defaults = wrapped
        used_defaults |= set(wrapped_defaults)
        own[config_field] = merge(wrapped_defaults, own.get(config_field, {}))
    base = merge(defaults, own)
    by_ipc = table.get("by_ipc", {})
    if not isinstance(by_ipc, dict):
        raise ConfigError("must be a table of per-IPC overrides", field=f"methods.{label}.by_ipc")
    for key, override in by_ipc.items():
        if not str(key).isdigit() or int(key) not in spec.grid.ipcs:
            raise ConfigError(f"override for IPC {key!r}, which grid.ipcs does not list",
                              field=f"methods.{label}.by_ipc.{key}")
        if not isinstance(override, dict):
            raise ConfigError("must be a table of config values", field=f"methods.{label}.by_ipc.{key}")
    configs = {}
    for ipc in spec.grid.ipcs:
        override = next((v for k, v in by_ipc.items() if int(k) == ipc), {})
        try:
            configs[(label, ipc)] = validate_method_config(name, merge(base, override))
        except DDBenchError as err:
            # Name the table the bad value came from: the IPC override, the method's own
            # table, or [method_defaults].
            head = (err.field or "").split(".")[0]
            if (head and head in override) or (not head and override):
                where = f"methods.{label}.by_ipc.{ipc}"
            elif head and head not in own and head in defaults:
                where = "method_defaults"
            else:
                where = f"methods.{label}"
            raise err.within(where) from None
    return configs


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dataset_error_field(name: str, err: DDBenchError) -> str:
    """The suite field a dataset error belongs to: the name in ``grid.datasets``, else ``data.NAME.FIELD``."""
    return "grid.datasets" if err.field == "name" else f"data.{name}.{err.field or 'root'}"


def _wrapped_defaults(cls: type, method_defaults: dict, own: dict) -> tuple[str, dict] | None:
    """For a wrapper method (``cls.wraps = (name field, config field)``): its config field and the
    ``method_defaults`` that the wrapped method's config has a field for."""
    if cls.wraps is None:
        return None
    name_field, config_field = cls.wraps
    wrapped = own.get(name_field, cls.Config.model_fields[name_field].default)
    try:
        fields = method_class(wrapped).Config.model_fields
    except DDBenchError:
        return None  # an unknown wrapped method is reported when the config is validated
    return config_field, {k: v for k, v in method_defaults.items() if k in fields}
