"""The quickstart is a real study: its default synthetic data is hard enough that the baseline lands in range."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rayclf.config import DataConfig
from rayclf.data.sources import load_synthetic
from rayclf.sweep.spec import load_sweep
from rayclf.train.engine import fit

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
