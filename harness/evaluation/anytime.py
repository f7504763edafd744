"""Accuracy at budget (a suite's ``[anytime]``): the synthetic set evaluated during its
distillation, every ``every_steps`` outer steps and/or ``every_minutes`` of distillation, and
once more at its end, under the (cheaper) protocol the table names. The curve (outer step,
distillation seconds, accuracy) goes into the record's ``anytime`` section; the evaluations'
own time is kept apart (``eval_seconds``) and never counted as distillation time, nor in its
peak memory (they run inside ``ctx.apart``).

An analysis like the others, the one that measures during the distillation
(:meth:`Analysis.during`); its running state (the points so far, when the next timed point is
due, the evaluations' seconds) is checkpointed with the cell, so a resumed run keeps its curve.
A protocol that scores several step budgets (``ratbptt``) also keeps each point's per-budget
accuracies (``budgets``): when the curve's protocol is the suite's ``[eval]`` one, the record's
test-selected maximum (``eval.test_selected``) is taken over those checkpoints too
(:meth:`Anytime.evaluations_during`), as the official RaT-BPTT code reports the best test
accuracy of its periodic evaluations.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field, model_validator

from harness.core.config import StrictModel
from harness.evaluation.analysis import Analysis, AnalysisContext, DistillContext, register_analysis
from harness.evaluation.protocols import AnyProtocol, ProtocolConfig, evaluate
from harness.evaluation.protocols.builtin import StandardConfig
from harness.models import ModelConfig


class AnytimeConfig(StrictModel):
    """Accuracy at budget (``[anytime]``): the synthetic set evaluated during distillation, every
    ``every_steps`` outer steps and/or ``every_minutes`` of distillation, with a (cheaper)
    protocol; the record keeps the curve (outer step, seconds, accuracy). Not in the run id: it
    does not change the distilled set, and its time is not counted as distillation time."""

    enabled: bool = False
    every_steps: int | None = Field(None, ge=1)
    every_minutes: float | None = Field(None, gt=0)
    protocol: AnyProtocol = StandardConfig(models=2, steps=300)

    @model_validator(mode="after")
    def _when(self):
        if self.enabled and self.every_steps is None and self.every_minutes is None:
            raise ValueError("every_steps or every_minutes must say when to evaluate")
        return self


@register_analysis("anytime")
class Anytime(Analysis):
    """Accuracy at budget: the set evaluated during its distillation (the budget view)."""

    Config = AnytimeConfig
    section = "anytime"

    def networks(self, cfg: AnytimeConfig, model: ModelConfig) -> list[tuple[str, ModelConfig]]:
        if cfg.enabled and cfg.protocol.model is not None:
            return [("anytime.protocol.model", cfg.protocol.model)]
        return []

    def protocols(self, cfg: AnytimeConfig) -> list[tuple[str, ProtocolConfig]]:
        return [("anytime.protocol", cfg.protocol)] if cfg.enabled else []

    def during(self, cfg: AnytimeConfig, state: dict[str, Any], ctx: DistillContext) -> dict[str, Any] | None:
        """A point when one is due (every ``every_steps`` steps, ``every_minutes`` of distillation,
        at the end), evaluated with the same networks' seeds at every point: comparable points."""
        if not cfg.enabled:
            return None
        points = state.get("points", [])
        next_s = state.get("next_s", cfg.every_minutes * 60 if cfg.every_minutes else None)
        if points and points[-1]["step"] == ctx.step:  # the end of a run whose last step had its point
            return None
        by_steps = cfg.every_steps is not None and ctx.step % cfg.every_steps == 0
        by_time = next_s is not None and ctx.elapsed >= next_s
        if not (ctx.final or by_steps or by_time):
            return None
        task = ctx.task
        with ctx.apart(f"anytime evaluation at step {ctx.step}"):
            t0 = time.perf_counter()
            result = evaluate(ctx.method.distilled(), task.data, cfg.protocol, task.model, seed=task.seed,
                              device=task.device, dtype=task.dtype)
            seconds = time.perf_counter() - t0
        point = {"step": ctx.step, "seconds": ctx.elapsed, "accuracy_mean": result.accuracy_mean,
                 "accuracy_std": result.accuracy_std, "accuracy_per_model": result.accuracy_per_model}
        if "budgets" in result.details:
            point["budgets"] = result.details["budgets"]
        while next_s is not None and next_s <= ctx.elapsed:
            next_s += cfg.every_minutes * 60
        return {"points": [*points, point], "next_s": next_s,
                "eval_seconds": state.get("eval_seconds", 0.0) + seconds}

    def evaluations_during(self, cfg: AnytimeConfig, state: dict[str, Any], protocol: ProtocolConfig,
                           ) -> list[tuple[int, list[dict[str, Any]]]]:
        """The curve's points with budgets, when it was measured under ``protocol`` itself."""
        if not cfg.enabled or cfg.protocol != protocol:
            return []
        return [(p["step"], p["budgets"]) for p in state.get("points", []) if p.get("budgets")]

    def run(self, cfg: AnytimeConfig, ctx: AnalysisContext) -> dict[str, Any] | None:
        """The record's ``anytime`` section (None, no section, when the suite does not enable it)."""
        if not cfg.enabled:
            return None
        return {"config": cfg.model_dump(mode="json", exclude={"protocol"}),
                "protocol": cfg.protocol.model_dump(mode="json"), "curve": ctx.during.get("points", []),
                "eval_seconds": ctx.during.get("eval_seconds", 0.0)}
