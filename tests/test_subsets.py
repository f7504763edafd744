"""Subset curves (harness/evaluation/subsets.py and its view): which subsets, exactly which images, and the table."""

from __future__ import annotations

import csv
import io
import json
import types

import pytest
import torch

from conftest import make_record, typed
from harness.data import DatasetSplits
from harness.evaluation import EvalProtocol, EvalResult, subsets
from harness.evaluation.subsets import SubsetEvalConfig, Subsets, block_prefixes, subset_curve, subset_plan
from harness.method import DistilledSet
from harness.models import ModelConfig
from harness.report.tables import FORMATS
from harness.report.views.subsets import subset_table as _subset_table


def subset_table(records, fmt="github"):
    """The view, on records given as JSON (``make_record``'s)."""
    return _subset_table(typed(records), fmt)

CLASSES, IPC = 3, 6


def coded_set(ipc=IPC, blocks=None) -> DistilledSet:
    """Every pixel of row (c, p) holds 100 c + p: a subset's images say which rows they are."""
    code = (100 * torch.arange(CLASSES)[:, None] + torch.arange(ipc)[None, :]).flatten().float()
    images = code.view(-1, 1, 1, 1).expand(-1, 1, 4, 4).clone()
    labels = torch.arange(CLASSES).repeat_interleave(ipc)
    return DistilledSet(images, labels, CLASSES, ipc, blocks=blocks)


def decode(d: DistilledSet) -> list[tuple[int, int]]:
    return [divmod(int(v), 100) for v in d.images[:, 0, 0, 0]]


@pytest.fixture
def captured(monkeypatch):
    """Replace the evaluation by a recorder; accuracy = mean code / 1000, so results differ by subset."""
    calls = []

    def fake_evaluate(distilled, data, protocol, model_cfg, *, seed, device, dtype):
        calls.append({"set": distilled, "protocol": protocol, "seed": seed, "model": model_cfg})
        acc = float(distilled.images.mean()) / 1000
        return EvalResult([acc] * protocol.models, torch.zeros(protocol.models, 5, dtype=torch.bool))

    monkeypatch.setattr(subsets, "evaluate", fake_evaluate)
    return calls


RUN_PROTOCOL = EvalProtocol(models=3, steps=5)


def curve(d, cfg, protocol=RUN_PROTOCOL, seed=7):
    return subset_curve(d, None, protocol, ModelConfig(width=8, depth=1), cfg, seed, torch.device("cpu"))


# ---------------------------------------------------------------------------------- the images


def test_every_subset_is_exactly_the_images_it_names(captured):
    blocks = (torch.arange(IPC) // 2).repeat(CLASSES)
    parent = coded_set(blocks=blocks)
    entries = curve(parent, SubsetEvalConfig(enabled=True, draws=3))
    evaluated = {tuple(p for _, p in decode(c["set"]))[: c["set"].ipc]: c["set"] for c in captured}
    assert len(captured) == len(evaluated)  # a subset named twice is evaluated once
    for e in entries:
        sub = evaluated[tuple(e["positions"])]
        assert decode(sub) == [(c, p) for c in range(CLASSES) for p in e["positions"]]
        assert sub.ipc == e["size"] == len(e["positions"])
        assert torch.equal(sub.labels, sub.hard_labels)
        assert torch.equal(sub.blocks, torch.as_tensor(e["positions"]).repeat(CLASSES) // 2)
        want = float(sub.images.mean()) / 1000
        assert e["accuracy_per_model"] == [want] * 3 and e["accuracy_mean"] == pytest.approx(want)
        assert e["accuracy_std"] == pytest.approx(0.0)


def test_soft_labels_follow_their_rows(captured):
    parent = coded_set()
    parent.labels = torch.nn.functional.one_hot(parent.labels, CLASSES).float() + torch.arange(
        CLASSES * IPC).float()[:, None]  # row r's soft label carries r
    curve(parent, SubsetEvalConfig(enabled=True, sizes=[2], prefixes=False, draws=1))
    sub = captured[0]["set"]
    rows = [c * IPC + p for c, p in decode(sub)]
    assert torch.equal(sub.labels, parent.labels[rows])


def test_protocol_models_and_seed_passed_to_every_evaluation(captured):
    run_protocol = EvalProtocol(models=5, steps=5)
    curve(coded_set(), SubsetEvalConfig(enabled=True, sizes=[1], models=2), protocol=run_protocol, seed=11)
    assert captured and all(c["protocol"] == run_protocol.model_copy(update={"models": 2}) for c in captured)
    assert all(c["seed"] == 11 for c in captured)
    captured.clear()
    own = EvalProtocol(models=1, steps=3)
    curve(coded_set(), SubsetEvalConfig(enabled=True, sizes=[1], protocol=own), protocol=run_protocol)
    assert all(c["protocol"] == own for c in captured)


# ---------------------------------------------------------------------------------- which subsets


def test_block_prefixes_follow_blocks():
    assert block_prefixes(coded_set()) == []
    contiguous = coded_set(blocks=(torch.arange(IPC) // 2).repeat(CLASSES))
    assert block_prefixes(contiguous) == [(1, [0, 1]), (2, [0, 1, 2, 3])]
    interleaved = coded_set(blocks=torch.tensor([1, 0, 1, 0, 2, 2]).repeat(CLASSES))
    assert block_prefixes(interleaved) == [(1, [1, 3]), (2, [0, 1, 2, 3])]
    uneven = torch.tensor([0, 0, 1, 1, 2, 2] * (CLASSES - 1) + [0, 1, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="same positions in every class"):
        block_prefixes(coded_set(blocks=uneven))


def test_plan_sizes_draws_and_kinds():
    d = coded_set(blocks=(torch.arange(IPC) // 3).repeat(CLASSES))
    plan = subset_plan(d, SubsetEvalConfig(sizes=[5, 1, 3, 6, 10], draws=3), seed=0)
    kinds = [(e["kind"], e["size"]) for e in plan]
    assert kinds == [("block_prefix", 3)] + [(k, s) for s in (1, 3, 5) for k in ["prefix"] + ["random"] * 3]
    for e in plan:
        assert e["positions"] == sorted(set(e["positions"])) and len(e["positions"]) == e["size"]
        assert all(0 <= p < IPC for p in e["positions"])
        if e["kind"] == "prefix":
            assert e["positions"] == list(range(e["size"]))
    assert {e["draw"] for e in plan if e["kind"] == "random"} == {0, 1, 2}

    every = subset_plan(coded_set(), SubsetEvalConfig(prefixes=False, draws=1), seed=0)
    assert [(e["kind"], e["size"]) for e in every] == [("random", k) for k in range(1, IPC)]
    assert subset_plan(coded_set(ipc=1), SubsetEvalConfig(), seed=0) == []


def test_random_draws_are_seeded_and_stable():
    cfg = SubsetEvalConfig(sizes=[2, 3], draws=4, prefixes=False)
    draws = lambda plan: [e["positions"] for e in plan if e["size"] == 3]
    first = subset_plan(coded_set(), cfg, seed=0)
    assert first == subset_plan(coded_set(), cfg, seed=0)
    assert draws(first) != draws(subset_plan(coded_set(), cfg, seed=1))  # the run seed matters
    assert draws(first) != draws(subset_plan(coded_set(), cfg.model_copy(update={"seed": 5}), seed=0))
    # the draws of one size do not depend on which other sizes are evaluated
    assert draws(first) == draws(subset_plan(coded_set(), cfg.model_copy(update={"sizes": [3]}), seed=0))


@pytest.mark.parametrize("bad, field", [({"sizes": [0, 2]}, "sizes"), ({"draws": -1}, "draws"),
                                        ({"models": 0}, "models"), ({"sizez": [1]}, "sizez")])
def test_invalid_subset_configs(bad, field):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        SubsetEvalConfig(**bad)
    assert err.value.errors()[0]["loc"] == (field,)


# ---------------------------------------------------------------------------------- the record section


def fake_ctx(distilled):
    result = EvalResult([0.5, 0.7], torch.zeros(2, 5, dtype=torch.bool))
    return types.SimpleNamespace(protocol=EvalProtocol(models=2, steps=5), model=ModelConfig(width=8, depth=1), seed=3,
                                 data=None, distilled=distilled, eval_result=result, device=torch.device("cpu"),
                                 dtype=torch.float32, progress=False)


def test_extension_section(captured):
    d = coded_set(blocks=(torch.arange(IPC) // 2).repeat(CLASSES))
    off = Subsets().run(SubsetEvalConfig(), fake_ctx(d))  # the default: disabled
    assert off["skipped"] and not captured
    section = Subsets().run(SubsetEvalConfig(enabled=True, sizes=[2], draws=1, models=1), fake_ctx(d))
    json.dumps(section)
    assert section["ipc"] == IPC and section["blocks"] == 3 and section["protocol"]["models"] == 1
    assert [e["kind"] for e in section["curve"]] == ["block_prefix", "block_prefix", "prefix", "random", "full"]
    full = section["curve"][-1]
    assert full["size"] == IPC and full["accuracy_per_model"] == [0.5, 0.7]  # the record's own evaluation
    assert all(c["seed"] == 3 for c in captured)


# ---------------------------------------------------------------------------------- the table


def record(method, ipc, accs, curve=None, seed=0, dataset="digits", config=None, wraps=None):
    r = make_record(method, dataset, ipc, seed, accs=tuple(accs), method_config=config or {}, wraps=wraps)
    if curve is not None:
        r["subset_curve"] = {"config": {}, "curve": curve,
                             "blocks": 2 if any(e["kind"] == "block_prefix" for e in curve) else None}
    return r


def entry(kind, size, accs, **extra):
    return {"kind": kind, "size": size, "positions": list(range(size)), "accuracy_per_model": accs,
            "accuracy_mean": sum(accs) / len(accs), "accuracy_std": 0.0, **extra}


RECORDS = [
    record("rat_bptt", 4, [0.90, 0.92], curve=[
        entry("prefix", 1, [0.30, 0.34]), entry("prefix", 2, [0.50, 0.52]), entry("random", 2, [0.40, 0.44], draw=0),
        entry("random", 2, [0.42, 0.46], draw=1), entry("full", 4, [0.90, 0.92])]),
    record("rat_bptt", 1, [0.60, 0.62]),
    record("rat_bptt", 2, [0.75, 0.77]),
    record("rat_bptt", 2, [0.79, 0.81], seed=1),  # pooled with seed 0
    record("random_real", 2, [0.55, 0.57]),
    record("boost_dd", 4, [0.88, 0.90], config={"base": "rat_bptt"}, wraps="rat_bptt", curve=[
        entry("block_prefix", 2, [0.70, 0.72], blocks=1), entry("prefix", 2, [0.70, 0.72]),
        entry("full", 4, [0.88, 0.90])]),
    record("rat_bptt", 2, [0.11, 0.11], dataset="other"),  # another dataset: never joined
]


def test_subset_table_joins_direct_records_by_method_dataset_ipc():
    rows = list(csv.DictReader(io.StringIO(subset_table(RECORDS, "csv"))))
    got = {(r["method"], r["ipc"], r["size"], r["series"]): (float(r["accuracy_mean"]), int(r["n"])) for r in rows}
    assert got[("rat_bptt", "4", "2", "prefix")] == (pytest.approx(0.51), 2)
    assert got[("rat_bptt", "4", "2", "random")] == (pytest.approx(0.43), 4)  # two draws pooled
    assert got[("rat_bptt", "4", "2", "direct:rat_bptt")] == (pytest.approx(0.78), 4)  # two seeds pooled
    assert got[("rat_bptt", "4", "1", "direct:rat_bptt")] == (pytest.approx(0.61), 2)
    assert got[("rat_bptt", "4", "2", "direct:random_real")] == (pytest.approx(0.56), 2)
    assert got[("rat_bptt", "4", "4", "prefix")] == (pytest.approx(0.91), 2)  # the full set
    assert ("rat_bptt", "4", "1", "direct:random_real") not in got  # no such record
    assert got[("boost_dd", "4", "2", "block_prefix")] == (pytest.approx(0.71), 2)
    assert got[("boost_dd", "4", "2", "direct:rat_bptt")] == (pytest.approx(0.78), 4)  # its base method
    assert got[("boost_dd", "4", "4", "direct:boost_dd")] == (pytest.approx(0.89), 2)
    assert not any(r["dataset"] == "other" for r in rows)

    text = subset_table(RECORDS, "github")
    assert "digits, boost_dd IPC 4" in text and "digits, rat_bptt IPC 4" in text
    boost_part, rat_part = text.split("\n\n")
    assert "block prefix" in boost_part and "direct rat_bptt" in boost_part
    assert "block prefix" not in rat_part
    row2 = next(line for line in rat_part.splitlines() if line.startswith("| 2 "))
    assert [c.strip() for c in row2.strip("|").split("|")] == ["2", "51.00 ± 1.00 (n=2)", "43.00 ± 2.24 (n=4)",
                                                               "78.00 ± 2.24 (n=4)", "56.00 ± 1.00 (n=2)"]
    row1 = next(line for line in rat_part.splitlines() if line.startswith("| 1 "))
    assert row1.rstrip(" |").endswith("-")  # random_real has no IPC 1 record
    assert r"$\pm$" in subset_table(RECORDS, "latex")
    assert subset_table(RECORDS[1:5], "github") == ""  # no curve: an empty view (``render_view`` says so)
    with pytest.raises(ValueError, match="format"):
        subset_table(RECORDS, "html")


def test_subset_table_latex_escapes_every_name():
    latex = subset_table(RECORDS, "latex")
    assert r"\begin{tabular}" in latex and r"$\pm$" in latex and "±" not in latex
    assert r"direct random\_real" in latex and r"direct rat\_bptt" in latex and r"boost\_dd IPC 4" in latex
    assert r"block prefix" in latex
    assert "_" not in latex.replace(r"\_", "")  # every underscore escaped: headers, titles, names
    titles = [line for line in latex.splitlines() if line.startswith("%")]
    assert titles == [r"% digits, boost\_dd IPC 4: test accuracy (\%) of subsets, mean $\pm$ std over models x seeds",
                      r"% digits, rat\_bptt IPC 4: test accuracy (\%) of subsets, mean $\pm$ std over models x seeds"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_subset_table_without_curves_is_empty_in_every_format(fmt):
    assert subset_table(RECORDS[1:5], fmt) == ""
    assert subset_table([], fmt) == ""


FULL_ONLY = record("rat_bptt", 1, [0.60, 0.62], curve=[entry("full", 1, [0.60, 0.62])], seed=5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_full_only_curves_make_no_table(fmt):
    """An IPC-1 set has no smaller subset: its curve is only ``full``, which the table would just repeat."""
    assert subset_table([FULL_ONLY, *RECORDS[1:5]], fmt) == ""
    with_curves = subset_table([FULL_ONLY, *RECORDS], fmt)
    # The record still counts as a set distilled directly at IPC 1; only its one-row table is gone.
    assert with_curves == subset_table([{k: v for k, v in FULL_ONLY.items() if k != "subset_curve"}, *RECORDS], fmt)
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(with_curves)))
        assert {r["ipc"] for r in rows} == {"4"}
    else:
        assert "IPC 1:" not in with_curves and "IPC 1 " not in with_curves
        assert with_curves.count("IPC 4") == 2


def _write_records(root, records):
    root.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(records):
        (root / f"r{i}.json").write_text(json.dumps(r))
    return root


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_subsets_view_without_curves_exits_2(cli, tmp_path, fmt):
    full_only = {"config": {}, "curve": [entry("full", 1, [0.5, 0.7])], "blocks": None}
    root = _write_records(tmp_path / "runs", [
        make_record("random_real", ipc=1, outer_steps=0),
        make_record("rat_bptt", ipc=1, subset_curve=full_only),  # IPC 1: nothing but the full set
    ])
    code, out, err = cli("table", root, "--view", "subsets", "--format", fmt)
    assert code == 2 and out == "", (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("ddbench: error: ") and "--view" in lines[0] and str(root) in lines[0]

    code, out, err = cli("table", root, "--view", "all", "--format", fmt)
    assert code == 0 and err == ""
    main = cli("table", root, "--format", fmt)[1]
    margins = cli("table", root, "--view", "margins", "--format", fmt)[1]
    # only the main view and the margins over the baseline have anything to show: no subsets part
    assert out.strip().startswith(main.strip()) and out.strip().endswith(margins.strip())
    assert out.strip()[len(main.strip()):-len(margins.strip())].strip() == ""


# ---------------------------------------------------------------------------------- a real evaluation


def test_real_evaluation_of_subsets():
    """Without the fake: tiny networks trained on the subsets of a toy set give accuracies in [0, 1]."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(CLASSES * 4, 1, 8, 8, generator=gen)
    y = torch.arange(CLASSES).repeat_interleave(4)
    data = DatasetSplits("toy", x, y, x, y, CLASSES, ("a", "b", "c"), {})
    d = DistilledSet(x[: CLASSES * 4].clone(), y.clone(), CLASSES, 4, blocks=(torch.arange(4) // 2).repeat(CLASSES))
    out = subset_curve(d, data, EvalProtocol(models=1, steps=3), ModelConfig(width=4, depth=1),
                       SubsetEvalConfig(enabled=True, sizes=[2], draws=1), 0, torch.device("cpu"))
    assert [e["kind"] for e in out] == ["block_prefix", "prefix", "random"]
    assert all(len(e["accuracy_per_model"]) == 1 and 0 <= e["accuracy_mean"] <= 1 for e in out)


def test_subset_view_refuses_to_pool_different_configs_and_counts_a_run_once():
    from harness.core.errors import DDBenchError

    curve = [entry("prefix", 2, [0.5, 0.52]), entry("full", 4, [0.9, 0.92])]
    a = {**record("rat_bptt", 4, [0.9, 0.92], curve=curve), "config_id": "cfg-a", "run_id": "run-a"}
    b = {**record("rat_bptt", 4, [0.8, 0.82], curve=curve, seed=1), "config_id": "cfg-b", "run_id": "run-b"}
    with pytest.raises(DDBenchError) as err:
        subset_table([a, b])
    assert err.value.field == "config_id"
    assert subset_table([a, a], "csv") == subset_table([a], "csv")  # the same record twice: n unchanged
