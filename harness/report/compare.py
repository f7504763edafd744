"""Comparable groups: which records may be ranked together, and what tells groups apart.

Two records are ranked together only when their **setting** agrees: the dataset and IPC, the
dataset's options (``data.*``: ZCA, the validation split ...; not where the files live), the
network (``model.*``), the evaluation protocol with every setting (``eval.*``; but not how many
networks it trains, ``eval.models``, which changes how many samples there are, not what they
estimate, nor its test batch size), the budget's kind and size (``budget.outer_steps`` and
``budget.minutes``; a minutes budget also names the device it ran on, ``hardware.device_name``:
eight minutes of one machine are not eight of another), and the **label kind**
(:func:`label_kind`: hard labels, or learned / teacher soft labels: never one setting).

Within a group a **row** is one config of one method label (its ``config_id``), its seeds
pooled. A label with several configs in one group is named in each by the recorded fields in
which they differ (``rat_bptt (window 30)``: method config fields without their prefix; or
``(suite smoke)``, ``(eval.models 5)``). Two configs of one label in one group that differ in
no recorded field contradict each other and are refused, naming them (as is one run recorded
twice with different results, :func:`~harness.report.tables.unique_runs`).

Groups of the same dataset and IPC are **siblings**: each is headed by the setting fields
whose values differ among them (``digits IPC 1 (budget.outer_steps 8)``), and
:attr:`Group.differs` says how (``budget.outer_steps 120 vs 8``). Selection (``--config``,
``--latest``): :func:`select_records`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from harness.core.errors import DDBenchError
from harness.report.ranking import Ranking, Sample, rank
from harness.report.schema import RunRecord
from harness.report.tables import BASELINE, unique_runs

# Protocol fields that change how many samples an evaluation draws or how it batches the test
# set, not what its accuracy estimates: records differing only in them are comparable.
SAMPLE_FIELDS = ("eval.models", "eval.test_batch")
DATA_LOCATION = ("root", "download", "name")  # where and how the files were found: not a setting
HEADING_FIELDS = 4  # fields named in a heading; the rest as "+N more"


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """Nested dicts as dotted fields (``{"eval.optimizer.lr": 0.01}``); lists stay values."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k in sorted(value):
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), value[k]))
        return out
    return {prefix: value}


def label_kind(record: RunRecord) -> str:
    """``hard``, or the kind of soft labels the set was evaluated with (``teacher``, ``learned``).

    The record's ``label_kind`` (the runner writes it from the set itself); in records without
    it, the method config's ``labels`` (a selection method's ``teacher``) and ``learn_labels``
    (also in a wrapper's ``base_config``): ``learned``.
    """
    if record.label_kind is not None:
        return record.label_kind
    base = record.method_config.get("base_config")
    base = base if isinstance(base, dict) else {}
    for source in (record.method_config.get("labels"), base.get("labels")):
        if isinstance(source, str) and source:
            return source
    if record.method_config.get("learn_labels") or base.get("learn_labels"):
        return "learned"
    return "hard"


def budget_of(record: RunRecord) -> tuple[str, float] | None:
    """``("outer_steps", N)`` or ``("minutes", M)`` (a minutes budget: ``outer_steps`` 0); None if unrecorded."""
    steps, minutes = record.budget.get("outer_steps"), record.budget.get("minutes")
    if steps:
        return "outer_steps", steps
    if minutes:
        return "minutes", minutes
    return None


def setting(record: RunRecord) -> dict[str, Any]:
    """The record's setting as dotted fields (the dataset and IPC apart): what must agree for a ranking."""
    fields = {f"data.{k}": v for k, v in flatten("", record.dataset_config).items() if k not in DATA_LOCATION}
    fields.update(flatten("model", record.model))
    protocol = {"protocol": "standard", **record.eval.protocol}
    fields.update({k: v for k, v in flatten("eval", protocol).items() if k not in SAMPLE_FIELDS})
    for key in ("outer_steps", "minutes"):
        if record.budget.get(key) is not None:
            fields[f"budget.{key}"] = record.budget[key]
    if (budget_of(record) or ("",))[0] == "minutes":
        fields["hardware.device_name"] = record.hardware.device_name
    fields["labels"] = label_kind(record)
    return fields


def identity(record: RunRecord) -> dict[str, Any]:
    """Every recorded field that enters a config id, as dotted fields (what can tell two configs apart)."""
    fields = {"suite": record.suite}
    fields.update({f"data.{k}": v for k, v in flatten("", record.dataset_config).items() if k != "name"})
    fields.update(flatten("method_config", record.method_config))
    fields.update(flatten("model", record.model))
    fields.update(flatten("eval", record.eval.protocol))
    fields.update(flatten("budget", record.budget))
    fields.update({"hardware.device": record.hardware.device, "hardware.dtype": record.hardware.dtype})
    return fields


_ABSENT = object()


def value_text(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _differing(dicts: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for d in dicts for k in d})
    return [k for k in keys if len({json.dumps(d.get(k, "\0absent"), sort_keys=True) for d in dicts}) > 1]


def _short(field_name: str) -> str:
    return field_name.removeprefix("method_config.")


def _key(fields: dict[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True)


@dataclass
class Group:
    """Records that may be ranked together: one dataset, IPC and setting; rows by display label."""

    dataset: str
    ipc: int
    setting: dict[str, Any]
    rows: dict[str, list[RunRecord]] = field(default_factory=dict)  # label -> one config's seeds
    suffix: str = ""  # the fields that tell it from its siblings, with its values
    differs: dict[str, list[str]] = field(default_factory=dict)  # such field -> every sibling's value

    @property
    def heading(self) -> str:
        return f"{self.dataset} IPC {self.ipc}" + (f" ({self.suffix})" if self.suffix else "")

    @property
    def key(self) -> tuple[str, int, str]:
        return self.dataset, self.ipc, _key(self.setting)

    @property
    def budget(self) -> tuple[str, float] | None:
        """The budget all its rows ran under (:func:`budget_of`)."""
        return budget_of(next(iter(self.rows.values()))[0])

    @property
    def records(self) -> list[RunRecord]:
        return [r for rs in self.rows.values() for r in rs]

    def method(self, label: str) -> str:
        """The suite label behind a row name."""
        return self.rows[label][0].method

    def differs_text(self) -> str:
        """``budget.outer_steps 120 vs 8``: how this group's siblings differ (``""`` without siblings)."""
        return "; ".join(f"{k} {' vs '.join(vs)}" for k, vs in self.differs.items())

    def config_ids(self) -> list[str]:
        return sorted({str(rs[0].config_id) for rs in self.rows.values()})

    def ranking(self) -> Ranking[str]:
        """Its rows' places (:mod:`harness.report.ranking`); failed rows unranked."""
        return rank({label: sample_of(rs) for label, rs in self.rows.items()})


def sample_of(runs: list[RunRecord]) -> Sample | None:
    """The row's accuracies per seed; None when a run of it did not finish."""
    if any(r.status != "ok" for r in runs):
        return None
    ordered = sorted(runs, key=lambda r: r.seed)
    return Sample.of([r.eval.accuracy_per_model for r in ordered], [r.seed for r in ordered])


def row_order(labels: Iterable[tuple[str, str]]) -> list[str]:
    """Row names (given with their method labels) with the baseline first, then by name."""
    return [name for name, _ in sorted(labels, key=lambda nm: (nm[1] != BASELINE, nm[0]))]


def comparable_groups(records: Iterable[RunRecord]) -> list[Group]:
    """``records`` (each run once) as comparable groups, by dataset, IPC, then setting."""
    records = unique_runs(records)
    cells: dict[tuple, dict[str, list[RunRecord]]] = defaultdict(lambda: defaultdict(list))
    settings: dict[tuple, dict[str, Any]] = {}
    for r in records:
        s = setting(r)
        key = (r.dataset, r.ipc, _key(s))
        settings[key] = s
        cells[key][(r.method, str(r.config_id))].append(r)
    groups = []
    for key in sorted(cells):
        group = Group(key[0], key[1], settings[key])
        by_name: dict[str, list[list[RunRecord]]] = defaultdict(list)
        for rs in cells[key].values():
            by_name[rs[0].method].append(rs)
        rows: dict[str, list[RunRecord]] = {}
        for name, configs in by_name.items():
            if len(configs) == 1:
                rows[name] = configs[0]
                continue
            ids = [identity(rs[0]) for rs in configs]
            fields = _differing(ids)
            if not fields:
                first = configs[0][0]
                raise DDBenchError(
                    f"{first.method} on {first.dataset} IPC {first.ipc}: records of {len(configs)} different configs "
                    f"({', '.join(sorted(str(rs[0].config_id) for rs in configs))}) differ in no recorded field; "
                    "render them from separate folders or select one with --config", field="config_id")
            for rs, ident in zip(configs, ids):
                rows[f"{name} ({', '.join(f'{_short(k)} {value_text(ident.get(k, _ABSENT))}' for k in fields)})"] = rs
        group.rows = {n: rows[n] for n in row_order((n, rs[0].method) for n, rs in rows.items())}
        groups.append(group)
    _name_siblings(groups)
    return groups


def _name_siblings(groups: list[Group]) -> None:
    siblings: dict[tuple[str, int], list[Group]] = defaultdict(list)
    for g in groups:
        siblings[(g.dataset, g.ipc)].append(g)
    for gs in siblings.values():
        fields = _differing([g.setting for g in gs]) if len(gs) > 1 else []
        for g in gs:
            shown = list(fields)
            if g.setting.get("labels", "hard") != "hard" and "labels" not in shown:
                shown.append("labels")
            parts = [f"{k} {value_text(g.setting.get(k, _ABSENT))}" for k in shown]
            if len(parts) > HEADING_FIELDS:
                parts = parts[:HEADING_FIELDS] + [f"+{len(parts) - HEADING_FIELDS} more"]
            g.suffix = ", ".join(parts)
            g.differs = {k: [value_text(o.setting.get(k, _ABSENT)) for o in gs] for k in fields}


def select_records(records: Iterable[RunRecord], configs: Iterable[str] = (), latest: bool = False,
                   ) -> list[RunRecord]:
    """The records of the configs whose id starts with one of ``configs`` (all if none given); with
    ``latest``, per cell (suite, dataset, IPC, method label) only the config that finished last.

    A prefix that matches no record is a :class:`DDBenchError` naming ``--config``.
    """
    records = list(records)
    prefixes = [p for p in configs if p]
    if prefixes:
        for p in prefixes:
            if not any(str(r.config_id).startswith(p) for r in records):
                known = ", ".join(sorted({str(r.config_id) for r in records}))
                raise DDBenchError(f"no record has a config id starting with {p!r} (here: {known})", field="--config")
        records = [r for r in records if any(str(r.config_id).startswith(p) for p in prefixes)]
    if latest:
        newest: dict[tuple, tuple[str, str]] = {}
        for r in records:
            cell = (r.suite, r.dataset, r.ipc, r.method)
            newest[cell] = max(newest.get(cell, ("", "")), (r.finished_at, str(r.config_id)))
        records = [r for r in records if newest[(r.suite, r.dataset, r.ipc, r.method)][1] == str(r.config_id)]
    return records
