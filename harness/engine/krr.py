"""Kernel ridge regression on features, as pure functions: features -> kernel -> solve -> loss.

A method whose outer loss is a KRR prediction of real data from the synthetic set (FRePo on a
network's learned features; KIP on an NTK) differentiates through these with autograd: the
meta-gradient goes through the linear solve, no inner training is unrolled. Every function is
pure (tensors in, tensors out, no state), so the chain can be differentiated, checked by finite
differences, or swapped link by link (another kernel, another ridge rule)::

    k_ss = linear_kernel(support_features, support_features)
    weights = krr_weights(k_ss, support_targets, trace_scaled_ridge(k_ss, 1e-6))
    loss = half_squared_error(krr_predict(linear_kernel(query_features, support_features), weights), targets)

``krr_predictions`` is that chain in one call.
"""

from __future__ import annotations

import torch


def linear_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a b^T`` for feature rows ``a`` [n, d] and ``b`` [m, d]: the kernel of a network's features
    (FRePo's ``x.dot(y.T)``)."""
    return a @ b.T


def trace_scaled_ridge(kernel: torch.Tensor, reg: float) -> torch.Tensor:
    """FRePo's ridge: ``|reg| * trace(K) / n``, a regularizer relative to the kernel's mean diagonal,
    so that it does not depend on the features' scale (a scalar tensor, differentiable in K)."""
    return abs(reg) * torch.diagonal(kernel).sum() / kernel.shape[0]


def krr_weights(kernel: torch.Tensor, targets: torch.Tensor, ridge: torch.Tensor | float) -> torch.Tensor:
    """``(K + ridge I)^-1 Y`` by a Cholesky factorization (FRePo's ``solve(..., sym_pos=True)``).
    A non-finite kernel gives non-finite weights (a diverged run says so); a finite one that is
    not positive definite in this precision raises ``ValueError``."""
    eye = torch.eye(kernel.shape[0], dtype=kernel.dtype, device=kernel.device)
    regularized = kernel + ridge * eye
    if not bool(torch.isfinite(regularized).all()):
        return torch.full_like(targets, float("nan")) + 0 * regularized.sum()  # NaN, still on the graph
    factor, info = torch.linalg.cholesky_ex(regularized)
    if int(info) != 0:
        raise ValueError(f"the regularized kernel ({kernel.shape[0]}x{kernel.shape[0]}, {kernel.dtype}) is not "
                         f"positive definite (Cholesky failed at minor {int(info)}): raise the ridge or the precision")
    return torch.cholesky_solve(targets, factor)


def krr_predict(cross_kernel: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The predictions ``K_qs (K_ss + ridge I)^-1 Y`` for query rows, from ``krr_weights``."""
    return cross_kernel @ weights


def krr_predictions(query_features: torch.Tensor, support_features: torch.Tensor, support_targets: torch.Tensor,
                    reg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predictions, ridge)``: linear-kernel ridge regression of the query rows on the support set
    with the trace-scaled ridge (FRePo's ``nfr``). Computed in the features' dtype."""
    k_ss = linear_kernel(support_features, support_features)
    ridge = trace_scaled_ridge(k_ss, reg)
    weights = krr_weights(k_ss, support_targets, ridge)
    return krr_predict(linear_kernel(query_features, support_features), weights), ridge


def half_squared_error(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean_i 0.5 * sum_c (p_ic - y_ic)^2``: FRePo's ``mean_squared_loss`` averaged over the batch."""
    return 0.5 * ((predictions - targets) ** 2).sum(dim=-1).mean()
