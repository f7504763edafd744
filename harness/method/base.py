"""What a distillation method is, to the harness.

The runner drives every method the same way::

    method = create_method(name, **config)
    method.setup(task)                     # a DistillTask: data, ipc, seed, model, budget
    for step in range(start, method.outer_steps(task)):
        metrics = method.step(step)        # one outer step
    distilled = method.distilled()         # a DistilledSet, evaluated and saved

and checkpoints ``method.state_dict()`` along the way (restored with ``load_state_dict``).
Outer step ``step`` draws all its randomness from ``step_seed(task.seed, step)``
(``harness.core.rng``), so a run resumed from a checkpoint continues exactly as if it had never
stopped. Before any cell runs, the runner calls ``method.check(task)`` for every pending cell:
a config that cannot run on its task (a block layout that does not divide the IPC, more
images per class than the data has) fails there, before anything is written.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
from pydantic import BaseModel

from harness.core.io import atomic_torch_save
from harness.data import DatasetSplits
from harness.models import ModelConfig, create_model


@dataclass
class DistillTask:
    """One cell of a suite: distil ``data`` to ``ipc`` images per class with ``seed``."""

    data: DatasetSplits  # on ``device``, in ``dtype``
    ipc: int
    seed: int
    model: ModelConfig
    outer_steps: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.data.image_shape

    def new_model(self) -> nn.Module:
        return create_model(self.model, self.image_shape, self.num_classes).to(self.device, self.dtype)

    def check_real_per_class(self, ipc: int) -> None:
        """Raise ``ValueError`` unless every class has at least ``ipc`` training images."""
        counts = torch.bincount(self.data.train_y.cpu(), minlength=self.num_classes)
        short = int(counts.argmin())
        if int(counts[short]) < ipc:
            raise ValueError(f"class {short} has {int(counts[short])} training images, fewer than ipc={ipc}")

    def real_per_class(self, ipc: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return real_per_class(self.data, ipc, gen)

    def initial_images(self, ipc: int, init: str, gen: torch.Generator, norm: float | None = None) -> torch.Tensor:
        """The synthetic images a run starts from, class-major, drawn from ``gen`` (the run's
        SYN_INIT stream): ``init == "real"`` is random_real's draw (on the data's device); else a
        standard normal per pixel on the CPU, each image scaled to L2 norm ``norm`` when given
        (drawn and scaled in float64, as the official RaT-BPTT code's unit-norm noise)."""
        if init == "real":
            return self.real_per_class(ipc, gen)[0]
        shape = (self.num_classes * ipc, *self.image_shape)
        if norm is None:
            return torch.randn(shape, generator=gen)
        images = torch.randn(shape, generator=gen, dtype=torch.float64)
        return images / images.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * norm


def real_per_class(data: DatasetSplits, ipc: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` random real training images of every class, class-major (``random_real``'s draw, and
    DD-Ranking's random baseline with the same generator)."""
    train_y = data.train_y.cpu()
    rows = []
    for c in range(data.num_classes):
        members = (train_y == c).nonzero().flatten()
        if len(members) < ipc:
            raise ValueError(f"class {c} has {len(members)} training images, fewer than ipc={ipc}")
        rows.append(members[torch.randperm(len(members), generator=gen)[:ipc]])
    idx = torch.cat(rows).to(data.train_x.device)
    return data.train_x[idx], data.train_y[idx]


@dataclass
class DistilledSet:
    """A distilled set, class-major: rows ``[c * ipc, (c + 1) * ipc)`` belong to class c.

    ``labels`` are int64 classes or float soft labels; ``blocks`` (optional) gives the block
    of every row for sets grown block by block (Boost-DD); ``lr`` a learned inner lr, and
    ``lr_optimizer`` the inner optimizer it was learned for (its config as JSON, without lr):
    evaluation uses the lr only with that optimizer.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    ipc: int
    lr: float | None = None
    lr_optimizer: dict[str, Any] | None = None
    blocks: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # The images as pixels in [0, 1] (normalization and ZCA undone), to look at; set by the
    # runner when it saves a set (``DatasetSplits.to_pixels``), None where unknown.
    pixels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.shape[0] != self.num_classes * self.ipc:
            raise ValueError(f"{self.images.shape[0]} images is not {self.num_classes} classes x ipc {self.ipc}")

    @property
    def hard_labels(self) -> torch.Tensor:
        """The class of every row (its position in the class-major layout)."""
        return torch.arange(self.num_classes, device=self.images.device).repeat_interleave(self.ipc)

    def select(self, per_class: torch.Tensor | list[int]) -> "DistilledSet":
        """The subset made of the same positions ``per_class`` (indices into [0, ipc)) in every class."""
        per_class = torch.as_tensor(per_class, dtype=torch.int64)
        if per_class.numel() == 0 or per_class.min() < 0 or per_class.max() >= self.ipc:
            raise ValueError(f"positions must lie in [0, {self.ipc}), got {per_class.tolist()}")
        rows = (torch.arange(self.num_classes)[:, None] * self.ipc + per_class[None, :]).flatten()
        rows = rows.to(self.images.device)
        return replace(
            self,
            images=self.images[rows],
            labels=self.labels[rows],
            ipc=len(per_class),
            blocks=None if self.blocks is None else self.blocks[rows],
            pixels=None if self.pixels is None else self.pixels[rows.to(self.pixels.device)],
            meta={**self.meta, "subset_of_ipc": self.ipc, "subset_positions": per_class.tolist()},
        )

    def to(self, device, dtype=None) -> "DistilledSet":
        labels = self.labels.to(device) if not self.labels.is_floating_point() else self.labels.to(device, dtype)
        return replace(self, images=self.images.to(device, dtype), labels=labels)

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename), so a crash never leaves a partial file."""
        payload = {
            "images": self.images.detach().cpu(),
            "labels": self.labels.detach().cpu(),
            "num_classes": self.num_classes,
            "ipc": self.ipc,
            "lr": self.lr,
            "lr_optimizer": self.lr_optimizer,
            "blocks": None if self.blocks is None else self.blocks.cpu(),
            "meta": self.meta,
            "pixels": None if self.pixels is None else self.pixels.detach().cpu(),
        }
        atomic_torch_save(payload, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> "DistilledSet":
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
        return cls(**{"lr_optimizer": None, "pixels": None, **payload})  # files of ddbench 0.1 have neither


class Method(ABC):
    """A registered distillation method (see ``harness.method.registry``)."""

    name: ClassVar[str]  # set by @register_method
    Config: ClassVar[type[BaseModel]]
    # A config that runs in about a second on a tiny task: the registry-wide checks
    # (tests/test_methods.py) run every registered method with it, so a new method is covered
    # without editing a test. None: the method is not checked that way.
    tiny_config: ClassVar[dict[str, Any] | None] = {}
    # A wrapper method (Boost-DD) names the config fields that hold the method it wraps and that
    # method's config: (name field, config field). Suites give the wrapped method its share of
    # [method_defaults] through them.
    wraps: ClassVar[tuple[str, str] | None] = None

    def __init__(self, config: BaseModel):
        self.config = config

    def outer_steps(self, task: DistillTask) -> int:
        """How many outer steps this method takes on ``task`` (0 for methods that do not optimize;
        for one that does, 0 means no step count: a minutes budget stops it)."""
        return task.outer_steps

    # False for methods that take no outer step (random_real): a zero-step budget is theirs only.
    distils: ClassVar[bool] = True
    # Whether the method can run with no step count (outer_steps = 0), until a minutes budget
    # stops it; a method that plans by the number of steps (Boost-DD's blocks) cannot.
    runs_by_minutes: ClassVar[bool] = True

    def divergence(self, metrics: dict[str, float]) -> str | None:
        """Why the run cannot go on after a step (checked after every one), or None. By default: a
        non-finite ``outer_loss`` or ``grad_norm`` (the meta-gradient's norm)."""
        for key in ("outer_loss", "grad_norm"):
            value = metrics.get(key)
            if value is not None and not math.isfinite(value):
                return f"non-finite {key} ({value})"
        return None

    def learned_lr_optimizer(self) -> BaseModel | None:
        """The inner optimizer config whose lr this method learns, or None (it learns none)."""
        return None

    def check(self, task: DistillTask) -> None:
        """Raise ``DDBenchError``/``ValueError`` if this config cannot run on ``task``; cheap (no
        distillation, no device memory): called for every pending cell before the first runs."""
        del task

    @abstractmethod
    def setup(self, task: DistillTask) -> None:
        """Initialise the synthetic set and any optimizer state for ``task``."""

    @abstractmethod
    def step(self, step: int) -> dict[str, float]:
        """One outer step; returns scalar metrics (for the progress bar and the record's history)."""

    @abstractmethod
    def distilled(self) -> DistilledSet:
        """The current distilled set."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume after the last completed step."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def summary(self) -> dict[str, Any]:
        """Method-specific results worth keeping in the run record (JSON-serialisable)."""
        return {}
