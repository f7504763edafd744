"""BPTT: differentiate through every one of the N inner steps."""

from pydantic import model_validator

from harness import UnrollConfig, UnrolledMethod, check_window, register_method


class BPTTConfig(UnrollConfig):
    unroll: int = 60  # N; memory grows with N (the RaT-BPTT window length, for a like-for-like cost)

    @model_validator(mode="after")
    def _check(self) -> "BPTTConfig":
        check_window(self.unroll, self.unroll, "unroll", "unroll")
        return self


@register_method("bptt")
class BPTT(UnrolledMethod):
    """Backpropagation through all N inner steps."""

    Config = BPTTConfig
    tiny_config = {"unroll": 5}

    def plan(self, step, gen):
        return self.config.unroll, self.config.unroll
