"""Low-rank approximation of a symmetric operator known only through matrix-vector products.

``randomized_eigh`` is the randomized range finder of Halko, Martinsson and Tropp (2011,
algorithms 4.4 and 5.3) for a symmetric matrix H given as ``matvec(V) = H V``: sketch the
range with ``k + oversample`` Gaussian vectors, sharpen it with ``power_iters`` passes of H
(re-orthonormalising each time), project H onto that basis, and keep the ``k`` eigenpairs of
largest magnitude. The result ``H ~ U diag(s) U^T`` is exact when rank(H) <= k (up to
rounding), and its error decays with k as fast as H's spectrum does. AT-BPTT uses it for the
Hessian of the inner loss, where ``matvec`` is a batch of Hessian-vector products.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class LowRank:
    """``H ~ U diag(s) U^T`` with orthonormal columns ``U [n, k]``."""

    U: torch.Tensor
    s: torch.Tensor

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        return self.U @ (self.s * (self.U.T @ v)) if v.dim() == 1 else self.U @ (self.s[:, None] * (self.U.T @ v))

    def dense(self) -> torch.Tensor:
        return (self.U * self.s) @ self.U.T


def randomized_eigh(matvec: Callable[[torch.Tensor], torch.Tensor], n: int, k: int, *, oversample: int = 5,
                    power_iters: int = 1, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> LowRank:
    """Rank-``k`` eigen-approximation of the symmetric ``n x n`` operator ``matvec`` ([n, m] -> [n, m]).

    Costs ``(k + oversample) * (power_iters + 2)`` products with H.
    """
    if k < 1:
        raise ValueError(f"rank k must be >= 1, got {k}")
    width = min(n, k + oversample)
    omega = torch.randn(n, width, generator=generator, dtype=dtype).to(device)
    Q = torch.linalg.qr(matvec(omega)).Q
    for _ in range(power_iters):
        Q = torch.linalg.qr(matvec(Q)).Q
    B = Q.T @ matvec(Q)
    evals, evecs = torch.linalg.eigh((B + B.T) / 2)  # symmetrise away rounding
    top = evals.abs().argsort(descending=True)[: min(k, width)]
    return LowRank(U=Q @ evecs[:, top], s=evals[top])
