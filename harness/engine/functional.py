"""A network as a pure function of its parameters, and the inner loss."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

Params = tuple[torch.Tensor, ...]


class FunctionalModel:
    """An ``nn.Module`` used as a pure function of a tuple of parameter tensors."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.names = tuple(name for name, _ in module.named_parameters())
        self.buffers = dict(module.named_buffers())
        # Batch statistics couple the examples of a batch: chunked outer losses stop being exact.
        self.batch_independent = not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())

    def __call__(self, params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, {**dict(zip(self.names, params)), **self.buffers}, (x,))

    def parameters(self) -> Params:
        """The module's current parameters, detached (an initialisation for the engine)."""
        return tuple(p.detach().clone() for p in self.module.parameters())


def inner_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy with hard (int64) or soft labels.

    Soft labels are used as given, as probability targets (``-sum_c y_c log softmax(z)_c``),
    like the official RaT-BPTT code; learnable labels are only clipped at zero.
    """
    return F.cross_entropy(logits, labels)


def global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))
