"""RaT-BPTT (Feng, Vedantam, Kempe, ICLR 2024): random truncation of the unroll.

At every outer step the number of inner steps N is drawn uniformly from [min_unroll, T] and
the last M are differentiated, so the window lands anywhere along a T-step trajectory.
Everything else (outer Adam, clipping at 2x an EMA of the meta-gradient norm, unit-norm
Gaussian init) is the shared outer loop of ``harness.method.unrolled``. Defaults: CIFAR-10 IPC 10
of the official code (T = 200, M = 60, inner and outer Adam at 1e-3, real batch 5000).
"""

from pydantic import model_validator

from harness import UnrollConfig, UnrolledMethod, check_window, register_method, uniform_unroll


class RaTBPTTConfig(UnrollConfig):
    unroll: int = 200  # T, the longest unroll
    window: int = 60  # M
    min_unroll: int | None = None  # the shortest unroll; None = M (the official minwindow = 0)

    @model_validator(mode="after")
    def _check(self) -> "RaTBPTTConfig":
        check_window(self.window, self.unroll)
        if self.min_unroll is not None:
            check_window(self.window, self.min_unroll, "window", "min_unroll")
            check_window(self.min_unroll, self.unroll, "min_unroll", "unroll")
        return self


@register_method("rat_bptt")
class RaTBPTT(UnrolledMethod):
    """Random truncated BPTT: N ~ U[M, T] per outer step, backprop through the last M."""

    Config = RaTBPTTConfig

    def plan(self, step, gen):
        cfg = self.config
        return uniform_unroll(cfg.min_unroll or cfg.window, cfg.unroll, gen), cfg.window
