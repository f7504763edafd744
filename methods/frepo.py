"""FRePo, neural feature regression with pooling (Zhou, Nezhadarya, Ba, "Dataset Distillation using
Neural Feature Regression", NeurIPS 2022).

Only the last layer of a network is trained to convergence on the synthetic set, in closed form:
on the features f of the network's penultimate layer, that is kernel ridge regression with the
linear kernel ``K = f f^T``, and the outer loss is its prediction of a real batch. The
meta-gradient goes through the solve (``harness.engine.krr``, Cholesky, autograd) and the
feature extractor; nothing is unrolled. The feature extractors come from a pool of networks
trained online on the synthetic set. One outer step is one iteration of the official loop
(``proto_train_and_evaluate`` in ``lib/datadistillation/frepo.py`` of yongchao97/FRePo, commit
9b98c65, run by ``script/distill.py``):

1. a pool member is drawn uniformly; a real batch of ``real_batch_size`` images, their targets the
   centered one-hot vectors ``e_y - 1/C``; its features under the member, without a graph;
2. ``loss = 0.5 * mean_i ||K_ts (K_ss + lambda I)^-1 Y_s - Y_t||^2 + margin(Y_s)``: the features of
   the synthetic images (and their horizontal flips, ``flip``) under the member in eval mode
   (batch norm on its running statistics), ``lambda = reg * trace(K_ss) / n`` (``nfr``), and
   ``margin = mean_s -min(top1(y_s) - top2(y_s), 1/C)`` on the learned labels (``lb_margin_th``);
3. one step of LAMB (optax's: Adam moments, then the update scaled per tensor by
   ``||param|| / ||update||``) on the images and, with ``learn_label``, on the labels, at a cosine
   lr from ``optimizer.lr`` down to ``final_lr_fraction`` of it over the run;
4. the drawn member: if it has had more than ``max_online_updates`` updates it is reset (a new
   init, a new Adam, its count at 0); otherwise one Adam step (``online_lr``) of the MSE loss on
   the updated synthetic set (``online_batch`` images drawn when the set is larger) with the
   learned labels as targets, batch norm in train mode. The test is theirs (``nn_step >
   max_online_updates``), so a member gets ``max_online_updates + 1`` updates between resets. The
   pool starts with member i's count at ``i * (max_online_updates // pool_size)`` (fresh inits:
   only the resets are staggered).

Labels: the learned targets start at ``(e_y - 1/C) / sqrt(C / 10)`` (``init_proto(scale_y=True)``).
Defaults are ``script/distill.py``'s and the README's commands (``--arch=conv --width=128 --depth=3
--normalization=batch --learn_label=True --max_online_updates=100 --num_nn_state=10``): kernel
LAMB at 3e-4 with a real batch of 1024 (``config.kernel``), online Adam at 3e-4
(``config.online``), reg 1e-6. Their 500000 steps are the suite's ``budget.outer_steps``; with no
step count (a minutes budget) the lr stays at ``optimizer.lr``. Outer step t draws the member,
the real batch and the online sample from ``step_seed(seed, t)`` and a reset's init from
``step_seed(seed, t, NET_INIT)``; the pool (parameters, batch-norm buffers, Adam states, counts) is
in the checkpoint, so a resumed run is bit-identical.

Fields are named apart from the unrolled methods' ``[method_defaults]`` (``real_batch``,
``outer_lr``, ``learn_labels``, ``init``), which mean other things there (see ``methods/dm.py``):
hence ``weight_init`` for the networks' initializer.

Deviations from the official code:

* **Network**: the suite's ``[model]`` with its norm replaced by ``norm`` (batch norm, as the
  README's commands; None keeps the suite's), batch norm's running statistics with FRePo's
  ``momentum=0.1`` in flax's convention, which is ``bn_momentum = 0.9`` in torch's, and flax's
  default init (truncated LeCun normal weights, zero biases; ``weight_init = "torch"`` for PyTorch's).
  Their ``Conv`` doubles the width at every block (128, 256, 512), puts the norm *before* the
  convolution of blocks 2.. (none in block 1), and pads a 1-channel input by 3 at any size;
  ddbench's ConvNet keeps the width, runs conv-norm-ReLU-pool in every block, and pads by 3 only
  28x28 inputs. Torch's running variance is the unbiased batch variance (flax: biased).
  ResNet-18 (``[model] name``) is torchvision's; ``norm`` applies to the ConvNet only.
* **Randomness**: seeded streams instead of ``jax.random`` keys and the unseeded
  ``np.random.randint`` that picks the member; the member of step t is drawn at step t (theirs at
  the end of step t - 1: the same distribution). The real batch is drawn afresh at every step
  (theirs: consecutive batches of a shuffled, repeated ``tf.data`` stream). The initial pool's
  inits come from the run's initialisation stream (``SYN_INIT``); the initial images are
  ``random_real``'s draw (theirs: the first IPC images of each class after a shuffle).
* **flip** (None) maps the official script's rule onto ddbench's dataset names: off for 1-channel sets (MNIST,
  FashionMNIST, digits), on for CIFAR-100 and Tiny-ImageNet at IPC 1 only, off for ImageNet,
  on otherwise (CIFAR-10 and the rest).
* **Evaluation** is the suite's protocol, which trains with cross-entropy: the distilled set's
  labels are its hard classes, and the learned regression targets travel in its
  ``meta["regression_targets"]``. FRePo evaluates with the MSE loss on those targets, a network
  without normalization, Adam 3e-4 in batches of up to 500 for 1000-5000 steps, and
  augmentation (``proto_eval``): not a ddbench protocol yet.
* The KRR solve runs in the task's dtype. A non-finite kernel gives a non-finite loss (the run
  is recorded as diverged); a finite kernel that is not positive definite in that precision (a
  float32 Cholesky of an ill-conditioned kernel) raises, where JAX's solve would return NaNs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from harness import ConfigError, DistilledSet, DistillTask, Method, Stream, register_method, step_seed
from harness.engine.krr import half_squared_error, krr_predictions
from harness.models import ModelConfig, create_model, reinitialize
from harness.models.networks import embed


class OuterOptimizerConfig(BaseModel):
    """The synthetic set's optimizer: FRePo's ``config.kernel`` (LAMB 3e-4, cosine decay to 10%)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["lamb", "adam"] = "lamb"  # optax.lamb / optax.adam, as create_proto_state
    lr: float = Field(3e-4, gt=0)
    schedule: Literal["cosine", "constant"] = "cosine"  # optax.cosine_decay_schedule over the run's steps
    final_lr_fraction: float = Field(0.1, ge=0, le=1)  # its alpha
    b1: float = Field(0.9, ge=0, lt=1)
    b2: float = Field(0.999, ge=0, lt=1)
    eps: float | None = Field(None, gt=0, description="None: optax's default, 1e-6 for lamb, 1e-8 for adam")


class FRePoConfig(BaseModel):
    """FRePo's settings; defaults from the official ``script/distill.py`` and README commands."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pool_size: int = Field(10, ge=1)  # --num_nn_state
    max_online_updates: int = Field(100, ge=0)  # --max_online_updates: a member is reset after more
    online_lr: float = Field(3e-4, gt=0)  # config.online.learning_rate (Adam)
    online_batch: int = Field(1000, ge=1)  # config.kernel.eval_batch_size: images per online update
    real_batch_size: int = Field(1024, ge=1)  # config.kernel.batch_size
    reg: float = Field(1e-6, ge=0)  # nfr's reg: lambda = reg * trace(K) / n
    learn_label: bool = True  # --learn_label
    scale_labels: bool = True  # init_proto(scale_y=True): the targets divided by sqrt(C / 10)
    flip: bool | None = None  # use_flip; None: the official script's rule by dataset and IPC
    norm: Literal["batchnorm", "instancenorm", "none"] | None = "batchnorm"  # --normalization=batch
    bn_momentum: float = Field(0.9, gt=0, le=1)  # torch's convention; flax's momentum=0.1
    weight_init: Literal["lecun_normal", "torch"] = "lecun_normal"  # flax's default init, or PyTorch's
    optimizer: OuterOptimizerConfig = OuterOptimizerConfig()


# ----------------------------------------------------------------------------- the loss


def label_margin_loss(labels: torch.Tensor) -> torch.Tensor:
    """FRePo's ``lb_margin_th``: ``mean_s -min(top1 - top2, 1/C)`` over the label rows, which keeps
    every learned label's margin at least 1/C."""
    top = labels.topk(2, dim=-1).values
    return -torch.clamp(top[:, 0] - top[:, 1], max=1.0 / labels.shape[-1]).mean()


def frepo_loss(features, images: torch.Tensor, labels: torch.Tensor, real_features: torch.Tensor,
               real_targets: torch.Tensor, reg: float, flip: bool) -> dict[str, torch.Tensor]:
    """The outer loss of one step (``proto_train_step``'s ``loss_fn``): the KRR prediction of the
    real targets from the synthetic set on ``features(images)`` [n, d], plus the label margin
    term. Returns ``loss``, ``kernel_loss``, ``label_loss``, ``predictions`` and ``ridge``."""
    label_loss = label_margin_loss(labels)
    if flip:
        images, labels = torch.cat([images, images.flip(-1)]), torch.cat([labels, labels])
    predictions, ridge = krr_predictions(real_features, features(images), labels, reg)
    kernel_loss = half_squared_error(predictions, real_targets)
    return {"loss": kernel_loss + label_loss, "kernel_loss": kernel_loss, "label_loss": label_loss,
            "predictions": predictions, "ridge": ridge}


def centered_one_hot(classes: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``e_y - 1/C``: FRePo's regression targets (``1 - 1/C`` on, ``-1/C`` off)."""
    return nn.functional.one_hot(classes, num_classes).to(dtype) - 1.0 / num_classes


# ----------------------------------------------------------------------------- the outer optimizer


def lamb_direction(grad: torch.Tensor, param: torch.Tensor, moments: tuple[torch.Tensor, torch.Tensor], count: int,
                   cfg: OuterOptimizerConfig) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``(direction, moments)`` of optax's lamb (or adam) at update ``count`` (1-based): the
    bias-corrected Adam direction, scaled for lamb by ``||param|| / ||direction||`` (1 where
    either is 0). The parameter moves by ``-lr * direction``."""
    eps = cfg.eps if cfg.eps is not None else (1e-6 if cfg.name == "lamb" else 1e-8)
    mu = cfg.b1 * moments[0] + (1 - cfg.b1) * grad
    nu = cfg.b2 * moments[1] + (1 - cfg.b2) * grad * grad
    direction = (mu / (1 - cfg.b1 ** count)) / ((nu / (1 - cfg.b2 ** count)).sqrt() + eps)
    if cfg.name == "lamb":
        p_norm, d_norm = param.norm(), direction.norm()
        trust = torch.where((p_norm == 0) | (d_norm == 0), torch.ones_like(p_norm), p_norm / d_norm)
        direction = direction * trust
    return direction, (mu, nu)


def cosine_lr(cfg: OuterOptimizerConfig, step: int, total: int) -> float:
    """``optax.cosine_decay_schedule(lr, total, alpha)`` at ``step``; constant without a step count."""
    if cfg.schedule == "constant" or total <= 0:
        return cfg.lr
    cosine = 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    return cfg.lr * ((1 - cfg.final_lr_fraction) * cosine + cfg.final_lr_fraction)


# ----------------------------------------------------------------------------- the pool


@dataclass
class Member:
    """One network of the pool, its online Adam and how many online updates it has had."""

    net: nn.Module
    optimizer: torch.optim.Optimizer | None
    updates: int


def lecun_normal_init(net: nn.Module, seed: int) -> nn.Module:
    """flax's default init: conv and linear weights from a normal truncated at 2 std with variance
    1 / fan_in (``variance_scaling(1, "fan_in", "truncated_normal")``), zero biases; norms at
    weight 1, bias 0, fresh running statistics. Drawn on the CPU from ``seed``, so every device
    gets the same numbers."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                std = math.sqrt(1.0 / m.weight[0].numel()) / 0.87962566103423978  # the truncation's correction
                w = torch.empty(m.weight.shape, dtype=torch.float64)
                nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std, generator=gen)
                m.weight.copy_(w)
                if m.bias is not None:
                    m.bias.zero_()
            elif m is not net and hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return net


def official_flip(dataset: str, channels: int, ipc: int) -> bool:
    """``script/distill.py``'s ``use_flip``: off for MNIST/FashionMNIST (here: any 1-channel set),
    CIFAR-100 and Tiny-ImageNet at IPC 1 only, off for ImageNet, on for everything else."""
    if channels == 1:
        return False
    if dataset in ("cifar100", "tinyimagenet"):
        return ipc == 1
    return not dataset.startswith("imagenet")


# ----------------------------------------------------------------------------- the method


@register_method("frepo")
class FRePo(Method):
    """FRePo (Zhou et al., NeurIPS 2022): KRR on features of an online model pool, gradient through the solve."""

    Config = FRePoConfig
    # Not an unrolled method: tests/test_frepo.py runs this config (gradient, pool, resume).
    tiny_config = {"pool_size": 2, "max_online_updates": 2, "real_batch_size": 64}

    def pool_model(self, task: DistillTask) -> ModelConfig:
        """The pool's network: the suite's, with ``norm`` for a ConvNet."""
        if self.config.norm is None or task.model.name != "convnet":
            return task.model
        return task.model.model_copy(update={"norm": self.config.norm})

    def check(self, task: DistillTask) -> None:
        network = create_model(self.pool_model(task), task.image_shape, task.num_classes)  # a ValueError names it
        try:
            embed(network.eval(), torch.zeros(2, *task.image_shape))
        except TypeError as exc:
            raise ConfigError(f"frepo needs a network with penultimate features: {exc}", field="model") from None
        task.check_real_per_class(task.ipc)

    def setup(self, task: DistillTask) -> None:
        self.check(task)
        self.task, cfg = task, self.config
        gen = torch.Generator().manual_seed(step_seed(task.seed, 0, Stream.SYN_INIT))
        images, classes = task.real_per_class(task.ipc, gen)  # random_real's draw for the seed
        labels = centered_one_hot(classes.cpu(), task.num_classes, task.dtype)
        if cfg.scale_labels:
            labels = labels / math.sqrt(task.num_classes / 10)
        self.initial = (images.detach().to("cpu", task.dtype, copy=True), labels.clone())
        self.images = images.detach().to(task.device, task.dtype, copy=True).requires_grad_()
        self.labels = labels.to(task.device).requires_grad_(cfg.learn_label)
        self.classes = classes.cpu()
        zeros = lambda t: (torch.zeros_like(t), torch.zeros_like(t))  # noqa: E731
        self.moments = {"images": zeros(self.images), "labels": zeros(self.labels)}
        self.outer_updates = 0
        self.flip = official_flip(task.data.name, task.image_shape[0], task.ipc) if cfg.flip is None else cfg.flip
        self.model_cfg = self.pool_model(task)
        stagger = cfg.max_online_updates // cfg.pool_size
        self.pool = [self._member(step_seed(task.seed, i, Stream.POOL_INIT), i * stagger)
                     for i in range(cfg.pool_size)]
        self.resets = self.online_updates = 0
        self.last = {"ridge": float("nan"), "lr": cosine_lr(cfg.optimizer, 0, task.outer_steps)}

    def _member(self, seed: int, updates: int) -> Member:
        task = self.task
        net = create_model(self.model_cfg, task.image_shape, task.num_classes).to(task.device, task.dtype)
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = self.config.bn_momentum
        member = Member(net, None, updates)  # its Adam comes with its init
        self._reset(member, seed, updates)
        return member

    def _reset(self, member: Member, seed: int, updates: int = 0) -> None:
        """A new init drawn from ``seed``, a new Adam, the count at ``updates``."""
        if self.config.weight_init == "lecun_normal":
            lecun_normal_init(member.net, seed)
        else:
            reinitialize(member.net, seed)
        member.optimizer = torch.optim.Adam(member.net.parameters(), lr=self.config.online_lr)
        member.updates = updates

    # ------------------------------------------------------------------ one outer step

    def meta_gradient(self, step: int) -> dict[str, Any]:
        """Outer step ``step``'s draws and loss, and its gradient with respect to the images and
        labels (``None`` for labels that are not learned); nothing is updated."""
        cfg, task = self.config, self.task
        gen = torch.Generator().manual_seed(step_seed(task.seed, step))
        index = int(torch.randint(len(self.pool), (1,), generator=gen))
        net = self.pool[index].net.eval()
        data = task.data
        rows = torch.randperm(data.train_x.shape[0], generator=gen)[: cfg.real_batch_size].to(data.train_x.device)
        with torch.no_grad():
            real_features = embed(net, data.train_x[rows])
        real_targets = centered_one_hot(data.train_y[rows], task.num_classes, task.dtype)
        out = frepo_loss(lambda x: embed(net, x), self.images, self.labels, real_features, real_targets, cfg.reg,
                         self.flip)
        wrt = [self.images, self.labels] if cfg.learn_label else [self.images]
        grads = torch.autograd.grad(out["loss"], wrt)
        accuracy = (out["predictions"].argmax(-1) == data.train_y[rows]).to(task.dtype).mean()
        return {**{k: v.detach() for k, v in out.items()}, "accuracy": accuracy, "index": index, "gen": gen,
                "grad_images": grads[0], "grad_labels": grads[1] if cfg.learn_label else None}

    def step(self, step: int) -> dict[str, float]:
        result = self.meta_gradient(step)
        lr = cosine_lr(self.config.optimizer, step, self.task.outer_steps)
        self._outer_update(result, lr)
        reset = self._online_update(self.pool[result["index"]], step, result["gen"])
        self.last = {"ridge": float(result["ridge"]), "lr": lr}
        label_norm = 0.0 if result["grad_labels"] is None else float(result["grad_labels"].norm())
        return {"outer_loss": float(result["loss"]), "kernel_loss": float(result["kernel_loss"]),
                "label_loss": float(result["label_loss"]), "outer_acc": float(result["accuracy"]),
                "grad_norm": float(result["grad_images"].norm()), "label_grad_norm": label_norm, "lr": lr,
                "ridge": float(result["ridge"]), "member": float(result["index"]), "reset": float(reset)}

    def _outer_update(self, result: dict[str, Any], lr: float) -> None:
        """One LAMB (or Adam) update of the images and, if learned, the labels."""
        self.outer_updates += 1
        pairs = [("images", self.images, result["grad_images"])]
        if self.config.learn_label:
            pairs.append(("labels", self.labels, result["grad_labels"]))
        with torch.no_grad():
            for name, param, grad in pairs:
                direction, self.moments[name] = lamb_direction(grad, param, self.moments[name], self.outer_updates,
                                                               self.config.optimizer)
                param.sub_(lr * direction)

    def _online_update(self, member: Member, step: int, gen: torch.Generator) -> bool:
        """Reset ``member`` if it has had more than ``max_online_updates`` updates (True), else one
        Adam step of the MSE loss on the current synthetic set, batch norm in train mode."""
        cfg = self.config
        if member.updates > cfg.max_online_updates:
            self._reset(member, step_seed(self.task.seed, step, Stream.NET_INIT))
            self.resets += 1
            return True
        images, labels = self.images.detach(), self.labels.detach()
        if images.shape[0] >= cfg.online_batch:  # get_sample_proto: all of them when fewer
            rows = torch.randperm(images.shape[0], generator=gen)[: cfg.online_batch].to(images.device)
            images, labels = images[rows], labels[rows]
        member.net.train()
        loss = half_squared_error(member.net(images), labels)
        member.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        member.optimizer.step()
        member.updates += 1
        self.online_updates += 1
        return False

    # ------------------------------------------------------------------ results and checkpoints

    def divergence(self, metrics: dict[str, float]) -> str | None:
        reason = super().divergence(metrics)
        for name, t in (("synthetic images", self.images), ("learned labels", self.labels)):
            if reason is None and not bool(torch.isfinite(t).all()):
                reason = f"non-finite {name}"
        return reason

    def distilled(self) -> DistilledSet:
        """The images with their hard classes (the suite's protocol trains with cross-entropy); the
        learned regression targets in ``meta["regression_targets"]``."""
        return DistilledSet(self.images.detach().cpu(), self.classes.clone(), self.task.num_classes, self.task.ipc,
                            meta={"regression_targets": self.labels.detach().cpu().clone()})

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (copies, on the CPU): the set, LAMB's moments and count, and every pool
        member's parameters, buffers, Adam state and update count."""
        state = {"images": self.images, "labels": self.labels, "moments": self.moments,
                 "outer_updates": self.outer_updates, "resets": self.resets, "online_updates": self.online_updates,
                 "last": dict(self.last),
                 "pool": [{"net": m.net.state_dict(), "optimizer": m.optimizer.state_dict(), "updates": m.updates}
                          for m in self.pool]}
        return torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.detach().to("cpu", copy=True), state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.task.device
        with torch.no_grad():
            self.images.copy_(state["images"])
            self.labels.copy_(state["labels"])
        self.moments = {k: tuple(t.to(device) for t in v) for k, v in state["moments"].items()}
        self.outer_updates, self.resets = state["outer_updates"], state["resets"]
        self.online_updates, self.last = state["online_updates"], dict(state["last"])
        for member, saved in zip(self.pool, state["pool"], strict=True):
            member.net.load_state_dict(saved["net"])
            member.optimizer = torch.optim.Adam(member.net.parameters(), lr=self.config.online_lr)
            member.optimizer.load_state_dict(saved["optimizer"])
            member.updates = saved["updates"]

    def summary(self) -> dict[str, Any]:
        """The pool (size, reset rule, resets and online updates so far), the support set's size
        (doubled by flips), the last step's ridge lambda and lr, and how far the images and the
        labels moved from their init (relative L2 distances)."""
        images0, labels0 = self.initial
        moved = lambda now, start: float((now.detach().cpu() - start).norm() / start.norm())  # noqa: E731
        return {"pool_size": self.config.pool_size, "max_online_updates": self.config.max_online_updates,
                "resets": self.resets, "online_updates": self.online_updates,
                "support_size": self.images.shape[0] * (2 if self.flip else 1), "flip": self.flip,
                "pool_network": self.model_cfg.model_dump(mode="json"), "final_ridge": self.last["ridge"],
                "final_lr": self.last["lr"], "image_change": moved(self.images, images0),
                "label_change": moved(self.labels, labels0)}
