"""DD-Ranking's scores: the formulas against hand-computed values, and the analysis on a run."""

from __future__ import annotations

import math

import pytest

from conftest import tiny_suite
from harness.evaluation.scores import ars, lrs, normalized
from harness.report import iter_records


def test_the_normalisation_maps_minus_one_to_one_onto_zero_to_one():
    assert normalized(-1.0) == pytest.approx(0.0) and normalized(1.0) == pytest.approx(1.0)
    assert normalized(0.0) == pytest.approx((1 - math.exp(-1)) / (math.e - math.exp(-1)))  # 0.2689...
    assert normalized(0.0) == pytest.approx(0.268941, abs=1e-6)


def test_lrs_and_ars_by_hand():
    # DD-Ranking's leaderboard row for DSA (CIFAR-10): HLR 35.14, IOR 19.62 points, as fractions.
    hlr, ior = 0.3514, 0.1962
    a = 0.5 * 0.1962 - 0.5 * 0.3514  # -0.0776
    want = (math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1))
    assert lrs(hlr, ior) == pytest.approx(want) and lrs(hlr, ior) == pytest.approx(0.237174, abs=1e-6)
    assert lrs(0.0, 1.0, weight=1.0) == pytest.approx(1.0) and lrs(1.0, 0.0, weight=0.0) == pytest.approx(0.0)
    # ARS: the improvements over random with and without augmentation, weighted equally.
    assert ars(0.10, 0.30) == pytest.approx(normalized(0.20))
    assert ars(0.10, 0.30, weight=1.0) == pytest.approx(normalized(0.10))


def test_scores_in_a_run_follow_from_their_accuracies(write_suite, cli, tmp_path):
    suite = tiny_suite(methods={"random_real": {}, "tbptt": {"unroll": 3, "window": 2, "learn_labels": True}},
                       ddranking={"full_data_epochs": 2})
    code, _, err = cli("run", write_suite(suite), "--out", tmp_path / "out", "-q")
    assert code == 0, err
    records = {r.method: r for _, r in iter_records(tmp_path / "out")}
    for method, r in records.items():
        s = r.scores
        acc = s.accuracies
        assert acc["distilled"] == r.eval.accuracy_mean and s.protocol == "standard"
        assert s.hlr == pytest.approx(acc["full_data"] - acc["distilled_hard_labels"])
        assert s.ior == pytest.approx(acc["distilled"] - acc["random"])
        assert s.lrs == pytest.approx(lrs(s.hlr, s.ior)) and 0 <= s.lrs <= 1
        assert s.ars == pytest.approx(ars(s.ior, acc["distilled_no_aug"] - acc["random_no_aug"]))
    assert records["random_real"].scores.ior == 0.0  # the random subset is random_real's own draw
    # The full-data accuracy is computed once and cached: both records read the same file.
    assert records["random_real"].scores.full_data_cache == records["tbptt"].scores.full_data_cache
    assert records["random_real"].scores.accuracies["full_data"] == records["tbptt"].scores.accuracies["full_data"]
    code, table, _ = cli("table", tmp_path / "out", "--view", "scores")
    assert code == 0 and "LRS" in table and "tbptt" in table
