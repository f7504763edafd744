"""Accuracy at budget: the synthetic set evaluated during its distillation (a suite's
``[anytime]``), every ``every_steps`` outer steps and/or ``every_minutes`` of distillation, and
once more at its end, under the (cheaper) protocol the suite names. The curve (outer step,
distillation seconds, accuracy) goes into the record; the evaluations' own time is kept apart
(``eval_seconds``) and never counted as distillation time, nor in its peak memory.

A protocol that scores several step budgets (``ratbptt``) also keeps each point's per-budget
accuracies (``budgets``): when the curve's protocol is the suite's ``[eval]`` one, the record's
test-selected maximum (:func:`best_on_test_over_checkpoints`) is taken over those checkpoints
too, as the official RaT-BPTT code reports the best test accuracy of its periodic evaluations."""

from __future__ import annotations

from typing import Any

from harness.evaluation import EvalResult, ProtocolConfig, evaluate
from harness.evaluation.protocols import best_on_test
from harness.run.recording import json_safe


class AnytimeCurve:
    def __init__(self, cfg, points: list[dict] | None = None, next_s: float | None = None,
                 eval_seconds: float = 0.0):
        self.cfg = cfg if cfg is not None and cfg.enabled else None
        self.points = list(points or [])
        self.next_s = next_s if next_s is not None else (
            self.cfg.every_minutes * 60 if self.cfg is not None and self.cfg.every_minutes else None)
        self.eval_seconds = eval_seconds

    def due(self, steps_done: int, elapsed: float) -> bool:
        if self.cfg is None:
            return False
        by_steps = self.cfg.every_steps is not None and steps_done % self.cfg.every_steps == 0
        by_time = self.next_s is not None and elapsed >= self.next_s
        return by_steps or by_time

    def measure(self, method, data, cell, steps_done: int, elapsed: float, device, dtype) -> None:
        """Evaluate the current set (the same networks' seeds at every point: comparable points)."""
        import time

        if self.points and self.points[-1]["step"] == steps_done:
            return
        t0 = time.perf_counter()
        result = evaluate(method.distilled(), data, self.cfg.protocol, cell.model, seed=cell.seed, device=device,
                          dtype=dtype)
        self.eval_seconds += time.perf_counter() - t0
        point = {"step": steps_done, "seconds": elapsed, "accuracy_mean": result.accuracy_mean,
                 "accuracy_std": result.accuracy_std, "accuracy_per_model": result.accuracy_per_model}
        if "budgets" in result.details:
            point["budgets"] = result.details["budgets"]
        self.points.append(json_safe(point))
        if self.next_s is not None:
            while self.next_s <= elapsed:
                self.next_s += self.cfg.every_minutes * 60

    def state(self) -> dict[str, Any]:
        return {"points": [dict(p) for p in self.points], "next_s": self.next_s, "eval_seconds": self.eval_seconds}

    def section(self) -> dict[str, Any] | None:
        if self.cfg is None:
            return None
        return {"config": self.cfg.model_dump(mode="json", exclude={"protocol"}),
                "protocol": self.cfg.protocol.model_dump(mode="json"), "curve": self.points,
                "eval_seconds": self.eval_seconds}


def best_on_test_over_checkpoints(result: EvalResult, protocol: ProtocolConfig, outer_step: int,
                                  curve: AnytimeCurve) -> dict[str, Any] | None:
    """The record's ``eval.test_selected``: the best budget on the test set of the final
    evaluation (``result``, at ``outer_step``) and, when ``curve`` was measured under the same
    ``protocol``, of each of its checkpoints (the earlier one on a tie). "as published:
    test-selected upper bound"; None for a protocol without budgets."""
    if result.test_selected is None:
        return None
    checkpoints = []
    if curve.cfg is not None and curve.cfg.protocol == protocol:
        # The curve's last point is the final evaluation itself (the same networks): not counted twice.
        checkpoints = [(p["step"], p["budgets"]) for p in curve.points
                       if p.get("budgets") and p["step"] < outer_step]
    return json_safe(best_on_test([*checkpoints, (outer_step, result.details["budgets"])]))
