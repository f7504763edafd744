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

from harness.core.rng import Stream, sketch_position, step_seed


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


def _flatten(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflatten(flat: torch.Tensor, like) -> tuple[torch.Tensor, ...]:
    return tuple(v.view_as(p) for v, p in zip(flat.split([p.numel() for p in like]), like))


class LowRankCurvature:
    """A curvature callback for :func:`harness.engine.meta_gradient` (recompute mode): the exact
    Hessian-vector product ``H_t v`` of the inner loss at step t is replaced by
    ``U diag(s) U^T v``, a rank-``rank`` :func:`randomized_eigh` of H built from exact HVPs.

    ``scope="window"`` builds one approximation (at the first reverse step of an outer step) and
    reuses it for the window, refreshed every ``refresh`` outer steps or when its relative error
    on a random vector of its own span (where a fresh build is accurate) exceeds ``drift`` at the
    current point; ``scope="step"`` rebuilds it at every inner step (exact when rank >= rank H_t:
    a check, not a saving). Sketches draw from ``Stream.SKETCH`` at (outer step, inner step).
    """

    def __init__(self, *, rank: int, oversample: int, power_iters: int, refresh: int, drift: float | None,
                 scope: str, seed: int):
        self._seed_of = lambda step, t: step_seed(seed, sketch_position(step, t), Stream.SKETCH)
        self._drift_seed = lambda step: step_seed(seed, step, Stream.SKETCH_DRIFT)
        self.rank, self.oversample, self.power_iters = rank, oversample, power_iters
        self.refresh, self.drift, self.scope = refresh, drift, scope
        self.approx: LowRank | None = None
        self.built_at = -1  # outer step of the last build
        self.builds = 0
        self.last_drift: float | None = None

    def for_step(self, step: int):
        """The callback for outer step ``step``: refresh (lazily, at its first reverse step) when due."""
        due = self.approx is None or step - self.built_at >= self.refresh
        state = {"first": True, "due": due}

        def curvature(t, params, v, hvp):
            if self.scope == "step" or state["due"]:
                self._build(step, t, params, hvp)
                state["due"] = False
            elif state["first"] and self.drift is not None:
                if self._measure_drift(step, params, hvp) > self.drift:
                    self._build(step, t, params, hvp)
            state["first"] = False
            return _unflatten(self.approx @ _flatten(v), params)

        return curvature

    def _build(self, step: int, t: int, params, hvp) -> None:
        def matvec(V: torch.Tensor) -> torch.Tensor:
            return torch.stack([_flatten(hvp(_unflatten(col, params))) for col in V.T], dim=1)

        gen = torch.Generator().manual_seed(self._seed_of(step, t))
        n = sum(p.numel() for p in params)
        self.approx = randomized_eigh(matvec, n, self.rank, oversample=self.oversample,
                                      power_iters=self.power_iters, generator=gen, dtype=params[0].dtype,
                                      device=params[0].device)
        self.built_at, self.builds = step, self.builds + 1

    def _measure_drift(self, step: int, params, hvp) -> float:
        """How far the kept eigenpairs are from the current Hessian: the relative error of
        ``U diag(s) U^T z`` against ``H z`` for a random z in the span of U (one exact HVP).

        A random z in the whole space would mostly measure the spectrum the rank-k
        approximation leaves out by design, not drift."""
        gen = torch.Generator().manual_seed(self._drift_seed(step))
        U = self.approx.U
        z = U @ torch.randn(U.shape[1], generator=gen, dtype=U.dtype).to(U.device)
        exact = _flatten(hvp(_unflatten(z, params)))
        self.last_drift = float((exact - self.approx @ z).norm() / exact.norm().clamp_min(1e-30))
        return self.last_drift

    def state_dict(self) -> dict:
        approx = None if self.approx is None else {"U": self.approx.U.to("cpu", copy=True),
                                                   "s": self.approx.s.to("cpu", copy=True)}
        return {"approx": approx, "built_at": self.built_at, "builds": self.builds, "last_drift": self.last_drift}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        a = state["approx"]
        self.approx = None if a is None else LowRank(a["U"].to(device), a["s"].to(device))
        self.built_at, self.builds, self.last_drift = state["built_at"], state["builds"], state["last_drift"]
