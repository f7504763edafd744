"""Hardness analysis (RaT-BPTT, Feng et al. 2024): accuracy of distilled data per hardness bucket.

Hardness is measured by forgetting (Toneva et al. 2019), in one scoring run on the real training
split per (data, network, recipe): :mod:`harness.train.forgetting` defines forgetting events and
counts (never-learned examples hardest), trains the run and caches its histories; the
``forgetting`` coreset method reads the same run. The run records every TRAIN example's
correctness when its minibatch presents it (the literal Toneva procedure) and every TEST
example's correctness after every epoch; the buckets use the test examples' scores, since the
distilled sets are evaluated on the test split (we never train on test examples; the same
definition tracks their prediction flips across the E checkpoints).

Buckets (:func:`hardness_buckets`): test examples are ordered easy -> hard by (never learned,
forgetting count, then, with ``tie_break="misclassified"`` (default), the number of checkpoints
at which they were wrong, i.e. how late they were learned). The tie-break exists because
forgetting counts are heavily tied: on digits ~90% of test examples are never forgotten, so
quantiles of the count alone collapse into two buckets; ``tie_break="none"`` gives the literal
count. The order is cut into ``buckets`` consecutive buckets of near-equal size (quantiles)
made of whole groups of tied examples, so ties are never split: a big tie makes its bucket
bigger and the rest are shared evenly by the remaining buckets (fewer buckets only when there
are fewer distinct scores than buckets). Bucket 0 is the easiest; never-learned examples are
always in the last one.

The run is cached under ``$DDBENCH_CACHE/hardness/`` (default ``~/.cache/ddbench``), keyed by
the dataset's preprocessing and labels, the network and the run's recipe (epochs, batch size,
optimizer, seed: :meth:`HardnessConfig.run`; the bucketing is not part of it). For every
evaluated distilled set, the :class:`Hardness` analysis adds the per-bucket accuracies to the
run record (its ``hardness`` section), and the ``hardness`` table view
(``harness.report.views.hardness``) shows them per method.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from harness.data import DatasetSplits
from harness.engine import InnerOptimizerConfig
from harness.evaluation.analysis import Analysis, AnalysisContext, register_analysis
from harness.models import ModelConfig
from harness.train.forgetting import (ForgettingCounts, ForgettingHistory, ForgettingRun, forgetting_history,
                                      hardness_key, history_key, history_path)

SCORE = ("test examples ordered by forgetting count over {epochs} per-epoch checkpoints, never learned hardest"
         "{tie}")


class HardnessConfig(BaseModel):
    """How the forgetting scores are measured and bucketed (a suite's ``[hardness]`` table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # The scoring run (harness.train.forgetting.ForgettingRun's defaults: the DC/DSA protocol for
    # training a ConvNet on real data).
    epochs: int = ForgettingRun().epochs
    batch_size: int = ForgettingRun().batch_size
    optimizer: InnerOptimizerConfig = ForgettingRun().optimizer
    model: ModelConfig | None = None  # None: the network the suite distils with
    buckets: int = 4
    tie_break: Literal["misclassified", "none"] = "misclassified"  # see the module docstring
    seed: int = ForgettingRun().seed
    test_batch: int = 2048

    @model_validator(mode="after")
    def _check(self) -> "HardnessConfig":
        for name in ("epochs", "batch_size", "buckets", "test_batch"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.epochs < 2:
            raise ValueError(f"epochs must be >= 2 (forgetting needs two observations), got {self.epochs}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        return self

    def run(self) -> ForgettingRun:
        """The scoring run's recipe (what its cached histories are keyed by)."""
        return ForgettingRun(epochs=self.epochs, batch_size=self.batch_size, optimizer=self.optimizer,
                             seed=self.seed)


# --- bucketing -----------------------------------------------------------------------------


def hardness_buckets(scores: ForgettingCounts, buckets: int, tie_break: str = "misclassified") -> torch.Tensor:
    """Bucket (0 = easiest) of every example: near-equal-size quantiles of the hardness, ties kept together.

    Groups of tied examples are taken easy -> hard. A bucket's target size is (examples left) /
    (buckets left) when it opens; it takes whole groups and closes before the group that would
    overshoot the target by more than the bucket now falls short of it. So a huge tie (most
    examples never forgotten) fills one bucket and the other buckets still split the rest evenly,
    instead of being left empty; without ties the sizes are within one of N / buckets.
    """
    if buckets <= 0:
        raise ValueError(f"buckets must be > 0, got {buckets}")
    key = hardness_key(scores, tie_break)
    values, sizes = torch.unique(key, sorted=True, return_counts=True)
    group_bucket, bucket, filled, left = [], 0, 0, key.numel()
    target = left / buckets
    for size in sizes.tolist():
        if filled and bucket < buckets - 1 and filled + size - target > target - filled:
            bucket, left = bucket + 1, left - filled
            filled, target = 0, left / (buckets - bucket)
        group_bucket.append(bucket)
        filled += size
    return torch.tensor(group_bucket, dtype=torch.int64)[torch.searchsorted(values, key)]


def _labels(n: int) -> list[str]:
    if n == 1:
        return ["all"]
    return ["easiest", *(f"bucket {k}" for k in range(1, n - 1)), "hardest"]


def bucket_accuracy(correct: torch.Tensor, buckets: torch.Tensor,
                    scores: ForgettingCounts | None = None) -> list[dict[str, Any]]:
    """Per bucket: accuracy over its examples for every model, their mean and (population) std.

    ``correct`` is ``[models, n_test]`` bool (``EvalResult.correct``), ``buckets`` the ``[n_test]``
    bucket ids. With ``scores``, each bucket also gets its forgetting-count range over learned
    examples (``None`` when it holds only never-learned ones), its number of never-learned ones
    and its range of misclassified observations.
    """
    correct = correct.cpu()
    buckets = buckets.cpu()
    if correct.ndim != 2 or buckets.shape != correct.shape[1:]:
        raise ValueError(f"correct [models, n] and buckets [n] expected, got {tuple(correct.shape)} and "
                         f"{tuple(buckets.shape)}")
    ids = torch.unique(buckets, sorted=True).tolist()
    out = []
    for b, label in zip(ids, _labels(len(ids))):
        members = buckets == b
        per_model = correct[:, members].double().mean(1)
        row: dict[str, Any] = {
            "bucket": int(b),
            "label": label,
            "n": int(members.sum()),
            "accuracy_mean": float(per_model.mean()),
            "accuracy_std": float(per_model.std(unbiased=False)) if len(per_model) > 1 else 0.0,
            "accuracy_per_model": per_model.tolist(),
        }
        if scores is not None:
            counts, never = scores.counts.cpu()[members], scores.never_learned.cpu()[members]
            learned = counts[~never]
            row["score_min"] = int(learned.min()) if learned.numel() else None
            row["score_max"] = int(learned.max()) if learned.numel() else None
            row["n_never_learned"] = int(never.sum())
            wrong = scores.misclassified.cpu()[members]
            row["misclassified_min"], row["misclassified_max"] = int(wrong.min()), int(wrong.max())
        out.append(row)
    return out


# --- the scoring run (harness.train.forgetting) -------------------------------------------------


@dataclass(frozen=True, eq=False)
class HardnessScores(ForgettingHistory):
    """A scoring run's histories (their forgetting counts: ``train``, ``test``) and the buckets of
    the suite's ``[hardness]`` table."""

    config: HardnessConfig = HardnessConfig()

    @property
    def test_buckets(self) -> torch.Tensor:
        return hardness_buckets(self.test, self.config.buckets, self.config.tie_break)


def cache_key(data: DatasetSplits, model: ModelConfig, cfg: HardnessConfig) -> dict[str, Any]:
    """What the scores depend on, as JSON (:func:`harness.train.forgetting.history_key`)."""
    return history_key(data, model, cfg.run())


def cache_path(key: dict[str, Any]) -> Path:
    return history_path(key)


def load_or_compute(data: DatasetSplits, model: ModelConfig, cfg: HardnessConfig,
                    progress: bool = False) -> HardnessScores:
    """The scores of ``data``: from the cache when a valid file exists, else trained and cached."""
    run = forgetting_history(data, model, cfg.run(), test_batch=cfg.test_batch, progress=progress)
    return HardnessScores(run.train_history, run.test_history, run.seconds, run.cache_file, cfg)


# --- run records and tables -------------------------------------------------------------------


def hardness_section(scores: HardnessScores, correct: torch.Tensor, model: ModelConfig) -> dict[str, Any]:
    """The record section of one evaluated distilled set (JSON-serialisable)."""
    if correct.shape[1] != scores.test_history.shape[1]:
        raise ValueError(f"{correct.shape[1]} evaluated test examples, but scores for {scores.test_history.shape[1]}")
    cfg, test = scores.config, scores.test
    tie = ", ties broken by the number of checkpoints misclassified" if cfg.tie_break == "misclassified" else ""
    return {
        "config": cfg.model_dump(mode="json"),
        "model": model.model_dump(mode="json"),
        "score": SCORE.format(epochs=scores.test_history.shape[0], tie=tie),
        "bucketing": f"{cfg.buckets} near-equal-size quantiles of that order, ties kept together",
        "buckets": bucket_accuracy(correct, scores.test_buckets, test),
        "scoring_run": {
            "final_test_accuracy": float(scores.test_history[-1].double().mean()),
            "final_train_accuracy": float(scores.train_history[-1].double().mean()),
            "test_never_learned": int(test.never_learned.sum()),
            "train_never_learned": int(scores.train.never_learned.sum()),
        },
        "cache_file": str(scores.cache_file) if scores.cache_file is not None else None,
    }


@register_analysis("hardness")
class Hardness(Analysis):
    """Accuracy per hardness bucket of the test set (forgetting scores, cached per dataset)."""

    Config = HardnessConfig
    section = "hardness"

    def networks(self, cfg: HardnessConfig, model: ModelConfig) -> list[tuple[str, ModelConfig]]:
        return [("hardness.model", cfg.model)] if cfg.enabled and cfg.model is not None else []

    def run(self, cfg: HardnessConfig, ctx: AnalysisContext) -> dict[str, Any]:
        """The record section; the scoring network defaults to the cell's."""
        if not cfg.enabled:
            return {"config": cfg.model_dump(mode="json"), "skipped": "disabled in the suite"}
        model = cfg.model or ctx.model
        scores = load_or_compute(ctx.data, model, cfg, progress=ctx.progress)
        return hardness_section(scores, ctx.eval_result.correct, model)
