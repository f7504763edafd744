"""DD-Ranking's scores: the formulas against hand-computed values and against the ``ddranking``
package's own ``compute_metrics`` (where it is installed), the full-data recipe against an
independent DataLoader + StepLR implementation, the caches (hit on the second cell, keyed by
what changes them, relative file names), the teacher's soft labels, the progress of the
full-data training, and the analysis on a run."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import tiny_suite
from harness.core.io import cache_dir
from harness.data import DataConfig, load_dataset
from harness.engine import InnerOptimizerConfig
from harness.engine.optim import optimizer_without_lr
from harness.evaluation import AnalysisContext, EvalResult, protocol_config
from harness.evaluation import scores as scores_module
from harness.evaluation.scores import (Scores, ScoresConfig, ars, baselines, lrs, normalized, pending_work,
                                       random_subset)
from harness.models import ModelConfig
from harness.report import iter_records
from harness.run.progress import CellProgress
from harness.train import (FullDataConfig, full_data, full_data_path, new_network, teacher_labels, teacher_model,
                           train_full_data)
from harness.train import full as teacher_module

TINY_MODEL = ModelConfig(name="convnet", width=4, depth=1)
TINY_FULL = FullDataConfig(epochs=3, batch_size=128, models=2, lr_step_epochs=2, test_every=2)

def ddranking(module: str):
    """A module of the ``ddranking`` package: from the environment, or from the folder that
    ``DDBENCH_DDRANKING_SITE`` names (.ci/run installs it there with --no-deps: its own
    requirements would downgrade numpy in the test environment). Skipped where neither has it."""
    site = os.environ.get("DDBENCH_DDRANKING_SITE")
    if site and site not in sys.path:
        sys.path.append(site)  # after the environment's packages: never shadows them
    return pytest.importorskip(module)



@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(name="digits", validation_size=100))


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
    # The package's lines (hard_label.py l.380-383) on its percentages: a = -7.76 points, LRS < 0.
    a_points = 0.5 * 19.62 - 0.5 * 35.14
    assert (math.exp(a_points) - math.exp(-1)) / (math.e - math.exp(-1)) == pytest.approx(-0.156336, abs=1e-6)


# --------------------------------------------------------------------------- the ddranking package itself


class _Stub:
    """Stands for a tensor the package passes around (the syn set, the random set)."""


def _package_evaluator(cls, tmp_path: Path, **attrs):
    """An instance of the package's class without its __init__ (which loads CIFAR and teachers):
    only what ``compute_metrics`` reads."""
    evaluator = object.__new__(cls)
    defaults = dict(num_eval=3, ipc=1, num_classes=10, eval_full_data=True, use_dist=False, rank=0,
                    save_path=str(tmp_path / "scores.csv"), soft_label_mode="S", label_type="soft")
    for k, v in {**defaults, **attrs}.items():
        setattr(evaluator, k, v)
    return evaluator


@pytest.mark.parametrize("scale", [1.0, 100.0])  # fractions (ours), percentages (the package's own)
def test_hlr_ior_lrs_as_the_ddranking_package_computes_them(tmp_path, scale, monkeypatch):
    hard_label = ddranking("ddranking.metrics.hard_label")
    soft_label = ddranking("ddranking.metrics.soft_label")
    # LabelRobustScoreHard appends every LRS twice (l.384, l.388), so its CSV of unequal columns
    # raises in pandas: the saved lists are kept here instead of written.
    saved = []
    monkeypatch.setattr(hard_label, "save_results", lambda results, path: saved.append(results))
    syn, rnd = _Stub(), _Stub()
    acc = {"full": 0.71, "syn_hard": 0.45, "rnd_hard": 0.30, "syn_soft": 0.52, "rnd_soft": 0.41}
    acc = {k: v * scale for k, v in acc.items()}

    def hard_helper(image_tensor, image_path, hard_labels, lr, mode, hyper_param_search=False):
        if mode == "real":
            return acc["full"], None
        return (acc["rnd_hard"] if image_tensor is rnd else acc["syn_hard"]), lr

    def soft_helper(image_tensor, image_path, soft_labels, lr, hyper_param_search=False):
        return (acc["rnd_soft"] if image_tensor is rnd else acc["syn_soft"]), lr

    hard = _package_evaluator(hard_label.LabelRobustScoreHard, tmp_path)
    hard._compute_hard_label_metrics_helper = hard_helper
    hard._get_random_data_helper = lambda eval_iter: (None, rnd, None)
    out = hard.compute_metrics(image_tensor=syn, syn_lr=0.01)
    assert len(saved[0]["lrs"]) == 2 * len(saved[0]["hard_label_recovery"]) == 2 * hard.num_eval
    hlr, ior = (acc["full"] - acc["syn_hard"]) / scale, (acc["syn_hard"] - acc["rnd_hard"]) / scale
    assert out["hard_label_recovery_mean"] == pytest.approx(scale * hlr)
    assert out["improvement_over_random_mean"] == pytest.approx(scale * ior)
    if scale == 1.0:  # fed fractions, the package's LRS is ours
        assert out["label_robust_score_mean"] == pytest.approx(lrs(hlr, ior))
    else:  # its own percentages: exp of points
        assert out["label_robust_score_mean"] == pytest.approx(normalized(scale * (0.5 * ior - 0.5 * hlr)))

    soft = _package_evaluator(soft_label.LabelRobustScoreSoft, tmp_path)
    soft._compute_hard_label_metrics_helper = hard_helper
    soft._compute_soft_label_metrics_helper = soft_helper
    soft._get_random_data_helper = lambda eval_iter: (None, rnd, None)
    out = soft.compute_metrics(image_tensor=syn, soft_labels=torch.zeros(10, 10), syn_lr=0.01)
    # Soft labels: HLR from the hard-label accuracies, IOR from the two soft-label accuracies.
    hlr, ior = (acc["full"] - acc["syn_hard"]) / scale, (acc["syn_soft"] - acc["rnd_soft"]) / scale
    assert out["hard_label_recovery_mean"] == pytest.approx(scale * hlr)
    assert out["improvement_over_random_mean"] == pytest.approx(scale * ior)
    if scale == 1.0:
        assert out["label_robust_score_mean"] == pytest.approx(lrs(hlr, ior))


def test_ars_as_the_ddranking_package_computes_it(tmp_path):
    aug_robust = ddranking("ddranking.metrics.aug_robust")
    syn, rnd = _Stub(), _Stub()
    acc = {(syn, True): 0.52, (rnd, True): 0.41, (syn, False): 0.47, (rnd, False): 0.29}

    def helper(use_aug):
        def run(image_tensor, image_path, hard_labels, soft_labels, lr, hyper_param_search=False):
            return acc[(rnd if image_tensor is rnd else syn, use_aug)], lr
        return run

    evaluator = _package_evaluator(aug_robust.AugmentationRobustScore, tmp_path)
    evaluator._compute_with_aug_metrics_helper = helper(True)
    evaluator._compute_without_aug_metrics_helper = helper(False)
    evaluator._get_random_data_helper = lambda eval_iter: (None, rnd, None, None)
    out = evaluator.compute_metrics(image_tensor=syn, soft_labels=torch.zeros(10, 10), syn_lr=0.01)
    assert out["augmentation_robust_score_mean"] == pytest.approx(ars(0.52 - 0.41, 0.47 - 0.29))


# --------------------------------------------------------------------------- the full-data networks


def test_full_data_training_is_ddrankings_recipe(digits):
    """Against an independent implementation in DD-Ranking's form (DataLoader over a fresh
    permutation, torch SGD, StepLR stepped per epoch), float64: the same weights."""
    cfg = FullDataConfig(epochs=5, batch_size=300, lr_step_epochs=2, lr_gamma=0.5, test_every=2,
                         optimizer=InnerOptimizerConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4))
    data = digits.to("cpu", torch.float64)
    net = new_network(TINY_MODEL, data, 7, "cpu", torch.float64)
    ref = new_network(TINY_MODEL, data, 7, "cpu", torch.float64)
    curve = train_full_data(net, data, cfg, torch.Generator().manual_seed(3))

    gen = torch.Generator().manual_seed(3)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    dataset = torch.utils.data.TensorDataset(data.train_x, data.train_y)
    sizes = []
    for _ in range(5):
        loader = torch.utils.data.DataLoader(dataset, batch_size=300,
                                             sampler=torch.randperm(len(dataset), generator=gen).tolist())
        ref.train()
        for x, y in loader:
            sizes.append(len(y))
            loss = torch.nn.functional.cross_entropy(ref(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    assert sizes[:5] == [300, 300, 300, 300, len(data.train_y) - 1200]  # the last batch of an epoch is smaller
    for a, b in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert [e for e, _ in curve] == [2, 4, 5]  # every test_every epochs, and the last


def test_full_data_is_trained_once_and_named_relative_to_the_cache_dir(digits, monkeypatch):
    calls = []
    real = teacher_module.train_full_data
    monkeypatch.setattr(teacher_module, "train_full_data", lambda *a, **k: calls.append(1) or real(*a, **k))
    shown = []
    first = full_data(digits, TINY_MODEL, TINY_FULL, "cpu", torch.float32,
                      report=lambda what, done, total: shown.append((done, total)))
    assert len(calls) == TINY_FULL.models
    assert shown == [(i, 6) for i in range(7)]  # epoch by epoch over both networks, from 0
    again = full_data(digits, TINY_MODEL, TINY_FULL, "cpu", torch.float32)
    assert len(calls) == TINY_FULL.models  # from the cache: not trained again
    assert again.accuracy_per_model == first.accuracy_per_model and len(again.state_dicts) == TINY_FULL.models
    assert first.cache_file == f"ddranking/{full_data_path(digits, TINY_MODEL, TINY_FULL).name}"
    assert not Path(first.cache_file).is_absolute() and (cache_dir() / first.cache_file).is_file()
    # DD-Ranking's test-selected maximum is at least the final accuracy (it may pick the last checkpoint).
    assert first.test_selected_max >= first.accuracy - 1e-12
    # A damaged file is trained again, not trusted.
    (cache_dir() / first.cache_file).write_bytes(b"not a torch file")
    full_data(digits, TINY_MODEL, TINY_FULL, "cpu", torch.float32)
    assert len(calls) == 2 * TINY_FULL.models


def test_cache_keys_change_with_what_changes_the_result(digits):
    other_data = load_dataset(DataConfig(name="digits", validation_size=100, validation_seed=1))
    wider = ModelConfig(name="convnet", width=8, depth=1)
    path = full_data_path(digits, TINY_MODEL, TINY_FULL)
    assert full_data_path(other_data, TINY_MODEL, TINY_FULL) != path
    assert full_data_path(digits, wider, TINY_FULL) != path
    assert full_data_path(digits, TINY_MODEL, TINY_FULL.model_copy(update={"epochs": 4})) != path
    assert full_data_path(digits, TINY_MODEL, TINY_FULL.model_copy(update={"seed": 1})) != path
    assert full_data_path(digits, TINY_MODEL, TINY_FULL) == path  # and not with nothing

    cfg = ScoresConfig()
    ratbptt = protocol_config({"protocol": "ratbptt", "models": 2})

    def files(**change):
        args = {"cfg": cfg, "data": digits, "model": TINY_MODEL, "protocol": ratbptt, "ipc": 2, "seed": 0,
                "soft": False, **change}
        return [b.path for b in baselines(**args)]

    base = files()
    assert len(set(base)) == 2  # with and without augmentation
    for change in ({"protocol": protocol_config({"protocol": "ratbptt", "models": 3})},
                   {"protocol": protocol_config({"protocol": "standard"})}, {"model": wider},
                   {"data": other_data}, {"ipc": 3}, {"seed": 1}, {"soft": True},
                   {"cfg": ScoresConfig(lr_grid=(0.01, 0.1))}):
        assert set(files(**change)).isdisjoint(base), change
    assert files(soft=True, cfg=ScoresConfig(temperature=2.0)) != files(soft=True)
    # Settings a baseline does not depend on share its file.
    assert files(cfg=ScoresConfig(weight=0.3, ars_weight=0.2)) == base
    # The full-data networks depend on the protocol only through its network (DD-Ranking's
    # real-data recipe is the protocol's no matter): one file for ratbptt and standard.
    assert full_data_path(digits, ratbptt.model or TINY_MODEL, cfg.full_data()) == full_data_path(
        digits, protocol_config({"protocol": "standard"}).model or TINY_MODEL, cfg.full_data())


def test_teacher_soft_labels_are_its_tempered_probabilities(digits):
    teacher, name = teacher_model(digits, TINY_MODEL, TINY_FULL, "cpu", torch.float32)
    assert name.startswith("ddranking/") and not teacher.training
    rand = random_subset(digits, 3, seed=0)
    for temperature in (1.0, 4.0):
        labels = teacher_labels(teacher, rand.images, temperature)
        assert labels.shape == (30, 10) and labels.dtype == torch.float64 and (labels >= 0).all()
        torch.testing.assert_close(labels.sum(1), torch.ones(30, dtype=torch.float64), rtol=0, atol=1e-12)
        with torch.no_grad():
            want = torch.softmax(teacher(rand.images).double() / temperature, dim=1)
        torch.testing.assert_close(labels, want)
    entropy = [-(p * p.log()).sum(1).mean() for p in (teacher_labels(teacher, rand.images, t) for t in (1.0, 4.0))]
    assert entropy[1] > entropy[0]  # a higher temperature gives softer labels
    with pytest.raises(ValueError, match="temperature"):
        teacher_labels(teacher, rand.images, 0.0)


# --------------------------------------------------------------------------- the analysis


def _context(data, distilled, eval_result, protocol, seed=0) -> AnalysisContext:
    return AnalysisContext(data=data, distilled=distilled, eval_result=eval_result, protocol=protocol,
                           model=TINY_MODEL, seed=seed, device=torch.device("cpu"), dtype=torch.float32)


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def test_baselines_are_cached_across_cells_and_soft_sets_get_a_teacher_labelled_one(digits, monkeypatch):
    cfg = ScoresConfig(full_data_epochs=2, full_data_models=1, full_data_batch=256, lr_grid=(0.01, 0.1))
    protocol = protocol_config({"protocol": "standard", "models": 1, "steps": 4, "augment": {"ops": ["flip"]},
                                "optimizer": {"name": "sgd", "lr": 0.01}})
    searches, trainings = [], []
    search, train = scores_module.searched_accuracy, teacher_module.train_full_data
    monkeypatch.setattr(scores_module, "searched_accuracy", lambda s, *a, **k: searches.append(s) or search(s, *a, **k))
    monkeypatch.setattr(teacher_module, "train_full_data", lambda *a, **k: trainings.append(1) or train(*a, **k))
    rand = random_subset(digits, 2, seed=0)
    made = EvalResult([0.5], torch.zeros(1, 360, dtype=torch.bool), {"lr": 0.01})
    hard_set = replace(rand, images=rand.images + 0.01)  # a "distilled" set: not the random subset itself
    shown = []
    ctx = _context(digits, hard_set, made, protocol)
    ctx.report = lambda what, done, total: shown.append(what)  # the runner's CellProgress.work
    first = Scores().run(cfg, ctx)
    assert len(trainings) == 1 and len(searches) == 2  # the full-data network; the baselines with/without aug
    assert any("full-data" in w for w in shown)
    second = Scores().run(cfg, _context(digits, replace(rand, images=rand.images - 0.01), made, protocol))
    assert len(trainings) == 1 and len(searches) == 2  # the second cell trains neither again
    assert second["baselines"] == first["baselines"]
    assert second["accuracies"]["random"] == first["accuracies"]["random"]
    b = first["baselines"]["random"]
    assert b["lr_selection"] == "validation split (100 images)" and [g["lr"] for g in b["grid"]] == [0.01, 0.1]
    assert b["lr"] == max(b["grid"], key=lambda g: (g["validation_accuracy"], -g["lr"]))["lr"]
    assert first["label_kind"] == "hard" and first["full_data_epochs"] == 2
    assert first["accuracies"]["full_data"] == first["full_data_accuracy"] == first["full_data"]["accuracy"]
    for text in _strings(first):  # no path of this machine in the section
        assert not Path(text).is_absolute() and str(cache_dir()) not in text, text

    # A soft-labelled set: a random baseline with the teacher's labels (cached apart), and its
    # hard-label accuracy searched too (the learned lr dropped, as DD-Ranking does).
    soft_set = replace(hard_set, labels=torch.nn.functional.one_hot(hard_set.labels, 10).float() * 0.9 + 0.01,
                       lr=0.05, lr_optimizer=optimizer_without_lr(protocol.optimizer))
    soft = Scores().run(cfg, _context(digits, soft_set, made, protocol))
    assert len(trainings) == 1 and len(searches) == 2 + 2 + 1  # the teacher is the cached full-data network
    assert soft["label_kind"] == "soft" and soft["baselines"]["random"]["labels"].startswith("soft: softmax")
    assert soft["baselines"]["random"]["cache_file"] != first["baselines"]["random"]["cache_file"]
    assert searches[-1].lr is None and not searches[-1].labels.is_floating_point()  # the hard-label search
    for s in searches[2:4]:  # the soft baselines: the random images, teacher labels summing to one
        assert torch.equal(s.images, rand.images) and s.labels.is_floating_point()
        torch.testing.assert_close(s.labels.sum(1), torch.ones(20, dtype=s.labels.dtype))
    assert soft["hlr"] == pytest.approx(soft["accuracies"]["full_data"] - soft["accuracies"]["distilled_hard_labels"])


def test_pending_work_counts_what_is_not_cached(digits):
    cfg = ScoresConfig(full_data_epochs=2, full_data_models=1, lr_grid=(0.01, 0.1))
    protocol = protocol_config({"protocol": "standard", "models": 2, "steps": 4, "augment": {"ops": ["flip"]},
                                "optimizer": {"name": "sgd", "lr": 0.01}})
    work = pending_work(cfg, digits, TINY_MODEL, protocol, 2, 0, soft=False)
    kinds = [(w.what.split(" ")[0], w.kind) for w in work]
    assert kinds == [("full-data", "full_data"), ("random", "evaluation"), ("random_no_aug", "evaluation"),
                     ("the", "evaluation")]
    assert work[0].updates == 2 * math.ceil(digits.train_x.shape[0] / 256)  # epochs x minibatches, 1 network
    assert work[1].updates == 2 * 4 + 2 * 4  # the lr grid's networks, then the protocol's 2 networks
    assert all(w.cache_file is None or w.cache_file.startswith("ddranking/") for w in work)
    made = EvalResult([0.5, 0.5], torch.zeros(2, 360, dtype=torch.bool), {"lr": 0.01})
    Scores().run(cfg, _context(digits, random_subset(digits, 2, seed=0), made, protocol))
    assert [w.what for w in pending_work(cfg, digits, TINY_MODEL, protocol, 2, 0, soft=False)] == [
        "the set without augmentation"]  # every cell evaluates its own set
    later = pending_work(cfg, digits, TINY_MODEL, protocol, 2, 1, soft=True)  # another seed, soft labels
    assert [w.what for w in later] == ["random baseline", "random_no_aug baseline", "the set without augmentation",
                                       "the set with hard labels"]
    assert pending_work(cfg.model_copy(update={"enabled": False}), digits, TINY_MODEL, protocol, 2, 0, False) == []


def test_work_shows_its_own_eta(monkeypatch):
    shown = []

    class Recorder(CellProgress):
        def phase(self, text):
            shown.append(text)

    # A part's first call reads the clock twice (its start, now), every later call once.
    clock = iter([0.0, 0.0, 10.0, 10.2, 20.0, 30.0, 40.0, 40.0])
    monkeypatch.setattr("harness.run.progress.time.perf_counter", lambda: next(clock))
    p = Recorder()
    for done in (0, 1, 1, 2, 3):  # the repeat 0.2 s later is not redrawn
        p.work("full-data training", done, 3)
    assert shown == ["full-data training 0/3, ETA ?", "full-data training 1/3, ETA 20 s",
                     "full-data training 2/3, ETA 10 s", "full-data training 3/3, ETA 0 s"]
    p.work("random baselines", 0, 2)  # another part: its own clock
    assert shown[-1] == "random baselines 0/2, ETA ?"


def test_scores_in_a_run_follow_from_their_accuracies(write_suite, cli, tmp_path, monkeypatch):
    trainings = []
    train = teacher_module.train_full_data
    monkeypatch.setattr(teacher_module, "train_full_data", lambda *a, **k: trainings.append(1) or train(*a, **k))
    suite = tiny_suite(methods={"random_real": {}, "tbptt": {"unroll": 3, "window": 2, "learn_labels": True}},
                       ddranking={"full_data_epochs": 2, "full_data_models": 2})
    code, _, err = cli("run", write_suite(suite), "--out", tmp_path / "out", "-q")
    assert code == 0, err
    assert len(trainings) == 2  # the two full-data networks, for both cells
    records = {r.method: r for _, r in iter_records(tmp_path / "out")}
    for method, r in records.items():
        s = r.scores
        acc = s.accuracies
        assert acc["distilled"] == r.eval.accuracy_mean and s.protocol == "standard"
        assert s.hlr == pytest.approx(acc["full_data"] - acc["distilled_hard_labels"])
        assert s.ior == pytest.approx(acc["distilled"] - acc["random"])
        assert s.lrs == pytest.approx(lrs(s.hlr, s.ior)) and 0 <= s.lrs <= 1
        assert s.ars == pytest.approx(ars(s.ior, acc["distilled_no_aug"] - acc["random_no_aug"]))
        assert s.full_data_epochs == 2 and s.full_data_accuracy == acc["full_data"]
        assert s.full_data_cache.startswith("ddranking/full-digits-")
    # random_real is its own random subset, evaluated at the protocol's lr (no validation split
    # to search on): its evaluations are reused, so its IOR is exactly 0.
    assert records["random_real"].scores.ior == 0.0 and records["random_real"].scores.label_kind == "hard"
    assert records["tbptt"].scores.label_kind == "soft"  # learned labels: a teacher-labelled random baseline
    assert records["tbptt"].scores.baselines["random"]["labels"].startswith("soft")
    assert records["random_real"].scores.full_data_cache == records["tbptt"].scores.full_data_cache
    assert records["random_real"].scores.accuracies["full_data"] == records["tbptt"].scores.accuracies["full_data"]
    code, table, _ = cli("table", tmp_path / "out", "--view", "scores")
    assert code == 0 and "LRS" in table and "tbptt" in table
    # A later suite with the same data and network: the full-data networks come from the cache.
    assert cli("run", write_suite(suite, name="again.toml"), "--out", tmp_path / "again", "-q")[0] == 0
    assert len(trainings) == 2


@pytest.mark.parametrize("field, value", [("lr_grid", [0.01, 0.0]), ("temperature", 0.0), ("full_data_models", 0),
                                          ("soft_baseline", "noise")])
def test_a_bad_ddranking_table_is_refused_in_one_line(write_suite, cli, tmp_path, field, value):
    code, _, err = cli("run", write_suite(tiny_suite(ddranking={field: value})), "--out", tmp_path / "out", "-q")
    assert code == 2 and f"ddranking.{field}" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
