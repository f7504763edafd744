"""Analyses: extra measurements of every distilled set, each adding a section to the run record.

An analysis is declared in one place, its class::

    @register_analysis("hardness")          # also the name of its suite table, [hardness]
    class Hardness(Analysis):
        Config = HardnessConfig             # the suite table's schema (and its defaults)
        section = "hardness"                # the record field it fills
        def networks(self, cfg, model): ... # networks to build before the first cell runs
        def run(self, cfg, ctx): ...        # the section, as JSON-able data

The suite loader validates ``[NAME]`` with ``Config``, the runner checks ``networks`` before
any cell writes a file and calls ``run`` after each evaluation. Analyses never import the
table views, and the views read only the record sections (``harness.report``). Built-ins:
``hardness``, ``subsets`` and ``ddranking`` (:mod:`.scores`), found as every registry finds its
built-ins (:mod:`harness.core.registry`); another package adds one through the
``ddbench.analyses`` entry-point group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from pydantic import BaseModel

from harness.core.registry import Registry, first_doc_line
from harness.data import DatasetSplits
from harness.evaluation.protocols import EvalResult, ProtocolConfig
from harness.method import DistilledSet
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


class Analysis:
    """A registered analysis (see the module docstring)."""

    name: ClassVar[str]  # set by @register_analysis: the suite table's name
    Config: ClassVar[type[BaseModel]]
    section: ClassVar[str]  # the record field its result goes to

    def networks(self, cfg: Any, model: ModelConfig) -> list[tuple[str, ModelConfig]]:
        """``(suite field, network)`` pairs this config will build, checked before the first cell."""
        del cfg, model
        return []

    def run(self, cfg: Any, ctx: AnalysisContext) -> dict[str, Any]:
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
