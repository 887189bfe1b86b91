"""A trial's row in ``trials.parquet``: its identity in the sweep and what it measured (no Ray: the kernel
writes rows for trials that never start, the Tune callbacks for trials that ran)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from rayclf.aggregate import best_value, final_value
from rayclf.config import flatten
from rayclf.results import TRIAL_COLUMNS
from rayclf.sweep.trialspec import TrialSpec

IDENTITY = ("trial_id", "sweep", "arm", "arm_id", "seed", "stage", "position", "overrides")


def _identity(info: TrialSpec | Mapping[str, Any]) -> dict[str, Any]:
    """The identity columns and the config of a spec (or of a plain mapping with those keys: tests, tools)."""
    if isinstance(info, TrialSpec):
        return {f.name: getattr(info, f.name) for f in fields(info) if f.name in (*IDENTITY, "config")}
    return {k: info.get(k) for k in (*IDENTITY, "config")} | {"trial_id": info["trial_id"], "seed": info["seed"]}


def trial_row(info: TrialSpec | Mapping[str, Any], status: str, reason: str, summary: dict[str, Any] | None,
              epochs: list[dict[str, Any]], metric: str, mode: str, checkpoint: str | None = None,
              resumed_from: int | None = None, rung: int | None = None,
              data_seconds: float | None = None, reused_from: str | None = None,
              provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One ``trials.parquet`` row: identity, status, final/best metrics, and the flattened config.

    Best and final values skip non-finite epochs (a NaN epoch never hides the others); a trial that trained
    but has no finite ``metric`` in any epoch it is judged on is ``diverged``, so every table counts it instead
    of its arm's mean silently losing a seed. A trial whose arm was stopped at epoch ``rung`` carries that epoch
    as ``stopped_at_epoch`` and its best up to it as ``metric_best`` (the arm's value there; epochs it trained
    past the rung stay in epochs.parquet).
    A trial taken from the trial cache carries the cache as ``reused_from`` and who trained it as ``provenance``.
    Lists and dicts go in as values: the store encodes them (canonical JSON), once, for every row alike."""
    ident = _identity(info)
    s = summary or {}
    judged = [e for e in epochs if rung is None or int(e.get("epoch") or 0) <= rung]
    best = best_value([e.get(metric) for e in judged], mode)  # non-finite epochs never count
    if best is None and judged and status in ("completed", "stopped_early"):  # trained, but no epoch has a value
        status, reason = "diverged", f"no epoch has a finite {metric}" + (f"; {reason}" if reason else "")
    last = epochs[-1] if epochs else {}
    stopped_at = (rung if rung is not None else last.get("epoch")) if status == "stopped_early" else None
    values: dict[str, Any] = {
        **{k: ident[k] for k in IDENTITY}, "overrides": ident["overrides"] or {}, "status": status,
        "reason": reason, "epochs": len(epochs), "stopped_at_epoch": stopped_at,
        "resumed_from_epoch": resumed_from, "data_seconds": data_seconds,
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
        "classes": s.get("classes", []), "reused_from": reused_from,
        "provenance": dict(provenance) if provenance else None,
    }
    if set(values) != set(TRIAL_COLUMNS):  # results.TRIAL_COLUMNS is the one table of row columns
        raise AssertionError(f"trial_row and TRIAL_COLUMNS disagree: {sorted(set(values) ^ set(TRIAL_COLUMNS))}")
    row = {k: values[k] for k in TRIAL_COLUMNS}
    row.update({f"config.{k}": v for k, v in flatten(ident["config"] or {}).items()})
    return row


def _mean(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


