"""The evaluations as their authors' code runs them: RaT-BPTT's class-sampled batches and its
test-selected number (kept apart from the validation-selected accuracy), and DSA's per-image
augmentation, op by op against the reference formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_suite
from harness.data import DataConfig, DatasetSplits, load_dataset
from harness.engine.optim import InnerOptimizerConfig
from harness.evaluation import evaluate, protocol_config
from harness.evaluation.protocols import TEST_SELECTED_LABEL, TrainRecipe, best_on_test, class_sampled_rows
from harness.evaluation.protocols.base import train_network
from harness.evaluation.protocols.builtin import select_budget
from harness.method import DistilledSet
from harness.models import ModelConfig
from harness.models.dsa import DSAConfig, dsa_augment
from harness.report import iter_records

NET = ModelConfig(width=8, depth=1)


@pytest.fixture(scope="module")
def digits_val():
    return load_dataset(DataConfig(name="digits", validation_size=200))


def distilled_from(data: DatasetSplits, ipc: int) -> DistilledSet:
    rows = torch.cat([(data.train_y == c).nonzero().flatten()[:ipc] for c in range(data.num_classes)])
    return DistilledSet(data.train_x[rows], data.train_y[rows], data.num_classes, ipc)


# ----------------------------------------------------------------------------- class-sampled batches


def test_class_sampled_rows_draw_batch_per_class_of_classes_per_step():
    gen = torch.Generator().manual_seed(0)
    seen_classes = set()
    for _ in range(200):
        rows = class_sampled_rows(10, 5, 2, 3, gen)
        classes = rows // 5
        assert len(rows) == 6 and len(set(rows.tolist())) == 6
        assert sorted(torch.bincount(classes, minlength=10).tolist())[-3:] == [2, 2, 2]  # 3 classes x 2 rows
        assert torch.equal(rows, rows.sort().values)  # class-major order, as the official subsample
        seen_classes |= set(classes.tolist())
    assert seen_classes == set(range(10))
    assert torch.equal(class_sampled_rows(10, 5, None, None, gen), torch.arange(50))  # None: the whole set
    assert torch.equal(class_sampled_rows(10, 5, 9, 10, gen), torch.arange(50))  # min(batch_per_class, ipc)
    one_each = class_sampled_rows(10, 5, 1, None, gen)
    assert torch.equal(one_each // 5, torch.arange(10))  # every class, one row each


def _batches_seen(recipe: TrainRecipe, images: torch.Tensor, labels: torch.Tensor, steps: int) -> list[list[int]]:
    """The rows of every step's batch in :func:`train_network` (each image's pixels are its row)."""
    seen = []

    def record(x, gen):
        seen.append(x[:, 0, 0, 0].round().long().tolist())
        return x

    recipe.augment = record
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(images[0].numel(), int(labels.max()) + 1))
    train_network(net, images, labels, recipe, torch.Generator().manual_seed(1), stop=steps)
    return seen


def test_train_network_takes_class_sampled_batches_and_the_whole_set_without_them():
    classes, ipc = 6, 4
    images = torch.arange(classes * ipc, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    labels = torch.arange(classes).repeat_interleave(ipc)
    sgd = InnerOptimizerConfig(name="sgd", lr=1e-3)
    sampled = _batches_seen(TrainRecipe(sgd, 50, None, None, batch_per_class=3, classes_per_step=2), images, labels,
                            50)
    assert len(sampled) == 50
    for rows in sampled:
        per_class = torch.bincount(torch.tensor(rows) // ipc, minlength=classes)
        assert sorted(per_class.tolist()) == [0, 0, 0, 0, 3, 3] and len(set(rows)) == 6
    assert len({tuple(r) for r in sampled}) > 1
    whole = _batches_seen(TrainRecipe(sgd, 5, None, None), images, labels, 5)
    assert whole == [list(range(classes * ipc))] * 5
    with pytest.raises(ValueError, match="class-major"):
        _batches_seen(TrainRecipe(sgd, 5, None, None, batch_per_class=1), images, labels.flip(0), 1)


def test_ratbptt_class_sampled_config_stays_out_of_the_dump_at_its_default(digits_val):
    plain = protocol_config({"protocol": "ratbptt"}).model_dump(mode="json")
    assert "batch_per_class" not in plain and "classes_per_step" not in plain  # the committed run ids
    sampled = protocol_config({"protocol": "ratbptt", "batch_per_class": 1, "classes_per_step": 5})
    assert sampled.model_dump(mode="json")["batch_per_class"] == 1
    assert protocol_config(sampled.model_dump(mode="json")) == sampled
    with pytest.raises(Exception, match="two ways to batch"):
        protocol_config({"protocol": "ratbptt", "batch_size": 10, "batch_per_class": 1})
    cfg = protocol_config({"protocol": "ratbptt", "models": 1, "budgets": [3, 6], "batch_per_class": 2,
                           "classes_per_step": 4})
    result = evaluate(distilled_from(digits_val, 3), digits_val, cfg, NET, seed=0, device=torch.device("cpu"))
    assert result.details["batch"] == {"batch_per_class": 2, "classes_per_step": 4, "images_per_step": 8}


# ----------------------------------------------------------------------------- the test-selected maximum


def test_best_on_test_is_the_max_over_budgets_and_checkpoints_earliest_on_a_tie():
    def budgets(*accs):
        return [{"steps": s, "test_accuracy_per_model": a} for s, a in zip((300, 600, 1000), accs)]

    best = best_on_test([(10, budgets([0.5, 0.7], [0.8, 0.6], [0.1, 0.1])),
                         (20, budgets([0.7, 0.7], [0.6, 0.6], [0.2, 0.2])),
                         (30, budgets([0.3, 0.3], [0.6, 0.8], [0.7, 0.7]))])
    # 0.7 is reached at step 10 (600), step 20 (300) and step 30 (600, 1000): the first one wins.
    assert best["accuracy_mean"] == pytest.approx(0.7) and (best["at_outer_step"], best["budget"]) == (10, 600)
    assert best["accuracy_per_model"] == [0.8, 0.6] and best["accuracy_std"] == pytest.approx(0.1)
    assert best["checkpoints"] == 3 and best["label"] == TEST_SELECTED_LABEL
    assert best_on_test([]) is None


def test_the_test_selected_max_never_moves_the_validation_selected_accuracy(digits_val):
    cfg = protocol_config({"protocol": "ratbptt", "models": 2, "budgets": [2, 5, 12, 30]})
    d = distilled_from(digits_val, 2)
    result = evaluate(d, digits_val, cfg, NET, seed=0, device=torch.device("cpu"))
    budgets = result.details["budgets"]
    means = {b["steps"]: sum(b["test_accuracy_per_model"]) / 2 for b in budgets}
    best = result.test_selected
    assert best["accuracy_mean"] == pytest.approx(max(means.values()))
    assert best["budget"] == min(s for s, m in means.items() if m == max(means.values()))
    assert best["label"] == "as published: test-selected upper bound" and best["at_outer_step"] is None
    selected = select_budget({b["steps"]: [b["validation_accuracy"]] for b in budgets})
    assert result.details["selected_budget"] == selected and result.accuracy_mean == pytest.approx(means[selected])
    # Scrambled test labels move every test number, the test-selected one included; the
    # validation selection, hence which budget's networks give the accuracy, does not move.
    gen = torch.Generator().manual_seed(5)
    scrambled = DatasetSplits(**{**digits_val.__dict__, "test_y": digits_val.test_y[torch.randperm(
        len(digits_val.test_y), generator=gen)]})
    other = evaluate(d, scrambled, cfg, NET, seed=0, device=torch.device("cpu"))
    assert other.details["selected_budget"] == selected
    assert other.test_selected["accuracy_mean"] != best["accuracy_mean"]
    assert other.test_selected["accuracy_mean"] >= other.accuracy_mean  # an upper bound of the record's number


RATBPTT = {"protocol": "ratbptt", "models": 1, "budgets": [2, 5], "augment": {"ops": []}}


@pytest.mark.parametrize("same_protocol", [True, False])
def test_the_record_keeps_the_test_selected_max_over_checkpoints(write_suite, cli, tmp_path, same_protocol):
    anytime = RATBPTT if same_protocol else {**RATBPTT, "budgets": [2, 6]}
    suite = tiny_suite(methods={"tbptt": {"unroll": 3, "window": 2}}, budget={"outer_steps": 5,
                                                                               "checkpoint_minutes": 10.0},
                       data={"digits": {"validation_size": 100}}, eval=RATBPTT,
                       anytime={"enabled": True, "every_steps": 2, "protocol": anytime})
    assert cli("run", write_suite(suite), "--out", tmp_path / "out", "-q")[0] == 0
    (record,) = [r for _, r in iter_records(tmp_path / "out")]
    curve = record.anytime.curve
    assert [p.step for p in curve] == [2, 4, 5] and all(len(p.budgets) == 2 for p in curve)
    final = record.eval.details["budgets"]
    candidates = [(5, b["steps"], b["test_accuracy"]) for b in final]
    if same_protocol:
        assert [b["test_accuracy"] for b in curve[-1].budgets] == [b["test_accuracy"] for b in final]
        candidates = [(p.step, b["steps"], b["test_accuracy"]) for p in curve[:-1] for b in p.budgets] + candidates
    best = record.eval.test_selected
    top = max(c[2] for c in candidates)
    assert best.accuracy_mean == pytest.approx(top)
    assert (best.at_outer_step, best.budget) == next(c[:2] for c in candidates if c[2] == pytest.approx(top))
    assert best.checkpoints == (3 if same_protocol else 1) and best.label == TEST_SELECTED_LABEL
    selected = next(b for b in final if b["steps"] == record.eval.details["selected_budget"])
    assert record.eval.accuracy_mean == pytest.approx(selected["test_accuracy"])  # never the test-selected one


# ----------------------------------------------------------------------------- DSA against the reference


def reference_crop(x: torch.Tensor, tx: int, ty: int) -> torch.Tensor:
    """DSA's ``rand_crop`` for one translation (rows by tx, columns by ty), verbatim."""
    grid_batch, grid_x, grid_y = torch.meshgrid(torch.arange(x.size(0)), torch.arange(x.size(2)),
                                                torch.arange(x.size(3)), indexing="ij")
    grid_x = torch.clamp(grid_x + tx + 1, 0, x.size(2) + 1)
    grid_y = torch.clamp(grid_y + ty + 1, 0, x.size(3) + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return x_pad.permute(0, 2, 3, 1).contiguous()[grid_batch, grid_x, grid_y].permute(0, 3, 1, 2)


def reference_cutout(x: torch.Tensor, ox: int, oy: int, ratio: float = 0.5) -> torch.Tensor:
    """DSA's ``rand_cutout`` for one offset, verbatim."""
    size = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    grid_batch, grid_x, grid_y = torch.meshgrid(torch.arange(x.size(0)), torch.arange(size[0]),
                                                torch.arange(size[1]), indexing="ij")
    grid_x = torch.clamp(grid_x + ox - size[0] // 2, min=0, max=x.size(2) - 1)
    grid_y = torch.clamp(grid_y + oy - size[1] // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype)
    mask[grid_batch, grid_x, grid_y] = 0
    return x * mask.unsqueeze(1)


def test_dsa_crop_and_cutout_are_the_references_on_a_non_square_image():
    h, w = 16, 24  # shifts up to 2 rows and 3 columns; a cutout of 8 x 12
    x = torch.rand(1, 2, h, w).expand(40, -1, -1, -1).clone()
    crops = dsa_augment(x, DSAConfig(ops=("crop",)), torch.Generator().manual_seed(0))
    allowed = {(tx, ty): reference_crop(x[:1], tx, ty)[0] for tx in range(-2, 3) for ty in range(-3, 4)}
    shifts = [next(k for k, ref in allowed.items() if torch.equal(c, ref)) for c in crops]  # each one of them
    assert len(set(shifts)) > 10 and {abs(tx) for tx, _ in shifts} == {0, 1, 2} and {abs(ty) for _, ty in shifts} \
        == {0, 1, 2, 3}
    cuts = dsa_augment(x, DSAConfig(ops=("cutout",)), torch.Generator().manual_seed(0))
    allowed = {(ox, oy): reference_cutout(x[:1], ox, oy)[0] for ox in range(h + 1) for oy in range(w + 1)}
    offsets = [next(k for k, ref in allowed.items() if torch.equal(c, ref)) for c in cuts]
    assert len(set(offsets)) > 20


def test_dsa_color_scale_and_rotate_are_the_reference_formulas():
    x = torch.rand(8, 3, 12, 12, dtype=torch.float64)
    for op in ("color", "scale", "rotate"):
        gen = torch.Generator().manual_seed(2)
        out = dsa_augment(x, DSAConfig(ops=(op,)), gen)
        gen = torch.Generator().manual_seed(2)
        torch.randint(1, (1,), generator=gen)  # the op draw of mode "one" (a single op)
        r = [torch.rand(8, generator=gen, dtype=torch.float64).view(8, 1, 1, 1) for _ in range(3 if op == "color"
                                                                                                   else 2)]
        if op == "color":  # DSA's rand_brightness, rand_saturation, rand_contrast
            want = x + (r[0] - 0.5) * 1.0
            mean = want.mean(dim=1, keepdim=True)
            want = (want - mean) * (r[1] * 2.0) + mean
            mean = want.mean(dim=[1, 2, 3], keepdim=True)
            want = (want - mean) * (r[2] + 0.5) + mean
        else:
            if op == "scale":  # rand_scale: sx, sy in [1/1.2, 1.2]
                sx, sy = (v.flatten() * (1.2 - 1 / 1.2) + 1 / 1.2 for v in r)
                theta = [[[sx[i], 0, 0], [0, sy[i], 0]] for i in range(8)]
            else:  # rand_rotate: within +-15 degrees
                a = (r[0].flatten() - 0.5) * 2 * 15.0 / 180 * float(torch.pi)
                theta = [[[torch.cos(a[i]), torch.sin(-a[i]), 0], [torch.sin(a[i]), torch.cos(a[i]), 0]]
                         for i in range(8)]
            theta = torch.tensor(theta, dtype=torch.float64)
            want = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=True), align_corners=True)
        torch.testing.assert_close(out, want, rtol=0, atol=1e-12)


def test_dsa_mode_one_picks_one_op_for_the_whole_batch_even_per_image():
    x = torch.rand(1, 3, 16, 16).expand(32, -1, -1, -1).clone()
    pixels = set(x.unique().tolist()) | {0.0}
    for seed in range(6):
        out = dsa_augment(x, DSAConfig(ops=("crop", "color")), torch.Generator().manual_seed(seed))
        is_crop = [set(im.unique().tolist()) <= pixels for im in out]
        assert all(is_crop) or not any(is_crop)


def test_the_dsa_protocol_default_is_per_image_and_changes_its_dump():
    cfg = protocol_config({"protocol": "dsa"})
    assert cfg.dsa.siamese is False and cfg.model_dump(mode="json")["dsa"]["siamese"] is False
    assert protocol_config({"protocol": "dsa", "dsa": {"siamese": True}}).dsa.siamese is True
