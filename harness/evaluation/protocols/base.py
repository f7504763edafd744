"""Evaluation protocols: how fresh networks are trained on a distilled set and scored.

Distillation papers disagree mostly about evaluation (ZCA, DSA or not, how many steps, which
model, which set picks the budget). Each way is a registered protocol, named in every record
(``eval.protocol.protocol``), so two numbers are only compared when they were measured the same
way. A suite picks one in ``[eval]``::

    [eval]
    protocol = "ratbptt"     # standard (default) | ratbptt | dsa
    models = 8

A protocol is a config (its options and defaults) and a class that turns it into trained
networks. They share :func:`train_network` (one network on a set, under a :class:`TrainRecipe`)
and :func:`test_correct`. No protocol ever selects anything on the test set: selections (a step
budget, a learning rate) use the validation split held out of the training set
(``[data.NAME] validation_size``), which the distillation never sees. The one number chosen on
the test set, the official RaT-BPTT code's best budget (and checkpoint), is kept apart
(:func:`best_on_test`, ``eval.test_selected``, "as published: test-selected upper
bound") and never taken as the accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, ClassVar, Literal

import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SerializeAsAny

from harness.core.config import NestedConfigError, validate_config
from harness.core.errors import ConfigError
from harness.core.registry import Registry, first_doc_line
from harness.data import DatasetSplits
from harness.engine import inner_loss
from harness.engine.optim import InnerOptimizerConfig, make_torch_optimizer, optimizer_without_lr
from harness.method import DistilledSet
from harness.models import ModelConfig
from harness.train.networks import correct_on, new_network, test_correct


class ProtocolConfig(BaseModel):
    """What every protocol has: its name, the networks it trains, how it tests them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: str = "standard"
    models: int = Field(5, ge=1)  # fresh networks, each from its own seed
    model: ModelConfig | None = None  # None: the network the set was distilled with
    use_learned_lr: bool = True  # train with the distilled set's learned inner lr, when it has one
    test_batch: int = Field(2048, ge=1)


PROTOCOLS: Registry[type["Protocol"]] = Registry("evaluation protocol", group="ddbench.protocols",
                                                 builtins="harness.evaluation.protocols")


def protocol_config(data: Any) -> ProtocolConfig:
    """A protocol's typed config from its table (``protocol`` names it; default ``standard``)."""
    if isinstance(data, ProtocolConfig):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"an evaluation protocol is a table, got {data!r}")
    name = data.get("protocol", "standard")
    cls = PROTOCOLS.get(name, field="protocol")
    return validate_config(cls.Config, {**data, "protocol": name})


def _protocol_field(data: Any) -> ProtocolConfig:
    try:
        return protocol_config(data)
    except ConfigError as err:
        raise NestedConfigError(err) from None


# A config field holding any protocol's config (validated by the protocol it names, dumped whole).
AnyProtocol = Annotated[SerializeAsAny[ProtocolConfig], BeforeValidator(_protocol_field)]


TEST_SELECTED_LABEL = "as published: test-selected upper bound"


@dataclass
class EvalResult:
    accuracy_per_model: list[float]
    correct: torch.Tensor  # [models, n_test] bool: which test examples each model got right
    details: dict[str, Any] = field(default_factory=dict)  # what the protocol selected, and on what
    # A protocol that scores several budgets: the best of them *on the test set*, as published
    # numbers were obtained (:func:`best_on_test`); reported beside the accuracy, never as it.
    test_selected: dict[str, Any] | None = None

    @property
    def accuracy_mean(self) -> float:
        return float(torch.tensor(self.accuracy_per_model, dtype=torch.float64).mean())

    @property
    def accuracy_std(self) -> float:
        acc = torch.tensor(self.accuracy_per_model, dtype=torch.float64)
        return float(acc.std(unbiased=False)) if len(acc) > 1 else 0.0


@dataclass
class TrainRecipe:
    """How one network is trained on a set of images.

    A step's batch: the whole set (``batch_size`` None), ``batch_size`` rows drawn at random, or
    (``batch_per_class`` / ``classes_per_step`` set) class-sampled from a class-major set, as
    :func:`class_sampled_rows`. A caller that trains on a set that is not class-major (the
    full training split) sets both to None."""

    optimizer: InnerOptimizerConfig
    steps: int
    batch_size: int | None  # None: the whole set at every step
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # (batch, generator) -> batch
    schedule: Literal["constant", "cosine", "step"] = "constant"  # step: lr x 0.1 after half the steps
    batch_per_class: int | None = None  # rows of each sampled class per step (None: all of them)
    classes_per_step: int | None = None  # classes sampled per step (None: every class)

    @property
    def class_sampled(self) -> bool:
        return self.batch_per_class is not None or self.classes_per_step is not None


class Protocol:
    """A registered evaluation protocol (see the module docstring)."""

    name: ClassVar[str]
    Config: ClassVar[type[ProtocolConfig]]
    needs_validation: ClassVar[bool] = False  # selects on the validation split

    @classmethod
    def selects_on_validation(cls, cfg: ProtocolConfig) -> bool:
        """Whether evaluating by ``cfg`` may select on the validation split (the suite needs one)."""
        return cls.needs_validation

    def evaluate(self, cfg: ProtocolConfig, distilled: DistilledSet, data: DatasetSplits, model_cfg: ModelConfig,
                 seed: int, device: torch.device, dtype: torch.dtype) -> EvalResult:
        raise NotImplementedError

    def recipe(self, cfg: ProtocolConfig, n_images: int) -> TrainRecipe:
        """How this protocol trains a network on ``n_images`` images (its full-data runs, its cost)."""
        raise NotImplementedError

    def training_steps(self, cfg: ProtocolConfig, n_images: int) -> int:
        """Network updates one evaluation makes (for ``ddbench plan``'s estimate)."""
        return cfg.models * self.recipe(cfg, n_images).steps

    def without_augmentation(self, cfg: ProtocolConfig) -> ProtocolConfig:
        """The same protocol with no augmentation (DD-Ranking's ARS compares the two)."""
        raise NotImplementedError

    @classmethod
    def description(cls) -> str:
        return first_doc_line(cls)


def register_protocol(name: str):
    return PROTOCOLS.class_decorator(name)


def evaluate(distilled: DistilledSet, data: DatasetSplits, protocol: ProtocolConfig, model_cfg: ModelConfig, *,
             seed: int, device: torch.device, dtype: torch.dtype = torch.float32) -> EvalResult:
    """``distilled`` evaluated on ``data`` by ``protocol`` (its ``model`` or else ``model_cfg``)."""
    cls = PROTOCOLS.get(protocol.protocol)
    if cls.needs_validation and data.val_x is None:
        raise ConfigError(f"the {protocol.protocol!r} protocol selects on a validation split; set "
                          f"data.{data.name}.validation_size", field="eval.protocol")
    return cls().evaluate(protocol, distilled, data, protocol.model or model_cfg, seed, device, dtype)


def best_on_test(checkpoints: list[tuple[int | None, list[dict[str, Any]]]]) -> dict[str, Any] | None:
    """The official RaT-BPTT code's reported number: the highest mean *test* accuracy over the
    step budgets of every evaluation of the set, ``checkpoints`` = ``[(outer step or None,
    budgets)]`` with each budget ``{"steps", "test_accuracy_per_model", ...}``. Ties go to the
    earlier checkpoint, then the smaller budget (the official ``list.index(max)`` and strict
    ``>``). An upper bound: the test set picks the budget and the checkpoint. None without budgets."""
    best, count = None, 0
    for step, budgets in checkpoints:
        count += 1
        for budget in budgets:
            accs = torch.tensor(budget["test_accuracy_per_model"], dtype=torch.float64)
            mean = float(accs.mean())
            if best is None or mean > best["accuracy_mean"]:
                std = float(accs.std(unbiased=False)) if len(accs) > 1 else 0.0  # as EvalResult.accuracy_std
                best = {"accuracy_mean": mean, "accuracy_std": std, "accuracy_per_model": [float(a) for a in accs],
                        "budget": int(budget["steps"]), "at_outer_step": step}
    if best is None:
        return None
    return {**best, "checkpoints": count, "label": TEST_SELECTED_LABEL}


# --------------------------------------------------------------------------- training one network


def check_learned_lr(learned_for: dict | None, optimizer: InnerOptimizerConfig, where: str = "eval") -> None:
    """Refuse to train with a learned inner lr under another optimizer than the one it was learned
    for (an Adam lr is no SGD lr): a :class:`ConfigError` naming the fields."""
    if learned_for is not None and learned_for != optimizer_without_lr(optimizer):
        raise ConfigError(f"the distilled set's learned lr belongs to the {learned_for['name']!r} inner optimizer "
                          f"{_options(learned_for)}, not to {where}.optimizer ({optimizer.name!r} "
                          f"{_options(optimizer_without_lr(optimizer))}); set {where}.use_learned_lr = false, or "
                          f"{where}.optimizer to the inner optimizer", field=f"{where}.use_learned_lr")


def _options(cfg: dict) -> str:
    default = optimizer_without_lr(InnerOptimizerConfig(name=cfg["name"]))
    changed = {k: v for k, v in cfg.items() if k != "name" and v != default[k]}
    return "(" + ", ".join(f"{k}={v}" for k, v in changed.items()) + ")" if changed else "(defaults)"


def learned_optimizer(cfg: ProtocolConfig, optimizer: InnerOptimizerConfig,
                      distilled: DistilledSet) -> InnerOptimizerConfig | None:
    """``optimizer`` at the set's learned lr when the protocol uses it (and it belongs to that
    optimizer), else None."""
    if not (cfg.use_learned_lr and distilled.lr is not None):
        return None
    check_learned_lr(distilled.lr_optimizer, optimizer)
    return optimizer.model_copy(update={"lr": distilled.lr})


def train_network(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: TrainRecipe,
                  gen: torch.Generator, *, start: int = 0, stop: int | None = None,
                  state: dict | None = None) -> dict:
    """Train ``net`` on ``(images, labels)`` by ``recipe`` from step ``start`` to ``stop`` (default
    ``recipe.steps``); returns the optimizer state to continue later (a protocol that scores one
    network at several budgets trains it in pieces, which equals one run)."""
    stop = recipe.steps if stop is None else stop
    if state is None:
        opt = make_torch_optimizer(recipe.optimizer, net.parameters())
        total = recipe.steps
        if recipe.schedule == "cosine":
            factor = lambda s: 0.5 * (1 + math.cos(math.pi * s / total))  # noqa: E731
        elif recipe.schedule == "step":
            factor = lambda s: 0.1 if s >= total // 2 else 1.0  # noqa: E731
        else:
            factor = None
        sched = None if factor is None else torch.optim.lr_scheduler.LambdaLR(opt, factor)
        state = {"opt": opt, "sched": sched}
    opt, sched = state["opt"], state["sched"]
    n = images.shape[0]
    layout = class_major_layout(labels) if recipe.class_sampled else None
    net.train()
    for _ in range(start, stop):
        if layout is not None:
            idx = class_sampled_rows(*layout, recipe.batch_per_class, recipe.classes_per_step, gen).to(images.device)
            x, y = images[idx], labels[idx]
        elif recipe.batch_size is not None and recipe.batch_size < n:
            idx = torch.randperm(n, generator=gen)[: recipe.batch_size].to(images.device)
            x, y = images[idx], labels[idx]
        else:
            x, y = images, labels
        loss = inner_loss(net(recipe.augment(x, gen)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    return state


def class_major_layout(labels: torch.Tensor) -> tuple[int, int]:
    """``(classes, ipc)`` of a class-major set (rows ``[c * ipc, (c + 1) * ipc)`` are class c) from
    its labels: hard labels must be in that layout; soft ones give the class count (columns)."""
    n = labels.shape[0]
    classes = labels.shape[1] if labels.is_floating_point() else int(labels.max()) + 1 if n else 0
    if classes == 0 or n % classes:
        raise ValueError(f"class-sampled batches need a class-major set: {n} rows, {classes} classes")
    ipc = n // classes
    if not labels.is_floating_point() and not torch.equal(
            labels.cpu(), torch.arange(classes).repeat_interleave(ipc)):
        raise ValueError("class-sampled batches need a class-major set: the labels are not in class-major order")
    return classes, ipc


def class_sampled_rows(classes: int, ipc: int, batch_per_class: int | None, classes_per_step: int | None,
                       gen: torch.Generator) -> torch.Tensor:
    """One step's rows of a class-major set, as the official RaT-BPTT ``Distill.subsample``:
    ``classes_per_step`` classes drawn without replacement (sorted; every class when None or at
    least ``classes``), then ``min(batch_per_class, ipc)`` rows of each drawn without
    replacement (sorted; all of them when None). The official code draws the classes with
    Python's ``random.shuffle`` and the rows with ``torch.randperm`` on the global generator;
    here both come from ``gen``: the same distribution, not the same numbers."""
    if classes_per_step is None or classes_per_step >= classes:
        chosen = torch.arange(classes)
    else:
        chosen = torch.randperm(classes, generator=gen)[:classes_per_step].sort().values
    per_class = ipc if batch_per_class is None else min(batch_per_class, ipc)
    if per_class == ipc:
        within = torch.arange(ipc).expand(len(chosen), ipc)
    else:  # a uniform k-subset of each class's rows: the first k of a random permutation per row
        within = torch.rand(len(chosen), ipc, generator=gen).argsort(dim=1)[:, :per_class].sort(dim=1).values
    return (chosen[:, None] * ipc + within).flatten()


def set_tensors(distilled: DistilledSet, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = distilled.images.to(device, dtype), distilled.labels.to(device)
    return images, labels.to(dtype) if labels.is_floating_point() else labels
