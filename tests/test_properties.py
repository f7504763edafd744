"""Property tests (hypothesis) of the small pure pieces the harness is built from."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from harness.models.augment import AugmentConfig, apply_affine, sample_affine
from harness.engine import class_balanced_schedule
from harness.core.errors import ConfigError
from harness.core.rng import Stream, step_seed
from harness.method import DistilledSet
from harness.method.registry import validate_method_config
from harness.core.config import merge

# Modest example counts: the whole file runs in a few seconds.
FEW = settings(max_examples=40, deadline=None)
SOME = settings(max_examples=25, deadline=None)

seeds = st.integers(0, 2**31 - 1)


# ----------------------------------------------------------------------------- the inner-batch schedule


@FEW
@given(n_steps=st.integers(1, 5), num_classes=st.integers(1, 6), ipc=st.integers(1, 6),
       per_class=st.none() | st.integers(1, 8), classes_per_step=st.none() | st.integers(1, 8), seed=seeds)
def test_class_balanced_schedule(n_steps, num_classes, ipc, per_class, classes_per_step, seed):
    schedule = class_balanced_schedule(n_steps, num_classes, ipc, per_class=per_class,
                                       classes_per_step=classes_per_step,
                                       generator=torch.Generator().manual_seed(seed))
    k = min(per_class or ipc, ipc)
    m = min(classes_per_step or num_classes, num_classes)
    assert schedule.indices.shape == (n_steps, m * k) and schedule.indices.dtype == torch.int64
    assert schedule.affine is None
    for rows in schedule.indices.tolist():
        assert rows == sorted(rows)
        classes = [r // ipc for r in rows]
        assert len(set(classes)) == m  # m distinct classes...
        for c in set(classes):
            mine = [r for r in rows if r // ipc == c]
            assert len(mine) == len(set(mine)) == k  # ...each with k distinct rows...
            assert all(c * ipc <= r < (c + 1) * ipc for r in mine)  # ...of its own block
        assert all(0 <= c < num_classes for c in classes)
    again = class_balanced_schedule(n_steps, num_classes, ipc, per_class=per_class,
                                    classes_per_step=classes_per_step,
                                    generator=torch.Generator().manual_seed(seed))
    assert torch.equal(again.indices, schedule.indices)


@SOME
@given(n_steps=st.integers(1, 4), ipc=st.integers(1, 4), seed=seeds)
def test_schedule_with_augmentation_draws_one_matrix_per_row(n_steps, ipc, seed):
    aug = AugmentConfig(ops=("flip", "crop"), mode="all")
    schedule = class_balanced_schedule(n_steps, 3, ipc, generator=torch.Generator().manual_seed(seed),
                                       augment=aug, image_size=8)
    assert schedule.affine.shape == (n_steps, 3 * ipc, 2, 3)
    again = class_balanced_schedule(n_steps, 3, ipc, generator=torch.Generator().manual_seed(seed),
                                    augment=aug, image_size=8)
    assert torch.equal(again.affine, schedule.affine) and torch.equal(again.indices, schedule.indices)


# ----------------------------------------------------------------------------- augmentation


def _shifts(theta: torch.Tensor, size: int) -> torch.Tensor:
    """The (x, y) pixel shift of every crop matrix; asserts it is a pure whole-pixel translation."""
    assert torch.equal(theta[..., :2], torch.eye(2, dtype=theta.dtype).expand_as(theta[..., :2]))
    pixels = theta[..., 2] * size / 2
    assert torch.allclose(pixels, pixels.round(), atol=1e-9)
    return pixels.round().long()


def _shifted(x: torch.Tensor, sx: int, sy: int) -> torch.Tensor:
    """``x`` [C, H, W] moved so that out[i, j] = x[i + sy, j + sx], zeros where that is outside."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    i0, i1, j0, j1 = max(0, -sy), min(h, h - sy), max(0, -sx), min(w, w - sx)
    if i0 < i1 and j0 < j1:
        out[:, i0:i1, j0:j1] = x[:, i0 + sy:i1 + sy, j0 + sx:j1 + sx]
    return out


crop_cases = dict(size=st.integers(3, 32), batch=st.integers(1, 6), fraction=st.sampled_from([0.125, 0.25, 0.5]),
                  seed=seeds)


@FEW
@given(**crop_cases)
def test_crop_moves_images_by_whole_pixels(size, batch, fraction, seed):
    cfg = AugmentConfig(ops=("crop",), mode="all", crop_fraction=fraction)
    gen = torch.Generator().manual_seed(seed)
    theta = sample_affine(cfg, 2, batch, size, gen)
    assert theta.shape == (2, batch, 2, 3)
    shifts = _shifts(theta, size)
    assert shifts.abs().max() <= int(size * fraction + 0.5)
    x = torch.rand(batch, 2, size, size, generator=gen, dtype=torch.float64)
    out = apply_affine(x, theta[0])
    for b, (sx, sy) in enumerate(shifts[0].tolist()):
        # Up to rounding in grid_sample's coordinates.
        assert torch.allclose(out[b], _shifted(x[b], sx, sy), rtol=0, atol=1e-12)


@FEW
@given(size=st.integers(2, 32), batch=st.integers(1, 4), seed=seeds)
def test_flip_mirrors_and_flip_twice_is_identity(size, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    flip = sample_affine(AugmentConfig(ops=("flip",), mode="all", flip_prob=1.0), 1, batch, size, gen)[0]
    x = torch.rand(batch, 3, size, size, generator=gen, dtype=torch.float64)
    assert torch.allclose(apply_affine(x, flip), x.flip(-1), rtol=0, atol=1e-12)
    assert torch.allclose(apply_affine(apply_affine(x, flip), flip), x, rtol=0, atol=1e-12)
    never = sample_affine(AugmentConfig(ops=("flip",), mode="all", flip_prob=0.0), 1, batch, size, gen)[0]
    assert torch.equal(never, torch.eye(3, dtype=never.dtype)[:2].expand_as(never))


def test_no_ops_means_no_matrices():
    assert sample_affine(AugmentConfig(), 2, 3, 8, torch.Generator()) is None
    x = torch.rand(2, 1, 4, 4)
    assert apply_affine(x, None) is x


# ----------------------------------------------------------------------------- distilled sets


@FEW
@given(data=st.data(), num_classes=st.integers(1, 5), ipc=st.integers(1, 6))
def test_select_picks_exactly_the_named_rows(data, num_classes, ipc):
    positions = data.draw(st.lists(st.integers(0, ipc - 1), min_size=1, max_size=ipc + 2))
    n = num_classes * ipc
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    labels = torch.arange(num_classes).repeat_interleave(ipc)
    blocks = torch.arange(n) * 10
    ds = DistilledSet(images, labels, num_classes, ipc, blocks=blocks, meta={"run_id": "r"})
    sub = ds.select(positions)
    assert sub.ipc == len(positions) and sub.num_classes == num_classes
    expected = [c * ipc + p for c in range(num_classes) for p in positions]  # class-major
    assert sub.images[:, 0, 0, 0].long().tolist() == expected
    assert sub.labels.tolist() == [r // ipc for r in expected]
    assert torch.equal(sub.labels, sub.hard_labels)
    assert sub.blocks.tolist() == [10 * r for r in expected]
    assert sub.meta["subset_positions"] == positions and sub.meta["run_id"] == "r"
    assert torch.equal(ds.images, images)  # the original is untouched


@SOME
@given(ipc=st.integers(1, 5), bad=st.sampled_from(["negative", "too_big", "empty"]))
def test_select_refuses_positions_outside_the_class(ipc, bad):
    ds = DistilledSet(torch.zeros(2 * ipc, 1, 2, 2), torch.arange(2).repeat_interleave(ipc), 2, ipc)
    positions = {"negative": [-1], "too_big": [ipc], "empty": []}[bad]
    with pytest.raises(ValueError):
        ds.select(positions)


# ----------------------------------------------------------------------------- seeds


STREAMS = [Stream.STEP, Stream.NET_INIT, Stream.SYN_INIT, Stream.EVAL]


@FEW
@given(seed=seeds, step=st.integers(0, 10**6), other=st.integers(0, 10**6), stream=st.sampled_from(STREAMS))
def test_step_seed_is_deterministic_and_differs_across_steps_and_streams(seed, step, other, stream):
    value = step_seed(seed, step, stream)
    assert value == step_seed(seed, step, stream)
    assert 0 <= value < 2**63  # fits torch.Generator.manual_seed
    if other != step:
        assert step_seed(seed, other, stream) != value
    assert len({step_seed(seed, step, s) for s in STREAMS}) == len(STREAMS)
    assert step_seed(seed + 1, step, stream) != value
    torch.Generator().manual_seed(value)


# ----------------------------------------------------------------------------- method configs


@FEW
@given(window=st.integers(-3, 40), unroll=st.integers(-3, 40), name=st.sampled_from(["tbptt", "rat_bptt"]))
def test_window_configs_valid_iff_1_le_window_le_unroll(window, unroll, name):
    valid = 1 <= window <= unroll
    try:
        cfg = validate_method_config(name, {"window": window, "unroll": unroll})
    except ConfigError as err:
        assert not valid, err
        assert err.field in ("window", "unroll")
    else:
        assert valid and (cfg.window, cfg.unroll) == (window, unroll)


@SOME
@given(unroll=st.integers(-3, 40))
def test_bptt_unroll_valid_iff_positive(unroll):
    try:
        validate_method_config("bptt", {"unroll": unroll})
    except ConfigError as err:
        assert unroll < 1 and err.field == "unroll"
    else:
        assert unroll >= 1


# ----------------------------------------------------------------------------- suite merging


keys = st.sampled_from(list("abcde"))
leaves = st.integers(0, 9) | st.booleans() | st.lists(st.integers(0, 9), max_size=2)
tables = st.recursive(st.dictionaries(keys, leaves, max_size=3),
                      lambda inner: st.dictionaries(keys, leaves | inner, min_size=1, max_size=3), max_leaves=8)


def _leaves(d: dict, prefix: tuple = ()) -> dict[tuple, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_leaves(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def _at(d: dict, path: tuple):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return KeyError
        d = d[k]
    return d


@FEW
@given(base=tables, override=tables)
@example(base={"a": {"c": 2, "d": {"e": 1}}, "b": 1}, override={"a": {"b": 1, "d": {"a": 3}}})  # nested overlap
def test_merge_keeps_nested_keys(base, override):
    base_before, override_before = copy.deepcopy(base), copy.deepcopy(override)
    merged = merge(base, override)
    assert base == base_before and override == override_before  # inputs untouched
    for path, value in _leaves(override).items():
        if value == {}:  # an empty table adds nothing to a table already there
            assert isinstance(_at(merged, path), dict)
        else:
            assert _at(merged, path) == value  # every override wins
    for path, value in _leaves(base).items():
        replaced = any(_at(override, path[:i]) is not KeyError and not isinstance(_at(override, path[:i]), dict)
                       for i in range(1, len(path) + 1)) or _at(override, path) is not KeyError
        if not replaced:
            assert _at(merged, path) == value  # every base value nothing overrides is kept
    assert merge(base, {}) == base and merge({}, override) == override
