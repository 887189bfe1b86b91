"""A trial's row in ``trials.parquet``: its identity in the sweep and what it measured (no Ray: the kernel
writes rows for trials that never start, the Tune callbacks for trials that ran)."""

from __future__ import annotations

from typing import Any

from rayclf.aggregate import best_value, final_value
from rayclf.config import flatten
from rayclf.sweep.spec import Sweep, Trial


def identity(sweep: Sweep, t: Trial, index: int) -> dict[str, Any]:
    """A trial's row identity; ``index`` is its place in the sweep's trial order (within its stage)."""
    return {"trial_id": t.trial_id, "sweep": sweep.name, "arm": t.arm.label, "arm_id": t.arm_id, "seed": t.seed,
            "stage": t.arm.stage, "position": (t.arm.stage or 0) * 100_000 + index, "overrides": t.arm.overrides,
            "config": t.config.to_dict(), "epochs": t.config.total_epochs()}


def trial_row(info: dict[str, Any], status: str, reason: str, summary: dict[str, Any] | None,
              epochs: list[dict[str, Any]], metric: str, mode: str, checkpoint: str | None = None,
              resumed_from: int | None = None, rung: int | None = None) -> dict[str, Any]:
    """One ``trials.parquet`` row: identity, status, final/best metrics, and the flattened config.

    Best and final values skip non-finite epochs (a NaN epoch never hides the others); a trial that trained
    but has no finite ``metric`` in any epoch it is judged on is ``diverged``, so every table counts it instead
    of its arm's mean silently losing a seed. A trial whose arm was stopped at epoch ``rung`` carries that epoch
    as ``stopped_at_epoch`` and its best up to it as ``metric_best`` (the arm's value there; epochs it trained
    past the rung stay in epochs.parquet).
    Lists and dicts go in as values: the store encodes them (canonical JSON), once, for every row alike."""
    s = summary or {}
    judged = [e for e in epochs if rung is None or int(e.get("epoch") or 0) <= rung]
    best = best_value([e.get(metric) for e in judged], mode)  # non-finite epochs never count
    if best is None and judged and status in ("completed", "stopped_early"):  # trained, but no epoch has a value
        status, reason = "diverged", f"no epoch has a finite {metric}" + (f"; {reason}" if reason else "")
    last = epochs[-1] if epochs else {}
    stopped_at = (rung if rung is not None else last.get("epoch")) if status == "stopped_early" else None
    row: dict[str, Any] = {
        "trial_id": info["trial_id"], "sweep": info["sweep"], "arm": info["arm"], "arm_id": info.get("arm_id"),
        "stage": info.get("stage"),
        "seed": info["seed"], "position": info.get("position"), "status": status, "reason": reason,
        "epochs": len(epochs), "stopped_at_epoch": stopped_at,
        "resumed_from_epoch": resumed_from,
        "metric": metric, "metric_best": best, "metric_final": final_value(e.get(metric) for e in epochs),
        "best_val_accuracy": best_value((e.get("val_accuracy") for e in epochs), "max"),
        "final_val_accuracy": last.get("val_accuracy"), "final_val_loss": last.get("val_loss"),
        "final_train_loss": last.get("train_loss"), "final_train_accuracy": last.get("train_accuracy"),
        "test_accuracy": s.get("test_accuracy"), "test_loss": s.get("test_loss"), "params": s.get("params"),
        "seconds": s.get("seconds", sum(e.get("epoch_seconds") or 0.0 for e in epochs)),
        "train_seconds": s.get("train_seconds", sum(e.get("train_seconds") or 0.0 for e in epochs)),
        "images_per_sec": s.get("images_per_sec") or _mean([e.get("images_per_sec") for e in epochs]),
        "best_epoch": s.get("best_epoch"), "early_stopped": s.get("early_stopped"),
        "world_size": s.get("world_size"), "node": last.get("node"), "checkpoint": checkpoint,
        "per_class_accuracy": s.get("per_class_accuracy", []), "confusion_matrix": s.get("confusion_matrix", []),
        "classes": s.get("classes", []), "overrides": info.get("overrides", {}),
    }
    row.update({f"config.{k}": v for k, v in flatten(info["config"]).items()})
    return row


def _mean(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


