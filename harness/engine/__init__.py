"""The unroll engine: exact meta-gradients through N steps of inner training.

Owns the network-as-a-function (:mod:`.functional`), the mini-batch schedules
(:mod:`.schedule`), the inner optimizers in their functional and training forms
(:mod:`.optim`), the unroll itself in full and recompute mode (:mod:`.unroll`, its carry in
:mod:`.carry`, the outer loss in :mod:`.outer`, K batched trajectories in :mod:`.trajectories`), CUDA-graph
replay of its steps (:mod:`.cudagraphs`), low-rank curvature (:mod:`.lowrank`) and the
memory meters (:mod:`.memory`, :mod:`.tensor_memory`).

May import: :mod:`harness.core`, :mod:`harness.models` (augmentation). Nothing above it.
"""

from harness.engine.functional import FunctionalModel, Params, global_norm, inner_loss
from harness.engine.optim import (OPTIMIZERS, InnerOptimizer, InnerOptimizerConfig, make_inner_optimizer,
                                  make_torch_optimizer)
from harness.engine.schedule import InnerSchedule, class_balanced_schedule
from harness.engine.outer import accuracy, outer_loss_and_grad
from harness.engine.trajectories import Trajectories, stack_schedules
from harness.engine.unroll import (Curvature, MetaGradient, UnrollSteps, inner_step, meta_gradient, plain_trajectory,
                                   trajectory_grad_norms)

__all__ = [
    "FunctionalModel", "Params", "global_norm", "inner_loss",
    "OPTIMIZERS", "InnerOptimizer", "InnerOptimizerConfig", "make_inner_optimizer", "make_torch_optimizer",
    "InnerSchedule", "class_balanced_schedule",
    "Curvature", "MetaGradient", "UnrollSteps", "accuracy", "inner_step", "meta_gradient", "outer_loss_and_grad",
    "plain_trajectory", "trajectory_grad_norms", "Trajectories", "stack_schedules",
]
