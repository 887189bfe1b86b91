"""Optimizers, schedules and weight penalties behave as documented."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rayclf.config import OPTIMIZERS, SCHEDULES, ConfigError, OptimConfig, RegConfig, SchedConfig, build_config
from rayclf.train.engine import fit
from rayclf.train.optim import (
    Schedule,
    create_optimizer,
    lr_factor,
    penalized_weights,
    penalty_coefficients,
    weight_penalty,
)

from .conftest import tiny


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_steps(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    opt = create_optimizer(model, OptimConfig(name=name, lr=0.01 if name != "adadelta" else 1.0))
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(torch.randn(16, 4)).pow(2).mean()
    loss.backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    no_decay = [g for g in opt.param_groups if g["weight_decay"] == 0]
    assert no_decay and all(p.ndim <= 1 for g in no_decay for p in g["params"])  # biases / norms: no decay


def test_sgd_nesterov_and_rmsprop_momentum_map_to_torch():
    model = nn.Linear(2, 2)
    sgd = create_optimizer(model, OptimConfig(name="sgd", nesterov=True, momentum=0.8))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.8
    rms = create_optimizer(model, OptimConfig(name="rmsprop", momentum=0.5))
    assert isinstance(rms, torch.optim.RMSprop) and rms.defaults["momentum"] == 0.5


def _described(opt: torch.optim.Optimizer) -> tuple:
    groups = [({k: v for k, v in g.items() if k != "params"}, [id(p) for p in g["params"]]) for g in opt.param_groups]
    return type(opt), opt.defaults, groups


@pytest.mark.parametrize("options", [
    {"name": "sgd"}, {"name": "sgd", "nesterov": True},
    {"name": "sgd", "nesterov": False, "momentum": 0.8, "weight_decay": 5e-4},
    {"name": "sgd", "weight_decay": 1e-3, "decay_norm_and_bias": True, "norm_bias_lr_scale": 4},
    {"name": "adam"}, {"name": "adam", "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 1e-4},
    {"name": "adamw", "weight_decay": 0.05}, {"name": "adamw", "fused": "on"}, {"name": "sgd", "fused": "on"}])
def test_torch_native_optimizers_equal_timms_argument_for_argument(options):
    """SGD, Adam and AdamW are built without timm (a trial process then never imports it): each must be the
    optimizer timm's factory builds from the same arguments, so results do not change with the shortcut."""
    from timm.optim import create_optimizer_v2

    from rayclf.train import optim

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2))
    seen: dict = {}

    def spy(params, **kwargs):
        seen.update(params=params, **kwargs)
        return create_optimizer_v2(params, **kwargs)

    cfg = OptimConfig(lr=0.03, **options)
    ours = create_optimizer(model, cfg)
    original = optim.TORCH_NATIVE
    try:
        optim.TORCH_NATIVE = {}  # every name through timm's factory
        import timm.optim

        real, timm.optim.create_optimizer_v2 = timm.optim.create_optimizer_v2, spy
        try:
            theirs = create_optimizer(model, cfg)
        finally:
            timm.optim.create_optimizer_v2 = real
    finally:
        optim.TORCH_NATIVE = original
    assert seen, "the reference optimizer did not come from timm's factory"
    assert _described(ours) == _described(theirs)


def test_a_trial_with_sgd_adam_or_adamw_never_imports_timm_and_rmsprop_takes_timms_defaults(tmp_path):
    import subprocess
    import sys

    code = """
import sys
import torch
from torch import nn
from rayclf.config import OptimConfig
from rayclf.train.optim import create_optimizer
import rayclf.train.engine, rayclf.sweep.worker, rayclf.data.sources, rayclf.models.families
model = nn.Linear(2, 2)
for name in ("sgd", "adam", "adamw"):
    create_optimizer(model, OptimConfig(name=name))
print(sorted(m for m in ("timm", "torchvision") if m in sys.modules))
rms = create_optimizer(model, OptimConfig(name="rmsprop"))
print(rms.defaults["alpha"], "timm" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == ["[]", "0.9 True"]  # timm's RMSprop alpha (torch's own is 0.99)


def test_schedules_move_the_lr_as_documented():
    total = 10.0
    f = lambda **kw: (lambda t: lr_factor(SchedConfig(**kw), t, total, 0.1))  # noqa: E731
    assert f(name="constant")(7.3) == 1.0
    assert f(name="step", step_size=3, gamma=0.5)(6.1) == pytest.approx(0.25)
    assert f(name="multistep", milestones=[0.5, 0.8], gamma=0.1)(8.5) == pytest.approx(0.01)
    assert f(name="exponential", gamma=0.9)(2.0) == pytest.approx(0.81)
    cos = f(name="cosine", min_lr=0.001)
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.505) and cos(10) == pytest.approx(0.01)
    sgdr = f(name="cosine_restarts", t0=2, t_mult=2)
    assert sgdr(0) == 1.0 and sgdr(1.999) < 0.01 and sgdr(2.0) == 1.0 and sgdr(4) == pytest.approx(0.5)
    warm = f(name="cosine", warmup_epochs=2, warmup_start=0.1)
    assert warm(0) == pytest.approx(0.1) and warm(1) == pytest.approx(0.55) and warm(2) == pytest.approx(1.0)
    one = f(name="onecycle", pct_start=0.3, div_factor=25, final_div_factor=1e4)
    assert one(0) == pytest.approx(1 / 25) and one(3) == pytest.approx(1.0) and one(10) == pytest.approx(1 / 25e4)


def test_reduce_on_plateau_follows_keras_rule():
    """Keras lowers the LR once ``wait >= patience`` (PyTorch: ``> patience``), then counts again from zero;
    the new LR is in force straight away, not only from the next step."""
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    sched = Schedule(opt, SchedConfig(name="plateau", factor=0.5, patience=2), 10)
    lrs = []
    for loss in (1.0, 0.9, 0.95, 0.96, 0.97, 0.98):
        sched.epoch_end({"val_loss": loss})
        lrs.append(sched.lr)
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.5, 0.25])
    floored = Schedule(opt, SchedConfig(name="plateau", factor=0.1, patience=0, plateau_min_lr=0.05), 10)
    for loss in (1.0, 1.0, 1.0):
        floored.epoch_end({"val_loss": loss})
    assert floored.lr == pytest.approx(0.05)


def test_reduce_on_plateau_on_top_of_a_schedule_and_per_milestone_factors():
    """Keras's cifar10_resnet steps (×0.1 at 80/120/160, ×0.5 at 180) with a plateau reduction on top."""
    cfg = SchedConfig(name="multistep", milestones=[81, 121, 161, 181], milestone_factors=[0.1, 0.1, 0.1, 0.5],
                      reduce_on_plateau=True, factor=0.5, patience=1)
    f = [lr_factor(cfg, t, 200, 1e-3) for t in (80.9, 81, 121, 161, 181)]
    assert f == pytest.approx([1.0, 0.1, 0.01, 0.001, 0.0005])
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1e-3)
    sched = Schedule(opt, cfg, 200)
    sched.step(100)
    sched.epoch_end({"val_loss": 1.0})
    sched.epoch_end({"val_loss": 1.0})
    assert sched.lr == pytest.approx(1e-3 * 0.1 * 0.5)
    with pytest.raises(ConfigError, match="one factor per milestone"):
        build_config(tiny(sched={"name": "multistep", "milestones": [0.5], "milestone_factors": [0.1, 0.5]}))
    with pytest.raises(ConfigError, match="only applies to sched.name = multistep"):
        build_config(tiny(sched={"name": "cosine", "milestone_factors": [0.1, 0.5]}))


def test_plateau_lowers_the_lr_before_early_stopping_ends_the_run():
    """The studies' pair (plateau patience 2, early stopping patience 3, both on val_loss): the LR is lowered
    after the second epoch without improvement and the third epoch trains with it before the run stops.
    Under PyTorch's rule both fired on the same epoch and the lowered LR was never used."""
    stuck = {"lr": 1e-9, "weight_decay": 0.0}  # val_loss cannot improve by min_delta
    cfg = build_config(tiny(optim=stuck, train={"epochs": 8, "early_stopping": {"patience": 3, "min_delta": 0.01}},
                            sched={"name": "plateau", "patience": 2, "factor": 0.1, "plateau_min_delta": 0.01}))
    result = fit(cfg)
    assert result.status == "stopped_early" or result.summary["early_stopped"]
    assert [h["lr"] for h in result.history] == pytest.approx([1e-9, 1e-9, 1e-9, 1e-10])


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_drives_the_lr_in_training(name):
    """Each epoch's reported LR is the schedule's value where that epoch starts (the last step of the previous
    epoch; the first step of the run for epoch 1), so a schedule that is not applied shows up here."""
    from rayclf.data.sources import load_dataset
    from rayclf.train.engine import build_trainer

    sched = {"name": name, "step_size": 1, "gamma": 0.5, "t0": 1.0, "min_lr": 0.005}
    if name != "onecycle":
        sched["warmup_epochs"] = 0.5
    cfg = build_config(tiny(sched=sched, train={"epochs": 3}))
    result = fit(cfg)
    assert result.status == "completed"
    steps = len(build_trainer(cfg, load_dataset(cfg.data)).train_loader)
    total = cfg.total_epochs()
    want = [cfg.optim.lr * lr_factor(cfg.sched, max(e - 1 / steps, 0.0), total, cfg.optim.lr) for e in range(total)]
    assert [h["lr"] for h in result.history] == pytest.approx(want, rel=1e-9)
    if name not in ("constant", "plateau"):
        assert len(set(want)) > 1  # the schedule really moves the LR over these epochs


def test_elastic_net_penalty_equals_formula_and_skips_biases_and_norms():
    model = nn.Sequential(nn.Conv2d(1, 2, 2), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, -1.0, 2.0, 1.0]).view(2, 1, 2, 2))
        model[3].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 0.0], [0.0, -3.0]]))
        for p in (model[0].bias, model[1].weight, model[1].bias, model[3].bias):
            p.fill_(100.0)  # would dominate if they were penalised
    cfg = RegConfig(kind="elastic", alpha=0.3, lam=0.01)
    c1, c2 = penalty_coefficients(cfg)
    weights = penalized_weights(model, "all")
    assert len(weights) == 2
    l1 = 3.5 + 7.0 + 7.0
    l2 = (1 + 4 + 0.25 + 0 + 9 + 1 + 4 + 1) + (1 + 1 + 4 + 0 + 0 + 9)
    assert float(weight_penalty(weights, c1, c2).detach()) == pytest.approx(0.01 * (0.3 * l1 + 0.7 * l2))
    out_only = penalized_weights(model, "output")
    assert len(out_only) == 1 and out_only[0] is model[3].weight
    assert penalty_coefficients(RegConfig(kind="l1l2", l1=0.1, l2=0.2)) == (0.1, 0.2)
    assert weight_penalty(weights, 0.0, 0.0) is None


def test_phases_train_head_then_everything():
    raw = tiny(train={"phases": [{"epochs": 1, "trainable": "head", "optim": "adam", "lr": 1e-3},
                                 {"epochs": 1, "trainable": "all", "lr": 1e-5}]})
    raw["model"] = {"name": "resnet_cifar", "depth": 8, "width": 4}
    result = fit(build_config(raw))
    assert [h["phase"] for h in result.history] == [0, 1]
    assert result.history[0]["lr"] == pytest.approx(1e-3) and result.history[1]["lr"] == pytest.approx(1e-5)


def test_one_place_decides_which_way_a_metric_improves():
    from rayclf.metrics import lower_is_better, metric_mode

    assert [metric_mode(m) for m in ("val_loss", "train_loss", "val_accuracy", "train_accuracy")] == \
        ["min", "min", "max", "max"]
    assert lower_is_better("seconds") and not lower_is_better("images_per_sec")
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    sched = Schedule(opt, SchedConfig(name="plateau", factor=0.5, patience=0, plateau_metric="val_accuracy"), 10)
    for acc in (0.5, 0.6, 0.7):  # improving accuracy never reduces the LR
        sched.epoch_end({"val_accuracy": acc})
    assert sched.plateau_scale == 1.0
    sched.epoch_end({"val_accuracy": 0.65})
    assert sched.plateau_scale == 0.5
