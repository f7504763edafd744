"""harness.evaluation.hardness and its table view, with the forgetting scores it buckets
(harness.train.forgetting): forgetting counts, bucketing, the scoring run, its cache, records, tables.

Every test gets its own empty ``$DDBENCH_CACHE``. The training tests use a linear model on a
2-D toy problem with a known answer and a small ConvNet on the bundled ``digits``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from pydantic import ValidationError

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("harness") is None:  # run from a plain checkout, not installed
    sys.path.insert(0, str(REPO))

from conftest import make_record, typed  # noqa: E402
from harness.data import DataConfig, DatasetSplits, load_dataset  # noqa: E402
from harness.engine import InnerOptimizerConfig  # noqa: E402
from harness.evaluation.hardness import (Hardness, HardnessConfig, bucket_accuracy, cache_key,  # noqa: E402
                                         cache_path, hardness_buckets, load_or_compute)
from harness.models import ModelConfig, create_model  # noqa: E402
from harness.train import forgetting  # noqa: E402
from harness.train.forgetting import (ForgettingCounts, forgetting_counts, hardness_key,  # noqa: E402
                                      training_history)
from harness.report import parse_record  # noqa: E402
from harness.report.views.hardness import hardness_table  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _history(*columns: str) -> torch.Tensor:
    """A [T, N] history from one string of 0/1 per example (its observations in time order)."""
    return torch.tensor([[c == "1" for c in col] for col in columns]).T


def _scores(counts, never=None, wrong=None) -> ForgettingCounts:
    counts = torch.tensor(counts)
    never = torch.zeros_like(counts, dtype=torch.bool) if never is None else torch.tensor(never)
    wrong = torch.zeros_like(counts) if wrong is None else torch.tensor(wrong)
    return ForgettingCounts(counts, never, wrong)


# --- forgetting counts ---------------------------------------------------------------------


def test_forgetting_counts_hand_written():
    h = _history(
        "0000",  # never learned
        "0111",  # learned once, never forgotten
        "1111",  # always right
        "1010",  # oscillating: forgotten twice
        "0101",  # learned, forgotten, learned again: one event
        "1001",  # forgotten once, relearned
        "1110",  # forgotten at the last observation
    )
    counts, never, wrong = forgetting_counts(h)
    assert counts.tolist() == [0, 0, 0, 2, 1, 1, 1]
    assert never.tolist() == [True, False, False, False, False, False, False]
    assert wrong.tolist() == [4, 1, 0, 2, 2, 2, 1]
    assert counts.dtype == torch.int64


def test_forgetting_counts_rejects_non_bool_or_wrong_rank():
    with pytest.raises(ValueError, match="bool"):
        forgetting_counts(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\[T, N\]"):
        forgetting_counts(torch.zeros(3, dtype=torch.bool))


def test_never_learned_ranks_above_every_forgettable_example():
    scores = forgetting_counts(_history("0000", "1010", "1111", "0111", "1000"))
    key = hardness_key(scores, "none")
    assert key[0] > key.max() - 1 and key[0] > key[1] > key[4] > key[2]
    assert key[2] == key[3]  # same count, tie_break="none": tied
    key = hardness_key(scores)  # tie_break="misclassified": learned later ranks harder
    assert key[3] > key[2]
    with pytest.raises(ValueError, match="tie_break"):
        hardness_key(scores, "loss")


# --- buckets ----------------------------------------------------------------------------------


def test_buckets_without_ties_are_balanced_and_ordered():
    for n in range(1, 40):
        for asked in (1, 2, 3, 4, 7):
            b = hardness_buckets(_scores(list(range(n))), asked)
            sizes = torch.bincount(b).tolist()
            assert len(sizes) == min(n, asked) and sum(sizes) == n
            assert max(sizes) - min(sizes) <= 1, (n, asked, sizes)
            assert torch.all(b[1:] >= b[:-1])  # scores ascending -> buckets non-decreasing
    assert hardness_buckets(_scores([]), 4).shape == (0,)


def test_buckets_keep_ties_together_and_put_never_learned_last():
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        n = int(torch.randint(5, 200, (1,), generator=gen))
        counts = torch.randint(0, 4, (n,), generator=gen) * (torch.rand(n, generator=gen) < 0.6)
        never = torch.rand(n, generator=gen) < 0.1
        wrong = torch.randint(0, 5, (n,), generator=gen)
        scores = ForgettingCounts(torch.where(never, 0, counts), never, torch.where(never, 10, wrong))
        for tie_break in ("none", "misclassified"):
            key = hardness_key(scores, tie_break)
            b = hardness_buckets(scores, 4, tie_break)
            ids = torch.unique(b)
            assert ids.tolist() == list(range(len(ids))) and len(ids) <= 4  # consecutive, at most asked
            for v in torch.unique(key):
                assert len(torch.unique(b[key == v])) == 1, "a tie was split"
            order = torch.argsort(key, stable=True)
            assert torch.all(b[order][1:] >= b[order][:-1]), "a harder example sits in an easier bucket"
            if never.any():
                assert torch.all(b[never] == b.max())


def test_a_large_tie_fills_one_bucket_and_the_rest_share_the_others():
    scores = _scores([0] * 70 + [1] * 10 + [2] * 10 + [3] * 10)
    b = hardness_buckets(scores, 4)
    assert torch.all(b[:70] == 0)  # the 70 tied zeros stay together, in the easiest bucket
    assert torch.bincount(b).tolist() == [70, 10, 10, 10]
    scores = _scores([0] * 70 + [1] * 10 + [2] * 20, never=[False] * 95 + [True] * 5)
    assert torch.bincount(hardness_buckets(scores, 4, "none")).tolist() == [70, 10, 15, 5]
    assert torch.bincount(hardness_buckets(_scores([0] * 5 + [1] * 5), 4)).tolist() == [5, 5]  # 2 distinct
    with pytest.raises(ValueError):
        hardness_buckets(scores, 0)


def test_bucket_accuracy_hand_built():
    correct = torch.tensor([[1, 1, 1, 0, 0, 0],
                            [1, 0, 1, 1, 0, 1]], dtype=torch.bool)
    buckets = torch.tensor([0, 0, 1, 1, 2, 2])
    scores = _scores([0, 0, 1, 2, 3, 0], never=[False, False, False, False, False, True], wrong=[0, 1, 2, 2, 3, 4])
    rows = bucket_accuracy(correct, buckets, scores)
    assert [r["label"] for r in rows] == ["easiest", "bucket 1", "hardest"]
    assert [r["n"] for r in rows] == [2, 2, 2]
    assert [r["accuracy_per_model"] for r in rows] == [[1.0, 0.5], [0.5, 1.0], [0.0, 0.5]]
    assert [r["accuracy_mean"] for r in rows] == [0.75, 0.75, 0.25]
    assert [r["accuracy_std"] for r in rows] == [0.25, 0.25, 0.25]
    assert (rows[1]["score_min"], rows[1]["score_max"]) == (1, 2)
    assert (rows[2]["score_min"], rows[2]["score_max"], rows[2]["n_never_learned"]) == (3, 3, 1)
    assert (rows[2]["misclassified_min"], rows[2]["misclassified_max"]) == (3, 4)
    only_never = bucket_accuracy(correct[:, 5:], torch.tensor([0]), _scores([0], never=[True], wrong=[4]))
    assert only_never[0]["score_min"] is None and only_never[0]["label"] == "all"
    with pytest.raises(ValueError):
        bucket_accuracy(correct, buckets[:5])


# --- the scoring run on a toy problem with a known answer ------------------------------------


def _toy(gen: torch.Generator, n: int, flipped: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """2-D points, class = sign of x0, |x0| in [1, 3]; the first ``flipped`` ones get the wrong label."""
    y = torch.arange(n) % 2
    x = torch.stack([(1 + 2 * torch.rand(n, generator=gen)) * (2 * y - 1), torch.randn(n, generator=gen)], 1)
    mislabeled = torch.arange(n) < flipped
    return x, torch.where(mislabeled, 1 - y, y), mislabeled


def test_toy_problem_mislabeled_points_are_the_hardest():
    gen = torch.Generator().manual_seed(0)
    train_x, train_y, bad_train = _toy(gen, 200, 8)
    test_x, test_y, bad_test = _toy(gen, 60, 6)
    epochs = 12
    train_h, test_h = training_history(
        lambda: nn.Linear(2, 2), train_x, train_y, test_x, test_y, epochs=epochs, batch_size=16,
        optimizer=InnerOptimizerConfig(name="sgd", lr=0.1, momentum=0.0), seed=3)
    assert train_h.shape == (epochs, 200) and test_h.shape == (epochs, 60)

    train = forgetting_counts(train_h)
    # A linear model cannot fit a point deep in the other class: its label is never (or, at the
    # random initialisation only, once) predicted, so it is never learned or forgotten right away.
    assert torch.all(train.never_learned[bad_train] | (train.counts[bad_train] >= 1))
    assert torch.all(train.misclassified[bad_train] >= epochs - 1)
    # Clean points, all at distance >= 1 from the boundary x0 = 0, are learned and never forgotten.
    assert torch.all(train.counts[~bad_train] == 0) and not train.never_learned[~bad_train].any()
    buckets = hardness_buckets(train, 4)
    assert torch.all(buckets[bad_train] == buckets.max())

    # Held-out points checked after every epoch: exactly the mislabeled ones are never learned,
    # and every clean one is right at every checkpoint.
    test = forgetting_counts(test_h)
    assert torch.equal(test.never_learned, bad_test)
    assert torch.all(test.misclassified[~bad_test] == 0) and torch.all(test.counts == 0)


def test_training_history_is_deterministic_and_leaves_the_global_rng_alone():
    gen = torch.Generator().manual_seed(1)
    x, y, _ = _toy(gen, 64, 10)
    kwargs = dict(epochs=4, batch_size=8, optimizer=InnerOptimizerConfig(name="sgd", lr=0.5, momentum=0.0))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = training_history(lambda: nn.Linear(2, 2), x, y, x, y, seed=7, **kwargs)
    assert torch.equal(torch.get_rng_state(), before)
    b = training_history(lambda: nn.Linear(2, 2), x, y, x, y, seed=7, **kwargs)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# --- the cache ------------------------------------------------------------------------------------


def _tiny_data(normalize: bool = True) -> DatasetSplits:
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(48) % 3
    x = torch.randn(48, 1, 8, 8, generator=gen) + y.view(-1, 1, 1, 1).float()
    return DatasetSplits("tiny", x[:36], y[:36], x[36:], y[36:], 3, ("a", "b", "c"),
                         {"dataset": "tiny", "normalize": {"mean": [0.0]} if normalize else None})


TINY_MODEL = ModelConfig(width=4, depth=1)
TINY_CFG = HardnessConfig(epochs=3, batch_size=8)


def test_second_call_reads_the_cache(monkeypatch, _cache):
    data = _tiny_data()
    first = load_or_compute(data, TINY_MODEL, TINY_CFG)
    assert first.cache_file is not None and first.cache_file.is_file()
    assert first.cache_file.parent == _cache / "hardness" and first.cache_file.name.startswith("tiny-")

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of reading the cache")

    monkeypatch.setattr(forgetting, "training_history", no_training)
    second = load_or_compute(data, TINY_MODEL, TINY_CFG)
    assert torch.equal(first.train_history, second.train_history)
    assert torch.equal(first.test_history, second.test_history)
    assert torch.equal(first.test_buckets, second.test_buckets)


@pytest.mark.parametrize("damage", ["garbage", "foreign", "wrong_shape"])
def test_a_corrupt_cache_file_is_rebuilt_with_a_warning(monkeypatch, caplog, damage):
    data = _tiny_data()
    good = load_or_compute(data, TINY_MODEL, TINY_CFG)
    path = good.cache_file
    if damage == "garbage":
        path.write_bytes(b"not a torch file")
    elif damage == "foreign":
        torch.save({"something": "else"}, path)
    else:
        torch.save({"key": cache_key(data, TINY_MODEL, TINY_CFG), "train_history": torch.zeros(2, 2, dtype=torch.bool),
                    "test_history": torch.zeros(2, 2, dtype=torch.bool)}, path)
    calls = []
    real = forgetting.training_history
    monkeypatch.setattr(forgetting, "training_history", lambda *a, **k: calls.append(1) or real(*a, **k))
    with caplog.at_level(logging.WARNING, logger="harness.train.forgetting"):
        again = load_or_compute(data, TINY_MODEL, TINY_CFG)
    assert calls == [1] and "ignoring the forgetting cache file" in caplog.text
    assert torch.equal(again.test_history, good.test_history)  # deterministic: same result
    assert torch.load(path, weights_only=True)["test_history"].shape == good.test_history.shape  # rewritten


def test_cache_key_changes_with_what_changes_the_scores():
    data = _tiny_data()
    base = cache_path(cache_key(data, TINY_MODEL, TINY_CFG))
    changed = [
        cache_key(data, TINY_MODEL, TINY_CFG.model_copy(update={"epochs": 4})),
        cache_key(data, TINY_MODEL, TINY_CFG.model_copy(update={"seed": 1})),
        cache_key(data, TINY_MODEL, TINY_CFG.model_copy(update={"batch_size": 4})),
        cache_key(data, ModelConfig(width=8, depth=1), TINY_CFG),
        cache_key(_tiny_data(normalize=False), TINY_MODEL, TINY_CFG),
    ]
    paths = {cache_path(k) for k in changed}
    assert base not in paths and len(paths) == len(changed)
    # Settings that do not change the scores share the file (the bucketing is applied to the cached run).
    for same in ({"enabled": False}, {"test_batch": 7}, {"buckets": 3}, {"tie_break": "none"}):
        assert cache_path(cache_key(data, TINY_MODEL, TINY_CFG.model_copy(update=same))) == base


def test_unwritable_cache_dir_costs_time_not_correctness(monkeypatch, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("DDBENCH_CACHE", str(blocker))  # a file, so hardness/ cannot be created below it
    with caplog.at_level(logging.WARNING, logger="harness.train.forgetting"):
        scores = load_or_compute(_tiny_data(), TINY_MODEL, TINY_CFG)
    assert scores.cache_file is None and "cannot write" in caplog.text
    assert scores.test_history.shape == (3, 12)


def test_config_is_strict():
    with pytest.raises(ValidationError):
        HardnessConfig(epoch=3)
    with pytest.raises(ValidationError):
        HardnessConfig(epochs=1)
    with pytest.raises(ValidationError):
        HardnessConfig(tie_break="loss")


# --- the real digits dataset, through the record extension ----------------------------------


def test_digits_record_section():
    data = load_dataset(DataConfig(name="digits"))
    model = ModelConfig(width=16, depth=1)
    cfg = HardnessConfig(epochs=6)
    # Well-trained classifiers independent of the scoring run (other seeds): 2 "evaluated models".
    correct = torch.stack([
        training_history(lambda: create_model(model, data.image_shape, data.num_classes),
                         data.train_x, data.train_y, data.test_x, data.test_y, epochs=10, batch_size=128,
                         optimizer=cfg.optimizer, seed=seed)[1][-1]
        for seed in (11, 12)
    ])
    assert correct.double().mean() > 0.9
    ctx = SimpleNamespace(model=model, data=data, eval_result=SimpleNamespace(correct=correct), progress=False)
    section = Hardness().run(cfg, ctx)
    json.dumps(section, allow_nan=False)  # goes into a JSON record as is

    scores = load_or_compute(data, model, cfg)  # from the cache the extension wrote
    assert section["cache_file"] == str(scores.cache_file)
    n_test = data.test_x.shape[0]
    assert scores.test_buckets.shape == (n_test,)
    rows = section["buckets"]
    assert [r["bucket"] for r in rows] == list(range(len(rows))) and len(rows) >= 2
    assert sum(r["n"] for r in rows) == n_test  # the buckets cover the test set
    overall = sum(r["n"] * r["accuracy_mean"] for r in rows) / n_test
    assert overall == pytest.approx(float(correct.double().mean()))
    # Easy test examples are easier for other networks too.
    assert rows[0]["accuracy_mean"] >= rows[-1]["accuracy_mean"]
    assert rows[0]["accuracy_mean"] > 0.95
    assert section["scoring_run"]["final_test_accuracy"] > 0.8
    assert section["score"].startswith("test examples ordered by forgetting count over 6")

    # the suite's typed [hardness] table
    assert Hardness().run(HardnessConfig(enabled=False), ctx)["skipped"] == "disabled in the suite"
    ctx.eval_result = SimpleNamespace(correct=correct[:, :10])
    with pytest.raises(ValueError, match="test examples"):
        Hardness().run(cfg, ctx)


# --- the table --------------------------------------------------------------------------------


def _record(method: str, ipc: int, seed: int, accs: list[list[float]], dataset: str = "digits") -> dict:
    buckets = [
        {"bucket": k, "label": label, "n": 10, "score_min": k, "score_max": k, "n_never_learned": int(k == 1),
         "misclassified_min": 0, "misclassified_max": 3, "accuracy_per_model": a,
         "accuracy_mean": sum(a) / len(a), "accuracy_std": 0.0}
        for k, (label, a) in enumerate(zip(["easiest", "hardest"], accs))
    ]
    overall = [(e + h) / 2 for e, h in zip(*accs)]
    return make_record(method, dataset, ipc, seed, accs=tuple(overall),
                       hardness={"config": HardnessConfig(epochs=5).model_dump(mode="json"), "buckets": buckets,
                                 "score": "test examples ordered by forgetting count over 5 per-epoch checkpoints"})


def test_hardness_table_renders_from_records():
    records = [
        _record("rat_bptt", 10, 0, [[0.9, 0.8], [0.2, 0.3]]),
        _record("rat_bptt", 10, 1, [[1.0, 0.9], [0.4, 0.1]]),  # pooled with seed 0
        _record("random_real", 10, 0, [[0.5, 0.7], [0.1, 0.1]]),
        _record("rat_bptt", 1, 0, [[0.6, 0.6], [0.0, 0.2]]),
        make_record("no_section", "digits", 1, 0, accs=(0.5,)),
    ]
    records = typed(records)
    text = hardness_table(records, "github")
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert "easiest" in lines[0] and "hardest" in lines[0] and "all" in lines[0]
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [row[:2] for row in body] == [["random_real", "10"], ["rat_bptt", "1"], ["rat_bptt", "10"]]
    assert body[2][2:] == ["90.00", "25.00", "57.50", "2x2"]  # four models pooled over two seeds
    assert "no_section" not in text
    assert "hardest: n=10, forgotten once + 1 never learned, wrong at 0-3 of 5 checkpoints" in text

    latex = hardness_table(records, "latex").splitlines()
    assert latex[0].startswith("% digits: test accuracy") and "\\begin{tabular}{llllll}" in latex
    assert any(line.split("&")[0].strip() == r"random\_real" for line in latex)  # escaped
    rows = hardness_table(records, "csv").strip().splitlines()
    assert rows[0].startswith("dataset,method,ipc,bucket") and len(rows) == 1 + 3 * 2
    for fmt in ("github", "latex", "csv"):  # no section: an empty view (``render_view`` says so)
        assert hardness_table([records[-1]], fmt) == ""
    with pytest.raises(ValueError):
        hardness_table(records, "html")


def test_hardness_table_latex_escapes_every_name():
    records = [_record("random_real", 10, 0, [[0.5, 0.7], [0.1, 0.1]]),
               _record("rat_bptt", 10, 0, [[0.9, 0.8], [0.2, 0.3]], dataset="my_digits")]
    records[1]["hardness"]["buckets"][0]["label"] = "easy_ones"
    latex = hardness_table(typed(records), "latex")
    assert r"random\_real" in latex and r"rat\_bptt" in latex
    assert "_" not in latex.replace(r"\_", "")  # names, headers, titles and legend lines
    comments = [line for line in latex.splitlines() if line.startswith("%")]
    assert comments[3].startswith(r"% my\_digits: test accuracy (\%) per hardness bucket")
    assert r"% easy\_ones: n=10, forgotten 0 times, wrong at 0-3 of 5 checkpoints" in comments
    assert any(line.split("&")[2].strip() == r"easy\_ones" for line in latex.splitlines() if "&" in line)


def test_cli_hardness_view_without_sections_exits_2(cli, tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    (root / "r.json").write_text(json.dumps(make_record("random_real", outer_steps=0)))
    code, out, err = cli("table", root, "--view", "hardness", "--format", "csv")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddbench: error: ") and "--view" in lines[0]


def test_hardness_view_refuses_to_pool_different_configs():
    from harness.core.errors import DDBenchError

    a = {**_record("rat_bptt", 10, 0, [[0.9, 0.8], [0.2, 0.3]]), "config_id": "cfg-a", "run_id": "a"}
    b = {**_record("rat_bptt", 10, 1, [[0.9, 0.8], [0.2, 0.3]]), "config_id": "cfg-b", "run_id": "b"}
    with pytest.raises(DDBenchError) as err:
        hardness_table(typed([a, b]))
    assert err.value.field == "config_id"
