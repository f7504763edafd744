"""Inner optimizers: one registered entry per optimizer, in both of its forms.

* :meth:`InnerOptimizer.transformation` is the functional form the unroll differentiates
  through: a torchopt gradient transformation, a pair of pure functions
  ``init(params) -> state`` and ``update(grads, state, params=...) -> (updates, state)``, built
  at learning rate 1 (the engine applies ``params + lr * updates`` itself, so that the inner lr
  can be a tensor with a meta-gradient).
* :meth:`InnerOptimizer.trainer` is the stateful ``torch.optim`` form that plain training
  (evaluation, the analyses' networks) uses. Both are built from the same validated
  :class:`InnerOptimizerConfig`; an option that ``torch.optim`` cannot express (Adam's
  ``eps_root``, the ``higher`` eps convention) is honoured by running the functional form
  itself (:class:`TransformOptimizer`), never silently dropped.

Adam's square root has an infinite derivative at zero. A parameter whose gradient is always
zero (a conv bias before instance norm) keeps its second moment at exactly zero, and the
meta-gradient through ``sqrt(v)`` becomes ``0 * inf = NaN``. Two remedies are offered:

* ``sqrt="masked"`` (default): ``sqrt`` evaluated only where ``v > 0`` and its derivative
  set to zero where ``v == 0``. The forward pass is exactly Adam's; the derivative is the
  true one along every direction in which ``v`` can move (``v == 0`` only where the gradient
  is identically zero). This is what ``higher`` does with a gradient hook.
* ``sqrt="eps_root"``: torchopt's ``adam(eps_root=...)``, ``sqrt(v + eps_root)``; this
  changes the forward pass slightly.

``eps_convention`` says where Adam's ``eps`` sits relative to the bias correction:
``"torch"`` (``torch.optim.Adam``, torchopt, optax): ``m_hat / (sqrt(v_hat) + eps)``;
``"higher"`` (``higher``'s DifferentiableAdam and old PyTorch):
``sqrt(bc2) / bc1 * m / (sqrt(v) + eps)``. They differ only through ``eps``.
"""

from __future__ import annotations

from typing import ClassVar, Literal, NamedTuple

import torch
import torchopt
from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from torchopt.base import GradientTransformation

from harness.core.registry import Registry

OPTIMIZERS: Registry[type["InnerOptimizer"]] = Registry("inner optimizer")


class InnerOptimizerConfig(BaseModel):
    """The optimizer that trains a network on the synthetic set (and in evaluation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "adam"  # a registered inner optimizer: sgd, adam
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)  # adam only
    eps: float = 1e-8  # adam only
    sqrt: Literal["masked", "eps_root"] = "masked"  # adam only
    eps_root: float = 0.0  # adam only, with sqrt="eps_root"
    eps_convention: Literal["torch", "higher"] = "torch"  # adam only

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in OPTIMIZERS:
            raise ValueError(f"unknown inner optimizer {name!r} (registered: {', '.join(OPTIMIZERS.names())})")
        return name

    @model_validator(mode="after")
    def _check(self) -> "InnerOptimizerConfig":
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        OPTIMIZERS.get(self.name).check(self)
        return self


class InnerOptimizer:
    """A registered inner optimizer: its options, its functional form and its training form."""

    # The config fields this optimizer reads besides name, lr and weight_decay; every other
    # field must keep its default (a value that would be ignored is refused instead).
    options: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def check(cls, cfg: InnerOptimizerConfig) -> None:
        for name, info in InnerOptimizerConfig.model_fields.items():
            if name in ("name", "lr", "weight_decay", *cls.options):
                continue
            if getattr(cfg, name) != info.default:
                raise ValueError(f"{name} does not apply to the {cfg.name} optimizer (it reads: "
                                 f"{', '.join(('lr', 'weight_decay', *cls.options))})")

    @classmethod
    def transformation(cls, cfg: InnerOptimizerConfig) -> GradientTransformation:
        raise NotImplementedError

    @classmethod
    def trainer(cls, cfg: InnerOptimizerConfig, params) -> torch.optim.Optimizer:
        """The stateful form at ``cfg.lr``; by default the functional form run step by step."""
        return TransformOptimizer(params, cls.transformation(cfg), cfg.lr)


@OPTIMIZERS.register("sgd")
class SGD(InnerOptimizer):
    """SGD with (Nesterov) momentum and L2 weight decay, dampening 0."""

    options = ("momentum", "nesterov")

    @classmethod
    def check(cls, cfg: InnerOptimizerConfig) -> None:
        super().check(cfg)
        if cfg.nesterov and cfg.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")

    @classmethod
    def transformation(cls, cfg):
        # dampening stays 0: torchopt's momentum trace special-cases its first call through a
        # closure flag, which is only harmless (pure) when dampening is 0.
        return torchopt.sgd(lr=1.0, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)

    @classmethod
    def trainer(cls, cfg, params):
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)


@OPTIMIZERS.register("adam")
class Adam(InnerOptimizer):
    """Adam with L2 weight decay; the square root masked at zero or shifted by eps_root."""

    options = ("betas", "eps", "sqrt", "eps_root", "eps_convention")

    @classmethod
    def check(cls, cfg: InnerOptimizerConfig) -> None:
        super().check(cfg)
        if cfg.sqrt == "eps_root":
            if not cfg.eps_root > 0:
                raise ValueError("sqrt='eps_root' needs eps_root > 0 (eps_root = 0 gives NaN meta-gradients)")
            if cfg.eps_convention != "torch":
                raise ValueError("sqrt='eps_root' uses torchopt.adam, whose eps_convention is 'torch'")
        elif cfg.eps_root != 0:
            raise ValueError("eps_root applies to sqrt = 'eps_root' only")

    @classmethod
    def transformation(cls, cfg):
        if cfg.sqrt == "eps_root":
            return torchopt.adam(lr=1.0, betas=cfg.betas, eps=cfg.eps, eps_root=cfg.eps_root,
                                 weight_decay=cfg.weight_decay)
        transforms = []
        if cfg.weight_decay:
            transforms.append(torchopt.transform.add_decayed_weights(cfg.weight_decay))
        transforms += [scale_by_masked_adam(*cfg.betas, cfg.eps, cfg.eps_convention), torchopt.transform.scale(-1.0)]
        return torchopt.chain(*transforms)

    @classmethod
    def trainer(cls, cfg, params):
        if cfg.sqrt == "masked" and cfg.eps_convention == "torch":
            # The same forward pass as the masked form (the mask only changes derivatives).
            return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
        return super().trainer(cfg, params)


def optimizer_without_lr(cfg: InnerOptimizerConfig | dict) -> dict:
    """The optimizer's config as JSON without its lr: what a learned lr belongs to."""
    data = cfg.model_dump(mode="json") if isinstance(cfg, InnerOptimizerConfig) else dict(cfg)
    data.pop("lr", None)
    return InnerOptimizerConfig(**data, lr=1.0).model_dump(mode="json", exclude={"lr"})


def make_inner_optimizer(cfg: InnerOptimizerConfig) -> GradientTransformation:
    """The functional (torchopt) form of ``cfg`` at learning rate 1 (the engine scales by lr)."""
    return OPTIMIZERS.get(cfg.name).transformation(cfg)


def make_torch_optimizer(cfg: InnerOptimizerConfig, params) -> torch.optim.Optimizer:
    """The stateful training form of ``cfg`` (evaluation, analyses), honouring every option."""
    return OPTIMIZERS.get(cfg.name).trainer(cfg, params)


class TransformOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` that applies a torchopt transformation (built at lr 1):
    ``p <- p + lr * update``, with ``lr`` read from the param group (so lr schedulers work)."""

    def __init__(self, params, transformation: GradientTransformation, lr: float):
        super().__init__(params, {"lr": lr})
        if len(self.param_groups) != 1:
            raise ValueError("TransformOptimizer takes one parameter group")
        self.transformation = transformation
        self.opt_state = None

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        params = tuple(self.param_groups[0]["params"])
        grads = tuple(torch.zeros_like(p) if p.grad is None else p.grad for p in params)
        if self.opt_state is None:
            self.opt_state = self.transformation.init(params)
        updates, self.opt_state = self.transformation.update(grads, self.opt_state, params=params, inplace=False)
        lr = self.param_groups[0]["lr"]
        for p, u in zip(params, updates):
            p.add_(u, alpha=lr)
        return loss


def masked_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` for ``x >= 0`` whose derivative at exactly 0 is 0 instead of inf.

    The inner ``where`` keeps the untaken branch finite (sqrt(1)), so no NaN reaches the
    backward pass; the outer ``where`` gives 0 there.
    """
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


class MaskedAdamState(NamedTuple):
    mu: tuple[torch.Tensor, ...]
    nu: tuple[torch.Tensor, ...]
    count: torch.Tensor  # int64 scalar: kept on the device so a step never syncs with the host


def scale_by_masked_adam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_convention: str = "torch"
) -> GradientTransformation:
    """Adam's rescaling with :func:`masked_sqrt`, in torchopt's ``(init, update)`` form."""

    def init_fn(params):
        zeros = tuple(torch.zeros_like(p) for p in params)
        count = torch.zeros((), dtype=torch.int64, device=params[0].device)
        return MaskedAdamState(mu=zeros, nu=tuple(torch.zeros_like(p) for p in params), count=count)

    def update_fn(updates, state, *, params=None, inplace=False):
        del params, inplace  # pure: never updates in place
        mu = tuple(b1 * m + (1 - b1) * g for m, g in zip(state.mu, updates))
        nu = tuple(b2 * v + (1 - b2) * g * g for v, g in zip(state.nu, updates))
        count = state.count + 1
        # Bias corrections in the parameters' dtype: float64 runs stay exact.
        step = count.to(mu[0].dtype)
        bc1, bc2 = 1 - b1**step, 1 - b2**step
        if eps_convention == "torch":
            out = tuple((m / bc1) / (masked_sqrt(v) / bc2.sqrt() + eps) for m, v in zip(mu, nu))
        else:
            scale = bc2.sqrt() / bc1
            out = tuple(scale * m / (masked_sqrt(v) + eps) for m, v in zip(mu, nu))
        return out, MaskedAdamState(mu=mu, nu=nu, count=count)

    return GradientTransformation(init_fn, update_fn)
