"""DD-Ranking's scores of a distilled set (Li et al., "DD-Ranking: Rethinking the Evaluation of
Dataset Distillation", 2025), under the record's own evaluation protocol:

* HLR (hard label recovery) = acc(full real training set) - acc(distilled set, hard labels);
* IOR (improvement over random) = acc(distilled set) - acc(random real subset, same IPC, same
  kind of labels);
* LRS (label-robust score) = (e^a - e^-1) / (e - e^-1), a = w IOR - (1 - w) HLR, w = 0.5;
* ARS (augmentation-robust score): the same normalisation of
  b = w (acc_aug(distilled) - acc_aug(random)) + (1 - w) (acc_noaug(distilled) - acc_noaug(random)).

What DD-Ranking does (NUS-HPC-AI-Lab/DD-Ranking, ``ddranking`` 0.2.0, identical on GitHub;
``metrics/hard_label.py``, ``soft_label.py``, ``aug_robust.py``), and what ddbench does:

* **Formulas**: as above, with accuracies in percent (``validate`` returns top-1 x 100): a and b
  in points go into ``exp`` (hard_label.py l.380-383, soft_label.py l.561-564, aug_robust.py
  l.577-580), so the package's LRS of a typical set is negative. Here accuracies are fractions,
  so a, b lie in [-1, 1] and the scores in [0, 1] as the paper defines them; HLR and IOR are the
  package's divided by 100, and fed fractions the package gives our LRS and ARS
  (``tests/test_scores.py`` runs its ``compute_metrics`` with its training stubbed out, where
  ``ddranking`` is installed). ``LabelRobustScoreHard`` appends each LRS twice (l.384 and l.388):
  the mean is unchanged, but its results CSV then has columns of unequal length and pandas
  raises, so 0.2.0's hard-label ``compute_metrics`` never returns; not copied.
* **Full-data accuracy**: see :mod:`harness.train.full` (DD-Ranking's real-data recipe;
  200 epochs; 5 networks, trained once per (data, network, recipe) and cached for every later
  suite; the final networks' test accuracy, DD-Ranking's test-selected maximum recorded beside).
  The network is the protocol's ``model`` or the one the set was distilled with.
* **Random subset**: DD-Ranking draws ``random.sample`` per class anew in each of its 5 rounds.
  Here it is ``random_real``'s draw for the cell's seed (so more seeds are more draws).
* **Its lr**: DD-Ranking trains one network per lr of [0.001, 0.005, 0.01, 0.05, 0.1] and keeps
  the best **test** accuracy (``_hyper_param_search_for_hard_label`` / ``_for_soft_label``),
  separately with and without augmentation (ARS). Here the lr of ``lr_grid`` (the same grid) is
  selected on the **validation split** (``lr_search_models`` networks per lr, trained by the
  protocol's recipe at that lr, scored at its end), then the protocol evaluates the subset at that
  lr and its test accuracy is the baseline's (ddbench never selects on the test set). A protocol
  with its own ``lr_grid`` (``dsa``) searches itself; without a validation split, or for a
  protocol with no ``optimizer``, the protocol's lr is used and the record says so.
* **Soft or learned labels** (``LabelRobustScoreSoft``): the random images get soft labels from a
  teacher (``soft_label_mode='S'``: the teacher's outputs on the un-augmented images, one per image)
  and are trained like the distilled set; IOR compares the two soft-label accuracies, HLR uses
  the distilled images with hard labels, whose lr DD-Ranking always searches (the set's own lr
  ignored). Here the teacher is the first full-data network (:func:`~harness.train.full.
  teacher_model`), its labels ``softmax(logits / temperature)`` (probabilities; DD-Ranking passes
  raw logits to a loss that applies the temperature to both sides), trained with ddbench's soft
  cross entropy (the student at temperature 1; DD-Ranking's configs use temperature 1.0, where
  the two agree); the hard-label accuracy of a soft set is lr-searched on validation like the
  baseline. ``soft_baseline = "hard"`` keeps the hard-labelled random baseline (ddbench <= 0.2).
  A hard-labelled set's HLR uses the record's own accuracy (DD-Ranking's ``syn_lr`` given).
  (0.2.0's ``LabelRobustScoreSoft._generate_soft_labels`` calls ``self.teacher_model``, which is
  never set, so its mode 'S' baseline fails; ``AugmentationRobustScore`` averages its teachers.)
* **Caching**: DD-Ranking evaluates everything again for every method. Here a random baseline is
  computed once per (data, IPC, seed, protocol, network, label kind, lr search) and cached in the
  cache dir (``$DDBENCH_CACHE/ddranking``), shared by every cell of a suite and later suites;
  ``random_real``'s own evaluation is reused, not retrained, when the search picks the protocol's
  lr. A record names cache files relative to the cache dir.
* **Rounds**: DD-Ranking averages 5 rounds of one network each; here the protocol's ``models``
  networks for each accuracy, and a seed is a round.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from pydantic import Field, field_validator

from harness.core.config import StrictModel
from harness.core.io import cache_dir, cache_lock, cache_name, key_digest, write_json_atomic
from harness.core.rng import Stream, step_seed
from harness.data import DatasetSplits
from harness.engine import InnerOptimizerConfig
from harness.evaluation.analysis import Analysis, AnalysisContext, register_analysis
from harness.evaluation.protocols import (PROTOCOLS, EvalResult, ProtocolConfig, correct_on, evaluate, new_network,
                                          train_network)
from harness.evaluation.protocols.base import set_tensors
from harness.method import DistilledSet, real_per_class
from harness.models import ModelConfig
from harness.train import FullDataConfig, data_key, full_data, full_data_path, key_json, teacher_labels

log = logging.getLogger(__name__)
BASELINE_VERSION = 1
# Positions of the lr search's networks in the EVAL stream (test networks 0.., dsa's search 1000.., full data 2000..).
LR_SEARCH_POSITION = 3000
DDRANKING_LR_GRID = (0.001, 0.005, 0.01, 0.05, 0.1)  # _hyper_param_search_for_hard_label / _for_soft_label


class ScoresConfig(StrictModel):
    """The suite's ``[ddranking]`` table."""

    enabled: bool = True
    weight: float = Field(0.5, ge=0, le=1)  # w of LRS (DD-Ranking's lrs_lambda)
    ars_weight: float = Field(0.5, ge=0, le=1)  # w of ARS (ars_lambda)
    # The full-data networks (harness.train.FullDataConfig): DD-Ranking's real-data recipe.
    full_data_epochs: int = Field(200, ge=1)
    full_data_batch: int = Field(256, ge=1)
    full_data_models: int = Field(5, ge=1)
    full_data_optimizer: InnerOptimizerConfig = FullDataConfig().optimizer
    full_data_lr_step_epochs: int = Field(100, ge=1)
    # The random baselines' lr, selected on the validation split ([]: the protocol's lr).
    lr_grid: tuple[float, ...] = DDRANKING_LR_GRID
    lr_search_models: int = Field(1, ge=1)
    soft_baseline: Literal["teacher", "hard"] = "teacher"  # a soft-labelled set's random baseline
    temperature: float = Field(1.0, gt=0)  # of the teacher's soft labels

    @field_validator("lr_grid")
    @classmethod
    def _positive(cls, grid):
        if any(not lr > 0 for lr in grid):
            raise ValueError(f"lr_grid must be positive learning rates, got {list(grid)}")
        return grid

    def full_data(self) -> FullDataConfig:
        return FullDataConfig(epochs=self.full_data_epochs, batch_size=self.full_data_batch,
                              models=self.full_data_models, optimizer=self.full_data_optimizer,
                              lr_step_epochs=self.full_data_lr_step_epochs)


def normalized(a: float) -> float:
    """(e^a - e^-1) / (e - e^-1): [-1, 1] onto [0, 1]."""
    return (math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1))


def lrs(hlr: float, ior: float, weight: float = 0.5) -> float:
    return normalized(weight * ior - (1 - weight) * hlr)


def ars(with_aug: float, without_aug: float, weight: float = 0.5) -> float:
    """From the improvement over random with (``with_aug``) and without augmentation."""
    return normalized(weight * with_aug + (1 - weight) * without_aug)


def random_subset(data: DatasetSplits, ipc: int, seed: int) -> DistilledSet:
    """The real images ``random_real`` takes for ``seed``: ``ipc`` per class, class-major."""
    images, labels = real_per_class(data, ipc, torch.Generator().manual_seed(step_seed(seed, 0, Stream.SYN_INIT)))
    return DistilledSet(images.cpu(), labels.cpu(), data.num_classes, ipc)


# --------------------------------------------------------------------------- the lr search


def searches_lr(cfg: ScoresConfig, protocol: ProtocolConfig, data: DatasetSplits) -> str | None:
    """How a baseline's lr is chosen: None when this module searches it, else why not."""
    if getattr(protocol, "lr_grid", None):
        return f"the {protocol.protocol!r} protocol's own lr_grid"
    if not cfg.lr_grid:
        return "the protocol's lr (ddranking.lr_grid is empty)"
    if getattr(protocol, "optimizer", None) is None:
        return f"the protocol's lr (the {protocol.protocol!r} protocol has no optimizer to search)"
    if data.val_x is None:
        return f"the protocol's lr (no validation split to search on: set data.{data.name}.validation_size)"
    return None


def searched_accuracy(s: DistilledSet, data: DatasetSplits, protocol: ProtocolConfig, model: ModelConfig,
                      cfg: ScoresConfig, seed: int, device, dtype,
                      reuse: Callable[[ProtocolConfig], EvalResult | None] = lambda p: None) -> dict[str, Any]:
    """The test accuracy of ``s`` under ``protocol`` at the lr of ``cfg.lr_grid`` best on the
    validation split (see the module docstring); ``reuse(protocol at that lr)`` may give an
    evaluation already made (random_real's own), else it is evaluated."""
    why_not = searches_lr(cfg, protocol, data)
    chosen, grid = protocol, []
    if why_not is None:
        cls = PROTOCOLS.get(protocol.protocol)()
        images, labels = set_tensors(s, device, dtype)
        for i, lr in enumerate(cfg.lr_grid):
            candidate = protocol.model_copy(update={"optimizer": protocol.optimizer.model_copy(update={"lr": lr})})
            recipe = cls.recipe(candidate, images.shape[0])
            accs = []
            for k in range(cfg.lr_search_models):
                net_seed = step_seed(seed, LR_SEARCH_POSITION + i * cfg.lr_search_models + k, Stream.EVAL)
                net = new_network(model, data, net_seed, device, dtype)
                train_network(net, images, labels, recipe, torch.Generator().manual_seed(net_seed))
                accs.append(float(correct_on(net, data.val_x, data.val_y, protocol.test_batch).double().mean()))
            grid.append({"lr": lr, "validation_accuracy": sum(accs) / len(accs)})
        best = max(grid, key=lambda g: (g["validation_accuracy"], -g["lr"]))  # the smaller lr on a tie
        chosen = protocol.model_copy(update={"optimizer": protocol.optimizer.model_copy(update={"lr": best["lr"]})})
    result = reuse(chosen) or evaluate(s, data, chosen, model, seed=seed, device=device, dtype=dtype)
    return {"accuracy": result.accuracy_mean, "accuracy_per_model": result.accuracy_per_model,
            "lr": result.details.get("lr", getattr(getattr(chosen, "optimizer", None), "lr", None)),
            "lr_selection": why_not or f"validation split ({data.val_x.shape[0]} images)", "grid": grid}


# --------------------------------------------------------------------------- the cached baselines


@dataclass(frozen=True)
class Baseline:
    """One random baseline: the subset, its labels and the protocol it is evaluated by."""

    name: str  # random | random_no_aug
    protocol: ProtocolConfig
    labels: str  # "hard" or the teacher's soft labels
    key: dict[str, Any]
    path: Path


def baselines(cfg: ScoresConfig, data: DatasetSplits, model: ModelConfig, protocol: ProtocolConfig, ipc: int,
              seed: int, soft: bool) -> list[Baseline]:
    """The random baselines a set of ``ipc`` images (soft-labelled or not) is compared with, and
    their cache files: with the protocol's augmentation and without it."""
    plain = PROTOCOLS.get(protocol.protocol)().without_augmentation(protocol)
    labels = "hard"
    if soft and cfg.soft_baseline == "teacher":
        teacher = cache_name(full_data_path(data, model, cfg.full_data()))
        labels = f"soft: softmax(logits / {cfg.temperature:g}) of network 0 of {teacher}"
    out = []
    for name, p in (("random", protocol), ("random_no_aug", plain)):
        key = {"version": BASELINE_VERSION, "what": "random baseline", **data_key(data), "ipc": ipc, "seed": seed,
               "protocol": p.model_dump(mode="json"), "model": model.model_dump(mode="json"), "labels": labels,
               "lr_search": searches_lr(cfg, p, data) or {"grid": list(cfg.lr_grid), "models": cfg.lr_search_models}}
        path = cache_dir("ddranking") / f"random-{data.name}-ipc{ipc}-seed{seed}-{key_digest(key)}.json"
        out.append(Baseline(name, p, labels, key, path))
    return out


def cached_baseline(baseline: Baseline, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``baseline``'s result from its cache file, else ``compute()``d and cached (under a lock)."""
    with cache_lock(baseline.path):
        try:
            payload = json.loads(baseline.path.read_text())
            if payload["key"] == key_json(baseline.key):
                return payload["result"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        result = {**compute(), "labels": baseline.labels, "cache_file": cache_name(baseline.path)}
        try:
            write_json_atomic(baseline.path, {"key": key_json(baseline.key), "result": result})
        except OSError as err:  # an unwritable cache costs time, not correctness
            log.warning("cannot write %s (%s)", baseline.path, err)
        return result


# --------------------------------------------------------------------------- what a cell costs (ddbench plan)


@dataclass(frozen=True)
class Work:
    """Training the analysis of one cell will do: ``updates`` network updates of ``kind``
    (``full_data``: minibatches of the full-data recipe; ``evaluation``: the protocol's on the
    set), filling the cache file ``cache_file`` (shared; None: this cell's own)."""

    what: str
    kind: Literal["full_data", "evaluation"]
    updates: int
    cache_file: str | None


def pending_work(cfg: ScoresConfig, data: DatasetSplits, model: ModelConfig, protocol: ProtocolConfig, ipc: int,
                 seed: int, soft: bool) -> list[Work]:
    """What the analysis of a cell still has to train: what is cached is not counted."""
    if not cfg.enabled:
        return []
    fcfg = cfg.full_data()
    work = []
    path = full_data_path(data, model, fcfg)
    if not path.is_file():
        steps = fcfg.models * fcfg.epochs * math.ceil(data.train_x.shape[0] / fcfg.batch_size)
        work.append(Work(f"full-data networks ({fcfg.models} x {fcfg.epochs} epochs)", "full_data", steps,
                         cache_name(path)))
    n = ipc * data.num_classes

    def searched_updates(p: ProtocolConfig) -> int:
        cls = PROTOCOLS.get(p.protocol)()
        search = 0 if searches_lr(cfg, p, data) else len(cfg.lr_grid) * cfg.lr_search_models * cls.recipe(p, n).steps
        return search + cls.training_steps(p, n)

    for b in baselines(cfg, data, model, protocol, ipc, seed, soft):
        if not b.path.is_file():
            work.append(Work(f"{b.name} baseline", "evaluation", searched_updates(b.protocol), cache_name(b.path)))
    plain = PROTOCOLS.get(protocol.protocol)().without_augmentation(protocol)
    work.append(Work("the set without augmentation", "evaluation", PROTOCOLS.get(plain.protocol)().training_steps(
        plain, n), None))
    if soft:
        work.append(Work("the set with hard labels", "evaluation", searched_updates(protocol), None))
    return work


# --------------------------------------------------------------------------- the analysis


@register_analysis("ddranking")
class Scores(Analysis):
    """DD-Ranking's HLR, IOR, LRS and ARS, under the record's own protocol."""

    Config = ScoresConfig
    section = "scores"

    def run(self, cfg: ScoresConfig, ctx: AnalysisContext) -> dict[str, Any]:
        if not cfg.enabled:
            return {"config": cfg.model_dump(mode="json"), "skipped": "disabled in the suite"}
        protocol, d, data = ctx.protocol, ctx.distilled, ctx.data
        model = protocol.model or ctx.model
        report = ctx.report  # (what, done, total) -> None, where the runner passes one
        plain = PROTOCOLS.get(protocol.protocol)().without_augmentation(protocol)
        fcfg = cfg.full_data()
        # First (outside any baseline's lock): the full-data networks, trained once under their own lock.
        full = full_data(data, model, fcfg, ctx.device, ctx.dtype, report)
        soft = d.labels.is_floating_point()
        rand = random_subset(data, d.ipc, ctx.seed)
        if soft and cfg.soft_baseline == "teacher":
            teacher = full.network(0, model, data, ctx.device, ctx.dtype)
            rand = replace(rand, labels=teacher_labels(teacher, rand.images, cfg.temperature))

        def acc(s: DistilledSet, p: ProtocolConfig) -> EvalResult:
            return evaluate(s, data, p, ctx.model, seed=ctx.seed, device=ctx.device, dtype=ctx.dtype)

        def searched(s: DistilledSet, p: ProtocolConfig, reuse=lambda _: None) -> dict[str, Any]:
            return searched_accuracy(s, data, p, model, cfg, ctx.seed, ctx.device, ctx.dtype, reuse)

        no_aug = acc(d, plain)
        # The set is the random subset itself (random_real's): an evaluation it already has is not made again.
        same = (rand.labels.dtype == d.labels.dtype and torch.equal(rand.labels, d.labels.cpu())
                and torch.equal(rand.images, d.images.cpu()) and d.lr is None)
        made = [(protocol, ctx.eval_result), (plain, no_aug)] if same else []

        def reuse(p: ProtocolConfig) -> EvalResult | None:
            return next((r for q, r in made if q == p), None)

        results = {}
        for i, b in enumerate(baselines(cfg, data, model, protocol, d.ipc, ctx.seed, soft)):
            if report is not None:
                report("DD-Ranking random baselines", i, 2)
            results[b.name] = cached_baseline(b, lambda b=b: searched(rand, b.protocol, reuse))
        distilled = ctx.eval_result.accuracy_mean  # the record's own accuracy
        hard = None
        if soft:  # the distilled images with hard labels, their lr searched (DD-Ranking ignores the learned one)
            hard = searched(replace(d, labels=d.hard_labels.cpu(), lr=None, lr_optimizer=None), protocol)
        accuracies = {"distilled": distilled, "distilled_hard_labels": hard["accuracy"] if soft else distilled,
                      "random": results["random"]["accuracy"], "distilled_no_aug": no_aug.accuracy_mean,
                      "random_no_aug": results["random_no_aug"]["accuracy"], "full_data": full.accuracy}
        hlr = accuracies["full_data"] - accuracies["distilled_hard_labels"]
        ior = accuracies["distilled"] - accuracies["random"]
        with_aug, without_aug = ior, accuracies["distilled_no_aug"] - accuracies["random_no_aug"]
        return {"config": cfg.model_dump(mode="json"), "protocol": protocol.protocol,
                "label_kind": "soft" if soft else "hard", "accuracies": accuracies,
                "hlr": hlr, "ior": ior, "lrs": lrs(hlr, ior, cfg.weight),
                "ars": ars(with_aug, without_aug, cfg.ars_weight),
                "full_data_epochs": fcfg.epochs, "full_data_accuracy": full.accuracy,
                "full_data_cache": full.cache_file, "full_data": full.summary(fcfg),
                "baselines": {**results, **({"distilled_hard_labels": hard} if soft else {})},
                "units": "accuracies as fractions in [0, 1]"}
