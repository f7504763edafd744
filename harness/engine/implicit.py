"""Implicit differentiation: hypergradients by the implicit function theorem, as pure functions.

The inner problem is ``theta*(x) = argmin_theta L_in(theta, x)``, with ``x`` the data the outer
problem learns (the synthetic images, the soft labels). Where ``grad_theta L_in(theta*, x) = 0``
and the Hessian ``H = d^2 L_in / d theta^2`` is invertible there, the implicit function theorem
gives ``d theta* / dx = -H^-1 d/dx grad_theta L_in``, so for an outer loss ``L_out(theta*)``

    d L_out / dx = -(d/dx grad_theta L_in)^T H^-1 grad_theta L_out

(Lorraine, Vicol & Duvenaud, AISTATS 2020; RCIG, Loo et al., ICML 2023, is the
dataset-distillation instance). This module computes it from pure pieces on parameter tuples
(``Params``), none of which touches the unroll engine (:mod:`.unroll`):

* :func:`minimize`: K steps of a torchopt optimizer (built at lr 1, as the engine's inner
  optimizers) on ``L_in``, without a graph: the approximate ``theta*``;
* :func:`hessian_vector_product`: ``v -> H v`` by double backward through ``grad_theta L_in``;
* :func:`conjugate_gradient` and :func:`neumann_series`: ``H^-1 b`` from Hessian-vector
  products only (:func:`solve` picks one by name);
* :func:`implicit_gradient`: the whole hypergradient: ``v = H^-1 grad_theta L_out`` by a
  solver, then ``-(d/dx grad_theta L_in)^T v`` by one more vector-Jacobian product (the mixed
  term), with the graph of ``grad_theta L_in`` built once and shared by all of them;
  :func:`mixed_vector_product` is that last product alone (for checking it).

The iteration counts follow Lorraine et al.'s code (``lorraine2/implicit-hyper-opt``,
``train_augment_net2.py``): ``iterations`` is the number of Hessian-vector products, so the
Neumann series with ``i`` iterations has ``i + 1`` terms, ``step * sum_{j=0..i} (I - step H)^j b``
(their ``neumann_hyperstep_preconditioner``; their step is the inner optimizer's lr), and CG runs
at most ``i`` iterations (their ``cg_batch(maxiter=num_neumann_terms)``).

Deviations from their code, on purpose: CG starts from 0 (theirs from ``b``, ``X0 = M_bmm(B)``),
so that one iteration gives the exact line minimum along ``b`` rather than ``b`` itself and the
error ``||x_k - H^-1 b||`` decreases monotonically from the start (Hestenes & Stiefel 1952); it stops
early only when ``tol > 0`` (theirs: rtol 1e-4; here 0 by default, a fixed cost per outer step
as RCIG's fixed ``n_hinv_steps``), and at a direction of non-positive curvature ``p^T H p <= 0``
(a non-convex inner problem; the Newton-CG/Steihaug safeguard), where it returns its current
iterate and says so. The Neumann series is run in its Richardson form
``x_{k+1} = x_k + step (b - H x_k)`` from ``x_0 = 0`` (the same partial sums, and the residual of
every iterate but the last for free).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
from torchopt.base import GradientTransformation

from harness.engine.functional import Params, global_norm

# objective(params, *data) -> scalar: the inner loss, with its L2 term (the engine's inner loss
# is written into it by the caller; nothing here assumes a network).
Objective = Callable[..., torch.Tensor]
HVP = Callable[[Params], Params]
Solver = Literal["cg", "neumann"]


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def _axpy(alpha, x: Sequence[torch.Tensor], y: Sequence[torch.Tensor]) -> Params:
    """``alpha * x + y``, leaf by leaf (``alpha`` a float or a 0-d tensor)."""
    return tuple(alpha * xi + yi for xi, yi in zip(x, y))


def _zeros_for_none(grads, like) -> Params:
    return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, like))


# --------------------------------------------------------------------------- the inner problem


@dataclass
class Minimized:
    """What :func:`minimize` returns: the final parameters (detached), ``L_in`` before each step
    ``[K]``, and ``||grad L_in||`` before each step ``[K]``."""

    params: Params
    losses: torch.Tensor
    grad_norms: torch.Tensor


def minimize(objective: Callable[[Params], torch.Tensor], params: Params, optimizer: GradientTransformation,
             lr: float, steps: int) -> Minimized:
    """``steps`` steps of ``optimizer`` (a torchopt transformation at lr 1: ``theta + lr * update``,
    as the engine's inner optimizers) on ``objective(params)`` from ``params``, no graph kept."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    params = tuple(p.detach() for p in params)
    state = optimizer.init(params)
    losses, norms = [], []
    for _ in range(steps):
        with torch.enable_grad():
            leaves = tuple(p.requires_grad_() for p in (q.detach() for q in params))
            loss = objective(leaves)
            grads = torch.autograd.grad(loss, leaves)
        with torch.no_grad():
            updates, state = optimizer.update(grads, state, params=leaves, inplace=False)
            params = tuple(p.detach() + lr * u for p, u in zip(leaves, updates))
        losses.append(loss.detach())
        norms.append(global_norm(grads).detach())
    empty = params[0].new_zeros(0)
    return Minimized(params, torch.stack(losses) if losses else empty, torch.stack(norms) if norms else empty)


def hessian_vector_product(grads: Params, params: Params) -> HVP:
    """``v -> H v`` for ``grads = grad_params L`` built with ``create_graph=True``: one backward
    pass through the graph of ``grads`` per product (the graph is kept for the next one)."""
    def hvp(vectors: Params) -> Params:
        out = torch.autograd.grad(grads, params, grad_outputs=tuple(vectors), retain_graph=True, allow_unused=True)
        return tuple(h.detach() for h in _zeros_for_none(out, params))
    return hvp


# --------------------------------------------------------------------------- H^-1 b


@dataclass
class Solve:
    """An approximate ``H^-1 b``: the solution, ``||b - H x_k||`` of the iterates whose residual
    was computed (``[k]``, starting with ``||b||``), and whether CG met non-positive curvature."""

    solution: Params
    residual_norms: torch.Tensor
    hvps: int  # Hessian-vector products used
    negative_curvature: bool = False

    @property
    def relative_residual(self) -> float:
        """The last residual computed, relative to ``||b||`` (0 when ``b = 0``)."""
        first = float(self.residual_norms[0])
        return float(self.residual_norms[-1]) / first if first > 0 else 0.0


def conjugate_gradient(hvp: HVP, rhs: Params, iterations: int, *, tol: float = 0.0) -> Solve:
    """``H^-1 b`` by at most ``iterations`` conjugate-gradient iterations from 0 (one
    Hessian-vector product each), for symmetric positive definite ``H``.

    Stops early once ``||r_k|| <= tol ||b||`` (``tol > 0``) or at a direction of non-positive
    curvature (``H`` not positive definite there: the current iterate is returned, and
    ``negative_curvature`` set). ``residual_norms[k] = ||r_k||``, the recursively updated residual
    of iterate k (equal to ``b - H x_k`` in exact arithmetic).
    """
    if iterations < 1:
        raise ValueError(f"conjugate gradient needs iterations >= 1, got {iterations}")
    rhs = tuple(b.detach() for b in rhs)
    x = tuple(torch.zeros_like(b) for b in rhs)
    r, p = rhs, rhs
    rr = _dot(r, r)
    norms = [rr.sqrt()]
    threshold = tol * float(norms[0])
    used, negative = 0, False
    for _ in range(iterations):
        if float(norms[-1]) <= threshold:  # also b = 0: x = 0 is exact
            break
        hp = hvp(p)
        used += 1
        curvature = _dot(p, hp)
        if not float(curvature) > 0:
            negative = True
            break
        alpha = rr / curvature
        x = _axpy(alpha, p, x)
        r = _axpy(-alpha, hp, r)
        rr_new = _dot(r, r)
        p = _axpy(rr_new / rr, p, r)
        rr = rr_new
        norms.append(rr.sqrt())
    return Solve(x, torch.stack(norms), used, negative)


def neumann_series(hvp: HVP, rhs: Params, iterations: int, step: float) -> Solve:
    """``H^-1 b ~ step * sum_{j=0..iterations} (I - step H)^j b``: the truncated Neumann series of
    Lorraine et al. (``iterations`` Hessian-vector products, ``iterations + 1`` terms). Converges
    to ``H^-1 b`` for symmetric positive definite ``H`` when ``step < 2 / lambda_max(H)``.

    Run as Richardson's iteration ``x_{k+1} = x_k + step (b - H x_k)``, ``x_0 = 0``; the residual
    ``b - H x_k`` of every iterate but the returned one comes with it (``residual_norms``, from
    ``||b||`` at ``x_0``; the returned iterate's residual would cost one more product).
    """
    if iterations < 0:
        raise ValueError(f"the Neumann series needs iterations >= 0, got {iterations}")
    if not step > 0:
        raise ValueError(f"the Neumann step must be > 0, got {step}")
    rhs = tuple(b.detach() for b in rhs)
    x = tuple(step * b for b in rhs)  # x_1: the residual of x_0 = 0 is b itself
    norms = [global_norm(rhs)]
    for _ in range(iterations):
        r = _axpy(-1.0, hvp(x), rhs)
        norms.append(global_norm(r))
        x = _axpy(step, r, x)
    return Solve(x, torch.stack(norms), iterations)


def solve(hvp: HVP, rhs: Params, solver: Solver, iterations: int, *, step: float | None = None,
          tol: float = 0.0) -> Solve:
    """``H^-1 b`` by ``solver``: ``"cg"`` (:func:`conjugate_gradient`, ``tol``) or ``"neumann"``
    (:func:`neumann_series`, ``step``)."""
    if solver == "cg":
        return conjugate_gradient(hvp, rhs, iterations, tol=tol)
    if solver == "neumann":
        if step is None:
            raise ValueError("the Neumann series needs a step")
        return neumann_series(hvp, rhs, iterations, step)
    raise ValueError(f"solver must be 'cg' or 'neumann', got {solver!r}")


# --------------------------------------------------------------------------- the hypergradient


@dataclass
class ImplicitGradient:
    """What :func:`implicit_gradient` returns: ``-(d/dx grad_theta L_in)^T H^-1 g`` for every data
    tensor (None for one that does not require grad), the solve, and ``||grad_theta L_in||`` at
    the parameters given (how far they are from stationary: the theorem's premise)."""

    data: tuple[torch.Tensor | None, ...]
    solve: Solve = field(repr=False)
    stationarity: float
    inner_loss: float  # L_in at the parameters given


def implicit_gradient(objective: Objective, params: Params, data: Sequence[torch.Tensor], outer_grad: Params,
                      solver: Solver, iterations: int, *, step: float | None = None,
                      tol: float = 0.0) -> ImplicitGradient:
    """The implicit-function-theorem hypergradient of an outer loss whose gradient in the inner
    parameters at ``params`` is ``outer_grad``, with respect to every tensor of ``data`` that
    requires grad: ``-(d/dx grad_theta L_in)^T H^-1 outer_grad``, ``L_in = objective(params, *data)``.

    ``params`` should be (near) a stationary point of ``L_in``. One graph of ``grad_theta L_in``
    serves the Hessian-vector products of the solve and the final mixed product. Nothing is
    accumulated into ``.grad``; the inputs are not modified.
    """
    with torch.enable_grad():
        loss, grads, params, leaves = _inner_gradient(objective, params, data)
        result = solve(hessian_vector_product(grads, params), outer_grad, solver, iterations, step=step, tol=tol)
        mixed = _mixed_product(grads, leaves, result.solution)
    return ImplicitGradient(tuple(-m if m is not None else None for m in mixed), result,
                            float(global_norm(tuple(g.detach() for g in grads))), float(loss.detach()))


def mixed_vector_product(objective: Objective, params: Params, data: Sequence[torch.Tensor],
                         vectors: Params) -> tuple[torch.Tensor | None, ...]:
    """``(d/dx grad_theta L_in)^T v`` at ``params`` for every tensor of ``data`` that requires grad
    (None for the others): the mixed term of :func:`implicit_gradient` (which negates it), alone."""
    with torch.enable_grad():
        _, grads, _, leaves = _inner_gradient(objective, params, data)
        return _mixed_product(grads, leaves, vectors)


def _inner_gradient(objective: Objective, params: Params, data: Sequence[torch.Tensor]):
    """``(L_in, grad_theta L_in with its graph, theta leaves, data leaves)``: fresh leaves, so the
    caller's tensors get no ``.grad`` and stay as they are."""
    params = tuple(p.detach().requires_grad_() for p in params)
    leaves = [d.detach().requires_grad_() if _wanted(d) else d.detach() for d in data]
    loss = objective(params, *leaves)
    return loss, torch.autograd.grad(loss, params, create_graph=True), params, leaves


def _wanted(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() and tensor.requires_grad


def _mixed_product(grads: Params, leaves: list[torch.Tensor], vectors: Params) -> tuple[torch.Tensor | None, ...]:
    wanted = [leaf for leaf in leaves if leaf.requires_grad]
    if not wanted:
        return (None,) * len(leaves)
    out = iter(_zeros_for_none(torch.autograd.grad(grads, wanted, grad_outputs=tuple(vectors), allow_unused=True),
                               wanted))
    return tuple(next(out).detach() if leaf.requires_grad else None for leaf in leaves)
