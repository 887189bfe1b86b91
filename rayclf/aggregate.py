"""Per-arm aggregation over seeds (mean ± std): shown by the sweep summary, stages and reports."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ArmStats:
    arm: str
    n: int
    mean: float | None
    std: float | None
    test_mean: float | None
    test_std: float | None
    statuses: dict[str, int] = field(default_factory=dict)
    stage: int | None = None


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) of the finite values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def arm_stats(rows: Iterable[Mapping[str, Any]], value_key: str = "metric_best") -> list[ArmStats]:
    """Group trial rows by arm (first-seen order); aggregate counting only completed trials."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["arm"], []).append(r)
    out = []
    for arm, rs in groups.items():
        ok = [r for r in rs if r.get("status") == "completed"]
        m, sd = mean_std(r.get(value_key) for r in ok)
        tm, tsd = mean_std(r.get("test_accuracy") for r in ok)
        statuses: dict[str, int] = {}
        for r in rs:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        out.append(ArmStats(arm, len(ok), m, sd, tm, tsd, statuses, rs[0].get("stage")))
    return out


def best_arm(stats: list[ArmStats], mode: str) -> ArmStats | None:
    scored = [s for s in stats if s.mean is not None]
    if not scored:
        return None
    return max(scored, key=lambda s: s.mean if mode == "max" else -s.mean)  # type: ignore[operator]


def pm(mean: float | None, std: float | None, pct: bool = True) -> str:
    if mean is None:
        return "-"
    if pct:
        return f"{100 * mean:.2f} ± {100 * (std or 0):.2f}"
    return f"{mean:.4f} ± {std or 0:.4f}"


def format_table(stats: list[ArmStats], metric: str) -> str:
    pct = metric.endswith("accuracy")
    head = f"{'arm':<44} {'n':>3}  {metric + (' %' if pct else ''):>18}  {'test acc %':>16}  status"
    lines = [head, "-" * len(head)]
    for s in stats:
        status = ", ".join(f"{k} {v}" for k, v in sorted(s.statuses.items()))
        lines.append(f"{s.arm[:44]:<44} {s.n:>3}  {pm(s.mean, s.std, pct):>18}  {pm(s.test_mean, s.test_std):>16}  "
                     f"{status}")
    return "\n".join(lines)
