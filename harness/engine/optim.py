"""Inner optimizers: one registered entry per optimizer, in both of its forms.

* :meth:`InnerOptimizer.transformation` is the functional form the unroll differentiates
  through: a torchopt gradient transformation, a pair of pure functions
  ``init(params) -> state`` and ``update(grads, state, params=...) -> (updates, state)``, built
  at learning rate 1 (the engine applies ``params + lr * updates`` itself, so that the inner lr
  can be a tensor with a meta-gradient).
* :meth:`InnerOptimizer.trainer` is the stateful ``torch.optim`` form that plain training
  (evaluation, the analyses' networks) uses. Both are built from the same validated config;
  an option that ``torch.optim`` cannot express (Adam's ``eps_root``, the ``higher`` eps
  convention) is honoured by running the functional form itself (:class:`TransformOptimizer`),
  never silently dropped.

The configs are a union discriminated on ``name``: each optimizer has its own config class
(:class:`SGDConfig`, :class:`AdamConfig`: its options only), and :class:`InnerOptimizerConfig`,
the type a config field declares, builds the one ``name`` names; an option of another optimizer
is one error naming the field.

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

from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torchopt
from pydantic import BaseModel, ConfigDict, SerializationInfo, field_validator, model_serializer, model_validator
from torchopt.base import GradientTransformation

from harness.core.config import NestedConfigError
from harness.core.errors import ConfigError
from harness.core.registry import Registry

# The fields of the one flat config of ddbench before the union, at their defaults: the configs of
# the optimizers registered then (sgd, adam) still dump them (the dump is hashed into run ids),
# and so accept them back at exactly these values.
FLAT_DEFAULTS: dict[str, Any] = {"momentum": 0.9, "nesterov": False, "betas": (0.9, 0.999), "eps": 1e-8,
                                 "sqrt": "masked", "eps_root": 0.0, "eps_convention": "torch"}


def _refuse(field: str, message: str) -> NestedConfigError:
    """A config error naming ``field`` of the optimizer's table (the caller's field path goes before it)."""
    return NestedConfigError(ConfigError(message, field=field))


class InnerOptimizerConfig(BaseModel):
    """The optimizer that trains a network on the synthetic set (and in evaluation).

    A union discriminated on ``name``: each registered optimizer has its own config class
    (:class:`SGDConfig`, :class:`AdamConfig`) holding only the options it reads, so an option of
    another optimizer cannot be written (one error naming the field). This base class is the
    type a config field declares: validating it from a table, or calling
    ``InnerOptimizerConfig(name="sgd", ...)``, gives the named optimizer's config.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, polymorphic_serialization=True)
    dumps_flat: ClassVar[bool] = False  # dump :data:`FLAT_DEFAULTS` too (the optimizers of the flat config)

    name: str = "adam"  # a registered inner optimizer: sgd, adam
    lr: float = 1e-3
    weight_decay: float = 0.0

    def __new__(cls, *args: Any, **data: Any):
        if cls is InnerOptimizerConfig:  # the base names no optimizer: build the one ``name`` names
            return InnerOptimizerConfig.model_validate(data)
        return super().__new__(cls)

    @model_validator(mode="wrap")
    @classmethod
    def _dispatch(cls, data: Any, handler):
        if not isinstance(data, dict):
            return handler(data)
        data = dict(data)
        target = cls
        if cls is InnerOptimizerConfig:
            name = data.setdefault("name", "adam")
            if name not in OPTIMIZERS:
                raise _refuse("name", f"unknown inner optimizer {name!r} (registered: {', '.join(OPTIMIZERS.names())})")
            target = OPTIMIZERS.get(name).Config
        for key in [k for k in data if k not in target.model_fields]:
            value = data[key]
            if target.dumps_flat and key in FLAT_DEFAULTS and _same(value, FLAT_DEFAULTS[key]):
                del data[key]  # a flat dump read back
            elif key in FLAT_DEFAULTS or any(key in c.Config.model_fields for _, c in OPTIMIZERS.items()):
                reads = ", ".join(k for k in target.model_fields if k != "name")
                name = data.get("name", target.model_fields["name"].default)
                raise _refuse(key, f"{key} does not apply to the {name} optimizer (it reads: {reads})")
        return handler(data) if target is cls else target.model_validate(data)

    @model_serializer(mode="wrap")
    def _dump(self, handler, info: SerializationInfo):
        data = handler(self)
        if self.dumps_flat and isinstance(data, dict):
            for key, value in FLAT_DEFAULTS.items():
                data.setdefault(key, list(value) if info.mode_is_json() and isinstance(value, tuple) else value)
        return data

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, lr: float) -> float:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        return lr

    @field_validator("weight_decay")
    @classmethod
    def _non_negative_decay(cls, weight_decay: float) -> float:
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        return weight_decay


def _same(value: Any, default: Any) -> bool:
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple)) and tuple(value) == default
    return type(value) is type(default) and value == default


class SGDConfig(InnerOptimizerConfig):
    """SGD with (Nesterov) momentum and L2 weight decay, dampening 0."""

    dumps_flat: ClassVar[bool] = True
    name: Literal["sgd"] = "sgd"
    momentum: float = 0.9
    nesterov: bool = False

    @field_validator("momentum")
    @classmethod
    def _momentum_in_range(cls, momentum: float) -> float:
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        return momentum

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "SGDConfig":
        if self.nesterov and self.momentum == 0:
            raise _refuse("nesterov", "nesterov needs momentum > 0")
        return self


class AdamConfig(InnerOptimizerConfig):
    """Adam with L2 weight decay; the square root masked at zero or shifted by eps_root."""

    dumps_flat: ClassVar[bool] = True
    name: Literal["adam"] = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    sqrt: Literal["masked", "eps_root"] = "masked"
    eps_root: float = 0.0  # with sqrt="eps_root"
    eps_convention: Literal["torch", "higher"] = "torch"

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        return betas

    @field_validator("eps")
    @classmethod
    def _non_negative_eps(cls, eps: float) -> float:
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        return eps

    @model_validator(mode="after")
    def _eps_root_with_its_sqrt(self) -> "AdamConfig":
        if self.sqrt == "eps_root":
            if not self.eps_root > 0:
                raise _refuse("eps_root", "sqrt='eps_root' needs eps_root > 0 (eps_root = 0 gives NaN meta-gradients)")
            if self.eps_convention != "torch":
                raise _refuse("eps_convention", "sqrt='eps_root' uses torchopt.adam, whose eps_convention is 'torch'")
        elif self.eps_root != 0:
            raise _refuse("eps_root", "eps_root applies to sqrt = 'eps_root' only")
        return self


def _check_optimizer(name: str, cls: type) -> None:
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, InnerOptimizerConfig)
            and config.model_fields["name"].default == name):
        raise TypeError(f"inner optimizer {name!r}: {getattr(cls, '__name__', cls)}.Config must be an "
                        f"InnerOptimizerConfig subclass whose name is Literal[{name!r}] = {name!r}")


OPTIMIZERS: Registry[type["InnerOptimizer"]] = Registry("inner optimizer", group="ddbench.optimizers",
                                                        builtins="harness.engine.optim", check=_check_optimizer)


class InnerOptimizer:
    """A registered inner optimizer: its config (an :class:`InnerOptimizerConfig` subclass naming it,
    with the options it reads), its functional form and its training form."""

    Config: ClassVar[type[InnerOptimizerConfig]]

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

    Config = SGDConfig

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

    Config = AdamConfig

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
