"""Inner optimizers as one registered pair: the functional form the unroll differentiates and the
training form evaluation uses are built from one config and honour the same options."""

from __future__ import annotations

import pytest
import torch

from harness.core.errors import ConfigError
from harness.engine.optim import (OPTIMIZERS, InnerOptimizerConfig, TransformOptimizer, make_inner_optimizer,
                                  make_torch_optimizer)
from harness.method import create_method

CONFIGS = [
    {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    {"name": "sgd", "lr": 0.05, "momentum": 0.5, "nesterov": True},
    {"name": "adam", "lr": 0.01},
    {"name": "adam", "lr": 0.01, "weight_decay": 1e-3},
    {"name": "adam", "lr": 0.01, "sqrt": "eps_root", "eps_root": 1e-6},
    {"name": "adam", "lr": 0.01, "eps": 1e-3, "eps_convention": "higher"},
]


def _train(step_fn, steps=6):
    """A few steps on a fixed least-squares problem (float64); the parameters after each step."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 5, generator=gen, dtype=torch.float64), torch.randn(16, generator=gen, dtype=torch.float64)
    w = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)  # gets no gradient at the start: Adam's sqrt(0)
    trail = []
    for _ in range(steps):
        loss = ((x @ w + b * 0.0 - y) ** 2).mean()
        step_fn((w, b), torch.autograd.grad(loss, (w, b)))
        trail.append(w.detach().clone())
    return trail


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items() if k != "lr"))
def test_training_form_follows_the_functional_form(cfg):
    """The torch.optim form evaluation trains with takes exactly the functional form's steps."""
    config = InnerOptimizerConfig(**cfg)
    transform = make_inner_optimizer(config)
    state = {}

    def functional(params, grads):
        if "s" not in state:
            state["s"] = transform.init(tuple(p.detach() for p in params))
        updates, state["s"] = transform.update(grads, state["s"], params=tuple(p.detach() for p in params),
                                               inplace=False)
        with torch.no_grad():
            for p, u in zip(params, updates):
                p.add_(config.lr * u)

    holder = {}

    def trainer(params, grads):
        if "opt" not in holder:
            holder["opt"] = make_torch_optimizer(config, list(params))
        for p, g in zip(params, grads):
            p.grad = g
        holder["opt"].step()

    for a, b in zip(_train(functional), _train(trainer)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_options_torch_optim_cannot_express_run_the_functional_form():
    params = [torch.zeros(3, requires_grad=True)]
    for cfg in CONFIGS[4:]:
        assert isinstance(make_torch_optimizer(InnerOptimizerConfig(**cfg), params), TransformOptimizer)
    assert isinstance(make_torch_optimizer(InnerOptimizerConfig(name="adam"), params), torch.optim.Adam)
    assert isinstance(make_torch_optimizer(InnerOptimizerConfig(name="sgd"), params), torch.optim.SGD)


def test_transform_optimizer_follows_an_lr_schedule():
    config = InnerOptimizerConfig(name="adam", lr=0.1, sqrt="eps_root", eps_root=1e-8)
    p = torch.ones(2, requires_grad=True)
    opt = make_torch_optimizer(config, [p])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.0 if s >= 1 else 1.0)
    p.grad = torch.ones(2)
    opt.step()
    sched.step()
    after_one = p.detach().clone()
    opt.step()
    assert not torch.equal(after_one, torch.ones(2)) and torch.equal(p.detach(), after_one)  # lr 0: no move


@pytest.mark.parametrize("cfg, field", [
    ({"name": "adam", "momentum": 0.5}, "momentum"),
    ({"name": "adam", "nesterov": True}, "nesterov"),
    ({"name": "sgd", "betas": (0.5, 0.9)}, "betas"),
    ({"name": "sgd", "eps_convention": "higher"}, "eps_convention"),
    ({"name": "adam", "eps_root": 1e-6}, "eps_root"),
    ({"name": "rmsprop"}, "name"),
])
def test_an_option_the_optimizer_would_ignore_is_refused(cfg, field):
    with pytest.raises(ConfigError) as err:
        create_method("tbptt", inner=cfg)
    assert err.value.field == f"inner.{field}"


def test_the_registry_holds_both_optimizers():
    assert OPTIMIZERS.names() == ["adam", "sgd"]


def test_each_optimizer_has_its_own_config_class():
    """A union discriminated on ``name``: the base type builds the named optimizer's config, which
    holds only the options that optimizer reads."""
    from harness.engine.optim import AdamConfig, SGDConfig

    sgd, adam = InnerOptimizerConfig(name="sgd", lr=0.1), InnerOptimizerConfig(lr=0.1)
    assert type(sgd) is SGDConfig and type(adam) is AdamConfig and isinstance(sgd, InnerOptimizerConfig)
    assert not hasattr(sgd, "betas") and not hasattr(adam, "momentum")
    method = create_method("tbptt", inner={"name": "sgd", "momentum": 0.5})
    assert type(method.config.inner) is SGDConfig and method.config.inner.momentum == 0.5
    for name, cls in OPTIMIZERS.items():
        assert cls.Config.model_fields["name"].default == name


def test_dumps_keep_the_flat_fields_so_run_ids_do_not_move():
    """The dump is hashed into run ids: every config of sgd and adam dumps the fields of the one
    flat config ddbench had before the union (the other optimizer's at their defaults), and such a
    dump validates back to the same config."""
    sgd = InnerOptimizerConfig(name="sgd", lr=0.01, momentum=0.5)
    assert sgd.model_dump(mode="json") == {
        "name": "sgd", "lr": 0.01, "momentum": 0.5, "nesterov": False, "weight_decay": 0.0, "betas": [0.9, 0.999],
        "eps": 1e-8, "sqrt": "masked", "eps_root": 0.0, "eps_convention": "torch"}
    for cfg in CONFIGS:
        config = InnerOptimizerConfig(**cfg)
        assert InnerOptimizerConfig(**config.model_dump(mode="json")) == config
        assert InnerOptimizerConfig(**config.model_dump()) == config
    method = create_method("rat_bptt", inner={"name": "sgd", "lr": 0.01})
    assert create_method("rat_bptt", **method.config.model_dump(mode="json")).config == method.config
