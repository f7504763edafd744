"""``ddbench eval RECORD_OR_DIR --protocol NAME [--model NET]``: saved distilled sets evaluated
again, under another protocol or on another network, without distilling again (the anchors'
cross-architecture tables). Each evaluation is an evaluation record (``kind: ddbench.eval``)
beside the run record it evaluates, linked by its run id; ``ddbench table DIR --view evals``
shows them. An evaluation that exists already is skipped.

Records may come from someone else: before anything is evaluated, every record's distilled set
is checked (a name in the record's folder, its SHA-256 the record's ``distilled_sha256``); a
record that fails is one line naming it, exit status 2, nothing written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import torch

from harness.core.errors import CheckpointError, ConfigError
from harness.core.provenance import BusyMeter
from harness.data import DataConfig, DatasetSplits, load_dataset
from harness.data.load import validation_split
from harness.evaluation import PROTOCOLS, evaluate, protocol_config
from harness.method import DistilledSet
from harness.models import ModelConfig
from harness.report import SCHEMA_VERSION, EvalRecord, RunRecord, iter_records, read_record, write_record
from harness.report.records import checked_distilled_file, file_sha256
from harness.run.progress import say
from harness.run.recording import environment, json_safe, now_iso
from harness.run.runner import resolve_device


def eval_path(record_path: Path, eval_id: str, protocol: str, model: str) -> Path:
    stem = record_path.name.removesuffix(".json")
    return record_path.with_name(f"{stem}.eval-{protocol}-{model}-{eval_id}.json")


def run_records(target: Path) -> list[tuple[Path, RunRecord]]:
    if target.is_file():
        return [(target, read_record(target))]
    if target.is_dir():
        return list(iter_records(target))
    raise ConfigError("no such record or folder", file=str(target))


def reevaluate(target: Path, protocol: dict, model: str | None, validation_size: int, device_name: str = "auto",
               ) -> list[Path]:
    """Evaluate every finished run record at ``target`` (a record or a folder); returns the
    evaluation records written."""
    device = resolve_device(device_name, field="--device", instead="--device cpu")
    cfg = protocol_config(protocol)
    datasets: dict[str, DatasetSplits] = {}
    written = []
    records = run_records(Path(target))
    sets = {path: _distilled_set(path, record) for path, record in records}  # all checked before any work
    for path, record in records:
        if record.status != "ok" or sets[path] is None:
            say(f"{path.name}: skipped ({record.status}, no distilled set)")
            continue
        net = _network(record, model)
        needs_val = PROTOCOLS.get(cfg.protocol).selects_on_validation(cfg)
        validation = None
        data_cfg = DataConfig(**record.dataset_config)
        if needs_val and not data_cfg.validation_size:
            if not validation_size:
                raise ConfigError(f"the {cfg.protocol!r} protocol selects on a validation split; this set was "
                                  "distilled without one: give --validation-size", field="--validation-size")
            validation = {"size": validation_size, "seed": 0,
                          "note": "held out at evaluation: the distillation may have seen these training images"}
        key = json.dumps([record.dataset_config, validation], sort_keys=True)
        eval_id = hashlib.sha256(json.dumps([record.run_id, cfg.model_dump(mode="json"), net.model_dump(mode="json"),
                                             validation], sort_keys=True).encode()).hexdigest()[:16]
        out = eval_path(path, eval_id, cfg.protocol, net.name)
        if out.exists():
            say(f"{out.name}: exists, skipped")
            written.append(out)
            continue
        if key not in datasets:
            datasets[key] = _dataset(data_cfg, validation)
        data = datasets[key].to(device, getattr(torch, record.hardware.dtype or "float32"))
        try:
            distilled = DistilledSet.load(sets[path])
        except Exception as err:  # noqa: BLE001 - a missing or damaged file, named
            raise CheckpointError(f"cannot read the distilled set ({type(err).__name__})",
                                  file=str(sets[path])) from None
        busy, started = BusyMeter(), now_iso()
        result = evaluate(distilled, data, cfg, net, seed=record.seed, device=device, dtype=data.train_x.dtype)
        evaluation = EvalRecord.model_validate({
            "schema_version": SCHEMA_VERSION, "eval_id": eval_id, "of_run": record.run_id, "record_file": path.name,
            "distilled_sha256": record.distilled_sha256 or file_sha256(sets[path]),  # the set evaluated
            "suite": record.suite, "dataset": record.dataset, "ipc": record.ipc, "method": record.method,
            "method_name": record.method_name, "seed": record.seed, "config_id": record.config_id,
            "model": net.model_dump(mode="json"), "validation": validation,
            "eval": {"protocol": cfg.model_dump(mode="json"), "accuracy_mean": result.accuracy_mean,
                     "accuracy_std": result.accuracy_std, "accuracy_per_model": result.accuracy_per_model,
                     "details": json_safe(result.details),
                     # over the budgets of this one evaluation (no checkpoints here)
                     **({"test_selected": json_safe(result.test_selected)} if result.test_selected else {})},
            **environment(device, data.train_x.dtype, busy), "started_at": started, "finished_at": now_iso()})
        write_record(out, evaluation)
        say(f"{record.dataset} ipc{record.ipc} {record.method} s{record.seed}: {cfg.protocol} on {net.name}: "
            f"{100 * result.accuracy_mean:.2f}% ± {100 * result.accuracy_std:.2f}")
        written.append(out)
    return written


def _distilled_set(path: Path, record: RunRecord) -> Path | None:
    """The file of the record's distilled set, checked (:func:`checked_distilled_file`, and there);
    None for a record with no set to evaluate."""
    distilled = checked_distilled_file(path, record)
    if record.status != "ok" or distilled is None:
        return None
    if not distilled.is_file():
        raise CheckpointError(f"its distilled set {distilled.name} is missing", file=str(path), field="distilled_file")
    return distilled


def _network(record: RunRecord, name: str | None) -> ModelConfig:
    own = ModelConfig(**record.model)
    if name is None or name == own.name:
        return own
    try:
        return ModelConfig(name=name)
    except ValueError:
        raise ConfigError(f"unknown network {name!r} (convnet, resnet18)", field="--model") from None


def _dataset(cfg: DataConfig, validation: dict | None) -> DatasetSplits:
    data = load_dataset(cfg)
    if validation is None:
        return data
    keep, held = validation_split(data.train_y.cpu(), data.num_classes, validation["size"], validation["seed"])
    return replace(data, train_x=data.train_x[keep], train_y=data.train_y[keep], val_x=data.train_x[held],
                   val_y=data.train_y[held])
