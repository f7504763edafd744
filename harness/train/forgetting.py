"""Forgetting events (Toneva et al., "An Empirical Study of Example Forgetting during Deep Neural
Network Learning", ICLR 2019) during one training run on the real training split, cached once per
(data, network, recipe): what the hardness analysis buckets the test set by and what the
``forgetting`` coreset selects the training set by.

A *forgetting event* is a transition from correct to incorrect between two consecutive
observations of the same example; an example's forgetting count is the number of such events.
Examples never observed correct are *never learned* and count as harder than every example
that was learned at least once (:func:`forgetting_counts` returns the counts and a
``never_learned`` mask, never a sentinel; Toneva's ``sort_examples_by_forgetting`` gives them
the maximum count, the same order). :func:`hardness_key` orders examples easy -> hard by (never
learned, count[, the number of observations at which they were wrong]).

The run (:func:`training_history`): a fresh network trains on the full real train split for E
epochs of shuffled minibatches, without augmentation (so a presentation's correctness is the
example's own, not its augmented view's), and records every TRAIN example's correctness in the
forward pass of the minibatch that presents it, before the update (the literal Toneva procedure,
E observations per example), and every TEST example's correctness after every epoch (eval mode;
never trained on: the same definition tracks their prediction flips across the E checkpoints).

The histories are cached under ``$DDBENCH_CACHE/hardness/`` (default ``~/.cache/ddbench``),
keyed by the data (description, sizes, labels, dtype), the network and the :class:`ForgettingRun`
recipe; the hardness analysis and the ``forgetting`` method with the same recipe share one run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field
from tqdm.auto import tqdm

from harness.core.config import StrictModel
from harness.core.io import atomic_torch_save, cache_dir, cache_lock, key_digest
from harness.core.process import seeded
from harness.core.rng import Stream, step_seed
from harness.data import DatasetSplits
from harness.engine import InnerOptimizerConfig, make_torch_optimizer
from harness.models import ModelConfig, create_model
from harness.train.networks import data_key, key_json, read_cached

log = logging.getLogger(__name__)

# Bump when the training procedure or the cached payload changes, so old files are rebuilt.
# 1: the hardness analysis's own key (its whole config, bucketing included); 2: the recipe alone.
CACHE_VERSION = 2
_INIT, _ORDER = 0, 1  # positions in the scoring run's stream (Stream.HARDNESS)


class ForgettingRun(StrictModel):
    """The scoring run's recipe: the DC/DSA protocol for training a ConvNet on real data."""

    epochs: int = Field(20, ge=2)  # forgetting needs two observations
    batch_size: int = Field(128, ge=1)
    optimizer: InnerOptimizerConfig = InnerOptimizerConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4)
    seed: int = Field(0, ge=0)


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
    for epoch in tqdm(range(epochs), desc="forgetting", leave=False, disable=not progress):
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
class ForgettingHistory:
    """The histories of one scoring run."""

    train_history: torch.Tensor  # [E, n_train] bool
    test_history: torch.Tensor  # [E, n_test] bool
    seconds: float | None  # the run's wall-clock when it was trained (None: unknown)
    cache_file: Path | None = None

    @property
    def train(self) -> ForgettingCounts:
        """The literal Toneva forgetting scores of the training examples."""
        return forgetting_counts(self.train_history)

    @property
    def test(self) -> ForgettingCounts:
        return forgetting_counts(self.test_history)


def history_key(data: DatasetSplits, model: ModelConfig, run: ForgettingRun) -> dict[str, Any]:
    """What the histories depend on, as JSON: the data, the network and the recipe. The device is
    not part of it: computed once per dataset."""
    return {"version": CACHE_VERSION, "what": "forgetting history", **data_key(data),
            "model": model.model_dump(mode="json"), "recipe": run.model_dump(mode="json")}


def history_path(key: dict[str, Any]) -> Path:
    return cache_dir("hardness") / f"{key['dataset']}-{key_digest(key)}.pt"


def _checked(shapes: tuple[tuple[int, int], tuple[int, int]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def check(payload: dict[str, Any]) -> dict[str, Any]:
        for name, shape in zip(("train_history", "test_history"), shapes):
            t = payload[name]
            if t.dtype != torch.bool or tuple(t.shape) != shape:
                raise ValueError(f"{name} is {tuple(t.shape)} {t.dtype}, expected {shape} bool")
        return payload
    return check


def forgetting_history(data: DatasetSplits, model: ModelConfig, run: ForgettingRun, test_batch: int = 2048,
                       progress: bool = False) -> ForgettingHistory:
    """The histories of ``data``'s scoring run: from the cache when a valid file exists, else
    trained and cached (under a lock: cells running at once train it once)."""
    key = history_key(data, model, run)
    path = history_path(key)
    shapes = ((run.epochs, data.train_x.shape[0]), (run.epochs, data.test_x.shape[0]))
    with cache_lock(path):
        payload = read_cached(path, key, "forgetting", _checked(shapes))
        if payload is not None:
            return ForgettingHistory(payload["train_history"], payload["test_history"], payload.get("seconds"), path)
        t0 = time.perf_counter()
        model_fn = lambda: create_model(model, data.image_shape, data.num_classes).to(  # noqa: E731
            data.train_x.device, data.train_x.dtype)
        train_hist, test_hist = training_history(
            model_fn, data.train_x, data.train_y, data.test_x, data.test_y, epochs=run.epochs,
            batch_size=run.batch_size, optimizer=run.optimizer, seed=run.seed, test_batch=test_batch,
            progress=progress)
        seconds = time.perf_counter() - t0
        try:  # temp file + os.replace: never a half-written cache
            atomic_torch_save({"key": key_json(key), "train_history": train_hist, "test_history": test_hist,
                               "seconds": seconds}, path)
        except OSError as err:  # a read-only or full cache dir costs time, not correctness
            log.warning("cannot write the forgetting cache file %s (%s)", path, err)
            path = None
        return ForgettingHistory(train_hist, test_hist, seconds, path)
