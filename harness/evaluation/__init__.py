"""Evaluation: the protocols that train fresh networks on a distilled set and test them
(:mod:`.protocols`: standard, ratbptt, dsa), and the analyses that add record sections
(:mod:`.analysis`, with the built-in :mod:`.anytime` (accuracy at budget, measured during the
distillation through :class:`DistillContext`), :mod:`.hardness`, :mod:`.subsets` and
:mod:`.scores` (DD-Ranking)).

May import: :mod:`harness.core`, :mod:`harness.data`, :mod:`harness.models`,
:mod:`harness.engine`, :mod:`harness.method`, :mod:`harness.train` (networks trained on the real
data: the full-data model, the teacher). Nothing above it; never :mod:`harness.report`'s
views (analyses fill record sections, views read them).
"""

from harness.evaluation.analysis import ANALYSES, Analysis, AnalysisContext, DistillContext, register_analysis
from harness.evaluation.protocols import (PROTOCOLS, AnyProtocol, EvalResult, Protocol, ProtocolConfig, evaluate,
                                          protocol_config, register_protocol, test_correct)

from harness.evaluation.protocols.builtin import DSAProtocolConfig, RatBPTTProtocolConfig, StandardConfig  # noqa: E402

EvalProtocol = StandardConfig  # ddbench 0.1's one protocol, now named "standard"

__all__ = ["ANALYSES", "Analysis", "AnalysisContext", "DistillContext", "register_analysis", "PROTOCOLS", "AnyProtocol", "EvalResult",
           "EvalProtocol", "Protocol", "ProtocolConfig", "evaluate", "protocol_config", "register_protocol",
           "test_correct", "StandardConfig", "RatBPTTProtocolConfig", "DSAProtocolConfig"]
