"""The outer objective: what :func:`harness.engine.meta_gradient` differentiates at the unroll's
final parameters.

An objective is any callable ``objective(model, params, trajectories) -> OuterValue``: given
the network and the final parameters (detached), it returns the outer loss, a metric, and the
loss's gradient in the parameters (the *adjoint* the engine pulls back through the window). The
default, :class:`RealBatchLoss`, is the cross entropy of the final network on a real batch,
with its accuracy as the metric. Another objective (trajectory matching's normalized distance
to an expert's later parameters, say) needs no change in the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, Sequence

import torch
import torch.nn.functional as F

from harness.engine.functional import FunctionalModel, Params


@dataclass
class OuterValue:
    """An outer objective at the final parameters: detached scalars and the params-shaped gradient."""

    loss: torch.Tensor
    metric: torch.Tensor
    adjoint: Params  # d loss / d params


class OuterObjective(Protocol):
    """``objective(model, params, trajectories) -> OuterValue`` (see the module docstring).

    ``trajectories`` is K for a block-major network of K trajectories (``harness.models.batched``):
    the loss is then the mean of the K trajectories' losses; an objective that cannot take
    several trajectories raises ``ValueError`` for K > 1."""

    metric_name: ClassVar[str]

    def __call__(self, model: FunctionalModel, params: Params, trajectories: int) -> OuterValue: ...


@dataclass(frozen=True)
class RealBatchLoss:
    """The default outer objective: mean cross entropy of the final network on the real batch
    ``(x, y)``, its accuracy as the metric, evaluated in chunks of ``chunk`` examples (exact; see
    :func:`outer_loss_and_grad`). With K trajectories the rows are trajectory-major."""

    x: torch.Tensor
    y: torch.Tensor
    chunk: int | None = None
    metric_name: ClassVar[str] = "accuracy"

    def __call__(self, model: FunctionalModel, params: Params, trajectories: int = 1) -> OuterValue:
        loss, acc, grads = outer_loss_and_grad(model, params, self.x, self.y, self.chunk, trajectories)
        return OuterValue(loss, acc, grads)

    @classmethod
    def stacked(cls, objectives: Sequence["RealBatchLoss"]) -> "RealBatchLoss":
        """K trajectories' real batches as one trajectory-major objective (the first one's chunk)."""
        return cls(torch.cat([o.x for o in objectives]), torch.cat([o.y for o in objectives]), objectives[0].chunk)


def outer_loss_and_grad(
    model: FunctionalModel, params: Params, real_x: torch.Tensor, real_y: torch.Tensor, chunk: int | None = None,
    trajectories: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, Params]:
    """Mean cross entropy on the real batch, its accuracy, and its gradient in ``params``.

    Evaluated in chunks of ``chunk`` examples (exact: the loss is a mean of per-example terms),
    so the real batch's activations take the memory of one chunk. With K ``trajectories`` the
    rows are trajectory-major (K real batches of equal size, one per network) and a chunk takes
    ``chunk`` rows of each: the loss is then the mean of the K trajectories' losses.
    """
    n = real_x.shape[0]
    per = n // trajectories
    if chunk is not None and chunk < per and not model.batch_independent:
        raise ValueError("real-batch chunking is exact only for networks without batch statistics (BatchNorm)")
    params = tuple(p.detach().requires_grad_() for p in params)
    chunk = chunk or per

    def rows(x: torch.Tensor, start: int) -> torch.Tensor:
        if trajectories == 1:
            return x[start : start + chunk]
        return x.view(trajectories, per, *x.shape[1:])[:, start : start + chunk].reshape(-1, *x.shape[1:])
    loss_sum = torch.zeros((), dtype=real_x.dtype, device=real_x.device)
    correct = torch.zeros((), dtype=torch.int64, device=real_x.device)
    grads = [torch.zeros_like(p) for p in params]
    with torch.enable_grad():
        for start in range(0, per, chunk):
            logits = model(params, rows(real_x, start))
            labels = rows(real_y, start)
            loss = F.cross_entropy(logits, labels, reduction="sum") / n
            torch._foreach_add_(grads, torch.autograd.grad(loss, params))
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(-1) == labels).sum()
    return loss_sum, correct.to(real_x.dtype) / n, tuple(grads)


@torch.no_grad()
def accuracy(model: FunctionalModel, params: Params, x: torch.Tensor, y: torch.Tensor, chunk: int = 1024) -> float:
    """Top-1 accuracy of ``model(params)`` on ``(x, y)``, in chunks (no graph)."""
    correct = sum(int((model(params, x[i:i + chunk]).argmax(-1) == y[i:i + chunk]).sum())
                  for i in range(0, x.shape[0], chunk))
    return correct / max(1, x.shape[0])
