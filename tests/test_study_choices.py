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
from rayclf.identity import identity_values
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
    assert not {"optim.rho", "optim.initial_accumulator"} & set(identity_values(adam))
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


# ------------------------------------------------------------------------------- report 000: the ★ path
STAR = {"model.widths": [64, 128, 128, 128], "model.dropout": 0.05, "model.head_dropout": 0.05,
        "model.kernel_size": 3, "train.batch_size": 16, "model.pool": "avg", "model.activation": "leaky_relu",
        "optim.lr": 0.001, "optim.name": "adam", "augment.cutmix.alpha": 0.25}


def _value(cfg, key: str):
    from rayclf.config import flatten

    return flatten(cfg.to_dict())[key]


def test_report_000_stages_walk_the_reports_star_path_by_default():
    """Each stage hands on its ★ (carry:), so every later arm sits on the report's choices (batch 16 from the
    batch stage on, though batch 64 scored best) and is known before the sweep runs."""
    from rayclf.sweep.select import sweep_arms

    sweep = load_sweep(SWEEPS / "cifar10_cnn_tuning.yaml")
    known, pending = sweep_arms(sweep)
    assert pending == []
    order = [sweep.stage_label(i) for i in range(sweep.stage_count())]
    star_of = {"width_depth": ["model.widths"], "dropout": ["model.dropout", "model.head_dropout"],
               "kernel": ["model.kernel_size"], "batch": ["train.batch_size"], "pooling": ["model.pool"],
               "activation": ["model.activation"], "learning_rate": ["optim.lr"],
               "optimizer_cutmix": ["optim.name", "augment.cutmix.alpha"]}
    assert list(star_of) == order
    for arm in known:
        if arm.label == "final":
            continue
        cfg = sweep.config_for(arm, 0)
        earlier = [k for stage in order[:arm.stage] for k in star_of[stage]]
        assert {k: _value(cfg, k) for k in earlier} == {k: STAR[k] for k in earlier}, arm.label
    pooling = [a for a in known if a.label.startswith("pooling:")]
    assert len(pooling) == 3 and {sweep.config_for(a, 0).train.batch_size for a in pooling} == {16}


def test_report_000_greedy_path_is_one_set_away_and_final_is_the_reports_model_on_both():
    from rayclf.sweep.select import select_arms, sweep_arms

    path = SWEEPS / "cifar10_cnn_tuning.yaml"
    star, greedy = load_sweep(path), load_sweep(path, ("search.greedy=true",))
    _, pending = sweep_arms(greedy)
    assert "pooling:pool=avg" in pending and "final" not in pending
    # the batch stage's best arm by the report's numbers (64) reaches the pooling stage only on the greedy path
    batch_winner = {**STAR, "train.batch_size": 64}
    for sweep, batch in ((greedy, 64), (star, 16)):
        known, _ = sweep_arms(sweep, {_stage(sweep, "batch"): batch_winner})
        pooling = [a for a in known if a.label.startswith("pooling:")]
        assert len(pooling) == 3 and {sweep.config_for(a, 0).train.batch_size for a in pooling} == {batch}
    finals = [s.trials(select_arms(s, ["final"]).arms)[0] for s in (star, greedy)]
    assert finals[0].trial_id == finals[1].trial_id
    assert {k: _value(finals[0].config, k) for k in STAR} == STAR and finals[0].config.train.epochs == 200


def _two_stages(greedy: bool) -> dict:
    base = tiny(data={"synthetic": {"num_train": 60, "num_test": 30, "num_classes": 3, "image_size": 8}},
                train={"epochs": 1, "batch_size": 30})
    return {"name": "st", "base": base, "search": {"greedy": greedy, "stages": [
        {"name": "bs", "vary": {"train.batch_size": [10, 20]}, "carry": {"train.batch_size": 15}},
        {"name": "lr", "vary": {"optim.lr": [0.01, 0.1]}}]}}


@pytest.mark.parametrize("greedy", [False, True])
def test_search_greedy_hands_on_the_stage_winner_instead_of_its_carry(tmp_path, greedy):
    from rayclf.sweep.kernel import execute
    from rayclf.sweep.select import stage_winners
    from rayclf.sweep.spec import parse_sweep

    from .fake_runner import fake_run

    sweep = parse_sweep(_two_stages(greedy))
    out = str(tmp_path / "run")
    execute(fake_run(sweep, out))
    winner = stage_winners(out)[0]["train.batch_size"]
    later = {r["config.train.batch_size"] for r in fake_run(sweep, out).store.trials if r["stage"] == 1}
    assert winner in (10, 20) and later == ({winner} if greedy else {15})


def test_search_greedy_is_refused_where_it_would_change_nothing():
    from rayclf.config import ConfigError
    from rayclf.sweep.spec import parse_sweep

    no_carry = _two_stages(True)
    del no_carry["search"]["stages"][0]["carry"]
    with pytest.raises(ConfigError, match="search.greedy: true has no effect"):
        parse_sweep(no_carry)
    grid = {**no_carry, "search": {"greedy": True, "grid": {"optim.lr": [0.01, 0.1]}}}
    with pytest.raises(ConfigError, match="search.greedy only applies to stages"):
        parse_sweep(grid)
