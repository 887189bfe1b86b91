"""The quickstart is a real study: its default synthetic data is hard enough that the baseline lands in range."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rayclf.config import DataConfig
from rayclf.data.sources import load_dataset, load_synthetic
from rayclf.sweep.spec import load_sweep
from rayclf.train.engine import build_trainer, fit, uses_channels_last

QUICKSTART = Path(__file__).resolve().parents[1] / "sweeps" / "quickstart.yaml"


def nearest_mean_accuracy(difficulty: float) -> float:
    """Accuracy of a nearest-class-mean classifier on raw pixels: a training-free measure of how hard the data is."""
    ds = load_synthetic(DataConfig(synthetic={"num_train": 600, "num_test": 300, "num_classes": 6,
                                              "image_size": 16, "difficulty": difficulty}))
    x, xt = ds.train.x.reshape(len(ds.train), -1) / 255.0, ds.test.x.reshape(len(ds.test), -1) / 255.0
    means = np.stack([x[ds.train.y == c].mean(0) for c in range(6)])
    pred = ((xt[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    return float((pred == ds.test.y).mean())


def test_difficulty_knob_makes_the_data_harder():
    easy, default, hard = (nearest_mean_accuracy(d) for d in (0.0, 0.5, 1.0))
    assert easy > default + 0.1 > hard + 0.1


def test_quickstart_baseline_lands_between_60_and_90_percent_on_cpu():
    sweep = load_sweep(QUICKSTART)
    assert sweep.file.seeds == [0, 1, 2]
    baseline = next(t for t in sweep.trials(sweep.arms()) if t.arm.label == "baseline" and t.seed == 0)
    assert baseline.config.data.synthetic.difficulty == 0.5  # the default, not a quickstart-only setting
    cfg = baseline.config.model_copy(deep=True)
    cfg.train.device = "cpu"
    result = fit(cfg)
    best = max(h["val_accuracy"] for h in result.history)
    assert 0.60 <= best <= 0.90, best


def quickstart_baseline(*sets: str):
    sweep = load_sweep(QUICKSTART, sets)
    return sweep, next(t for t in sweep.trials(sweep.arms()) if t.arm.label == "baseline" and t.seed == 0)


def test_quickstart_trains_channels_last_on_cpu_without_changing_its_trials():
    """The quickstart's speed on a CPU comes partly from the channels_last layout (faster convolutions and pooling
    with one thread, bench/quickstart.py): its trials use it on a CPU, and it is no part of their ids (a layout
    switch re-keys no trial)."""
    sweep, base = quickstart_baseline()
    assert uses_channels_last(base.config, torch.device("cpu"))
    off, _ = quickstart_baseline('train.channels_last="off"')
    assert [t.trial_id for t in sweep.trials(sweep.arms())] == [t.trial_id for t in off.trials(off.arms())]


def train_small(layout: str, dropout: float) -> dict:
    cfg, ds = small_baseline(layout, dropout)
    return fit(cfg, data=ds).history[0]


def small_baseline(layout: str, dropout: float):
    _, base = quickstart_baseline()
    cfg = base.config.model_copy(deep=True)
    cfg.train.device, cfg.train.channels_last, cfg.train.epochs = "cpu", layout, 1
    cfg.data.synthetic.num_train, cfg.data.synthetic.num_test = 600, 100
    cfg.model.dropout = dropout
    return cfg, load_dataset(cfg.data)


def test_channels_last_on_cpu_lays_out_the_model_and_inputs_channels_last():
    for layout in ("off", "on"):
        cfg, ds = small_baseline(layout, 0.1)
        tr = build_trainer(cfg, ds)
        conv = next(m for m in tr.model.modules() if isinstance(m, torch.nn.Conv2d))
        assert tr.channels_last == (layout == "on")
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == (layout == "on")
        assert tr._prep(torch.zeros(2, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last) == (layout == "on")


def test_channels_last_on_cpu_computes_what_channels_first_does():
    """Without dropout a channels_last epoch matches the channels-first one to float rounding. With dropout it is
    another draw: the mask is drawn in memory order, so the layout picks which activations drop (as a GPU's
    kernels do): equally seeded and deterministic, so the quickstart's table reproduces run after run."""
    off, on = (train_small(layout, 0.0) for layout in ("off", "on"))
    for key in ("train_loss", "val_loss"):
        assert off[key] == pytest.approx(on[key], rel=1e-4), key
    first, again = (train_small("on", 0.1) for _ in range(2))
    assert first["train_loss"] == again["train_loss"] and first["val_loss"] == again["val_loss"]
