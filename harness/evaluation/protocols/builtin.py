"""The built-in evaluation protocols: ``standard`` (ddbench's own), ``ratbptt`` (the official
RaT-BPTT code's, with the step budget selected on a validation split instead of the test set)
and ``dsa`` (the MTT / DATM / DD-Ranking hard-label family)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, field_validator

from harness.core.errors import ConfigError
from harness.core.rng import Stream, step_seed
from harness.engine.optim import InnerOptimizerConfig
from harness.evaluation.protocols.base import (EvalResult, Protocol, ProtocolConfig, TrainRecipe, correct_on,
                                               learned_optimizer, new_network, register_protocol, set_tensors,
                                               test_correct, train_network)
from harness.models import AugmentConfig, augment
from harness.models.dsa import DSAConfig, dsa_augment

LR_SEARCH = 1000  # positions of the lr search's networks in the EVAL stream (the test networks use 0..models-1)


def _seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class StandardConfig(ProtocolConfig):
    protocol: Literal["standard"] = "standard"
    steps: int = Field(1000, ge=1)
    optimizer: InnerOptimizerConfig = InnerOptimizerConfig(name="adam", lr=1e-3)
    batch_size: int | None = Field(None, ge=1)  # None: the whole distilled set at every step
    augment: AugmentConfig = AugmentConfig(ops=("flip", "crop"), mode="all")
    lr_schedule: Literal["constant", "cosine"] = "constant"


@register_protocol("standard")
class Standard(Protocol):
    """ddbench's own: R networks, a fixed number of steps, optimizer and affine augmentation; the final networks scored."""

    Config = StandardConfig

    def recipe(self, cfg, n_images):
        return TrainRecipe(cfg.optimizer, cfg.steps, cfg.batch_size, lambda x, g: augment(x, cfg.augment, g),
                           cfg.lr_schedule)

    def without_augmentation(self, cfg):
        return cfg.model_copy(update={"augment": AugmentConfig()})

    def evaluate(self, cfg, distilled, data, model_cfg, seed, device, dtype):
        recipe = self.recipe(cfg, distilled.images.shape[0])
        recipe.optimizer = learned_optimizer(cfg, cfg.optimizer, distilled) or cfg.optimizer
        images, labels = set_tensors(distilled, device, dtype)
        accs, correct = [], []
        for r in range(cfg.models):
            net_seed = step_seed(seed, r, Stream.EVAL)
            net = new_network(model_cfg, data, net_seed, device, dtype)
            train_network(net, images, labels, recipe, _seeded_generator(net_seed))
            hits = test_correct(net, data, cfg.test_batch)
            correct.append(hits)
            accs.append(float(hits.double().mean()))
        return EvalResult(accs, torch.stack(correct), {"lr": recipe.optimizer.lr})


class RatBPTTProtocolConfig(ProtocolConfig):
    protocol: Literal["ratbptt"] = "ratbptt"
    models: int = Field(8, ge=1)  # num_train_eval of the official scripts
    optimizer: InnerOptimizerConfig = InnerOptimizerConfig(name="adam", lr=1e-3)  # the inner optimizer's default
    budgets: tuple[int, ...] = (300, 600, 1000, 3000)  # steps at which each network is scored
    batch_size: int | None = Field(None, ge=1)  # None: the whole set per step (batch_per_class = IPC)
    augment: AugmentConfig = AugmentConfig(ops=("flip", "rotate"), mode="one")  # the official flip_rotate

    @field_validator("budgets")
    @classmethod
    def _increasing(cls, budgets: tuple[int, ...]) -> tuple[int, ...]:
        if not budgets or budgets[0] < 1 or any(b <= a for a, b in zip(budgets, budgets[1:])):
            raise ValueError(f"budgets must be increasing positive step counts, got {list(budgets)}")
        return budgets


@register_protocol("ratbptt")
class RatBPTTProtocol(Protocol):
    """The official RaT-BPTT code's: 8 networks scored at 300/600/1000/3000 steps, the budget picked on validation."""

    Config = RatBPTTProtocolConfig
    needs_validation = True

    def recipe(self, cfg, n_images):
        return TrainRecipe(cfg.optimizer, cfg.budgets[-1], cfg.batch_size, lambda x, g: augment(x, cfg.augment, g))

    def without_augmentation(self, cfg):
        return cfg.model_copy(update={"augment": AugmentConfig()})

    def evaluate(self, cfg, distilled, data, model_cfg, seed, device, dtype):
        """Each network is trained once, cumulatively, and scored on the validation and the test
        split at every budget. The budget whose mean *validation* accuracy is highest (the
        smaller on a tie) is selected; the test split only reports: the accuracy at the selected
        budget, and every budget's, in ``details``. (The official code picks on the test set.)"""
        recipe = self.recipe(cfg, distilled.images.shape[0])
        recipe.optimizer = learned_optimizer(cfg, cfg.optimizer, distilled) or cfg.optimizer
        images, labels = set_tensors(distilled, device, dtype)
        val = {b: [] for b in cfg.budgets}
        test = {b: [] for b in cfg.budgets}
        for r in range(cfg.models):
            net_seed = step_seed(seed, r, Stream.EVAL)
            net, gen = new_network(model_cfg, data, net_seed, device, dtype), _seeded_generator(net_seed)
            state, done = None, 0
            for budget in cfg.budgets:
                state = train_network(net, images, labels, recipe, gen, start=done, stop=budget, state=state)
                done = budget
                val[budget].append(correct_on(net, data.val_x, data.val_y, cfg.test_batch))
                test[budget].append(test_correct(net, data, cfg.test_batch))
        selected = select_budget({b: [float(h.double().mean()) for h in hits] for b, hits in val.items()})
        accs = [float(h.double().mean()) for h in test[selected]]
        details = {"selected_budget": selected, "selected_on": f"validation split ({data.val_x.shape[0]} images)",
                   "lr": recipe.optimizer.lr,
                   "budgets": [{"steps": b, "validation_accuracy": _mean(val[b]), "test_accuracy": _mean(test[b]),
                                "test_accuracy_per_model": [float(h.double().mean()) for h in test[b]]}
                               for b in cfg.budgets]}
        return EvalResult(accs, torch.stack(test[selected]), details)


def select_budget(validation: dict[int, list[float]]) -> int:
    """The budget with the highest mean validation accuracy; the smallest one on a tie. It sees
    validation accuracies only: the test set cannot influence it."""
    return max(sorted(validation), key=lambda b: (sum(validation[b]) / len(validation[b]), -b))


def _mean(hits: list[torch.Tensor]) -> float:
    return float(torch.stack([h.double().mean() for h in hits]).mean())


class DSAProtocolConfig(ProtocolConfig):
    protocol: Literal["dsa"] = "dsa"
    optimizer: InnerOptimizerConfig = InnerOptimizerConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4)
    epochs: int = Field(1000, ge=1)
    batch_size: int = Field(256, ge=1)  # DD-Ranking's syn_batch_size
    lr_schedule: Literal["step", "constant"] = "step"  # step: lr x 0.1 after half the epochs
    dsa: DSAConfig = DSAConfig()
    # Selected on the validation split when the set has no learned lr (DD-Ranking's grid); None: optimizer.lr.
    lr_grid: tuple[float, ...] | None = None
    lr_search_models: int = Field(1, ge=1)

    @field_validator("lr_grid")
    @classmethod
    def _positive(cls, grid):
        if grid is not None and (not grid or any(lr <= 0 for lr in grid)):
            raise ValueError(f"lr_grid must be positive learning rates, got {grid}")
        return grid


@register_protocol("dsa")
class DSAProtocol(Protocol):
    """The MTT / DATM / DD-Ranking hard-label family: SGD + step schedule, 1000 epochs, DSA (one draw per batch)."""

    Config = DSAProtocolConfig

    @classmethod
    def selects_on_validation(cls, cfg):
        return bool(cfg.lr_grid)

    def recipe(self, cfg, n_images):
        steps = cfg.epochs * math.ceil(n_images / cfg.batch_size)  # an epoch: one pass in batches
        return TrainRecipe(cfg.optimizer, steps, cfg.batch_size, lambda x, g: dsa_augment(x, cfg.dsa, g),
                           cfg.lr_schedule)

    def training_steps(self, cfg, n_images):
        search = len(cfg.lr_grid or ()) * cfg.lr_search_models
        return (cfg.models + search) * self.recipe(cfg, n_images).steps

    def without_augmentation(self, cfg):
        return cfg.model_copy(update={"dsa": cfg.dsa.model_copy(update={"ops": ()})})

    def evaluate(self, cfg, distilled, data, model_cfg, seed, device, dtype):
        """Learned lr if the set has one, else the lr of ``lr_grid`` best on the validation split
        (``lr_search_models`` networks each), else ``optimizer.lr``; then ``models`` networks."""
        recipe = self.recipe(cfg, distilled.images.shape[0])
        images, labels = set_tensors(distilled, device, dtype)
        learned = learned_optimizer(cfg, cfg.optimizer, distilled)
        details: dict = {"lr_selection": "learned" if learned else "fixed"}

        def trained(optimizer: InnerOptimizerConfig, position: int):
            net_seed = step_seed(seed, position, Stream.EVAL)
            net = new_network(model_cfg, data, net_seed, device, dtype)
            recipe.optimizer = optimizer
            train_network(net, images, labels, recipe, _seeded_generator(net_seed))
            return net

        optimizer = learned or cfg.optimizer
        if learned is None and cfg.lr_grid:
            if data.val_x is None:
                raise ConfigError(f"the dsa protocol's lr_grid selects on a validation split; set "
                                  f"data.{data.name}.validation_size", field="eval.lr_grid")
            grid = []
            for i, lr in enumerate(cfg.lr_grid):
                candidate = cfg.optimizer.model_copy(update={"lr": lr})
                accs = [float(correct_on(trained(candidate, LR_SEARCH + i * cfg.lr_search_models + k), data.val_x,
                                         data.val_y, cfg.test_batch).double().mean())
                        for k in range(cfg.lr_search_models)]
                grid.append({"lr": lr, "validation_accuracy": sum(accs) / len(accs)})
            best = max(grid, key=lambda g: (g["validation_accuracy"], -g["lr"]))
            optimizer = cfg.optimizer.model_copy(update={"lr": best["lr"]})
            details.update(lr_selection=f"validation split ({data.val_x.shape[0]} images)", grid=grid)
        accs, correct = [], []
        for r in range(cfg.models):
            hits = test_correct(trained(optimizer, r), data, cfg.test_batch)
            correct.append(hits)
            accs.append(float(hits.double().mean()))
        details["lr"] = optimizer.lr
        return EvalResult(accs, torch.stack(correct), details)
