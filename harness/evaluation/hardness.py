"""Hardness analysis (RaT-BPTT, Feng et al. 2024): accuracy of distilled data per hardness bucket.

Hardness is measured by forgetting (Toneva et al. 2019). A *forgetting event* is a transition
from correct to incorrect between two consecutive observations of the same example; an
example's forgetting count is the number of such events. Examples never observed correct are
*never learned* and count as harder than every example that was learned at least once
(:func:`forgetting_counts` returns the counts and a ``never_learned`` mask, never a sentinel).

Procedure (:func:`training_history`), once per dataset: a fresh network trains on the full real
train split for E epochs of shuffled minibatches, without augmentation (so a presentation's
correctness is the example's own, not its augmented view's), and records

* every TRAIN example's correctness in the forward pass of the minibatch that presents it,
  before the update: the literal Toneva procedure, E observations per example;
* every TEST example's correctness after every epoch (eval mode). We never train on test
  examples; the same definition applied to a held-out split tracks their prediction flips
  across the E checkpoints, and this is the score the buckets use, since the distilled sets
  are evaluated on the test split.

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

The result is cached under ``$DDBENCH_CACHE/hardness/`` (default ``~/.cache/ddbench``), keyed
by the dataset's preprocessing and labels, the network and the :class:`HardnessConfig`.
For every evaluated distilled set, the :class:`Hardness` analysis adds the per-bucket
accuracies to the run record (its ``hardness`` section), and the ``hardness`` table view
(``harness.report.views.hardness``) shows them per method.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, model_validator
from tqdm.auto import tqdm

from harness.core.io import atomic_torch_save, cache_dir
from harness.core.process import seeded
from harness.core.rng import Stream, step_seed
from harness.data import DatasetSplits
from harness.engine.optim import InnerOptimizerConfig, make_torch_optimizer
from harness.evaluation.analysis import Analysis, AnalysisContext, register_analysis
from harness.models import ModelConfig, create_model

log = logging.getLogger(__name__)

# Bump when the training procedure or the cached payload changes, so old files are rebuilt.
CACHE_VERSION = 1
SCORE = ("test examples ordered by forgetting count over {epochs} per-epoch checkpoints, never learned hardest"
         "{tie}")
_INIT, _ORDER = 0, 1  # positions in this analysis's stream (Stream.HARDNESS)


class HardnessConfig(BaseModel):
    """How the forgetting scores are measured and bucketed (a suite's ``[hardness]`` table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    epochs: int = 20
    batch_size: int = 128
    # The DC/DSA protocol for training a ConvNet on real data.
    optimizer: InnerOptimizerConfig = InnerOptimizerConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4)
    model: ModelConfig | None = None  # None: the network the suite distils with
    buckets: int = 4
    tie_break: Literal["misclassified", "none"] = "misclassified"  # see the module docstring
    seed: int = 0
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


# --- pure definitions -----------------------------------------------------------------------


class ForgettingCounts(NamedTuple):
    counts: torch.Tensor  # [N] int64: correct -> incorrect transitions (0 for never learned)
    never_learned: torch.Tensor  # [N] bool: never observed correct
    misclassified: torch.Tensor  # [N] int64: observations at which it was wrong (T for never learned)


def forgetting_counts(history: torch.Tensor) -> ForgettingCounts:
    """Toneva forgetting counts of a ``[T, N]`` bool history (row t = observation t of every example)."""
    if history.ndim != 2 or history.dtype != torch.bool:
        raise ValueError(f"history must be a [T, N] bool tensor, got {tuple(history.shape)} {history.dtype}")
    forgotten = history[:-1] & ~history[1:]
    return ForgettingCounts(forgotten.sum(0, dtype=torch.int64), ~history.any(0),
                            (~history).sum(0, dtype=torch.int64))


def hardness_key(scores: ForgettingCounts, tie_break: str = "misclassified") -> torch.Tensor:
    """An int64 rank per example, ordering easy -> hard by (never learned, count[, misclassified])."""
    columns = [scores.never_learned.long(), scores.counts]
    if tie_break == "misclassified":
        columns.append(scores.misclassified)
    elif tie_break != "none":
        raise ValueError(f"tie_break must be 'misclassified' or 'none', got {tie_break!r}")
    if scores.counts.numel() == 0:
        return scores.counts.clone()
    # Lexicographic rank: unique rows come back sorted, and the inverse indexes them.
    return torch.unique(torch.stack(columns, 1), dim=0, return_inverse=True)[1]


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


# --- the training run ------------------------------------------------------------------------


def training_history(model_fn: Callable[[], nn.Module], train_x: torch.Tensor, train_y: torch.Tensor,
                     test_x: torch.Tensor, test_y: torch.Tensor, *, epochs: int, batch_size: int,
                     optimizer: InnerOptimizerConfig, seed: int, test_batch: int = 2048,
                     progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Train ``model_fn()`` on the train split; return the (train, test) ``[epochs, N]`` bool histories.

    ``model_fn`` builds the network on the data's device and dtype; it is called under
    ``seed``, inside a forked RNG so the caller's random state is untouched.
    """
    device = train_x.device
    with seeded(step_seed(seed, _INIT, Stream.HARDNESS), device):
        net = model_fn()
    opt = make_torch_optimizer(optimizer, net.parameters())
    order_gen = torch.Generator().manual_seed(step_seed(seed, _ORDER, Stream.HARDNESS))
    n = train_x.shape[0]
    # Kept on the device until the end: no host sync per minibatch.
    train_hist = torch.zeros(epochs, n, dtype=torch.bool, device=device)
    test_hist = torch.zeros(epochs, test_x.shape[0], dtype=torch.bool, device=device)
    for epoch in tqdm(range(epochs), desc="hardness", leave=False, disable=not progress):
        net.train()
        for idx in torch.randperm(n, generator=order_gen).split(batch_size):
            idx_dev = idx.to(device)
            logits = net(train_x[idx_dev])
            y = train_y[idx_dev]
            # Correctness at presentation, before this minibatch's update (Toneva et al.).
            train_hist[epoch, idx_dev] = logits.detach().argmax(-1) == y
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            hits = [net(test_x[s : s + test_batch]).argmax(-1) == test_y[s : s + test_batch]
                    for s in range(0, test_x.shape[0], test_batch)]
        if hits:
            test_hist[epoch] = torch.cat(hits)
    return train_hist.cpu(), test_hist.cpu()


@dataclass(frozen=True, eq=False)
class HardnessScores:
    """The histories of one scoring run and what is derived from them."""

    train_history: torch.Tensor  # [E, n_train] bool
    test_history: torch.Tensor  # [E, n_test] bool
    config: HardnessConfig
    cache_file: Path | None = None

    @property
    def train(self) -> ForgettingCounts:
        """The literal Toneva forgetting scores of the training examples."""
        return forgetting_counts(self.train_history)

    @property
    def test(self) -> ForgettingCounts:
        return forgetting_counts(self.test_history)

    @property
    def test_buckets(self) -> torch.Tensor:
        return hardness_buckets(self.test, self.config.buckets, self.config.tie_break)


def _model_fn(data: DatasetSplits, model: ModelConfig) -> Callable[[], nn.Module]:
    return lambda: create_model(model, data.image_shape, data.num_classes).to(data.train_x.device,
                                                                                data.train_x.dtype)


def cache_key(data: DatasetSplits, model: ModelConfig, cfg: HardnessConfig) -> dict[str, Any]:
    """What the scores depend on, as JSON: the preprocessed data (its description, sizes and
    labels), the network and the config. The device is not part of it: computed once per dataset."""
    labels = hashlib.sha256()
    for y in (data.train_y, data.test_y):
        labels.update(y.detach().cpu().to(torch.int64).numpy().tobytes())
    return {
        "version": CACHE_VERSION,
        "dataset": data.name,
        "preprocessing": data.preprocessing,
        "shapes": [list(data.train_x.shape), list(data.test_x.shape)],
        "labels_sha256": labels.hexdigest(),
        "dtype": str(data.train_x.dtype),
        "model": model.model_dump(mode="json"),
        # `enabled` and `test_batch` do not change the scores.
        "config": cfg.model_dump(mode="json", exclude={"enabled", "test_batch"}),
    }


def cache_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir("hardness") / f"{key['dataset']}-{digest}.pt"


def _read_cache(path: Path, key: dict, shapes: tuple[tuple[int, int], tuple[int, int]]) -> dict | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload["key"] != json.loads(json.dumps(key)):  # compare in JSON form (tuples -> lists)
            raise ValueError("key mismatch")
        for name, shape in zip(("train_history", "test_history"), shapes):
            t = payload[name]
            if t.dtype != torch.bool or tuple(t.shape) != shape:
                raise ValueError(f"{name} is {tuple(t.shape)} {t.dtype}, expected {shape} bool")
        return payload
    except Exception as err:  # any unreadable or foreign file: recompute rather than crash
        log.warning("ignoring hardness cache file %s (%s: %s); recomputing it", path, type(err).__name__, err)
        return None


def load_or_compute(data: DatasetSplits, model: ModelConfig, cfg: HardnessConfig,
                    progress: bool = False) -> HardnessScores:
    """The scores of ``data``: from the cache when a valid file exists, else trained and cached."""
    key = cache_key(data, model, cfg)
    path = cache_path(key)
    shapes = ((cfg.epochs, data.train_x.shape[0]), (cfg.epochs, data.test_x.shape[0]))
    payload = _read_cache(path, key, shapes)
    if payload is None:
        train_hist, test_hist = training_history(
            _model_fn(data, model), data.train_x, data.train_y, data.test_x, data.test_y, epochs=cfg.epochs,
            batch_size=cfg.batch_size, optimizer=cfg.optimizer, seed=cfg.seed, test_batch=cfg.test_batch,
            progress=progress)
        payload = {"key": key, "train_history": train_hist, "test_history": test_hist}
        try:
            atomic_torch_save(payload, path)  # temp file + os.replace: never a half-written cache
        except OSError as err:  # a read-only or full cache dir costs time, not correctness
            log.warning("cannot write hardness cache file %s (%s)", path, err)
            path = None
    return HardnessScores(payload["train_history"], payload["test_history"], cfg, path)


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
