"""The evaluation protocols: each one exact to its description, the validation split held out,
and no selection ever reading the test set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import tiny_suite
from harness.data import DataConfig, DatasetSplits, load_dataset, zca_whitening
from harness.data.load import validation_split
from harness.evaluation import PROTOCOLS, evaluate, protocol_config
from harness.evaluation.protocols.builtin import DSAProtocol, select_budget
from harness.method import DistilledSet
from harness.models import ModelConfig
from harness.models.dsa import DSA_OPS, DSAConfig, dsa_augment

NET = ModelConfig(width=8, depth=1)


@pytest.fixture(scope="module")
def digits_val():
    return load_dataset(DataConfig(name="digits", validation_size=200))


def distilled_from(data: DatasetSplits, ipc: int = 2) -> DistilledSet:
    rows = torch.cat([(data.train_y == c).nonzero().flatten()[:ipc] for c in range(data.num_classes)])
    return DistilledSet(data.train_x[rows], data.train_y[rows], data.num_classes, ipc)


# ----------------------------------------------------------------------------- the validation split


def test_the_validation_split_is_held_out_stratified_and_fixed():
    plain = load_dataset(DataConfig(name="digits"))
    data = load_dataset(DataConfig(name="digits", validation_size=200))
    assert data.val_x.shape[0] == 200 and data.train_x.shape[0] == plain.train_x.shape[0] - 200
    assert torch.bincount(data.val_y).tolist() == [20] * 10  # stratified
    # Disjoint from the training images the distillation sees, and from the test split.
    keep, held = validation_split(plain.train_y, 10, 200, 0)
    assert not set(keep.tolist()) & set(held.tolist()) and len(keep) + len(held) == plain.train_x.shape[0]
    raw_test = {tuple(x.flatten().tolist()) for x in plain.test_x}
    assert torch.equal(validation_split(plain.train_y, 10, 200, 0)[1], held)  # fixed by its seed
    assert not torch.equal(validation_split(plain.train_y, 10, 200, 1)[1], held)
    # Normalization is fitted on the remaining training images only.
    assert data.preprocessing["normalize"]["mean"] != plain.preprocessing["normalize"]["mean"]
    assert data.preprocessing["validation"]["size"] == 200
    assert len(raw_test) == plain.test_x.shape[0]


def test_a_protocol_that_selects_needs_the_validation_split(write_suite, cli, tmp_path):
    suite = tiny_suite(eval={"protocol": "ratbptt", "models": 1, "budgets": [2, 4]})
    code, _, err = cli("run", write_suite(suite), "--out", tmp_path / "out", "-q")
    assert code == 2 and ": eval.protocol: " in err and "validation_size" in err


# ----------------------------------------------------------------------------- ratbptt


def test_ratbptt_selects_its_budget_on_validation_never_on_test(digits_val):
    cfg = protocol_config({"protocol": "ratbptt", "models": 2, "budgets": [3, 10, 30]})
    d = distilled_from(digits_val)
    result = evaluate(d, digits_val, cfg, NET, seed=0, device=torch.device("cpu"))
    details = result.details
    assert [b["steps"] for b in details["budgets"]] == [3, 10, 30]
    assert details["selected_budget"] == select_budget(
        {b["steps"]: [b["validation_accuracy"]] for b in details["budgets"]})
    chosen = next(b for b in details["budgets"] if b["steps"] == details["selected_budget"])
    assert result.accuracy_per_model == chosen["test_accuracy_per_model"] and len(result.accuracy_per_model) == 2
    # The test labels scrambled: every test number changes, the selection and the validation do not.
    gen = torch.Generator().manual_seed(5)
    scrambled = DatasetSplits(**{**digits_val.__dict__, "test_y": digits_val.test_y[torch.randperm(
        len(digits_val.test_y), generator=gen)]})
    other = evaluate(d, scrambled, cfg, NET, seed=0, device=torch.device("cpu"))
    assert other.details["selected_budget"] == details["selected_budget"]
    assert [b["validation_accuracy"] for b in other.details["budgets"]] == [
        b["validation_accuracy"] for b in details["budgets"]]
    assert [b["test_accuracy"] for b in other.details["budgets"]] != [b["test_accuracy"] for b in details["budgets"]]


def test_ratbptt_trains_each_network_once_cumulatively(digits_val):
    """Scoring at 3, 10, 30 steps is the same network as training 30 steps in one go."""
    d = distilled_from(digits_val)
    pieces = evaluate(d, digits_val, protocol_config({"protocol": "ratbptt", "models": 1, "budgets": [3, 10, 30]}),
                      NET, seed=1, device=torch.device("cpu"))
    whole = evaluate(d, digits_val, protocol_config({"protocol": "ratbptt", "models": 1, "budgets": [30]}), NET,
                     seed=1, device=torch.device("cpu"))
    assert pieces.details["budgets"][-1]["test_accuracy_per_model"] == whole.details["budgets"][0][
        "test_accuracy_per_model"]


def test_select_budget_prefers_the_smaller_on_a_tie():
    assert select_budget({300: [0.5, 0.7], 600: [0.6, 0.6], 1000: [0.55, 0.55]}) == 300
    assert select_budget({300: [0.5], 600: [0.7]}) == 600


# ----------------------------------------------------------------------------- dsa


@pytest.mark.parametrize("op", DSA_OPS)
def test_dsa_draws_are_per_image_by_default_and_shared_in_siamese_mode(op):
    """DSA's evaluation (seed -1): each image its own parameters; ``siamese``: one draw per batch."""
    x = torch.rand(1, 3, 16, 16).expand(64, -1, -1, -1).clone()  # one image, 64 times
    per_image = dsa_augment(x, DSAConfig(ops=(op,)), torch.Generator().manual_seed(3))
    assert len({tuple(im.flatten().tolist()) for im in per_image}) > 1  # flip: all 64 coins alike is 2^-63
    again = dsa_augment(x, DSAConfig(ops=(op,)), torch.Generator().manual_seed(3))
    assert torch.equal(per_image, again)  # reproducible for a seed
    assert not torch.equal(per_image, dsa_augment(x, DSAConfig(ops=(op,)), torch.Generator().manual_seed(4)))
    shared = dsa_augment(x, DSAConfig(ops=(op,), siamese=True), torch.Generator().manual_seed(3))
    assert torch.equal(shared, shared[:1].expand_as(shared))  # one draw for the whole batch
    changed = [not torch.equal(dsa_augment(x, DSAConfig(ops=(op,), siamese=True),
                                            torch.Generator().manual_seed(s))[0], x[0]) for s in range(8)]
    assert any(changed)  # ... and it does something


def test_dsa_ops_do_what_they_say():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(1, 3, 1, 1)
    cfg = DSAConfig(siamese=True)
    flipped = next(y for s in range(20) if not torch.equal(y := dsa_augment(x, cfg.model_copy(update={"ops": ("flip",)}),
                                                                            torch.Generator().manual_seed(s)), x))
    assert torch.equal(flipped, x.flip(3))
    cut = dsa_augment(torch.ones(1, 1, 32, 32), cfg.model_copy(update={"ops": ("cutout",)}),
                      torch.Generator().manual_seed(0))
    assert 0 < int((cut == 0).sum()) <= 16 * 16  # a square of half the side at most
    crop = dsa_augment(torch.ones(1, 1, 32, 32), cfg.model_copy(update={"ops": ("crop",)}),
                       torch.Generator().manual_seed(1))
    assert set(crop.unique().tolist()) <= {0.0, 1.0}  # whole-pixel shifts: no blur


def test_dsa_protocol_epochs_and_lr_grid(digits_val):
    cfg = protocol_config({"protocol": "dsa", "models": 1, "epochs": 3, "batch_size": 8,
                           "lr_grid": [0.001, 0.05], "dsa": {"ops": ["flip"]}})
    assert DSAProtocol().recipe(cfg, 20).steps == 3 * math.ceil(20 / 8)
    assert DSAProtocol().training_steps(cfg, 20) == (1 + 2) * 9
    result = evaluate(distilled_from(digits_val), digits_val, cfg, NET, seed=0, device=torch.device("cpu"))
    grid = result.details["grid"]
    assert [g["lr"] for g in grid] == [0.001, 0.05] and result.details["lr"] == max(
        grid, key=lambda g: (g["validation_accuracy"], -g["lr"]))["lr"]
    assert result.details["lr_selection"].startswith("validation split (200")


def test_every_protocol_can_turn_its_augmentation_off():
    for name, cls in PROTOCOLS.items():
        cfg = protocol_config({"protocol": name})
        plain = cls().without_augmentation(cfg)
        assert plain != cfg and plain.protocol == name


# ----------------------------------------------------------------------------- ZCA


def official_zca(train: np.ndarray, test: np.ndarray, regularization: float = 0.1):
    """The official RaT-BPTT ``preprocess`` (framework/config.py), restated in NumPy: raw pixels,
    per-image centering and L2 normalization, eig of X^T X / n, (e + r mean(e))^-1/2."""
    train = train.reshape(train.shape[0], -1).astype(np.float64)
    test = test.reshape(test.shape[0], -1).astype(np.float64)
    train = train - train.mean(axis=1)[:, None]
    test = test - test.mean(axis=1)[:, None]
    train = train / np.linalg.norm(train, axis=1)[:, None]
    test = test / np.linalg.norm(test, axis=1)[:, None]
    cov = train.T @ train / train.shape[0]
    e, v = np.linalg.eig(cov)
    e, v = e.real, v.real
    w = v @ np.diag(1.0 / np.sqrt(e + regularization * e.sum() / e.shape[0])) @ v.T
    return train @ w, test @ w


def test_zca_is_the_official_recipe_on_raw_pixels():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (300, 3, 4, 4), dtype=np.uint8)
    test = rng.integers(0, 256, (50, 3, 4, 4), dtype=np.uint8)
    want_train, want_test = official_zca(train, test)
    got_train, got_test, info = zca_whitening(torch.from_numpy(train).float() / 255, torch.from_numpy(test).float() / 255,
                                              0.1)
    np.testing.assert_allclose(got_train.reshape(300, -1).numpy(), want_train, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_test.reshape(50, -1).numpy(), want_test, rtol=1e-4, atol=1e-5)
    assert info["recipe"].startswith("official RaT-BPTT")


def test_images_come_back_to_pixels_for_showing():
    data = load_dataset(DataConfig(name="digits", zca=True, normalize=False))
    shown = data.to_pixels(data.train_x[:5])
    assert shown.shape == data.train_x[:5].shape and float(shown.min()) >= 0 and float(shown.max()) <= 1
    plain = load_dataset(DataConfig(name="digits", zca=False, normalize=True))
    raw = load_dataset(DataConfig(name="digits", zca=False, normalize=False))
    torch.testing.assert_close(plain.to_pixels(plain.train_x[:5]), raw.train_x[:5], rtol=0, atol=1e-6)
    # After ZCA the per-image mean and scale are gone: the image comes back up to them.
    corr = np.corrcoef(shown[0].flatten().numpy(), raw.train_x[0].flatten().numpy())[0, 1]
    assert corr > 0.99


# ----------------------------------------------------------------------------- re-evaluation


def test_saved_sets_are_evaluated_again_under_another_protocol_and_network(write_suite, cli, tmp_path):
    out = tmp_path / "out"
    assert cli("run", write_suite(tiny_suite()), "--out", out, "-q")[0] == 0
    code, stdout, err = cli("eval", out, "--protocol", "ratbptt", "--set", "models=1", "--set", "budgets=[2,4]",
                            "--validation-size", "100")
    assert code == 0, err
    assert "2 evaluation records" in stdout
    code, _, err = cli("eval", out, "--protocol", "standard", "--model", "resnet18", "--set", "models=1",
                       "--set", "steps=2")
    assert code == 0, err
    from harness.report import iter_eval_records, iter_records

    runs = {r.run_id: (p, r) for p, r in iter_records(out)}
    evals = [e for _, e in iter_eval_records(out)]
    assert len(evals) == 4 and {(e.eval.protocol["protocol"], e.model["name"]) for e in evals} == {
        ("ratbptt", "convnet"), ("standard", "resnet18")}
    for e in evals:
        path, run = runs[e.of_run]  # linked to the record it evaluates, beside it
        assert e.record_file == path.name and (e.method, e.ipc, e.seed) == (run.method, run.ipc, run.seed)
        if e.eval.protocol["protocol"] == "ratbptt":
            assert e.validation["size"] == 100 and e.eval.details["selected_budget"] in (2, 4)
            best = max(e.eval.details["budgets"], key=lambda b: b["test_accuracy"])  # the official number, apart
            assert e.eval.test_selected.accuracy_mean == pytest.approx(best["test_accuracy"])
            assert e.eval.test_selected.label == "as published: test-selected upper bound"
        else:
            assert e.eval.test_selected is None  # no budgets, nothing selected on the test set
    code, again, _ = cli("eval", out, "--protocol", "standard", "--model", "resnet18", "--set", "models=1",
                         "--set", "steps=2")
    assert code == 0 and len([e for _, e in iter_eval_records(out)]) == 4  # done already: nothing new
    code, table, err = cli("table", out, "--view", "evals")
    assert code == 0 and "digits IPC 1 ratbptt convnet" in table and "resnet18" in table
    code, _, err = cli("eval", out, "--protocol", "ratbptt")  # needs a validation split
    assert code == 2 and "--validation-size" in err
    code, _, err = cli("eval", out, "--protocol", "nope")
    assert code == 2 and "protocol" in err
