"""The baseline every table shows: a random real subset, no optimization."""

import torch
from pydantic import BaseModel, ConfigDict

from harness import DistilledSet, Method, Stream, register_method, step_seed


class RandomRealConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@register_method("random_real")
class RandomReal(Method):
    """Random real images, IPC per class (no distillation)."""

    Config = RandomRealConfig
    distils = False

    def outer_steps(self, task):
        return 0

    def check(self, task):
        task.check_real_per_class(task.ipc)

    def setup(self, task):
        gen = torch.Generator().manual_seed(step_seed(task.seed, 0, Stream.SYN_INIT))
        images, labels = task.real_per_class(task.ipc, gen)
        self._set = DistilledSet(images.cpu(), labels.cpu(), task.num_classes, task.ipc)

    def step(self, step):
        raise RuntimeError("random_real takes no outer steps")

    def distilled(self):
        return self._set
