"""The tensor memory meter counts what a region allocates, and only that."""

import torch

from harness.engine.tensor_memory import TensorMemoryMeter


def test_counts_new_storages_once_and_frees_them():
    with TensorMemoryMeter() as meter:
        a = torch.empty(1000)  # 4000 bytes
        b = a.view(10, 100)  # a view: no new storage
        c = torch.ones(500, dtype=torch.float64)  # 4000 bytes (ones = empty + fill_)
        del a, b
        d = torch.zeros(250)  # 1000 bytes, after a's 4000 were freed
    assert meter.peak_bytes == 8000
    assert meter.live_bytes == 5000
    del c, d


def test_views_of_tensors_from_before_the_region_are_free():
    x = torch.randn(1000, 1000)
    with TensorMemoryMeter() as meter:
        part = x[:10]
        same = x.detach()
        y = part * 2  # 10 x 1000 floats: the only allocation
    assert meter.peak_bytes == 10 * 1000 * 4
    del part, same, y


def test_autograd_backward_is_counted():
    w = torch.randn(256, 256, requires_grad=True)
    with TensorMemoryMeter() as meter:
        loss = (w @ w).relu().sum()
        (grad,) = torch.autograd.grad(loss, w)
    assert meter.peak_bytes >= 3 * 256 * 256 * 4  # the product, its relu, and the gradient at least
    del grad
