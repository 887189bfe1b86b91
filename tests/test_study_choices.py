"""The study files' remaining choices, checked on what they build: Keras's Adadelta/Adagrad defaults, one mixup λ
per batch, dropout after each convolution (report 002), ImageNet statistics for ImageNet weights (001), and the
report's ★ path through the staged tuning of report 000 (with the pure greedy path one --set away)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from rayclf.config import AugmentConfig, build_config
from rayclf.data import augment as A
from rayclf.sweep.spec import load_sweep
from rayclf.train.optim import create_optimizer

from .conftest import tiny

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


def _stage(sweep, name: str) -> int:
    return next(i for i in range(sweep.stage_count()) if sweep.stage_label(i) == name)


# ------------------------------------------------------------------------------- compat: keras optimizers
@pytest.mark.parametrize(("name", "keras", "torch_own"), [
    ("adadelta", {"rho": 0.95, "eps": 1e-7}, {"rho": 0.9, "eps": 1e-6}),
    ("adagrad", {"initial_accumulator_value": 0.1, "eps": 1e-7}, {"initial_accumulator_value": 0, "eps": 1e-8}),
])
def test_compat_keras_gives_adadelta_and_adagrad_their_keras_defaults(name, keras, torch_own):
    """Keras: Adadelta(rho=0.95, epsilon=1e-7), Adagrad(initial_accumulator_value=0.1, epsilon=1e-7); compat:
    torch keeps what the optimizers did before (torch's Adadelta, timm's Adagrad)."""
    model = nn.Linear(4, 2)
    for compat, want in (("keras", keras), ("torch", torch_own)):
        opt = create_optimizer(model, build_config(tiny(compat=compat, optim={"name": name, "lr": 1e-3})).optim)
        assert {k: opt.defaults[k] for k in want} == want, compat
    if name == "adagrad":  # the accumulator really starts there
        assert torch.all(opt.state[model.weight]["sum"] == 0)
        keras_opt = create_optimizer(model, build_config(tiny(compat="keras", optim={"name": name})).optim)
        assert torch.all(keras_opt.state[model.weight]["sum"] == 0.1)


def test_keras_optimizer_options_are_filled_only_where_their_optimizer_trains():
    """rho / initial_accumulator would change every other Keras trial's id (and nothing it learns)."""
    adam = build_config(tiny(compat="keras", optim={"name": "adam"}))
    assert (adam.optim.rho, adam.optim.initial_accumulator) == (None, None)
    assert not {"optim.rho", "optim.initial_accumulator"} & set(adam.identity())
    phased = build_config(tiny(compat="keras", optim={"name": "adam"},
                               train={"phases": [{"epochs": 1}, {"epochs": 1, "optim": "adadelta", "lr": 1.0}]}))
    assert (phased.optim.rho, phased.optim.initial_accumulator) == (0.95, None)
    explicit = build_config(tiny(compat="keras", optim={"name": "adadelta", "rho": 0.9, "eps": 1e-6}))
    assert (explicit.optim.rho, explicit.optim.eps) == (0.9, 1e-6)  # a file overrides them by writing them


def test_report_002_optimizer_stage_runs_keras_adadelta_and_adagrad():
    sweep = load_sweep(SWEEPS / "cifar10_baselines.yaml")
    arms = {a.label: a for a in sweep.arms({}, stage=_stage(sweep, "optimizer"))}
    model = nn.Linear(4, 2)
    built = {k: create_optimizer(model, sweep.config_for(arms[f"optimizer:optimizer={k}"], 0).optim)
             for k in ("adadelta", "adagrad")}
    assert isinstance(built["adadelta"], torch.optim.Adadelta)
    assert (built["adadelta"].defaults["rho"], built["adadelta"].defaults["eps"]) == (0.95, 1e-7)
    assert isinstance(built["adagrad"], torch.optim.Adagrad)
    assert (built["adagrad"].defaults["initial_accumulator_value"], built["adagrad"].defaults["eps"]) == (0.1, 1e-7)


# ------------------------------------------------------------------------------------------------ mixup
def test_mixup_draws_one_lambda_per_batch():
    """What files 002 and 003 state: one λ ~ Beta(α, α) mixes the whole batch (a new one each batch)."""
    aug = A.Augmenter(AugmentConfig(mixup={"alpha": 0.2}), (0.0,) * 3, (1.0,) * 3, torch.device("cpu"), seed=0)
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    lams = [aug.train_batch(x, torch.arange(16))[1].lam for _ in range(4)]
    assert all(torch.all(lam == lam[0]) for lam in lams)
    assert len({float(lam[0]) for lam in lams}) == 4


# ------------------------------------------------------------------------------------- dropout placement
def _dropout_after_each_conv(model: nn.Module) -> list[float]:
    """The rate of the dropout that follows each conv's activation (and norm), before anything else; 0: none."""
    layers = [m for m in model.modules() if not isinstance(m, nn.Sequential)]
    rates = []
    for i, m in enumerate(layers):
        if isinstance(m, nn.Conv2d):
            rest = layers[i + 1:]
            end = next((j for j, n in enumerate(rest) if not isinstance(n, (nn.BatchNorm2d, nn.ReLU))), len(rest))
            rates.append(rest[end].p if end < len(rest) and isinstance(rest[end], nn.Dropout) else 0.0)
    return rates


@pytest.mark.parametrize(("at", "want"), [("conv", [0.2, 0.2, 0.5, 0.5]), ("block", [0.0, 0.0, 0.0, 0.0])])
def test_dropout_at_conv_puts_the_blocks_rate_after_each_convolution(at, want):
    from rayclf.models import count_params, create_model

    opts = {"name": "vgg_baseline", "blocks": 2, "width": 8, "norm": "before", "dropout": [0.2, 0.5]}
    model = create_model(build_config({"model": {**opts, "dropout_at": at}}).model, 10)
    assert _dropout_after_each_conv(model) == want
    rates = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert rates == ([0.2, 0.2, 0.5, 0.5, 0.0] if at == "conv" else [0.2, 0.5, 0.0])  # the head's 0 last
    assert count_params(model) == count_params(create_model(build_config({"model": opts}).model, 10))


def test_report_002_puts_dropout_on_each_convolutional_layer_where_it_uses_dropout():
    """'a constant dropout factor of 0.2 on each convolutional layer'; 'increasing values for each block of
    convolutional layer in Baseline-2: 0.2, 0.5, 0.7' (two convs per block)."""
    from rayclf.models import create_model

    sweep = load_sweep(SWEEPS / "cifar10_baselines.yaml")
    arms = {a.label: a for i in range(sweep.stage_count()) for a in sweep.arms({}, stage=i)}

    def rates(label: str) -> list[float]:
        return _dropout_after_each_conv(create_model(sweep.config_for(arms[label], 0).model, 10))

    increasing = [0.2, 0.2, 0.5, 0.5, 0.7, 0.7]
    assert rates("dropout:dropout=const_0.2_20ep") == [0.2] * 6
    assert rates("dropout:dropout=const_0.5") == [0.5] * 6
    assert rates("dropout:dropout=increasing") == increasing
    assert rates("weight_decay:penalty=l2_1e-4,dropout=increasing") == increasing
    for label in ("none", "mixup", "all"):
        assert rates(f"combined:augmentation={label}") == increasing


# ------------------------------------------------------------------------------------------ input scaling
def test_imagenet_scale_standardises_with_imagenets_statistics():
    from rayclf.config import DataConfig
    from rayclf.data.sources import load_dataset

    ds = load_dataset(DataConfig(**{**tiny()["data"], "scale": "imagenet"}))
    assert ds.mean == (0.485, 0.456, 0.406) and ds.std == (0.229, 0.224, 0.225)
    aug = A.Augmenter(AugmentConfig(), ds.mean, ds.std, torch.device("cpu"), seed=0)
    white = aug.eval_batch(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert torch.allclose(white[0, :, 0, 0], torch.tensor([(1 - m) / s for m, s in zip(ds.mean, ds.std, strict=True)]))


def test_report_001_vgg19_transfer_feeds_the_weights_the_statistics_they_were_trained_with():
    """The header says so; the numbers are the pretrained weights' own (timm's pretrained config)."""
    import numpy as np
    import timm

    from rayclf.data.sources import input_scaling

    sweep = load_sweep(SWEEPS / "cinic10_vgg19_transfer.yaml")
    cfg = sweep.config_for(sweep.arms()[0], 0)
    assert cfg.model.loads_weights()
    weights = timm.models.get_pretrained_cfg(cfg.model.name)
    pixels = np.random.default_rng(0).integers(0, 256, (8, 3, 4, 4), dtype=np.uint8)
    assert input_scaling(cfg.data.scale, pixels) == (tuple(weights.mean), tuple(weights.std))
