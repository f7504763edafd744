"""What a method is: the :class:`Method` base with its :class:`DistillTask` and
:class:`DistilledSet` (:mod:`.base`), the method registry (:mod:`.registry`), and the outer loop
shared by every method that differentiates through unrolled inner training
(:mod:`.unrolled`: fresh network, schedule, real batch, engine, and the outer update as a chain
of transforms, :mod:`.outer_update`: clipping, outer Adam, a wrapper's row scale, label clamp).

May import: :mod:`harness.core`, :mod:`harness.data`, :mod:`harness.models`,
:mod:`harness.engine`. Nothing above it.
"""

from harness.method.base import DistilledSet, DistillTask, Method, real_per_class
from harness.method.registry import (METHODS, create_method, list_methods, method_class, register_method,
                                     validate_method_config)
from harness.method.unrolled import ParameterizationConfig, UnrollConfig, UnrolledMethod, check_window, uniform_unroll

__all__ = ["DistilledSet", "DistillTask", "Method", "real_per_class", "METHODS", "create_method", "list_methods",
           "method_class", "register_method", "validate_method_config", "ParameterizationConfig",
           "UnrollConfig", "UnrolledMethod", "check_window", "uniform_unroll"]
