"""AT-BPTT's patch-wise semantic preservation: the prototype loss against a loop-by-loop
reference, its place in the meta-gradient, and where it is refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.core.errors import ConfigError
from harness.core.rng import Stream, step_seed
from harness.data import DatasetSplits
from harness.engine import FunctionalModel
from harness.method import DistillTask, create_method
from harness.method.prototypes import grid_patches, penultimate_features, prototype_loss
from harness.models import ConvNet, ModelConfig

CLASSES = 3


def toy(size: int, n: int = 8, seed: int = 0) -> DatasetSplits:
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(CLASSES, 3, 1, 1, generator=gen)
    y = torch.arange(CLASSES).repeat_interleave(n)
    x = means[y] + 0.5 * torch.randn(len(y), 3, size, size, generator=gen)
    return DatasetSplits("toy", x.double(), y, x.double(), y, CLASSES, ("a", "b", "c"), {})


def reference_loss(net: ConvNet, syn_x, syn_y, real_x, real_y, grid: int) -> torch.Tensor:
    """The loss as the docstring states it, one class and one patch at a time."""
    def feats(x):
        return net.features(x).flatten(1)

    h = syn_x.shape[-1] // grid
    classes = sorted(set(syn_y.tolist()) & set(real_y.tolist()))
    glob, local = [], []
    for c in classes:
        s, r = syn_x[syn_y == c], real_x[real_y == c]
        glob.append((feats(s).mean(0) - feats(r).mean(0).detach()).pow(2).sum())
        for i in range(grid):
            for j in range(grid):
                def patch(x):
                    tile = x[:, :, i * h:(i + 1) * h, j * h:(j + 1) * h]
                    return F.interpolate(tile, size=x.shape[-2:], mode="bilinear", align_corners=False)
                local.append((feats(patch(s)).mean(0) - feats(patch(r)).mean(0).detach()).pow(2).sum())
    return torch.stack(glob).mean() + torch.stack(local).mean()


def test_prototype_loss_and_its_gradient_match_the_loop_by_loop_reference():
    torch.manual_seed(0)
    net = ConvNet(3, CLASSES, 16, width=4, depth=2).double()
    data = toy(16)
    syn_x = torch.randn(6, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    syn_y = torch.arange(CLASSES).repeat_interleave(2)
    model = FunctionalModel(net)
    params = model.parameters()
    loss = prototype_loss(model, params, syn_x, syn_y, data.train_x, data.train_y, grid=4)
    want = reference_loss(net, syn_x, syn_y, data.train_x, data.train_y, grid=4)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)
    got_grad, = torch.autograd.grad(loss, syn_x)
    want_grad, = torch.autograd.grad(want, syn_x)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-14)
    assert got_grad.norm() > 0


def test_patches_and_features():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float64).view(2, 1, 4, 4)
    assert torch.equal(grid_patches(x, 1)[:, 0], x)
    patches = grid_patches(x, 2)  # 2 x 2 patches of 2 x 2, each resized to 4 x 4
    assert patches.shape == (2, 4, 1, 4, 4)
    assert torch.allclose(patches[0, 3].mean(), x[0, 0, 2:, 2:].mean())  # bottom-right patch, same mean
    net = ConvNet(1, 3, 8, width=4, depth=1).double()
    feats = penultimate_features(FunctionalModel(net), FunctionalModel(net).parameters(), torch.randn(5, 1, 8, 8).double())
    assert feats.shape == (5, net.classifier.in_features)


def _task(data, size):
    return DistillTask(data=data, ipc=2, seed=1, model=ModelConfig(width=4), outer_steps=3, dtype=torch.float64)


def test_at_bptt_adds_lambda_times_the_prototype_gradient():
    data = toy(64, n=6)
    common = dict(unroll=3, window=2, window_delta=1, real_batch=12, stages=False, engine={"mode": "recompute"})
    plain = create_method("at_bptt", **common)
    psp = create_method("at_bptt", **common, patch_semantic=True, patch_weight=0.5, patch_real_batch=12)
    for m in (plain, psp):
        m.setup(_task(data, 64))
    (g_plain, _), (g_psp, info) = plain.meta_gradient(0), psp.meta_gradient(0)
    assert info["patch_loss"] > 0
    images = psp.images.detach().requires_grad_()
    hard = torch.arange(CLASSES).repeat_interleave(2)
    gen = torch.Generator().manual_seed(step_seed(1, 0, Stream.PATCH))
    idx = torch.randperm(data.train_x.shape[0], generator=gen)[:12]
    loss = prototype_loss(psp.model, tuple(p.detach() for p in g_psp.final_params), images, hard,
                          data.train_x[idx], data.train_y[idx], 4)
    direct, = torch.autograd.grad(0.5 * loss, images)
    torch.testing.assert_close(g_psp.images - g_plain.images, direct, rtol=1e-9, atol=1e-12)


def test_patch_semantic_is_refused_below_64x64_before_anything_runs(write_suite, cli, tmp_path):
    from conftest import tiny_suite

    suite = tiny_suite(methods={"at_bptt": {"unroll": 3, "window": 2, "window_delta": 1, "patch_semantic": True}})
    code, _, err = cli("run", write_suite(suite), "--out", tmp_path / "out", "-q")
    assert code == 2 and "methods.at_bptt" in err and "64x64" in err and "8x8" in err
    with pytest.raises(ConfigError):
        create_method("at_bptt", patch_semantic=True, patch_grid=0)
