"""The framework semantics the studies ran with: compat: keras, head dropout placement, per-sample CutMix,
input scaling, the report's validation protocol, and the parameter counts the reports state or imply."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rayclf.config import AugmentConfig, DataConfig, build_config
from rayclf.data import augment as A
from rayclf.data.sources import load_dataset
from rayclf.models import count_params, create_model
from rayclf.train.engine import fit

from .conftest import tiny

# seed 004's "pre-defined code": the widely shared course template (32 filters)
TEMPLATE_CNN = {"name": "cnn", "widths": [32, 32, 32, 64], "kernel_size": [5, 3, 3, 3], "stride": [2, 1, 1, 1],
                "padding": "valid", "pool": "max", "pool_every": 4, "head": [4096]}
TEMPLATE_MLP = {"name": "mlp", "hidden": [4096, 4096], "activation": "sigmoid"}
KERAS_RESNET20 = {"name": "resnet_cifar", "depth": 20, "conv_bias": True, "shortcut_norm": False}


def params(model: dict, classes: int) -> int:
    return count_params(create_model(build_config({"model": model}).model, classes))


def test_seed004_template_cnn_and_mlp_parameter_counts():
    # conv5×5/2 (32→14) → 3 × conv3×3 valid (→8) → max-pool (→4) → FC 4096 → FC 100
    convs = (3 * 25 * 32 + 32) + 2 * (32 * 9 * 32 + 32) + (32 * 9 * 64 + 64)
    assert params(TEMPLATE_CNN, 100) == convs + (64 * 4 * 4 * 4096 + 4096) + (4096 * 100 + 100) == 4_647_524
    assert params(TEMPLATE_MLP, 100) == (3072 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 100 + 100)


def test_keras_cifar10_resnet20_has_the_reference_parameter_count():
    """Keras's cifar10_resnet v1 (depth 20): biased convs, no BatchNorm on the projection shortcut: 273,066
    trainable parameters (its summary: 274,442 total, 1,376 of them BatchNorm moving statistics)."""
    assert params(KERAS_RESNET20, 10) == 273_066
    model = create_model(build_config({"model": KERAS_RESNET20}).model, 10)
    assert isinstance(model.stages[1][0].shortcut, nn.Conv2d)


def test_cnn_per_block_options_are_checked():
    with pytest.raises(Exception, match="one per block"):
        build_config({"model": {**TEMPLATE_CNN, "stride": [2, 1]}})


@pytest.mark.parametrize(("at", "dropouts_before_linear"), [("every", [True, True]), ("output", [False, True])])
def test_head_dropout_placement(at, dropouts_before_linear):
    model = create_model(build_config({"model": {"name": "cnn", "widths": [8], "head": [16], "head_dropout": 0.4,
                                                 "head_dropout_at": at}}).model, 10)
    head = list(model[-1])
    linears = [i for i, m in enumerate(head) if isinstance(m, nn.Linear)]
    assert [i > 0 and isinstance(head[i - 1], nn.Dropout) for i in linears] == dropouts_before_linear
    assert sum(isinstance(m, nn.Dropout) for m in head) == sum(dropouts_before_linear)


def test_compat_keras_fills_only_what_the_config_does_not_set():
    torch_cfg = build_config(tiny())
    keras = build_config(tiny(compat="keras", optim={"name": "adam", "lr": 1e-3}))
    assert (keras.model.init, keras.model.bn_momentum, keras.model.bn_eps, keras.model.leaky_slope) == \
        ("xavier_uniform", 0.01, 1e-3, 0.3)
    assert (keras.optim.eps, keras.optim.momentum, keras.train.early_stopping.restore_best) == (1e-7, 0.0, False)
    assert (keras.reg.in_val_loss, keras.data.scale, keras.sched.plateau_min_delta) == (True, "unit", 1e-4)
    assert (torch_cfg.model.init, torch_cfg.optim.eps, torch_cfg.data.scale) == ("default", 1e-8, "standardize")
    explicit = build_config(tiny(compat="keras", model={"name": "cnn", "widths": [8], "leaky_slope": 0.1},
                                 optim={"name": "sgd", "momentum": 0.9}, data={"name": "synthetic",
                                                                               "scale": "standardize"}))
    assert (explicit.model.leaky_slope, explicit.optim.momentum, explicit.data.scale) == (0.1, 0.9, "standardize")
    # a config round-trips unchanged
    assert build_config(keras.to_dict()).to_dict() == keras.to_dict()


def test_compat_keras_builds_keras_layers_and_trains():
    cfg = build_config(tiny(compat="keras", model={"name": "cnn", "widths": [8, 16], "norm": "before"},
                            reg={"kind": "l2", "l2": 0.01}, train={"epochs": 1}))
    model = create_model(cfg.model, 4)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(b.momentum == 0.01 and b.eps == 1e-3 for b in bns)
    assert all(float(m.bias.detach().abs().sum()) == 0 for m in model.modules() if isinstance(m, nn.Conv2d))
    result = fit(cfg)
    assert result.status == "completed"


def test_validation_loss_includes_the_weight_penalty_when_asked():
    reg = {"kind": "l2", "l2": 1.0}
    plain = fit(build_config(tiny(reg=reg, train={"epochs": 1}, data={"name": "synthetic", "val_fraction": 0.2})))
    keras = fit(build_config(tiny(reg={**reg, "in_val_loss": True}, train={"epochs": 1},
                                  data={"name": "synthetic", "val_fraction": 0.2})))
    assert keras.history[0]["val_accuracy"] == plain.history[0]["val_accuracy"]
    assert keras.history[0]["val_loss"] > plain.history[0]["val_loss"] + 0.1


def test_input_scaling_and_the_reports_validation_protocol():
    base = tiny()["data"]
    unit = load_dataset(DataConfig(**base, scale="unit"))
    assert unit.mean == (0.0, 0.0, 0.0) and unit.std == (1.0, 1.0, 1.0)
    pix = load_dataset(DataConfig(**base, scale="pixel_mean"))
    want = pix.train.x.astype(np.float64).mean(0) / 255
    assert np.allclose(np.asarray(pix.mean), want)
    aug = A.Augmenter(AugmentConfig(), pix.mean, pix.std, torch.device("cpu"), seed=0)
    batch = torch.from_numpy(pix.train.x[:2])
    assert torch.allclose(aug.eval_batch(batch), batch.float() / 255 - torch.tensor(want, dtype=torch.float32))
    held = load_dataset(DataConfig(**base))
    on_test = load_dataset(DataConfig(**base, validate_on="test"))
    assert len(on_test.train) == len(held.train) + len(held.val)
    assert on_test.val is on_test.test


def test_per_sample_cutmix_draws_one_box_per_sample():
    """The Keras CutMix example (seed 000's reference): λ ~ Beta(0.25, 0.25) and a box per sample. With one λ
    per batch every box has the same side s, and clipping at the border keeps at least ceil(s/2)² of it, so the
    pasted areas differ at most 4×; per-sample λ spreads them far wider."""
    x = (torch.rand(64, 3, 32, 32) * 255).to(torch.uint8)

    def pasted(per_sample: bool) -> torch.Tensor:
        cfg = AugmentConfig(cutmix={"alpha": 0.25, "per_sample": per_sample})
        out, t = A.Augmenter(cfg, (0.0,) * 3, (1.0,) * 3, torch.device("cpu"), seed=3).train_batch(x, torch.arange(64))
        changed = (out != x.float() / 255).any(1).flatten(1).float().mean(1)
        other = t.y_b != t.y_a
        assert torch.allclose(changed[other], 1 - t.lam[other], atol=1e-6)  # label weight = pasted area
        area = (1 - t.lam)[other]
        return area[area > 0]

    per_sample, per_batch = pasted(True), pasted(False)
    assert float(per_batch.max() / per_batch.min()) <= 4.0
    assert float(per_sample.max() / per_sample.min()) > 20.0


def test_reported_numbers_are_validated_data_and_compared_with_the_reproduction():
    from rayclf.config import ConfigError
    from rayclf.report import reported as R
    from rayclf.sweep.spec import parse_sweep

    data = {"name": "s", "base": tiny(), "seeds": [0, 1, 2],
            "search": {"ablation": {"factors": {"model.widths": [[8]]}}},
            "reported": [{"arm": "baseline", "value": 0.70, "source": "Table 1"},
                         {"arm": "widths=8", "value": 0.90, "source": "Table 1", "metric": "metric_best"}]}
    sweep = parse_sweep(data)
    assert [r.arm for r in sweep.file.reported] == ["baseline", "widths=8"]
    with pytest.raises(ConfigError, match="'reported.0.arm' = 'basline'.*Did you mean 'baseline'"):
        parse_sweep({**data, "reported": [{"arm": "basline", "value": 0.7, "source": "Table 1"}]})
    with pytest.raises(ConfigError, match="reported"):
        parse_sweep({**data, "reported": [{"arm": "baseline", "value": 70.0, "source": "Table 1"}]})
    trials = [{"arm": "baseline", "status": "completed", "test_accuracy": v} for v in (0.69, 0.71, 0.70)]
    trials += [{"arm": "widths=8", "status": "completed", "metric_best": v} for v in (0.80, 0.81, 0.79)]
    rows = R.compare([r.model_dump() for r in sweep.file.reported], trials)
    assert rows[0].inside is True and rows[0].diff == pytest.approx(0.0)
    assert rows[1].inside is False and rows[1].diff == pytest.approx(-0.10)
    md = R.to_markdown(rows)
    assert "| baseline | test_accuracy | 70.00 | Table 1 | 3 |" in md and "| -10.00 | no |" in md
    R.figure(rows)


def test_resnet_custom_block_can_add_after_the_activation_as_seed_001():
    """Seed 001's block: BatchNorm and ReLU after each conv, then the input added (the sum can be negative); the
    default ResNet v1 block activates after the sum (never negative). Same parameters either way."""
    torch.manual_seed(0)
    models = {order: create_model(build_config({"model": {"name": "resnet_custom", "blocks": 1, "width": 8,
                                                          "residual_add": order}}).model, 10).eval()
              for order in ("before_act", "after_act")}
    assert count_params(models["before_act"]) == count_params(models["after_act"])
    x = -torch.rand(2, 8, 8, 8)  # a negative input: only an add after the activation lets it through
    outs = {order: m.stages[0](x) for order, m in models.items()}
    assert (outs["before_act"] >= 0).all() and (outs["after_act"] < 0).any()
