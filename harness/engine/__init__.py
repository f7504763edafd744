"""The unroll engine: exact meta-gradients through N steps of inner training.

Owns the network-as-a-function (:mod:`.functional`), the mini-batch schedules
(:mod:`.schedule`), the inner optimizers in their functional and training forms
(:mod:`.optim`), the engine's settings (:mod:`.config`), one inner step and the unroll's step
functions (:mod:`.steps`, their carry in :mod:`.carry`), the unroll itself in full and recompute
mode (:mod:`.unroll`), the outer objective (:mod:`.outer`), K batched trajectories
(:mod:`.trajectories`), CUDA-graph replay of its steps (:mod:`.cudagraphs`), low-rank curvature
(:mod:`.lowrank`) and the memory meters (:mod:`.memory`, :mod:`.tensor_memory`).

May import: :mod:`harness.core`, :mod:`harness.models` (augmentation). Nothing above it.
"""

from harness.engine.config import EngineConfig
from harness.engine.functional import FunctionalModel, Params, global_norm, inner_loss
from harness.engine.optim import (OPTIMIZERS, AdamConfig, InnerOptimizer, InnerOptimizerConfig, SGDConfig,
                                  make_inner_optimizer, make_torch_optimizer)
from harness.engine.schedule import InnerSchedule, class_balanced_schedule
from harness.engine.outer import OuterObjective, OuterValue, RealBatchLoss, accuracy, outer_loss_and_grad
from harness.engine.steps import Curvature, UnrollSteps, inner_step
from harness.engine.trajectories import Trajectories, stack_schedules
from harness.engine.unroll import MetaGradient, Synthetic, UnrollOptions, meta_gradient, plain_trajectory

__all__ = [
    "EngineConfig", "FunctionalModel", "Params", "global_norm", "inner_loss",
    "OPTIMIZERS", "AdamConfig", "InnerOptimizer", "InnerOptimizerConfig", "SGDConfig", "make_inner_optimizer",
    "make_torch_optimizer", "InnerSchedule", "class_balanced_schedule",
    "OuterObjective", "OuterValue", "RealBatchLoss", "accuracy", "outer_loss_and_grad",
    "Curvature", "UnrollSteps", "inner_step", "MetaGradient", "Synthetic", "UnrollOptions", "meta_gradient",
    "plain_trajectory", "Trajectories", "stack_schedules",
]
