"""Analyses: extra measurements of every distilled set, each adding a section to the run record.

An analysis is declared in one place, its class::

    @register_analysis("hardness")          # also the name of its suite table, [hardness]
    class Hardness(Analysis):
        Config = HardnessConfig             # the suite table's schema (and its defaults)
        section = "hardness"                # the record field it fills
        def networks(self, cfg, model): ... # networks to build before the first cell runs
        def protocols(self, cfg): ...       # optional: protocols besides [eval], checked up front too
        def during(self, cfg, state, ctx): ...  # optional: a measurement during the distillation
        def run(self, cfg, ctx): ...        # the section, as JSON-able data (None: no section)

The suite loader validates ``[NAME]`` with ``Config``, the runner checks ``networks`` before
any cell writes a file, calls ``during`` after every outer step of a distillation (its running
state checkpointed with the cell) and ``run`` after each evaluation. The runner knows no
analysis by name. Analyses never import the table views, and the views read only the record
sections (``harness.report``). Built-ins: ``anytime`` (:mod:`.anytime`, accuracy at budget: the
one that measures during the distillation), ``hardness``, ``subsets`` and ``ddranking``
(:mod:`.scores`), found as every registry finds its built-ins (:mod:`harness.core.registry`);
another package adds one through the ``ddbench.analyses`` entry-point group.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from pydantic import BaseModel

from harness.core.registry import Registry, first_doc_line
from harness.data import DatasetSplits
from harness.evaluation.protocols import EvalResult, ProtocolConfig
from harness.method import DistilledSet, DistillTask, Method
from harness.models import ModelConfig


@dataclass
class AnalysisContext:
    """What an analysis may look at: one cell's data, distilled set and evaluation."""

    data: DatasetSplits
    distilled: DistilledSet
    eval_result: EvalResult
    protocol: ProtocolConfig  # the cell's evaluation protocol
    model: ModelConfig  # the network the set was distilled with
    seed: int
    device: torch.device
    dtype: torch.dtype
    progress: bool = False
    # report(what, done, total): a long part of an analysis (a full-data network's epochs) shown
    # as the cell's phase with its own ETA; None where nobody watches.
    report: Callable[[str, int, int], None] | None = None
    # This analysis' running state from its `during` hook ({} when it measured nothing).
    during: dict[str, Any] = field(default_factory=dict)


def _apart(what: str) -> AbstractContextManager[None]:
    del what
    return nullcontext()


@dataclass
class DistillContext:
    """What an analysis may look at during a distillation (:meth:`Analysis.during`)."""

    task: DistillTask  # the cell's data (on its device, in its dtype), network and seed
    method: Method  # the method distilling: ``method.distilled()`` is the set so far
    step: int  # outer steps done
    elapsed: float  # seconds of distillation so far (the analyses' own time never counted)
    final: bool = False  # the distillation has ended: the last call, after its last step
    # apart(what): the block is a measurement apart from the distillation: shown as the cell's
    # phase (``what``), its memory left out of the distillation's peak.
    apart: Callable[[str], AbstractContextManager[None]] = _apart


class Analysis:
    """A registered analysis (see the module docstring)."""

    name: ClassVar[str]  # set by @register_analysis: the suite table's name
    Config: ClassVar[type[BaseModel]]
    section: ClassVar[str]  # the record field its result goes to

    def networks(self, cfg: Any, model: ModelConfig) -> list[tuple[str, ModelConfig]]:
        """``(suite field, network)`` pairs this config will build, checked before the first cell."""
        del cfg, model
        return []

    def protocols(self, cfg: Any) -> list[tuple[str, Any]]:
        """``(suite field, protocol config)`` pairs this config evaluates with besides ``[eval]``,
        checked before the first cell (a learned lr the protocol cannot use is refused there)."""
        del cfg
        return []

    def during(self, cfg: Any, state: dict[str, Any], ctx: DistillContext) -> dict[str, Any] | None:
        """Called after every completed outer step of a distillation and once more at its end
        (``ctx.final``): the new running state when it measured something, else None (nothing
        measured by default). A measurement runs inside ``ctx.apart``. The state is plain data
        (numbers, strings, lists, dicts), a new object each time (never ``state`` changed in
        place): the cell checkpoints it, a resumed cell hands it back, and :meth:`run` finds it
        as ``ctx.during``."""
        del cfg, state, ctx
        return None

    def evaluations_during(self, cfg: Any, state: dict[str, Any], protocol: ProtocolConfig,
                           ) -> list[tuple[int, list[dict[str, Any]]]]:
        """``(outer step, budgets)`` of each evaluation :meth:`during` made under ``protocol``
        (a protocol with budgets), for the record's test-selected maximum over checkpoints
        (``eval.test_selected``); none by default."""
        del cfg, state, protocol
        return []

    def run(self, cfg: Any, ctx: AnalysisContext) -> dict[str, Any] | None:
        raise NotImplementedError

    @classmethod
    def description(cls) -> str:
        return first_doc_line(cls)


def _check_analysis(name: str, cls: type) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Analysis)):
        raise TypeError(f"analysis {name!r}: register an Analysis subclass, got {cls!r}")
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, BaseModel)) or not getattr(cls, "section", None):
        raise TypeError(f"analysis {name!r}: {cls.__name__} needs a pydantic Config and a record section name")


# The built-ins are the analyses among this package's modules (hardness, subsets, scores): the
# registry imports every module of harness/evaluation, so a new analysis is one new file there.
ANALYSES: Registry[type[Analysis]] = Registry("analysis", group="ddbench.analyses", builtins="harness.evaluation",
                                              check=_check_analysis)


def register_analysis(name: str):
    """Class decorator: register an :class:`Analysis` subclass under ``name``."""
    return ANALYSES.class_decorator(name)
