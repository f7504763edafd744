"""The baseline every table shows: a random real subset, no optimization."""

from pydantic import BaseModel, ConfigDict

from harness.method import STREAM_SYN_INIT, DistilledSet, Method, step_seed
from harness.registry import register_method

import torch


class RandomRealConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@register_method("random_real")
class RandomReal(Method):
    """Random real images, IPC per class (no distillation)."""

    Config = RandomRealConfig

    def outer_steps(self, task):
        return 0

    def setup(self, task):
        gen = torch.Generator().manual_seed(step_seed(task.seed, 0, STREAM_SYN_INIT))
        images, labels = task.real_per_class(task.ipc, gen)
        self._set = DistilledSet(images.cpu(), labels.cpu(), task.num_classes, task.ipc)

    def step(self, step):
        raise RuntimeError("random_real takes no outer steps")

    def distilled(self):
        return self._set
