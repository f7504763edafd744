"""Implicit: the meta-gradient by the implicit function theorem (Lorraine, Vicol & Duvenaud,
"Optimizing Millions of Hyperparameters by Implicit Differentiation", AISTATS 2020; RCIG, Loo et
al., "Dataset Distillation with Convexified Implicit Gradients", ICML 2023, is the
dataset-distillation instance).

One outer step:

1. a network from a fresh init (``network_init = "per_step"``: ``step_seed(seed, t, NET_INIT)``,
   as the unrolled methods) or the run's one init (``"fixed"``), in train mode (batch norm: each
   batch's own statistics, as DM); its parameters are never trained in place;
2. the inner problem ``L_in(theta) = CE(f_theta(X), Y) + l2/2 ||theta||^2`` on the whole
   synthetic set, where theta is the network's last layer on the frozen features of the others
   (``inner_problem = "last_layer"``: convex, strongly convex for ``l2 > 0``; the network's
   ``embed`` features, its ``classifier``/``fc`` layer) or all of its parameters
   (``"network"``: non-convex); ``inner_steps`` (K) steps of the ``inner`` optimizer on it,
   full batch, from the network's init: ``theta_K ~ theta*``;
3. a real batch of ``real_batch`` training images (from ``step_seed(seed, t)``) and the outer
   loss, its cross entropy at ``theta_K``, with ``g = grad_theta L_out``;
4. the hypergradient ``-(d/dX grad_theta L_in)^T H^-1 g`` (``harness.engine.implicit``), with
   ``H`` the Hessian of ``L_in`` (its L2 term included) at ``theta_K``, ``H^-1 g`` by conjugate
   gradient or a Neumann series (``solver``, ``solver_iterations`` Hessian-vector products, the
   ``neumann_step``), and the mixed term by one more vector-Jacobian product, to the images and,
   with ``learn_labels``, to the soft labels;
5. the outer update of the unrolled methods, their chain of transforms
   (``harness.method.outer_update``): the images' hypergradient clipped to ``clip_factor`` x an
   EMA of its norms (``clip_ema = None``: no clipping), torch's Adam step on the images (and the
   labels at ``outer_lr / label_lr_scale``), labels kept >= 0.

All randomness of step t comes from ``step_seed(seed, t)`` and ``step_seed(seed, t, NET_INIT)``:
a run resumed from ``state_dict`` (images, labels, Adam, the clipping EMA) is bit-identical.

Defaults, and where they come from (``yolky/RCIG``: ``configs_final/depth_3.txt``,
``algorithms.py``; ``lorraine2/implicit-hyper-opt``: ``train_augment_net2.py``):

* ``inner_steps = 20`` (RCIG ``n_inner_steps``), inner optimizer Adam (RCIG's inner Adam; its lr
  is the house default 1e-3, which a suite's ``[method_defaults] inner`` replaces: RCIG tunes its
  lr before distilling, growing it until the inner loss stops decreasing monotonically, and keeps
  retuning it during the run; ddbench does not);
* ``solver_iterations = 20`` (RCIG ``n_hinv_steps``), ``solver = "cg"``;
  ``neumann_step = None`` means the inner lr (Lorraine's ``elementary_lr``);
* ``l2 = 5e-4`` (RCIG ``l2_rate``), on a mean cross entropy;
* ``real_batch = 1024`` (RCIG ``kernel.batch_size``), ``outer_lr = 3e-3`` (RCIG
  ``proto_learning_rate``), ``init = "real"`` (RCIG ``init_proto``), hard labels (Lorraine's
  distillation learns images only; RCIG learns labels: ``learn_labels = true``).

Deviations from RCIG, which this method is not a port of (RCIG's own parts are its
reparameterisation and convexification, candidates for a method of their own): RCIG linearises
the network around a pool of online-trained models and solves the last layer in closed form by
kernel ridge regression, with an MSE inner loss on centered one-hot labels, a temperature-scaled
cross entropy outer loss with a direct gradient term, the implicit gradient's norm clipped to the
direct one's, ``H^-1 g`` by 20 Adam steps on ``x^T H x / 2 - g^T x`` (not CG or Neumann), and
AdaBelief on the images; here the inner problem is plain (a random network's last layer, or the
whole network), the outer loss the house's (cross entropy of the trained inner network on a real
batch, no direct term: it does not read the synthetic set), and the outer optimizer the unrolled
methods' Adam with EMA clipping. No augmentation (RCIG: ``aug = null`` while distilling). With
``inner_problem = "network"`` the Hessian may be indefinite: CG then stops at the first direction
of non-positive curvature (metric ``negative_curvature``) and the Neumann series converges only
for ``neumann_step < 2 / lambda_max``; a non-finite hypergradient stops the run as diverged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from harness import ConfigError, DistilledSet, DistillTask, Method, Stream, register_method, step_seed
from harness.engine import (FunctionalModel, InnerOptimizerConfig, Params, inner_loss, make_inner_optimizer,
                            outer_loss_and_grad)
from harness.engine.implicit import ImplicitGradient, Minimized, implicit_gradient, minimize
from harness.method.outer_update import (Transform, adam, adam_state_from_torch, apply_updates, chain,
                                         clip_to_ema_norm, ema_state, keep_non_negative)
from harness.models import create_model, reinitialize
from harness.models.networks import embed


class ImplicitConfig(BaseModel):
    """The implicit method's settings; defaults from RCIG's ``depth_3`` config and Lorraine et al.'s code."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inner_problem: Literal["last_layer", "network"] = Field(
        "last_layer", description="last_layer: the last layer on frozen features (convex); network: every parameter")
    network_init: Literal["per_step", "fixed"] = Field(
        "per_step", description="per_step: a fresh init every outer step; fixed: one init for the run")
    inner: InnerOptimizerConfig = InnerOptimizerConfig(name="adam", lr=1e-3)
    inner_steps: int = Field(20, ge=0, description="K, inner steps towards the inner optimum (RCIG n_inner_steps)")
    l2: float = Field(5e-4, ge=0, description="the inner loss's L2 coefficient: l2/2 ||theta||^2 (RCIG l2_rate)")
    solver: Literal["cg", "neumann"] = "cg"
    solver_iterations: int = Field(20, ge=0, description="Hessian-vector products of the solve (RCIG n_hinv_steps)")
    neumann_step: float | None = Field(None, gt=0, description="Neumann series step; None = the inner lr (Lorraine)")
    solver_tol: float = Field(0.0, ge=0, description="cg: stop once ||r|| <= tol ||b|| (0: always all iterations)")
    real_batch: int = Field(1024, gt=0)
    outer_lr: float = Field(3e-3, gt=0)
    outer_betas: tuple[float, float] = (0.9, 0.999)
    outer_eps: float = 1e-8
    clip_ema: float | None = Field(0.9, ge=0, lt=1, description="EMA coefficient of the hypergradient norm; "
                                                                 "None = no clipping")
    clip_factor: float = Field(2.0, gt=0)
    learn_labels: bool = False
    label_lr_scale: float = Field(1.0, gt=0)
    init: Literal["gaussian", "real"] = "real"
    init_norm: float = Field(1.0, gt=0)  # gaussian init: every image scaled to this L2 norm

    @field_validator("inner")
    @classmethod
    def _no_weight_decay(cls, value: InnerOptimizerConfig) -> InnerOptimizerConfig:
        if value.weight_decay != 0:
            raise ValueError("weight_decay must be 0: the inner problem's L2 term is the method's l2 (it enters "
                             "the Hessian too)")
        return value

    @model_validator(mode="after")
    def _check(self) -> "ImplicitConfig":
        if self.solver == "cg" and self.solver_iterations < 1:
            raise ValueError("solver_iterations must be >= 1 for cg")
        if self.solver != "neumann" and self.neumann_step is not None:
            raise ValueError("neumann_step applies to solver = 'neumann' only")
        if self.solver != "cg" and self.solver_tol != 0:
            raise ValueError("solver_tol applies to solver = 'cg' only")
        return self

    @property
    def step(self) -> float:
        """The Neumann series step: ``neumann_step``, or the inner lr."""
        return self.inner.lr if self.neumann_step is None else self.neumann_step


def last_layer(net: nn.Module) -> nn.Linear:
    """The linear layer that reads ``embed(net, x)``: a ConvNet's ``classifier``, a ResNet's ``fc``."""
    for name in ("classifier", "fc"):
        layer = getattr(net, name, None)
        if isinstance(layer, nn.Linear):
            return layer
    raise TypeError(f"no last linear layer is known for a {type(net).__name__}")


def l2_term(params: Params, l2: float) -> torch.Tensor:
    return 0.5 * l2 * sum((p * p).sum() for p in params)


@dataclass
class InnerProblem:
    """One outer step's inner problem: theta's init, ``L_in(theta, images, labels)``, the same loss
    on constant data (what the K steps minimise), and the outer loss's model and real inputs."""

    init: Params
    objective: Callable[..., torch.Tensor]
    train_objective: Callable[[Params], torch.Tensor]
    outer_model: FunctionalModel
    real_inputs: torch.Tensor


@dataclass
class Hypergradient:
    """An outer step's hypergradient (nothing updated): to the images and (if learned) the labels."""

    images: torch.Tensor
    labels: torch.Tensor | None
    outer_loss: torch.Tensor
    outer_accuracy: torch.Tensor
    inner: Minimized
    implicit: ImplicitGradient


@register_method("implicit")
class Implicit(Method):
    """Implicit differentiation: K inner steps, then the IFT hypergradient by CG or a Neumann series."""

    Config = ImplicitConfig
    # Not an unrolled method: tests/test_methods.py's engine checks do not apply; tests/test_implicit.py
    # runs this config and checks the hypergradient against BPTT to convergence and a dense solve.
    tiny_config = {"inner_steps": 5, "solver_iterations": 3, "real_batch": 64}

    def check(self, task: DistillTask) -> None:
        network = create_model(task.model, task.image_shape, task.num_classes)  # a ValueError names the problem
        if self.config.inner_problem == "last_layer":
            try:
                last_layer(network)
                embed(network, torch.zeros(2, *task.image_shape))
            except TypeError as exc:
                raise ConfigError(f"inner_problem = 'last_layer' needs a network with an embedding and a last "
                                  f"linear layer: {exc}", field="model") from None
        if self.config.init == "real":
            task.check_real_per_class(task.ipc)

    def setup(self, task: DistillTask) -> None:
        self.check(task)
        self.task, cfg = task, self.config
        gen = torch.Generator().manual_seed(step_seed(task.seed, 0, Stream.SYN_INIT))
        labels = torch.arange(task.num_classes).repeat_interleave(task.ipc)
        images = task.initial_images(task.ipc, cfg.init, gen, norm=cfg.init_norm)  # "real": random_real's draw
        self.initial = images.detach().to("cpu", task.dtype, copy=True)
        self.images = images.detach().to(task.device, task.dtype, copy=True).requires_grad_()
        if cfg.learn_labels:  # soft labels, one-hot at first
            labels = nn.functional.one_hot(labels, task.num_classes).to(task.dtype)
        self.labels = labels.to(task.device).requires_grad_(cfg.learn_labels)
        self.outer_update = self._outer_chain()
        self.outer_state = self.outer_update.init(self.outer_params())
        self.optimizer = make_inner_optimizer(cfg.inner)
        self.network = task.new_model().train()
        self.network.requires_grad_(False)  # theta lives in tensors of its own; the module is never trained
        if cfg.network_init == "fixed":
            reinitialize(self.network, step_seed(task.seed, 0, Stream.NET_INIT))
        self.model = FunctionalModel(last_layer(self.network) if cfg.inner_problem == "last_layer" else self.network)

    # ------------------------------------------------------------------ one outer step

    def problem(self, step: int, real_x: torch.Tensor) -> InnerProblem:
        """Outer step ``step``'s inner problem (the network drawn for it, unless fixed)."""
        cfg, net, model = self.config, self.network, self.model
        if cfg.network_init == "per_step":
            reinitialize(net, step_seed(self.task.seed, step, Stream.NET_INIT))
        l2 = cfg.l2
        if cfg.inner_problem == "network":
            def objective(params, images, labels):
                return inner_loss(model(params, images), labels) + l2_term(params, l2)
            images, labels = self.images.detach(), self.labels.detach()
            return InnerProblem(model.parameters(), objective, lambda p: objective(p, images, labels), model, real_x)

        def head_objective(params, features, labels):
            return inner_loss(model(params, features), labels) + l2_term(params, l2)
        with torch.no_grad():
            features, real_features = embed(net, self.images.detach()), embed(net, real_x)
        labels = self.labels.detach()
        return InnerProblem(model.parameters(), lambda p, x, y: head_objective(p, embed(net, x), y),
                            lambda p: head_objective(p, features, labels), model, real_features)

    def hypergradient(self, step: int) -> Hypergradient:
        """Outer step ``step``'s hypergradient from the current synthetic set (nothing is updated)."""
        cfg, task = self.config, self.task
        gen = torch.Generator().manual_seed(step_seed(task.seed, step))
        real_x, real_y = self._real_batch(gen)
        problem = self.problem(step, real_x)
        inner = minimize(problem.train_objective, problem.init, self.optimizer, cfg.inner.lr, cfg.inner_steps)
        loss, acc, outer_grad = outer_loss_and_grad(problem.outer_model, inner.params, problem.real_inputs, real_y)
        result = implicit_gradient(problem.objective, inner.params, (self.images, self.labels), outer_grad,
                                   cfg.solver, cfg.solver_iterations, step=cfg.step, tol=cfg.solver_tol)
        return Hypergradient(result.data[0], result.data[1], loss, acc, inner, result)

    def step(self, step: int) -> dict[str, float]:
        hyper = self.hypergradient(step)
        grad_norm = self.apply(hyper)
        solve = hyper.implicit.solve
        return {"outer_loss": float(hyper.outer_loss), "outer_acc": float(hyper.outer_accuracy),
                "grad_norm": grad_norm, "inner_loss": hyper.implicit.inner_loss,
                "stationarity": hyper.implicit.stationarity, "solve_residual": solve.relative_residual,
                "solve_hvps": float(solve.hvps), "negative_curvature": float(solve.negative_curvature)}

    def _real_batch(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.task.data
        n = data.train_x.shape[0]
        idx = torch.randperm(n, generator=gen)[: min(self.config.real_batch, n)].to(data.train_x.device)
        return data.train_x[idx], data.train_y[idx]

    def outer_params(self) -> dict[str, torch.Tensor]:
        """The tensors the outer update changes, by name (images, and the labels when learned)."""
        return {"images": self.images, "labels": self.labels} if self.config.learn_labels else {"images": self.images}

    def _outer_chain(self) -> Transform:
        """The unrolled methods' chain (:class:`harness.method.UnrolledMethod`): the images'
        hypergradient clipped against the EMA of its norms (the current norm enters first),
        torch's Adam step, labels kept >= 0."""
        cfg = self.config
        stages = [] if cfg.clip_ema is None else [("clip", clip_to_ema_norm(cfg.clip_ema, cfg.clip_factor))]
        stages.append(("adam", adam({"images": cfg.outer_lr, "labels": cfg.outer_lr / cfg.label_lr_scale},
                                    cfg.outer_betas, cfg.outer_eps)))
        if cfg.learn_labels:
            stages.append(("labels", keep_non_negative("labels")))
        return chain(*stages)

    def apply(self, hyper: Hypergradient) -> float:
        """The outer update (the chain of transforms) from ``hyper``; returns the images' hypergradient norm."""
        grads = {"images": hyper.images}
        if self.config.learn_labels:
            grads["labels"] = hyper.labels
        params = self.outer_params()
        updates, self.outer_state = self.outer_update.update(grads, self.outer_state, params)
        apply_updates(params, updates)
        return float(hyper.images.norm())

    # ------------------------------------------------------------------ results and checkpoints

    def divergence(self, metrics: dict[str, float]) -> str | None:
        reason = super().divergence(metrics)
        if reason is None:
            for name, t in (("synthetic images", self.images), ("soft labels", self.labels)):
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    return f"non-finite {name}"
        return reason

    def distilled(self) -> DistilledSet:
        return DistilledSet(self.images.detach().cpu(), self.labels.detach().cpu(), self.task.num_classes,
                            self.task.ipc)

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (copies, on the CPU): the run goes on updating its own tensors in place."""
        state = {"images": self.images, "labels": self.labels, "outer_update": self.outer_state}
        return torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.detach().to("cpu", copy=True), state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.images.copy_(state["images"])
            self.labels.copy_(state["labels"])
        fresh = self.outer_update.init(self.outer_params())
        if "outer_update" in state:
            saved = state["outer_update"]
        else:  # a checkpoint written before the chain: torch.optim.Adam's state dict and the EMA
            saved = {**fresh, "adam": adam_state_from_torch(state["outer_opt"], list(self.outer_params()),
                                                            fresh["adam"])}
            if "clip" in fresh:
                saved["clip"] = ema_state(state["grad_norm_ema"])
        # Each saved tensor where (and as what) a fresh state keeps it: the structures must match.
        self.outer_state = torch.utils._pytree.tree_map(lambda new, kept: kept.to(new.device, new.dtype), fresh, saved)

    def summary(self) -> dict[str, Any]:
        """The inner problem's size (parameters, and features for the last layer) and how far the
        images moved from their init (relative L2 distance)."""
        moved = (self.images.detach().cpu() - self.initial).norm() / self.initial.norm()
        out = {"inner_problem": self.config.inner_problem,
               "inner_parameters": sum(p.numel() for p in self.model.module.parameters()),
               "image_change": float(moved)}
        if self.config.inner_problem == "last_layer":
            out["features"] = last_layer(self.network).in_features
        return out
