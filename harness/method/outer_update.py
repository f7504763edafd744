"""The outer update as a chain of small pure transforms, in optax's shape.

A transform is a pair of pure functions ``init(params) -> state`` and ``update(grads, state,
params) -> (updates, state)`` over the outer parameters as a dict of named tensors (``images``,
or a linear basis's ``coeffs`` and ``bases``; ``labels`` and ``log_lr`` when they are learned).
:func:`chain` composes named transforms, each passing its updates to the next, and
:func:`apply_updates` adds the last updates to the parameters (in place). Every state is a
pytree of tensors in plain dicts, checkpointed as it is (a checkpoint loads with
``torch.load(weights_only=True)``). The unrolled methods' chain
(:class:`harness.method.UnrolledMethod`):

    clip   the images' meta-gradient clipped to ``factor`` x an EMA of its norms (the current
           norm enters the EMA first; torch's ``clip_grad_norm_`` 1e-6)    (clip_to_ema_norm)
    basis  a linear basis: the image-space gradient pulled back to C and B  (pull_back_basis)
    adam   torch.optim.Adam's own step, one learning rate per parameter    (adam)
    ...    a wrapper's transforms, e.g. Boost-DD's per-row scale            (scale_rows)
    labels the soft labels kept >= 0                                       (keep_non_negative)

:func:`adam` runs ``torch.optim.adam.adam`` (the function ``torch.optim.Adam.step`` calls, with
the same defaults) on a zero buffer in place of the parameters: the buffer then holds exactly
the term torch adds to them, ``(-step_size * exp_avg) / denom``, so ``params + updates`` is
``torch.optim.Adam`` bit for bit (tests/test_outer_update.py); a projection written as an update
(``max(u, -p)``) keeps that exactness.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
from torch.optim.adam import adam as torch_adam  # the function torch.optim.Adam.step runs

Tree = dict[str, torch.Tensor]


class Transform(NamedTuple):
    init: Callable[[Tree], Any]
    update: Callable[[Tree, Any, Tree], tuple[Tree, Any]]


def chain(*named: tuple[str, Transform]) -> Transform:
    """The named transforms one after another; the state is ``{name: that transform's state}``."""
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"transform names must be unique, got {names}")

    def init(params: Tree) -> dict[str, Any]:
        return {name: t.init(params) for name, t in named}

    def update(grads: Tree, state: dict[str, Any], params: Tree) -> tuple[Tree, dict[str, Any]]:
        new = {}
        for name, t in named:
            grads, new[name] = t.update(grads, state[name], params)
        return grads, new

    return Transform(init, update)


def apply_updates(params: Tree, updates: Tree) -> None:
    """``params[k] += updates[k]`` in place (the tensors a method holds stay the same objects)."""
    with torch.no_grad():
        for key, u in updates.items():
            params[key].add_(u)


def ema_state(ema: float | None) -> Tree:
    """:func:`clip_to_ema_norm`'s state: the EMA of the norms seen (float64), and how many it has
    seen (0: none, no EMA yet)."""
    return {"ema": torch.tensor(0.0 if ema is None else ema, dtype=torch.float64),
            "seen": torch.tensor(0 if ema is None else 1, dtype=torch.int64)}


def clip_to_ema_norm(decay: float, factor: float, leaf: str = "images") -> Transform:
    """Scale ``grads[leaf]`` down to ``factor`` x the EMA of its norms when its norm is above that.
    The EMA is updated with the current norm first (the first norm is the EMA), in float64."""

    def update(grads: Tree, state: Tree, params: Tree) -> tuple[Tree, Tree]:
        grad = grads[leaf]
        norm = float(grad.norm())
        ema = norm if int(state["seen"]) == 0 else decay * float(state["ema"]) + (1 - decay) * norm
        max_norm = factor * ema
        if norm > max_norm:
            grads = {**grads, leaf: grad * (max_norm / (norm + 1e-6))}  # the same 1e-6 as torch's clip_grad_norm_
        return grads, {"ema": torch.tensor(ema, dtype=torch.float64), "seen": state["seen"] + 1}

    return Transform(lambda params: ema_state(None), update)


def pull_back_basis() -> Transform:
    """A linear basis ``X = C B``: the gradient in image space (``images``) becomes the gradients of
    the coefficients ``C`` (``coeffs``) and the bases ``B`` (``bases``), by autograd through ``C @ B``."""

    def update(grads: Tree, state: tuple, params: Tree) -> tuple[Tree, tuple]:
        coeffs, bases = params["coeffs"], params["bases"]
        with torch.enable_grad():
            g_coeffs, g_bases = torch.autograd.grad(coeffs @ bases, (coeffs, bases),
                                                    grads["images"].reshape(coeffs.shape[0], -1))
        rest = {k: v for k, v in grads.items() if k != "images"}
        return {"coeffs": g_coeffs, "bases": g_bases, **rest}, state

    return Transform(lambda params: (), update)


def _step_dtype() -> torch.dtype:  # torch.optim's scalar dtype for the step count
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def adam(lrs: dict[str, float], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> Transform:
    """``torch.optim.Adam`` (no weight decay) with learning rate ``lrs[name]`` for parameter ``name``:
    its update is the term Adam adds to the parameter (see the module docstring). State: per
    parameter, torch's ``step`` (a float scalar on the CPU), ``exp_avg`` and ``exp_avg_sq``."""
    beta1, beta2 = betas

    def init(params: Tree) -> dict[str, Tree]:
        return {"step": {k: torch.tensor(0.0, dtype=_step_dtype()) for k in params},
                "exp_avg": {k: torch.zeros_like(p, memory_format=torch.preserve_format) for k, p in params.items()},
                "exp_avg_sq": {k: torch.zeros_like(p, memory_format=torch.preserve_format) for k, p in params.items()}}

    def update(grads: Tree, state: dict[str, Tree], params: Tree) -> tuple[Tree, dict[str, Tree]]:
        updates, new = {}, {"step": {}, "exp_avg": {}, "exp_avg_sq": {}}
        with torch.no_grad():
            for key, grad in grads.items():
                step, avg, sq = (state[part][key].clone() for part in ("step", "exp_avg", "exp_avg_sq"))
                buffer = torch.zeros_like(params[key], memory_format=torch.preserve_format)
                torch_adam([buffer], [grad], [avg], [sq], [], [step], amsgrad=False, beta1=beta1,
                           beta2=beta2, lr=lrs[key], weight_decay=0.0, eps=eps, maximize=False)
                updates[key] = buffer
                new["step"][key], new["exp_avg"][key], new["exp_avg_sq"][key] = step, avg, sq
        return updates, new

    return Transform(init, update)


def adam_state_from_torch(state_dict: dict, names: list[str], fresh: dict[str, Tree]) -> dict[str, Tree]:
    """:func:`adam`'s state from a ``torch.optim.Adam`` state dict whose parameters, in order, are
    ``names`` (checkpoints written before the chain); a parameter it never stepped keeps ``fresh``'s."""
    out = {part: dict(fresh[part]) for part in ("step", "exp_avg", "exp_avg_sq")}
    for index, name in enumerate(names):
        saved = state_dict["state"].get(index)
        for part in out if saved else ():
            out[part][name] = saved[part]
    return out


def scale_rows(scale: torch.Tensor, leaves: tuple[str, ...] = ("images", "labels")) -> Transform:
    """Row i's updates of ``leaves`` (images and soft labels: a row's label is part of the row)
    multiplied by ``scale[i]`` (Boost-DD's beta on the earlier blocks). Needs the images as
    pixels: a linear basis shares its basis images across rows."""

    def init(params: Tree) -> tuple:
        if "images" not in params:
            raise ValueError("per-row update scales need the images as pixels: a linear basis shares its basis "
                             "images across rows, so it cannot hold rows fixed")
        return ()

    def update(grads: Tree, state: tuple, params: Tree) -> tuple[Tree, tuple]:
        out = dict(grads)
        for key in leaves:
            if key in out:
                u = out[key]
                out[key] = scale.to(u.device, u.dtype).view(-1, *([1] * (u.dim() - 1))) * u
        return out, state

    return Transform(init, update)


def keep_non_negative(leaf: str = "labels") -> Transform:
    """Keep ``params[leaf] + update >= 0``: the update becomes ``max(u, -p)`` (exactly ``clamp(p + u,
    min=0)`` once added)."""

    def update(grads: Tree, state: tuple, params: Tree) -> tuple[Tree, tuple]:
        if leaf not in grads:
            return grads, state
        with torch.no_grad():
            return {**grads, leaf: torch.maximum(grads[leaf], -params[leaf])}, state

    return Transform(lambda params: (), update)
