"""The CUDA-graph step plumbing (static buffers, rebinding per outer step) is exact.

On CPU, ``StepGraphs(capture=False)`` runs the same static-buffer code as on a GPU but calls
the step bodies instead of replaying a graph: every copy in and out is exercised. The
``cuda`` test does the real capture where a GPU exists.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.engine.cudagraphs import StepGraphs
from harness.engine import (FunctionalModel, RealBatchLoss, Synthetic, UnrollOptions, class_balanced_schedule,
                            meta_gradient)
from harness.models import ConvNet
from harness.engine.optim import InnerOptimizerConfig, make_inner_optimizer
from harness.models.augment import AugmentConfig

DT = torch.float64


def _problem(seed: int, device="cpu", dtype=DT, augment=True):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(3 * 4, 1, 8, 8, generator=gen, dtype=dtype).to(device).requires_grad_()
    labels = (F.one_hot(torch.arange(3).repeat_interleave(4), 3).to(dtype) + 0.1).to(device).requires_grad_()
    real_x = torch.randn(20, 1, 8, 8, generator=gen, dtype=dtype).to(device)
    real_y = torch.randint(0, 3, (20,), generator=gen).to(device)
    aug = AugmentConfig(ops=("flip", "crop"), mode="all") if augment else None
    schedule = class_balanced_schedule(7, 3, 4, per_class=2, generator=gen, device=device, augment=aug, image_size=8)
    if schedule.affine is not None:
        schedule = type(schedule)(schedule.indices, schedule.affine.to(dtype))
    return images, labels, real_x, real_y, schedule


@pytest.mark.parametrize("opt", [InnerOptimizerConfig(name="adam", lr=0.05),
                                 InnerOptimizerConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3)])
def test_static_buffer_steps_equal_eager_across_outer_steps(opt):
    torch.manual_seed(0)
    model = FunctionalModel(ConvNet(1, 3, 8, width=4, depth=1).to(DT))
    optimizer = make_inner_optimizer(opt)
    graphs = StepGraphs(capture=False)
    lr = torch.tensor(0.05, dtype=DT, requires_grad=True)
    for outer_step in range(3):  # new data each time: the static buffers must be refilled
        images, labels, real_x, real_y, schedule = _problem(outer_step)
        args = (model, model.parameters(), optimizer, Synthetic(images, labels, lr), schedule, 4,
                RealBatchLoss(real_x, real_y))
        eager = meta_gradient(*args, UnrollOptions(mode="recompute"))
        graphed = meta_gradient(*args, UnrollOptions(mode="recompute", steps_factory=graphs.factory))
        for key in ("images", "labels", "lr"):
            want, got = getattr(eager, key), getattr(graphed, key)
            assert want.norm() > 0
            assert torch.equal(got, want), key
        assert torch.equal(graphed.grad_norms, eager.grad_norms)
    assert len(graphs._entries) == 1  # one capture served every outer step


def test_graphed_steps_refuse_a_curvature_callback():
    model = FunctionalModel(ConvNet(1, 3, 8, width=4, depth=1).to(DT))
    images, labels, real_x, real_y, schedule = _problem(0)
    with pytest.raises(ValueError, match="curvature"):
        meta_gradient(model, model.parameters(), make_inner_optimizer(InnerOptimizerConfig()),
                      Synthetic(images, labels, 0.01), schedule, 3, RealBatchLoss(real_x, real_y),
                      UnrollOptions(mode="recompute", curvature=lambda t, p, v: v,
                                    steps_factory=StepGraphs(capture=False).factory))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_captured_graphs_match_eager_on_cuda():
    torch.manual_seed(0)
    dtype = torch.float64  # exact comparison: float64 convolutions are deterministic enough
    model = FunctionalModel(ConvNet(1, 3, 8, width=8, depth=1).to("cuda", dtype))
    optimizer = make_inner_optimizer(InnerOptimizerConfig(name="adam", lr=0.05))
    graphs = StepGraphs(capture=True)
    for outer_step in range(2):
        images, labels, real_x, real_y, schedule = _problem(outer_step, "cuda", dtype)
        args = (model, model.parameters(), optimizer, Synthetic(images, labels, 0.05), schedule, 5,
                RealBatchLoss(real_x, real_y))
        eager = meta_gradient(*args, UnrollOptions(mode="recompute"))
        graphed = meta_gradient(*args, UnrollOptions(mode="recompute", steps_factory=graphs.factory))
        for key in ("images", "labels"):
            want, got = getattr(eager, key), getattr(graphed, key)
            assert float((got - want).norm() / want.norm()) < 1e-10, key


def test_step_bodies_that_do_not_match_their_graph_slots_fail_loudly():
    """The graphs bind their static buffers to the step bodies' arguments by name: a body whose
    argument is renamed, added or dropped fails when its graph is built, and so does a copy into
    a slot that does not exist (a positional mirror would have fed the wrong buffers silently)."""
    from harness.engine.cudagraphs import GraphedSteps, check_slots

    class Renamed(GraphedSteps):
        def forward_body(self, *, flat, aux, idx, theta, images, labels, step_lr):  # lr renamed
            return super().forward_body(flat=flat, aux=aux, idx=idx, theta=theta, images=images, labels=labels,
                                        lr=step_lr)

    graphs = StepGraphs(capture=False)

    def factory(*args, **kwargs):
        steps = Renamed(*args, **kwargs)
        steps.graphs = graphs
        return steps

    model = FunctionalModel(ConvNet(1, 3, 8, width=4, depth=1).to(DT))
    images, labels, real_x, real_y, schedule = _problem(0)
    with pytest.raises(TypeError, match=r"arguments without a slot \['step_lr'\], slots without an argument \['lr'\]"):
        meta_gradient(model, model.parameters(), make_inner_optimizer(InnerOptimizerConfig()),
                      Synthetic(images, labels, 0.01), schedule, 3, RealBatchLoss(real_x, real_y),
                      UnrollOptions(mode="recompute", steps_factory=factory))
    slots = {"flat": None, "lr": None}
    check_slots(lambda *, flat, lr, t=None: None, slots)  # an extra argument with a default is fine
    for body in (lambda *, flat: None, lambda *, flat, lr, extra: None, lambda flat, *rest: None):
        with pytest.raises(TypeError):
            check_slots(body, slots)
    images, labels, real_x, real_y, schedule = _problem(1)
    steps = graphs.factory(model, make_inner_optimizer(InnerOptimizerConfig()), images, labels, 0.01, schedule)
    steps.init(model.parameters())
    with pytest.raises(KeyError, match="no graph slot 'learning_rate'"):
        steps._entry["forward"].load(learning_rate=torch.zeros(()))
