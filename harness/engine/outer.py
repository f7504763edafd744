"""The outer loss: cross entropy of the unrolled network on a real batch, and its accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.engine.functional import FunctionalModel, Params


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
