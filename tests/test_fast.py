"""The fast recipe's pieces (airbench net, whitening, alternating flip, TTA, scaled norm-bias LR) and the
speedrun sweep file through ``rayclf train`` and a one-trial ``rayclf sweep``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from rayclf.cli import main
from rayclf.config import OptimConfig, SchedConfig, build_config
from rayclf.data.augment import AlternatingFlip
from rayclf.models import create_model
from rayclf.sweep.plan import unmet_resources
from rayclf.sweep.spec import load_sweep, load_trial_config
from rayclf.train.optim import Schedule, create_optimizer, lr_factor
from rayclf.train.phases import set_trainable

from .conftest import tiny

SPEEDRUN = Path(__file__).resolve().parents[1] / "sweeps" / "cifar10_speedrun.yaml"
SMALL = ["--set", "data.name=synthetic", "--set", "data.synthetic.num_train=300", "--set",
         "data.synthetic.num_test=100", "--set", "model.widths=[8,16,16]", "--set", "train.epochs=2",
         "--set", "train.batch_size=64"]


def airbench(**opts):
    return create_model(build_config({"model": {"name": "airbench", **opts}}).model, num_classes=10)


def test_whitening_layer_decorrelates_image_patches():
    torch.manual_seed(0)
    base = torch.randn(64, 1, 32, 32)
    x = torch.cat([base, 0.8 * base + 0.2 * torch.randn(64, 1, 32, 32), torch.randn(64, 1, 32, 32)], 1)
    x = nn.functional.avg_pool2d(x, 3, 1, 1)  # neighbouring pixels correlate too
    net = airbench(whiten_eps=1e-8)
    net.init_from_data(x, lambda z: z)  # already normalised
    with torch.no_grad():
        out = nn.functional.conv2d(x, net.whiten.weight[:12])  # the first half; the rest are negatives
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(flat.T)
    assert torch.allclose(cov, torch.eye(12), atol=0.05), cov.diag()
    assert torch.equal(net.whiten.weight[12:], -net.whiten.weight[:12])


def test_airbench_shape_and_frozen_weights_survive_phases():
    net = airbench()
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert "whiten.weight" in frozen and any(n.endswith("norm1.weight") for n in frozen)
    set_trainable(net, "head")
    set_trainable(net, "all")  # "all" must not unfreeze what the model keeps fixed
    assert {n for n, p in net.named_parameters() if not p.requires_grad} == frozen
    assert 1.9e6 < sum(p.numel() for p in net.parameters() if p.requires_grad) < 2.0e6  # airbench94: ≈1.97 M


def test_norm_biases_get_scaled_lr_and_decay_and_schedule_keeps_the_ratio():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    cfg = OptimConfig(name="sgd", lr=0.5, weight_decay=0.01, norm_bias_lr_scale=64, decay_norm_and_bias=True)
    opt = create_optimizer(model, cfg)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    bn_bias, conv_w, lin_b = by_param[id(model[1].bias)], by_param[id(model[0].weight)], by_param[id(model[3].bias)]
    assert bn_bias["lr"] == pytest.approx(32.0) and bn_bias["weight_decay"] == pytest.approx(0.01 / 64)
    assert conv_w["lr"] == 0.5 and conv_w["weight_decay"] == 0.01 and lin_b["weight_decay"] == 0.01
    sched = Schedule(opt, SchedConfig(name="linear", warmup_epochs=2, warmup_start=0.2, min_lr=0.05), 10)
    for t in (0.0, 1.0, 6.0, 10.0):
        sched.step(t)
        assert bn_bias["lr"] / conv_w["lr"] == pytest.approx(64)
    assert conv_w["lr"] == pytest.approx(0.05)  # min_lr reached at the end
    plain = create_optimizer(model, OptimConfig(name="sgd", weight_decay=0.01))
    assert all(g["weight_decay"] == 0 for g in plain.param_groups if any(p.ndim == 1 for p in g["params"]))


def test_linear_schedule_is_airbench_triangle():
    f = lambda t: lr_factor(SchedConfig(name="linear", warmup_epochs=2.3, warmup_start=0.2, min_lr=0.07), t, 10, 1)  # noqa: E731
    assert f(0) == pytest.approx(0.2) and f(2.3) == pytest.approx(1.0)
    assert f(10) == pytest.approx(0.07) and f(6.15) == pytest.approx(0.535)


def test_alternating_flip_shows_every_image_both_ways_and_resumes_identically():
    x0 = torch.arange(2 * 1 * 2 * 3, dtype=torch.uint8).view(2, 1, 2, 3).repeat(50, 1, 1, 1)
    x = x0.clone()
    flip = AlternatingFlip(0.5, len(x), seed=1, device=torch.device("cpu"))
    seen = []
    for epoch in range(4):
        flip.apply(x, epoch)
        seen.append((x != x0).flatten(1).any(1))
    assert 0.3 < seen[0].float().mean() < 0.7
    assert torch.equal(seen[1], ~seen[0]) and torch.equal(seen[2], seen[0]) and torch.equal(seen[3], ~seen[0])
    fresh = x0.clone()
    AlternatingFlip(0.5, len(x), seed=1, device=torch.device("cpu")).apply(fresh, 3)  # resumed at epoch 3
    assert torch.equal(fresh, x)


def test_tta_averages_mirrored_and_shifted_views():
    from rayclf.data.sources import load_dataset
    from rayclf.train.engine import build_trainer

    cfg = build_config(tiny(train={"tta": "flip_translate"}))
    tr = build_trainer(cfg, load_dataset(cfg.data))
    tr.net.eval()
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        got = tr.eval_logits(x)
        f = lambda z: 0.5 * (tr.net(z) + tr.net(z.flip(3)))  # noqa: E731
        pad = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        want = 0.5 * f(x) + 0.25 * f(pad[..., :16, :16]) + 0.25 * f(pad[..., 2:, 2:])
        assert torch.allclose(got, want, atol=1e-5)
        tr.cfg.train.tta = "none"
        assert not torch.allclose(tr.eval_logits(x), want, atol=1e-5)


def test_sweep_file_overrides_and_unmet_resources():
    sweep = load_sweep(SPEEDRUN, ("resources.gpus=0", "seeds=[3,4]", "train.epochs=1", "base.optim.lr=0.2"))
    assert sweep.file.resources.gpus == 0 and sweep.file.seeds == [3, 4]
    assert sweep.base["train"]["epochs"] == 1 and sweep.base["optim"]["lr"] == 0.2
    msg = unmet_resources(load_sweep(SPEEDRUN), {"CPU": 2.0, "GPU": 0.0})
    assert msg is not None and "needs 1 GPU" in msg and "--set resources.gpus=0" in msg
    assert unmet_resources(sweep, {"CPU": 2.0, "GPU": 0.0}) is None
    assert load_trial_config(SPEEDRUN).seed == 0 and load_trial_config(SPEEDRUN, ("seed=5",)).seed == 5


def test_speedrun_recipe_trains_through_rayclf_train(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", str(SPEEDRUN), *SMALL, "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert "best val n/a" in res.output
    (tmp_path / "empty").mkdir()  # synthetic data: predict regenerates the test split from the stored config
    res = CliRunner().invoke(main, ["predict", str(out / "checkpoint"), "--data-root", str(tmp_path / "empty"),
                                    "--out", str(tmp_path / "p.npy")])
    assert res.exit_code == 0, res.output
    assert f"accuracy: {summary['test_accuracy']:.2%}" in res.output  # the kept model is the tested one, TTA and all
    config = (out / "config.yaml").read_text()
    assert "airbench" in config and "flip_translate" in config and "alternate" in config


@pytest.mark.ray
@pytest.mark.timeout(60)
def test_speedrun_as_a_one_trial_sweep(ray_local, tmp_path):
    out = tmp_path / "sweep"
    res = CliRunner().invoke(main, ["sweep", str(SPEEDRUN), *SMALL, "--set", "resources.gpus=0", "--out", str(out),
                                    "--quiet", "--wandb", "disabled"])
    assert res.exit_code == 0, res.output
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "trials.parquet").to_pylist()
    assert len(rows) == 1 and rows[0]["status"] == "completed" and rows[0]["config.model.name"] == "airbench"
    assert rows[0]["epochs"] == 2
    cm = json.loads(rows[0]["confusion_matrix"])  # the trial's own test evaluation reached the row intact
    assert sum(map(sum, cm)) == 100 and rows[0]["test_accuracy"] == sum(cm[i][i] for i in range(len(cm))) / 100


def test_lookahead_pulls_weights_into_the_average_and_resets_them():
    from rayclf.config import LookaheadConfig
    from rayclf.train.lookahead import Lookahead

    model = nn.Linear(3, 2)
    w0 = model.weight.detach().clone()
    la = Lookahead(model, LookaheadConfig(every=5, start_epoch=1, decay_base=0.9, decay_pow=1.0), total_steps=100)
    la.epoch_start(0)
    la.step(5)
    assert la.avg is None  # not started yet
    la.epoch_start(1)
    with torch.no_grad():
        model.weight.add_(1.0)
    la.step(49)  # not a multiple of 5: nothing happens
    assert torch.allclose(model.weight, w0 + 1)
    la.step(50)
    rho = 0.9**5 * 0.5
    assert torch.allclose(model.weight, w0 + (1 - rho), atol=1e-6)
    with torch.no_grad():
        model.weight.add_(3.0)
    la.epoch_end()  # the weights go back to the average
    assert torch.allclose(model.weight, w0 + (1 - rho), atol=1e-6)


def test_airbench_whitening_bias_trains_only_for_its_first_epochs():
    net = airbench(whiten_bias_epochs=2)
    net.on_epoch_start(1)
    assert net.whiten.bias.requires_grad
    net.on_epoch_start(2)
    assert not net.whiten.bias.requires_grad
