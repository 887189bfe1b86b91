"""Which way each metric improves: the one place that decides "lower is better" (a leaf: no imports)."""

from __future__ import annotations

from typing import Literal

LOWER_IS_BETTER = frozenset({"train_loss", "val_loss", "test_loss", "final_train_loss", "final_val_loss",
                             "seconds", "train_seconds", "test_seconds", "epoch_seconds"})


def lower_is_better(name: str) -> bool:
    """Losses and durations improve downwards; accuracies and throughput upwards."""
    return name in LOWER_IS_BETTER or name.endswith("_loss")


def metric_mode(name: str) -> Literal["min", "max"]:
    """Tune-style ``mode`` for a metric name."""
    return "min" if lower_is_better(name) else "max"
