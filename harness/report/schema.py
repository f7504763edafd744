"""The run record: one typed schema that the runner fills and every table view reads.

A record is plain JSON on disk (one file per finished cell, see :mod:`.records`); this module
is its schema. Adding a metric is adding a field here. Types are strict (``"1"`` is not an
IPC), so a hand-edited or damaged record is refused with one line naming the file and the
dotted field instead of crashing a table. Sections of plug-in analyses unknown to this
schema are kept as they are (``extra="allow"``).

``schema_version`` history: 1 (ddbench 0.1: no ``provenance``, no ``kind`` in early files);
2 (this schema). A schema-1 record is read by :func:`upgrade`, which only adds what 2 added.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 2
RECORD_KIND = "ddbench.run"  # a record's "kind"; other JSON files (benchmarks) carry their own

Accuracy = Field(ge=0.0, le=1.0)
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]  # a file's SHA-256, lowercase hex


class _Readable(BaseModel):
    """Fields also read as ``record["eval"]["accuracy_mean"]``, as in the record's JSON."""

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None


class _Section(_Readable):
    model_config = ConfigDict(strict=True, extra="allow")


class SelectedOnTest(_Section):
    """The official RaT-BPTT code's number: the best step budget (and distillation checkpoint)
    chosen *on the test set*. "as published: test-selected upper bound": never the accuracy."""

    accuracy_mean: float = Accuracy
    accuracy_std: float = Field(ge=0.0)
    accuracy_per_model: list[float]
    budget: int = Field(ge=1)  # evaluation steps
    at_outer_step: int | None = None  # the checkpoint (outer steps done) it was measured at
    checkpoints: int | None = None  # evaluations of the set it was the best of
    label: Literal["as published: test-selected upper bound"]


class EvalSection(_Section):
    protocol: dict[str, Any]
    accuracy_mean: float | None  # None only for a run that did not finish (status != "ok")
    accuracy_std: float | None
    accuracy_per_model: list[float]
    details: dict[str, Any] = {}  # what the protocol selected and on what (a budget, an lr), per-budget results
    test_selected: SelectedOnTest | None = None  # a protocol with budgets (ratbptt): beside accuracy_mean, never it


class DistillSection(_Section):
    outer_steps: int = Field(ge=0)
    stopped_by: str = "outer_steps"
    wall_clock_s: float = Field(ge=0)
    seconds_per_outer_step: float = Field(ge=0)
    median_seconds_per_outer_step: float | None = None
    peak_memory_bytes: int = Field(ge=0)
    # How the peak was measured (harness.engine.memory): cuda_max_allocated_above_start
    # (cuda_max_allocated in early records) | cpu_tensor_peak_sampled (ddbench's tensor meter on
    # sampled outer steps) | cpu_peak_rss (the process's resident set: a method that takes no
    # outer step, and records before the tensor meter)
    memory_kind: str
    resident_data_bytes: int | None = None  # the cell's dataset on its device, not in the CUDA peak
    history: list[dict[str, Any]] = []
    method_summary: dict[str, Any] = {}
    # The method's setup (not distillation time): where a selection method (random_real, herding,
    # kcenter, forgetting) does all its work; a resumed cell keeps its first setup's. None: early records.
    setup_seconds: float | None = Field(None, ge=0)
    diverged_at: int | None = None  # the outer step whose result was not finite (status "diverged")
    divergence: str | None = None  # what was not finite


class HardwareSection(_Section):
    device: str | None = None
    device_name: str
    cpu_count: int | None
    torch_threads: int | None = None
    platform: str | None = None
    python: str
    torch: str
    cuda: str | None = None
    torchvision: str | None = None
    torchopt: str | None
    ddbench: str | None = None
    dtype: str | None = None


class HardnessBucket(_Section):
    bucket: int
    label: str
    n: int
    accuracy_mean: float
    accuracy_std: float
    accuracy_per_model: list[float]
    score_min: int | None = None
    score_max: int | None = None
    n_never_learned: int | None = None
    misclassified_min: int | None = None
    misclassified_max: int | None = None


class HardnessSection(_Section):
    config: dict[str, Any]
    skipped: str | None = None
    model: dict[str, Any] | None = None
    score: str | None = None
    bucketing: str | None = None
    buckets: list[HardnessBucket] = []
    scoring_run: dict[str, Any] | None = None
    cache_file: str | None = None


class SubsetPoint(_Section):
    kind: Literal["block_prefix", "prefix", "random", "full"]
    size: int = Field(ge=1)
    positions: list[int]
    accuracy_mean: float
    accuracy_std: float
    accuracy_per_model: list[float]


class SubsetCurveSection(_Section):
    config: dict[str, Any]
    skipped: str | None = None
    protocol: dict[str, Any] | None = None
    ipc: int | None = None
    blocks: int | None = None
    curve: list[SubsetPoint] = []


class ScoresSection(_Section):
    """DD-Ranking's scores (``harness.evaluation.scores``); accuracies as fractions."""

    config: dict[str, Any]
    skipped: str | None = None
    protocol: str | None = None
    accuracies: dict[str, float] = {}
    hlr: float | None = None
    ior: float | None = None
    lrs: float | None = None
    ars: float | None = None
    label_kind: Literal["hard", "soft"] | None = None  # the set's labels; its random baseline gets the same kind
    full_data_epochs: int | None = Field(None, ge=1)  # the full-data networks' training (None in early records)
    full_data_accuracy: float | None = Field(None, ge=0.0, le=1.0)  # their mean final test accuracy (HLR's)
    full_data_cache: str | None = None  # its cache file, relative to the cache dir (early records: absolute)
    full_data: dict[str, Any] = {}  # models, per-model accuracies, recipe, DD-Ranking's test-selected maximum
    baselines: dict[str, Any] = {}  # each random baseline: accuracy, lr and how it was selected, cache file


class AnytimePoint(_Section):
    step: int  # outer steps done
    seconds: float  # distillation wall-clock so far (the evaluations not counted)
    accuracy_mean: float
    accuracy_std: float
    accuracy_per_model: list[float]
    # A protocol with budgets (ratbptt): each budget's {steps, validation_accuracy,
    # test_accuracy, test_accuracy_per_model}, for the test-selected maximum over checkpoints.
    budgets: list[dict[str, Any]] | None = None


class AnytimeSection(_Section):
    """Accuracy at budget: the set evaluated during its distillation (a suite's ``[anytime]``)."""

    config: dict[str, Any]
    protocol: dict[str, Any]
    curve: list[AnytimePoint] = []
    eval_seconds: float = 0.0


class Provenance(_Section):
    """What produced the record, and how busy the machine was while it ran."""

    ddbench: str
    git: dict[str, Any] | None = None  # {"commit", "dirty"} when run from a checkout
    busy: dict[str, Any] | None = None  # harness.core.provenance.BusyMeter.report()


class RunRecord(_Readable):
    """One finished (suite, dataset, IPC, method label, seed) cell."""

    model_config = ConfigDict(strict=True, extra="allow")

    schema_version: Literal[2]
    kind: Literal["ddbench.run"] = RECORD_KIND
    run_id: str
    config_id: str | None = None  # the run id without the seed: records sharing it are seeds of one setting
    suite: str
    dataset: str
    dataset_config: dict[str, Any] = {}
    preprocessing: dict[str, Any] = {}
    class_names: list[str] = []  # the dataset's classes, in label order
    ipc: int = Field(ge=1)
    method: str  # the suite's label
    method_name: str | None = None  # the registry name (None in early schema-1 records: the label)
    method_config: dict[str, Any]
    wraps: str | None = None  # a wrapper method's (Boost-DD's) wrapped method, by registry name
    seed: int = Field(ge=0)
    model: dict[str, Any] = {}
    budget: dict[str, Any] = {}
    suite_overrides: list[str] = []  # `ddbench run --set field=value` options the cell ran with
    eval: EvalSection
    distill: DistillSection
    hardness: HardnessSection | None = None
    subset_curve: SubsetCurveSection | None = None
    scores: ScoresSection | None = None
    anytime: AnytimeSection | None = None
    # How its labels were made: the class (hard), a teacher network's soft labels (teacher: a
    # selection method's labels = "teacher"), or learned with the images. None: early records.
    label_kind: Literal["hard", "teacher", "learned"] | None = None
    distilled_file: str | None = None  # the distilled set's file name, in the record's folder
    distilled_sha256: Sha256 | None = None  # of that file as saved (ddbench publish and eval check it)
    hardware: HardwareSection
    provenance: Provenance | None = None
    started_at: str
    finished_at: str
    status: Literal["ok", "diverged", "failed"]
    error: str | None = None  # status "failed": the one-line reason (the traceback is in error_file)
    error_file: str | None = None  # the traceback's file name, in the record's folder

    @property
    def registry_name(self) -> str:
        return self.method_name or self.method

    def problem(self) -> tuple[str, str] | None:
        """``(field, message)`` for what the types cannot say (a finished run has accuracies), or None."""
        if self.status == "ok":
            accs = self.eval.accuracy_per_model
            if not accs:
                return "eval.accuracy_per_model", "must be a non-empty list of accuracies in [0, 1]"
            for key in ("accuracy_mean", "accuracy_std"):
                if getattr(self.eval, key) is None:
                    return f"eval.{key}", "must be a number"
        if not all(0.0 <= a <= 1.0 for a in self.eval.accuracy_per_model):
            return "eval.accuracy_per_model", "must be a non-empty list of accuracies in [0, 1]"
        return None


EVAL_KIND = "ddbench.eval"


class EvalRecord(_Readable):
    """A saved distilled set evaluated again (``ddbench eval``): another protocol or network,
    linked to the run record it evaluates (``of_run``)."""

    model_config = ConfigDict(strict=True, extra="allow")

    schema_version: Literal[2]
    kind: Literal["ddbench.eval"] = EVAL_KIND
    eval_id: str  # hash of (of_run, protocol, model, validation)
    of_run: str  # the run_id of the distillation record
    record_file: str  # that record's file name, beside this one
    distilled_sha256: Sha256 | None = None  # of the distilled set evaluated (the run record's)
    suite: str
    dataset: str
    ipc: int = Field(ge=1)
    method: str
    method_name: str | None = None
    seed: int = Field(ge=0)
    config_id: str | None = None
    model: dict[str, Any]  # the network evaluated (may differ from the distillation's)
    validation: dict[str, Any] | None = None  # a split held out for this evaluation, if it needed one
    eval: EvalSection
    hardware: HardwareSection
    provenance: Provenance | None = None
    started_at: str
    finished_at: str


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 record's JSON in schema 2 (a new dict): only what schema 2 added is filled in.

    Schema 1 did not say which method a wrapper wraps; its one wrapper, ``boost_dd``, kept the
    name in ``method_config.base``.
    """
    if data.get("schema_version") != 1:
        return data
    out = {**data, "schema_version": SCHEMA_VERSION, "kind": data.get("kind", RECORD_KIND)}
    config = data.get("method_config")
    if data.get("method_name", data.get("method")) == "boost_dd" and isinstance(config, dict) \
            and isinstance(config.get("base"), str):
        out.setdefault("wraps", config["base"])
    return out


REQUIRED_FIELDS = tuple(name for name, info in RunRecord.model_fields.items() if info.is_required())
REQUIRED_NESTED = {
    name: tuple(k for k, info in model.model_fields.items() if info.is_required())
    for name, model in (("eval", EvalSection), ("distill", DistillSection), ("hardware", HardwareSection))
}
