"""The baseline every table shows: a random real subset, no optimization; and the base of the
other selections of real images (``herding``, ``kcenter``: :class:`EmbeddingSelection`;
``forgetting``), which differ only in which IPC images of every class they take (``choose``).

Labels (``labels``): ``"hard"`` (default) gives each image its class; ``"teacher"`` gives it the
soft label ``softmax(teacher(image) / temperature)`` (float64 probabilities, N x C, summing to
one), the teacher being network 0 of the full-data networks of the cell's data and network
(:func:`harness.train.teacher_model`, DD-Ranking's real-data recipe, trained once and cached:
the same teacher as the DD-Ranking scores' soft random baseline, so ``random_real`` with
``labels = "teacher"`` is that baseline). The evaluation trains on the soft labels (soft cross
entropy). ``temperature`` 1.0 is DD-Ranking's (its configs' ``temperature``) and
:class:`~harness.evaluation.scores.ScoresConfig`'s.

The cost of a selection is its ``setup``: ``summary()`` records ``selection_seconds`` (choosing
and labelling, this cell) apart from the networks it needed (``networks``: the seconds this cell
spent obtaining them, trained or read from the cache, and the one-time training's wall-clock).
The set's ``meta`` carries ``label_kind`` ("hard" | "teacher") and the selected training rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_serializer

from harness import ConfigError, DistilledSet, DistillTask, Method, Stream, register_method, step_seed
from harness.models import create_model
from harness.models.networks import embed
from harness.train import FullData, FullDataConfig, class_members, embeddings, full_data, teacher_labels


class RandomRealConfig(BaseModel):
    """How the selected real images are labelled (every selection method has these fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: Literal["hard", "teacher"] = "hard"
    temperature: float = Field(1.0, gt=0)  # of the teacher's soft labels: softmax(logits / temperature)
    # The networks trained on the real training split: the teacher (network 0), herding's and
    # k-center's embedding network (network seed % models). DD-Ranking's real-data recipe.
    full_data: FullDataConfig = FullDataConfig()

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # random_real's records predate these fields: at their defaults (hard labels, which use
        # neither the teacher nor its recipe) random_real's config dumps as before, {}, so the run
        # ids (hashes of the dumped config) of earlier records stay valid. The other selections dump all.
        data = handler(self)
        if type(self) is RandomRealConfig and self == RandomRealConfig():
            return {}
        return data


@register_method("random_real")
class RandomReal(Method):
    """Random real images, IPC per class (no distillation); hard or teacher labels."""

    Config = RandomRealConfig
    distils = False
    # (what, done, total) -> None: where the runner sets one, a training of the full-data networks
    # in ``setup`` reports its progress (harness.train.full_data's ``report``).
    report: Callable[[str, int, int], None] | None = None
    selection = "uniformly at random per class (random_real's draw, DD-Ranking's random baseline)"

    def outer_steps(self, task):
        return 0

    def check(self, task: DistillTask) -> None:
        task.check_real_per_class(task.ipc)

    def choose(self, task: DistillTask) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The chosen images, class-major, and their training rows (None where not known)."""
        gen = torch.Generator().manual_seed(step_seed(task.seed, 0, Stream.SYN_INIT))
        images, _ = task.real_per_class(task.ipc, gen)
        return images, None

    def networks(self, task: DistillTask) -> FullData:
        """The full-data networks of the task's data and network (from the cache, else trained),
        their cost in this cell kept for the summary."""
        if self._trained is None:
            t0 = time.perf_counter()
            trained = full_data(task.data, task.model, self.config.full_data, task.device, task.dtype, self.report)
            seconds = time.perf_counter() - t0
            self.network_seconds += seconds
            self.info["networks"] = {"cache_file": trained.cache_file, "seconds_this_cell": seconds,
                                     "training_seconds": trained.seconds, "models": len(trained.state_dicts),
                                     "accuracy_per_model": trained.accuracy_per_model}
            self._trained = trained
        return self._trained

    def setup(self, task: DistillTask) -> None:
        self.check(task)
        self.task, self.info, self._trained = task, {}, None
        self.network_seconds = 0.0  # obtaining networks trained on the real data (trained or cached): not selection
        t0 = time.perf_counter()
        images, rows = self.choose(task)
        labels = torch.arange(task.num_classes).repeat_interleave(task.ipc)
        if self.config.labels == "teacher":
            teacher = self.networks(task).network(0, task.model, task.data, task.device, task.dtype)
            labels = teacher_labels(teacher, images, self.config.temperature)
            self.info["teacher"] = {"network": 0, "temperature": self.config.temperature,
                                    "cache_file": self.info["networks"]["cache_file"]}
        self.info["selection_seconds"] = time.perf_counter() - t0 - self.network_seconds
        self.info["network_seconds"] = self.network_seconds
        meta = {"label_kind": self.config.labels, "selection": self.name}
        if rows is not None:
            meta["train_rows"] = rows.tolist()
        self._set = DistilledSet(images.detach().cpu(), labels, task.num_classes, task.ipc, meta=meta)

    def step(self, step):
        raise RuntimeError(f"{self.name} takes no outer steps")

    def distilled(self) -> DistilledSet:
        return self._set

    def summary(self) -> dict[str, Any]:
        """What was selected and how, the label kind, and the selection's cost (see the module docstring)."""
        return {"selection": self.selection, "label_kind": self.config.labels, **self.info}


def check_embedding(task: DistillTask, method: str) -> None:
    """A ``ConfigError`` unless the cell's network has penultimate features (cheap: no training)."""
    net = create_model(task.model, task.image_shape, task.num_classes)
    try:
        with torch.no_grad():
            embed(net.eval(), torch.zeros(2, *task.image_shape))
    except TypeError as exc:
        raise ConfigError(f"{method} needs a network with an embedding: {exc}", field="model") from None


class EmbeddingSelectionConfig(RandomRealConfig):
    """Herding's and k-center's settings: the labels, and (``full_data``) the training of the
    networks whose penultimate features they select by."""


class EmbeddingSelection(RandomReal):
    """A selection by a rule on the embeddings of each class's training images (herding, k-center)."""

    def rule(self, features: torch.Tensor, k: int) -> torch.Tensor:
        raise NotImplementedError

    def check(self, task: DistillTask) -> None:
        super().check(task)
        check_embedding(task, self.name)

    def choose(self, task: DistillTask) -> tuple[torch.Tensor, torch.Tensor]:
        index = task.seed % self.config.full_data.models
        net = self.networks(task).network(index, task.model, task.data, task.device, task.dtype)
        self.info["embedding"] = {"network": index, "features": "penultimate (the classifier's input), unnormalised",
                                  "distance": "euclidean"}
        rows = []
        for members in class_members(task.data):
            features = embeddings(net, task.data.train_x[members.to(task.data.train_x.device)])
            rows.append(members[self.rule(features, task.ipc)])
        rows = torch.cat(rows)
        return task.data.train_x[rows.to(task.data.train_x.device)], rows
