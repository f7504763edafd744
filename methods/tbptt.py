"""TBPTT: run a fixed N inner steps, differentiate only the last M."""

from pydantic import model_validator

from harness import UnrollConfig, UnrolledMethod, check_window, register_method


class TBPTTConfig(UnrollConfig):
    unroll: int = 200  # N
    window: int = 60  # M

    @model_validator(mode="after")
    def _check(self) -> "TBPTTConfig":
        check_window(self.window, self.unroll)
        return self


@register_method("tbptt")
class TBPTT(UnrolledMethod):
    """Truncated BPTT: fixed N, backprop through the last M steps."""

    Config = TBPTTConfig

    def plan(self, step, gen):
        return self.config.unroll, self.config.window
