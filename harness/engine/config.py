"""The engine's settings in a suite (a method's ``engine`` table): how the meta-gradient is computed."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator


class EngineConfig(BaseModel):
    """How the meta-gradient is computed: exact in every setting (see ``harness.engine``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["full", "recompute"] = Field(
        "full", description="full: one graph through the window (memory grows with M); "
                            "recompute: one step's graph at a time (memory flat in M)")
    real_chunk: int | None = Field(None, description="outer loss on the real batch in chunks of this size")
    cuda_graphs: bool = Field(True, description="recompute mode on CUDA: replay the steps as captured CUDA graphs")
    tf32: bool = Field(False, description="CUDA: TF32 matmuls/convolutions (faster, ~1e-3 relative error)")
    channels_last: bool = Field(False, description="feed the network channels-last batches (same numbers)")
    offload_snapshots: bool = Field(True, description="recompute mode on CUDA: keep the window's (params, state) "
                                                      "snapshots in pinned host memory, so device memory is flat in M")
    trajectories: int = Field(1, description="K inner trajectories per outer step (own init, schedule, N and M), "
                                             "run as one batched network; the outer step uses their mean "
                                             "meta-gradient. 1 = one trajectory, as every paper does")

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # A field added after records were written is left out at the default that reproduces
        # them, so the run ids (hashes of the dumped config) of earlier records stay valid.
        data = handler(self)
        if isinstance(data, dict) and data.get("trajectories") == 1:
            del data["trajectories"]
        return data

    @model_validator(mode="after")
    def _check(self) -> "EngineConfig":
        if self.real_chunk is not None and self.real_chunk <= 0:
            raise ValueError(f"real_chunk must be > 0, got {self.real_chunk}")
        if self.trajectories < 1:
            raise ValueError(f"trajectories must be >= 1, got {self.trajectories}")
        return self
