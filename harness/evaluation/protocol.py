"""The evaluation protocol: train fresh networks on a distilled set, test on the real test set.

``R`` networks (default 5) are trained from scratch, each from its own seed, with the
protocol's optimizer, number of steps, batch size and augmentation; their test accuracies
give the mean, the std and the per-model list of a record. The protocol itself is stored in
the record, so two numbers are only compared when they were measured the same way.
Per-example correctness is kept for the hardness analysis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from tqdm.auto import tqdm

from harness.core.process import seeded
from harness.core.rng import Stream, step_seed
from harness.data import DatasetSplits
from harness.engine import inner_loss
from harness.core.errors import ConfigError
from harness.engine.optim import InnerOptimizerConfig, make_torch_optimizer, optimizer_without_lr
from harness.method import DistilledSet
from harness.models import AugmentConfig, ModelConfig, augment, create_model


class EvalProtocol(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models: int = 5
    steps: int = 1000
    optimizer: InnerOptimizerConfig = InnerOptimizerConfig(name="adam", lr=1e-3)
    batch_size: int | None = None  # None: the whole distilled set at every step
    augment: AugmentConfig = AugmentConfig(ops=("flip", "crop"), mode="all")
    lr_schedule: Literal["constant", "cosine"] = "constant"
    use_learned_lr: bool = True  # train with the distilled set's learned inner lr, when it has one
    model: ModelConfig | None = None  # None: the network the set was distilled with
    test_batch: int = 2048

    @model_validator(mode="after")
    def _check(self) -> "EvalProtocol":
        for name in ("models", "steps", "test_batch"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.batch_size is not None and self.batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {self.batch_size}")
        return self


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


@dataclass
class EvalResult:
    accuracy_per_model: list[float]
    correct: torch.Tensor  # [models, n_test] bool: which test examples each model got right

    @property
    def accuracy_mean(self) -> float:
        return float(torch.tensor(self.accuracy_per_model, dtype=torch.float64).mean())

    @property
    def accuracy_std(self) -> float:
        acc = torch.tensor(self.accuracy_per_model, dtype=torch.float64)
        return float(acc.std(unbiased=False)) if len(acc) > 1 else 0.0


def train_on(distilled: DistilledSet, data: DatasetSplits, protocol: EvalProtocol, model_cfg: ModelConfig,
             seed: int, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """One network trained from scratch on ``distilled`` by ``protocol``."""
    with seeded(seed, device):  # the network's default init draws from the global generator
        net = create_model(model_cfg, data.image_shape, data.num_classes).to(device, dtype)
    opt_cfg = protocol.optimizer
    if protocol.use_learned_lr and distilled.lr is not None:
        check_learned_lr(distilled.lr_optimizer, protocol.optimizer)
        opt_cfg = opt_cfg.model_copy(update={"lr": distilled.lr})
    opt = make_torch_optimizer(opt_cfg, net.parameters())
    if protocol.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / protocol.steps)))
    else:
        sched = None
    images, labels = distilled.images.to(device, dtype), distilled.labels.to(device)
    if labels.is_floating_point():
        labels = labels.to(dtype)
    gen = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    net.train()
    for _ in range(protocol.steps):
        if protocol.batch_size is not None and protocol.batch_size < n:
            idx = torch.randperm(n, generator=gen)[: protocol.batch_size].to(device)
            x, y = images[idx], labels[idx]
        else:
            x, y = images, labels
        loss = inner_loss(net(augment(x, protocol.augment, gen)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    return net


@torch.no_grad()
def test_correct(net: torch.nn.Module, data: DatasetSplits, batch: int) -> torch.Tensor:
    """Which test examples ``net`` classifies correctly, as a bool vector."""
    net.eval()
    out = []
    for start in range(0, data.test_x.shape[0], batch):
        logits = net(data.test_x[start : start + batch])
        out.append(logits.argmax(-1) == data.test_y[start : start + batch])
    return torch.cat(out).cpu()


def evaluate(distilled: DistilledSet, data: DatasetSplits, protocol: EvalProtocol, model_cfg: ModelConfig, *,
             seed: int, device: torch.device, dtype: torch.dtype = torch.float32,
             progress: bool = True, desc: str = "eval") -> EvalResult:
    """Train ``protocol.models`` networks on ``distilled`` and test each one on ``data``."""
    model_cfg = protocol.model or model_cfg
    accs, correct = [], []
    for r in tqdm(range(protocol.models), desc=desc, leave=False, disable=not progress):
        net = train_on(distilled, data, protocol, model_cfg, step_seed(seed, r, Stream.EVAL), device, dtype)
        hits = test_correct(net, data, protocol.test_batch)
        correct.append(hits)
        accs.append(float(hits.double().mean()))
    return EvalResult(accs, torch.stack(correct))
