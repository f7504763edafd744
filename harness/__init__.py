"""ddbench's harness: what a method author or a script needs, in one namespace.

::

    from harness import register_method, UnrolledMethod, UnrollConfig, check_window
    from harness import load_suite, run_suite, RunRecord

Names are imported on first use (``harness.meta_gradient`` imports the engine then), so
``import harness`` is cheap. The layers, bottom to top (each may import only those below it):

    core        errors, the Registry type, random streams, atomic I/O, process settings, provenance
    data        dataset configs, the source registry, preprocessing, cache   | models  networks, augmentation
    report      the run record schema, records on disk, table views          |
    engine      the unroll: functional model, schedules, inner optimizers, outer objective, CUDA graphs, low rank
    method      Method, DistillTask, DistilledSet, the method registry, the unrolled outer loop and its update
    train       beside method: networks trained on the real data, cached (full-data networks, teacher, forgetting)
    evaluation  the evaluation protocol and the analyses
    run         suites, the runner, executors, the CLI
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    # core
    "DDBenchError": "harness.core.errors", "ConfigError": "harness.core.errors",
    "Registry": "harness.core.registry", "Stream": "harness.core.rng", "step_seed": "harness.core.rng",
    "StrictModel": "harness.core.config",
    # data
    "DataConfig": "harness.data", "DatasetSplits": "harness.data", "RawSplits": "harness.data",
    "DatasetSource": "harness.data", "LayoutMismatch": "harness.data", "register_dataset": "harness.data",
    "load_dataset": "harness.data", "list_datasets": "harness.data",
    # models
    "ModelConfig": "harness.models", "AugmentConfig": "harness.models",
    # engine
    "meta_gradient": "harness.engine", "MetaGradient": "harness.engine", "FunctionalModel": "harness.engine",
    "Synthetic": "harness.engine", "UnrollOptions": "harness.engine", "RealBatchLoss": "harness.engine",
    "OuterValue": "harness.engine", "EngineConfig": "harness.engine",
    "class_balanced_schedule": "harness.engine", "InnerSchedule": "harness.engine",
    "InnerOptimizerConfig": "harness.engine", "make_inner_optimizer": "harness.engine",
    "make_torch_optimizer": "harness.engine",
    # method
    "Method": "harness.method", "UnrolledMethod": "harness.method", "UnrollConfig": "harness.method",
    "DistillTask": "harness.method", "DistilledSet": "harness.method",
    "check_window": "harness.method", "uniform_unroll": "harness.method", "register_method": "harness.method",
    "create_method": "harness.method", "list_methods": "harness.method",
    # evaluation
    "EvalProtocol": "harness.evaluation", "evaluate": "harness.evaluation", "Analysis": "harness.evaluation",
    "AnalysisContext": "harness.evaluation", "DistillContext": "harness.evaluation",
    "register_analysis": "harness.evaluation",
    # report
    "RunRecord": "harness.report", "read_record": "harness.report", "iter_records": "harness.report",
    "register_view": "harness.report", "render_view": "harness.report",
    # run
    "load_suite": "harness.run.suite", "run_suite": "harness.run.runner",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from harness.core.provenance import ddbench_version

        return ddbench_version()
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
