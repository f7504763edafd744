"""Evaluation: the protocol that trains fresh networks on a distilled set and tests them
(:mod:`.protocol`), and the analyses that add record sections (:mod:`.analysis`, with the
built-in :mod:`.hardness` and :mod:`.subsets`).

May import: :mod:`harness.core`, :mod:`harness.data`, :mod:`harness.models`,
:mod:`harness.engine`, :mod:`harness.method`. Nothing above it; never :mod:`harness.report`'s
views (analyses fill record sections, views read them).
"""

from harness.evaluation.analysis import ANALYSES, Analysis, AnalysisContext, register_analysis
from harness.evaluation.protocol import EvalProtocol, EvalResult, evaluate, test_correct, train_on

__all__ = ["ANALYSES", "Analysis", "AnalysisContext", "register_analysis", "EvalProtocol", "EvalResult",
           "evaluate", "test_correct", "train_on"]
