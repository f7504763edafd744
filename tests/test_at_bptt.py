"""AT-BPTT: samplers, stages, adaptive window, low-rank Hessian, and reduction to RaT-BPTT."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data import DataConfig, load_dataset
from harness.engine import (FunctionalModel, RealBatchLoss, Synthetic, UnrollOptions, class_balanced_schedule,
                            meta_gradient)
from harness.engine.lowrank import randomized_eigh
from harness.method import DistillTask
from harness.models import ConvNet, ModelConfig
from harness.engine.optim import InnerOptimizerConfig, make_inner_optimizer
from harness.method.registry import create_method
from harness.engine.lowrank import LowRankCurvature
from methods.at_bptt import (EARLY, LATE, MIDDLE, ATBPTTConfig, adaptive_window, position_probs, start_distribution,
                             window_eta)


def LowRankHessian(cfg: ATBPTTConfig, seed: int) -> LowRankCurvature:
    """The curvature callback AT-BPTT builds from its config (``ATBPTT.setup``)."""
    return LowRankCurvature(rank=cfg.hessian_rank, oversample=cfg.hessian_oversample,
                            power_iters=cfg.hessian_power_iters, refresh=cfg.hessian_refresh,
                            drift=cfg.hessian_drift, scope=cfg.hessian_scope, seed=seed)

norms_strategy = st.lists(st.floats(0, 50, allow_nan=False), min_size=2, max_size=60).map(
    lambda xs: torch.tensor(xs, dtype=torch.float64))


# ----------------------------------------------------------------------------- samplers


def public_window(norms: list[float], s: int, W: int, d: int, T: int) -> int:
    """The public code's early-stage window for the drawn position s, transcribed from
    ``framework/distill_higher.py`` (``window_start_size``, stage 1)."""
    gradient_change = [abs(norms[i] - norms[i - 1]) for i in range(1, len(norms))]
    gradient_change.insert(0, 0)
    sorted_gradient_change = sorted(gradient_change)
    window_index = sorted_gradient_change.index(gradient_change[s])
    return int(W - d + 2 * d * (window_index / T))


@settings(max_examples=50, deadline=None)
@given(norms=norms_strategy, stage=st.sampled_from([EARLY, MIDDLE, LATE]), tau=st.floats(0.05, 20),
       scale=st.sampled_from(["raw", "mean"]), late=st.sampled_from(["mirrored", "inverse"]))
def test_position_probabilities_are_a_distribution_over_the_trajectory(norms, stage, tau, scale, late):
    p = position_probs(norms, stage, tau, scale=scale, late=late, late_window=1)
    assert p.shape == norms.shape
    assert (p >= 0).all() and math.isclose(float(p.sum()), 1.0, rel_tol=1e-9)
    hi, lo = int(norms.argmax()), int(norms.argmin())
    if stage == EARLY:
        assert p[hi] >= p[lo]  # larger gradient norm, likelier start
    elif stage == LATE and late == "inverse":
        assert p[hi] <= p[lo]
    elif stage == LATE:  # the window (of 1 step) ends s steps before T: start T - 1 - s
        T = len(norms)
        assert p[T - 1 - hi] >= p[T - 1 - lo]
    else:
        assert torch.allclose(p, torch.full_like(p, 1 / len(p)))


@settings(max_examples=50, deadline=None)
@given(norms=norms_strategy, window=st.integers(2, 60), delta_frac=st.floats(0, 0.99))
def test_early_window_is_the_public_codes_rank_window(norms, window, delta_frac):
    """W*(t) for the rank eta equals the public code's int(W - d + 2 d index / T), ties included."""
    T, delta = len(norms), int(delta_frac * window)
    ours = [adaptive_window(float(e), window, delta, 10**6) for e in window_eta(norms, "rank")]
    assert ours == [public_window(norms.tolist(), s, window, delta, T) for s in range(T)]
    assert all(window - delta <= w <= window + delta for w in ours)


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.floats(0.01, 5), min_size=20, max_size=200, unique=True), window=st.integers(4, 60),
       delta_frac=st.floats(0.1, 0.99))
def test_rank_window_averages_near_w(steps, window, delta_frac):
    """Over the positions (distinct changes), the rank window's mean is W - d/T less a rounding
    of under one step: the issue's 'early-stage mean near W'."""
    T, delta = len(steps), max(1, int(delta_frac * window))
    norms = torch.tensor([10.0] + steps, dtype=torch.float64).cumsum(0)[:T]  # changes: distinct, nonzero
    windows = [adaptive_window(float(e), window, delta, 10**6) for e in window_eta(norms, "rank")]
    mean = sum(windows) / T
    assert window - delta / T - 1 < mean <= window - delta / T


@settings(max_examples=50, deadline=None)
@given(norms=norms_strategy, kind=st.sampled_from(["softmax", "rank"]), tau=st.floats(0.05, 20),
       window=st.integers(2, 60), delta_frac=st.floats(0, 0.99), unroll_extra=st.integers(0, 200))
def test_adaptive_window_stays_inside_its_bounds(norms, kind, tau, window, delta_frac, unroll_extra):
    delta = int(delta_frac * window)
    unroll = window + unroll_extra
    eta = window_eta(norms, kind, tau)
    assert ((eta >= 0) & (eta <= 1)).all()
    for e in eta.tolist():
        w = adaptive_window(e, window, delta, unroll)
        assert max(1, window - delta) <= w <= min(unroll, window + delta)


@settings(max_examples=60, deadline=None)
@given(norms=norms_strategy, stage=st.sampled_from([EARLY, MIDDLE, LATE]), tau=st.floats(0.1, 1e6),  # no underflow
       window=st.integers(1, 30), delta_frac=st.floats(0, 0.99), adaptive=st.booleans(),
       kind=st.sampled_from(["softmax", "rank"]), late=st.sampled_from(["mirrored", "inverse"]),
       scale=st.sampled_from(["raw", "mean"]))
def test_every_stage_draws_over_exactly_the_starts_whose_window_fits(norms, stage, tau, window, delta_frac, adaptive,
                                                                    kind, late, scale):
    unroll = len(norms)
    window = min(window, unroll)
    delta = min(int(delta_frac * window), window - 1, unroll - window)
    cfg = ATBPTTConfig(unroll=unroll, window=window, window_delta=delta, tau=tau, adaptive_window=adaptive,
                       window_eta=kind, late_start=late, start_norms=scale)
    probs, windows = start_distribution(norms, stage, cfg)
    assert probs.shape == windows.shape == (unroll,)
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-9)
    fits = torch.arange(unroll) + windows <= unroll
    assert torch.equal(probs > 0, fits)  # support: exactly the starts whose own window fits
    assert fits[0]  # never empty
    if stage != EARLY or not adaptive:  # one window for all: the support is the interval [0, T - W]
        own = window if not adaptive else window + delta if stage == MIDDLE else window - delta
        assert set(windows.tolist()) == {own}
        assert torch.equal(fits.nonzero().flatten(), torch.arange(unroll - own + 1))
    if stage == MIDDLE:
        assert torch.allclose(probs[fits], torch.full_like(probs[fits], 1 / int(fits.sum())))


@settings(max_examples=40, deadline=None)
@given(norms=norms_strategy, tau=st.floats(0.05, 20), window=st.integers(2, 20), delta_frac=st.floats(0, 0.99))
def test_early_and_late_draws_are_the_public_codes_where_the_window_fits(norms, tau, window, delta_frac):
    """Early: P(t) ~ softmax(||g||)_t with the public window W*(t); late: the window of W - d ends
    s steps before T with P(s) ~ softmax(||g||)_s. Both renormalised over the starts that fit."""
    T = len(norms)
    window = min(window, T)
    delta = min(int(delta_frac * window), window - 1, T - window)
    cfg = ATBPTTConfig(unroll=T, window=window, window_delta=delta, tau=tau)
    def renormalised(keep):  # softmax(||g|| / tau) restricted to ``keep`` (in log space: no underflow)
        return torch.softmax(norms[keep] / tau, dim=0)

    probs, windows = start_distribution(norms, EARLY, cfg)
    assert windows.tolist() == [min(public_window(norms.tolist(), t, window, delta, T), T) for t in range(T)]
    fits = torch.arange(T) + windows <= T
    assert torch.allclose(probs[fits], renormalised(fits), atol=1e-12)
    probs, windows = start_distribution(norms, LATE, cfg)
    late = window - delta
    assert set(windows.tolist()) == {late}
    s = torch.arange(T - late + 1)  # positions whose window [T - s - late, T - s) starts at >= 0
    assert torch.allclose(probs[T - late - s], renormalised(s), atol=1e-12)
    assert float(probs[T - late + 1:].sum()) == 0


@settings(max_examples=40, deadline=None)
@given(norms=norms_strategy, stage=st.sampled_from([EARLY, LATE]), tau=st.floats(0.05, 20),
       scale=st.floats(1e-3, 1e3), late=st.sampled_from(["mirrored", "inverse"]))
def test_the_temperature_acts_on_norms_relative_to_their_mean_when_asked(norms, stage, tau, scale, late):
    """start_norms = "mean": multiplying every gradient norm by a constant changes nothing."""
    kw = dict(scale="mean", late=late, late_window=1)
    assert torch.allclose(position_probs(norms * scale, stage, tau, **kw), position_probs(norms, stage, tau, **kw),
                          atol=1e-9)


def test_window_grows_with_the_gradient_norm_change():
    norms = torch.tensor([5.0, 5.0, 9.0, 9.1, 4.0, 4.0])  # changes: 0, 0, 4, 0.1, 5.1, 0
    for kind in ("softmax", "rank"):
        eta = window_eta(norms, kind, 1.0)
        assert eta[4] > eta[2] > eta[3] >= eta[1]
        assert adaptive_window(float(eta[4]), 40, 10, 200) > adaptive_window(float(eta[1]), 40, 10, 200)
    # rank: the number of smaller changes over T (ties share the lowest rank, as sorted().index())
    assert window_eta(norms, "rank").tolist() == [0, 0, 4 / 6, 3 / 6, 5 / 6, 0]


# ----------------------------------------------------------------------------- low-rank Hessian


def _softmax_regression_hessian(n_examples=2, dim=5, classes=3):
    """A linear softmax model on 2 examples: its Hessian has rank <= 2 * (classes - 1) = 4 of 18."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n_examples, dim, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 2])
    w0 = torch.randn(classes * (dim + 1), generator=gen, dtype=torch.float64)

    def loss(w):
        W, b = w[: classes * dim].view(classes, dim), w[classes * dim:]
        return F.cross_entropy(x @ W.T + b, y)

    return torch.func.hessian(loss)(w0)


def test_randomized_eigh_is_exact_when_the_rank_is_covered():
    H = _softmax_regression_hessian()
    rank = int(torch.linalg.matrix_rank(H))
    assert rank < H.shape[0]
    approx = randomized_eigh(lambda V: H @ V, H.shape[0], rank, oversample=3,
                             generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert float((approx.dense() - H).norm() / H.norm()) < 1e-10


def test_randomized_eigh_error_decays_with_rank():
    torch.manual_seed(0)
    n = 40
    Q = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64)).Q
    H = (Q * (0.7 ** torch.arange(n, dtype=torch.float64) * torch.tensor([1.0, -1.0]).repeat(n // 2))) @ Q.T
    errors = []
    for k in (1, 2, 4, 8, 16, 40):
        approx = randomized_eigh(lambda V: H @ V, n, k, generator=torch.Generator().manual_seed(2),
                                 dtype=torch.float64)
        errors.append(float((approx.dense() - H).norm() / H.norm()))
    assert all(b <= a * 1.0001 for a, b in zip(errors, errors[1:]))
    assert errors[0] > 0.3 and errors[-1] < 1e-10


def _lowrank_problem():
    torch.manual_seed(0)
    net = ConvNet(1, 3, 8, width=3, depth=1).double()
    model = FunctionalModel(net)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(6, 1, 8, 8, dtype=torch.float64, generator=gen).requires_grad_()
    labels = torch.arange(3).repeat_interleave(2)
    real_x = torch.randn(30, 1, 8, 8, dtype=torch.float64, generator=gen)
    real_y = torch.randint(0, 3, (30,), generator=gen)
    schedule = class_balanced_schedule(6, 3, 2, generator=gen)
    opt = make_inner_optimizer(InnerOptimizerConfig(name="sgd", lr=0.1, momentum=0.9))
    args = (model, model.parameters(), opt, Synthetic(images, labels, 0.1), schedule, 4, RealBatchLoss(real_x, real_y))
    n_params = sum(p.numel() for p in model.parameters())
    return args, n_params


def meta_gradient_cosine(**cfg) -> float:
    """Cosine between the low-rank-Hessian meta-gradient and the exact one (a reporting helper)."""
    args, _ = _lowrank_problem()
    exact = meta_gradient(*args, UnrollOptions(mode="recompute")).images
    hessian = LowRankHessian(ATBPTTConfig(**cfg), seed=0)
    approx = meta_gradient(*args, UnrollOptions(mode="recompute", curvature=hessian.for_step(0))).images
    return float(F.cosine_similarity(approx.flatten(), exact.flatten(), dim=0))


def test_low_rank_meta_gradient_is_exact_at_full_rank_and_close_below():
    _, n = _lowrank_problem()
    full = meta_gradient_cosine(hessian_rank=n, hessian_oversample=0, hessian_scope="step")
    assert full > 1 - 1e-10
    report = {k: meta_gradient_cosine(hessian_rank=k, hessian_scope=s) for k in (2, 8, n // 2)
              for s in ("window",)}
    print(f"cosine to the exact meta-gradient (n = {n} params, window scope): {report}")
    assert report[n // 2] > 0.9  # a rank-n/2 approximation keeps the direction
    assert report[n // 2] >= report[2] - 1e-6


def test_low_rank_hessian_keeps_the_mixed_term():
    """With H replaced by 0 (a rank-k approximation of nothing) the data still get a gradient."""
    args, _ = _lowrank_problem()
    zero = meta_gradient(*args, UnrollOptions(mode="recompute",
                                              curvature=lambda t, p, v, hvp: tuple(torch.zeros_like(x) for x in v)))
    exact = meta_gradient(*args, UnrollOptions(mode="recompute"))
    assert zero.images.norm() > 0
    assert float((zero.images - exact.images).norm() / exact.images.norm()) > 1e-3


# ----------------------------------------------------------------------------- the method


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(name="digits"))


def _task(data, steps=6, dtype=torch.float32):
    return DistillTask(data=data.to("cpu", dtype), ipc=2, seed=3, model=ModelConfig(width=8, depth=1),
                       outer_steps=steps, dtype=dtype)


def test_with_every_switch_off_it_is_rat_bptt(digits):
    common = dict(unroll=12, window=4, real_batch=64, engine={"mode": "recompute"})
    at = create_method("at_bptt", **common, stages=False, adaptive_window=False, draw_every="step")
    rat = create_method("rat_bptt", **common)
    for method in (at, rat):
        method.setup(_task(digits, dtype=torch.float64))
    for step in range(3):
        (ga, info_a), (gr, info_r) = at.meta_gradient(step), rat.meta_gradient(step)
        assert info_a == info_r
        assert torch.equal(ga.images, gr.images)
        at.apply(ga)
        rat.apply(gr)


def test_hessian_is_reused_until_it_drifts_or_is_due():
    """The refresh policy, on explicit matrices standing in for the inner loss's Hessian."""
    torch.manual_seed(0)
    n = 12
    Q = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64)).Q
    spectrum = torch.tensor([5.0, -4.0, 3.0, 2.0] + [1e-4] * (n - 4), dtype=torch.float64)  # rank 4, nearly
    H1 = (Q * spectrum) @ Q.T
    Q2 = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64)).Q
    H2 = (Q2 * spectrum) @ Q2.T
    params = (torch.zeros(n, dtype=torch.float64),)

    def hvp_of(H):
        return lambda vecs: (H @ vecs[0],)

    v = (torch.randn(n, dtype=torch.float64),)
    hessian = LowRankHessian(ATBPTTConfig(hessian_rank=4, hessian_refresh=100, hessian_drift=0.1), seed=0)
    hessian.for_step(0)(5, params, v, hvp_of(H1))
    assert hessian.builds == 1
    hessian.for_step(1)(5, params, v, hvp_of(H1))  # same Hessian: no drift, kept
    assert hessian.builds == 1 and hessian.last_drift < 1e-3
    hessian.for_step(2)(5, params, v, hvp_of(H2))  # another Hessian: drifted, rebuilt
    assert hessian.builds == 2 and hessian.last_drift > 0.1
    due = LowRankHessian(ATBPTTConfig(hessian_rank=4, hessian_refresh=2, hessian_drift=None), seed=0)
    for step in range(5):
        curvature = due.for_step(step)
        curvature(5, params, v, hvp_of(H1))
        curvature(4, params, v, hvp_of(H1))  # later steps of the same window reuse it
    assert due.builds == 3  # outer steps 0, 2, 4


@pytest.mark.slow
def test_late_stage_at_large_tau_is_near_uniform_through_the_runner(write_suite, cli, tmp_path):
    """The measurement of the bug report, through the CLI: T = 30, W = 12 (d = 3), the late stage
    from the first step on, tau very large: the starts are near-uniform over those that fit,
    with no mass piled on one start (before the fix, 31% of the draws landed on one start)."""
    from scipy.stats import chisquare

    from conftest import tiny_suite
    from harness.report import iter_records

    config = {"unroll": 30, "window": 12, "window_delta": 3, "tau": 1e9, "stage_switch": "steps",
              "stage_boundaries": [0.0, 0.0], "draw_every": "step"}
    suite = tiny_suite(methods={"at_bptt": config}, budget={"outer_steps": 240, "checkpoint_minutes": 10.0})
    code, _, err = cli("run", write_suite(suite), "--out", tmp_path / "out", "-q")
    assert code == 0, err
    (record,) = [r for _, r in iter_records(tmp_path / "out")]
    summary = record.distill.method_summary
    assert summary["final_stage"] == "late" and summary["stage_switched_at"] == [1, 1]
    assert summary["stage_segments"] == [[0, 1, "early"], [1, 240, "late"]]
    assert summary["stage_mean_window"]["late"] == 12 - 3  # W - d in the late stage
    counts = {int(k): v for k, v in summary["start_histogram"].items()}
    assert sum(counts.values()) == 240
    assert max(counts) <= 30 - (12 - 3)  # a start fits only with a window of at least W - d
    assert max(counts.values()) / 240 < 0.12  # uniform over ~19-22 starts: ~5% each
    always = [counts.get(t, 0) for t in range(30 - 12 - 3 + 1)]  # these fit whatever the window
    assert chisquare(always).pvalue > 1e-3
