"""Per-arm aggregation over seeds: mean ± std, 95% CI, Δ vs baseline and a paired t-test on matched seeds.

One module serves the sweep summary, staged winners, W&B and reports, so every place shows the same numbers.

**The ranking rule** (the one place it is decided; tables, winners, stage winners and figures all use it):

- A trial's value is its best ``metric`` over the epochs it trained (``metric_best``). A trial stopped early
  by an arm-level scheduler carries its best up to the rung at which its arm was stopped.
- An arm's value is the mean of its seeds' values. If any seed completed, only completed seeds count (the
  arm reached the top rung); otherwise its seeds stopped early count, at the rung the arm reached. Diverged,
  failed and eliminated (never started) seeds have no value; their counts are shown beside the arm.
- Arms rank in tiers: arms that reached the last epoch and were not eliminated; then arms racing eliminated
  (ranked by the seeds they ran); then arms stopped early, later rung first, each tier by value. So "best"
  under early stopping is the best arm among those that trained to the end, never an arm that looked good
  only because it stopped early.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy import stats as sps


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) of the finite values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


@dataclass
class ArmRow:
    arm: str
    stage: int | None
    n: int
    mean: float | None
    std: float | None
    ci95: float | None  # half-width of the 95% t interval
    test_mean: float | None
    test_std: float | None
    delta: float | None = None  # vs baseline, in metric units
    delta_ci95: float | None = None  # half-width of the 95% t interval of the paired (matched-seed) differences
    p_value: float | None = None  # paired t-test vs baseline on matched seeds
    pairs: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    best: bool = False
    stopped_at: int | None = None  # the arm was stopped early at this epoch (its value is taken there)
    eliminated: str | None = None  # racing eliminated the arm: when and by what test
    rank: int | None = None  # 1 = best, by ``rank_key``
    params: int | None = None  # trainable parameters (``add_costs``)
    epoch_seconds: float | None = None  # measured seconds per trained epoch, over the arm's trials
    trial_hours: float | None = None  # every trial of the arm, stopped and failed ones included

    @property
    def note(self) -> str:
        """What happened to the arm, for every table: stopped at epoch k, eliminated (when, by what)."""
        if self.eliminated:
            return f"eliminated {self.eliminated}"
        if self.stopped_at is not None:
            return f"stopped at epoch {self.stopped_at}"
        return ""


def ci95(values: Sequence[float]) -> float | None:
    """Half-width of the two-sided 95% Student-t confidence interval of the mean."""
    n = len(values)
    if n < 2:
        return None
    _, sd = mean_std(values)
    return float(sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def paired_p_value(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[float | None, int]:
    """Two-sided paired t-test of a vs b over the seeds both have; (p, number of pairs)."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None, len(seeds)
    x, y = [a[s] for s in seeds], [b[s] for s in seeds]
    diffs = [u - v for u, v in zip(x, y, strict=True)]
    if max(diffs) - min(diffs) <= 1e-12 * max(1.0, abs(diffs[0])):  # constant differences: t is undefined
        return (1.0 if diffs[0] == 0 else 0.0), len(seeds)
    return float(sps.ttest_rel(x, y).pvalue), len(seeds)


def paired_ci95(a: Mapping[int, float], b: Mapping[int, float]) -> float | None:
    """Half-width of the 95% t interval of the mean of a − b over the seeds both have (None under 2 pairs)."""
    seeds = sorted(set(a) & set(b))
    return ci95([a[s] - b[s] for s in seeds])


def status_counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many trials ended in each status (first-seen order)."""
    return dict(Counter(r["status"] for r in rows))


def counts_text(counts: Mapping[str, int]) -> str:
    """``completed 5, failed 1`` (alphabetical), as every table and summary prints it."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def _finite(r: Mapping[str, Any], key: str) -> bool:
    return r.get(key) is not None and math.isfinite(float(r[key]))


def value_rows(rows: Sequence[Mapping[str, Any]], key: str = "metric_best") -> list[Mapping[str, Any]]:
    """The seeds of one arm that carry its value (see the ranking rule): the completed ones, or, when none
    completed, those stopped early at the arm's rung."""
    done = [r for r in rows if r.get("status") == "completed" and _finite(r, key)]
    if done:
        return done
    return [r for r in rows if r.get("status") == "stopped_early" and r.get("epochs") and _finite(r, key)]


def scored_trials(trials: Sequence[Mapping[str, Any]], key: str = "metric_best") -> list[Mapping[str, Any]]:
    """Every trial that carries its arm's value under the ranking rule (what figures plot)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in trials:
        groups.setdefault(r["arm"], []).append(r)
    keep = {id(r) for g in groups.values() for r in value_rows(g, key)}
    return [r for r in trials if id(r) in keep]


def _values(rows: Sequence[Mapping[str, Any]], key: str) -> dict[int, float]:
    return {int(r["seed"]): float(r[key]) for r in value_rows(rows, key)}


def _stopped_at(rows: Sequence[Mapping[str, Any]]) -> int | None:
    """The rung an arm was stopped at, when none of its seeds completed."""
    if any(r.get("status") == "completed" for r in rows):
        return None
    rungs = [int(r.get("stopped_at_epoch") or r.get("epochs") or 0) for r in rows if r.get("status") == "stopped_early"]
    return max(rungs) if rungs else None


def _eliminated(rows: Sequence[Mapping[str, Any]]) -> str | None:
    return next((r.get("reason") or "by racing" for r in rows if r.get("status") == "eliminated"), None)


def baseline_arm(arms: Sequence[str]) -> str | None:
    if "baseline" in arms:
        return "baseline"
    return arms[0] if arms else None


RANK_BY = {"best": "metric_best", "final": "metric_final"}  # a trial's value: its best epoch, or its last


def value_key(rank_by: str | None) -> str:
    """The trial-row column a sweep ranks by (``rank_by`` in the sweep file; best epoch by default)."""
    return RANK_BY[rank_by or "best"]


def arm_table(trials: Sequence[Mapping[str, Any]], mode: str, value_key: str = "metric_best") -> list[ArmRow]:
    """One row per arm (first-seen order) with everything the results table shows."""
    order: list[str] = []
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in trials:
        if r["arm"] not in groups:
            order.append(r["arm"])
        groups.setdefault(r["arm"], []).append(r)
    base = baseline_arm(order)
    base_vals = _values(groups[base], value_key) if base else {}
    rows = []
    for arm in order:
        vals = _values(groups[arm], value_key)
        m, sd = mean_std(vals.values())
        tm, tsd = mean_std(_values(groups[arm], "test_accuracy").values())
        row = ArmRow(arm, groups[arm][0].get("stage"), len(vals), m, sd, ci95(list(vals.values())), tm, tsd,
                     statuses=status_counts(groups[arm]), stopped_at=_stopped_at(groups[arm]),
                     eliminated=_eliminated(groups[arm]))
        if base and arm != base and m is not None and base_vals:
            row.delta = m - (mean_std(base_vals.values())[0] or 0.0)
            row.p_value, row.pairs = paired_p_value(vals, base_vals)
            row.delta_ci95 = paired_ci95(vals, base_vals)
        rows.append(row)
    for i, r in enumerate(sorted((r for r in rows if r.mean is not None), key=lambda r: rank_key(r, mode))):
        r.rank = i + 1
    best = best_arm(rows, mode)
    if best is not None:
        best.best = True
    return rows


def rank_key(row: ArmRow, mode: str) -> tuple[int, float, float]:
    """Sort key of the ranking rule (smaller ranks first): tier, then rung reached, then value."""
    tier = 2 if row.stopped_at is not None else (1 if row.eliminated else 0)
    rung = -float(row.stopped_at or 0)
    value = row.mean if row.mean is not None else (-math.inf if mode == "max" else math.inf)
    return tier, rung, (-value if mode == "max" else value)


def stage_winners(rows: Sequence[ArmRow], mode: str) -> dict[int, str]:
    """The chosen arm of each stage (best mean), by the same rule the staged sweep used."""
    by_stage: dict[int, list[ArmRow]] = {}
    for r in rows:
        if r.stage is not None:
            by_stage.setdefault(r.stage, []).append(r)
    winners = {stage: best_arm(group, mode) for stage, group in by_stage.items()}
    return {stage: w.arm for stage, w in winners.items() if w is not None}


def best_value(values: Sequence[float], mode: str) -> float | None:
    """The best of ``values`` under ``mode`` (max or min); None when there are none."""
    if not values:
        return None
    return max(values) if mode == "max" else min(values)


def best_arm(stats: Sequence[ArmRow], mode: str) -> ArmRow | None:
    """The first arm under the ranking rule (``rank_key``); None when no arm has a value."""
    scored = [s for s in stats if s.mean is not None]
    if not scored:
        return None
    return min(scored, key=lambda s: rank_key(s, mode))


def pm(mean: float | None, std: float | None, pct: bool = True) -> str:
    if mean is None:
        return "-"
    if pct:
        return f"{100 * mean:.2f} ± {100 * (std or 0):.2f}"
    return f"{mean:.4f} ± {std or 0:.4f}"


def format_table(stats: list[ArmRow], metric: str) -> str:
    pct = metric.endswith("accuracy")
    head = f"{'arm':<44} {'n':>3}  {metric + (' %' if pct else ''):>18}  {'test acc %':>16}  status"
    lines = [head, "-" * len(head)]
    for s in stats:
        note = f"; {s.note}" if s.note else ""
        lines.append(f"{s.arm[:44]:<44} {s.n:>3}  {pm(s.mean, s.std, pct):>18}  {pm(s.test_mean, s.test_std):>16}  "
                     f"{counts_text(s.statuses)}{note}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- cost beside accuracy
def arm_costs(trials: Sequence[Mapping[str, Any]]) -> dict[str, tuple[int | None, float | None, float]]:
    """Per arm label: (trainable parameters, seconds per trained epoch, trial-hours). Time counts every trial
    that trained (completed, stopped, diverged, failed): what the arm cost, not only what scored."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in trials:
        groups.setdefault(r["arm"], []).append(r)
    out: dict[str, tuple[int | None, float | None, float]] = {}
    for arm, rows in groups.items():
        params = [int(r["params"]) for r in rows if r.get("params") is not None]
        timed = [r for r in rows if _finite(r, "seconds") and r.get("epochs")]
        seconds = sum(float(r["seconds"]) for r in timed)
        epochs = sum(int(r["epochs"]) for r in timed)
        out[arm] = (max(params) if params else None, seconds / epochs if epochs else None, seconds / 3600)
    return out


def add_costs(rows: Sequence[ArmRow], trials: Sequence[Mapping[str, Any]]) -> Sequence[ArmRow]:
    """Fill each row's ``params``, ``epoch_seconds`` and ``trial_hours`` from the trial rows; returns ``rows``."""
    costs = arm_costs(trials)
    for r in rows:
        r.params, r.epoch_seconds, r.trial_hours = costs.get(r.arm, (None, None, None))
    return rows


def pareto_front(points: Sequence[tuple[float, float]], mode: str) -> list[int]:
    """Indices of the points no other point beats: cost (first) no higher and value (second) no worse under
    ``mode``, one of the two strictly. Sorted by cost."""
    sign = 1.0 if mode == "max" else -1.0
    front = []
    for i, (c, v) in enumerate(points):
        dominated = any(c2 <= c and sign * v2 >= sign * v and (c2 < c or sign * v2 > sign * v)
                        for j, (c2, v2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -sign * points[i][1]))


def cost_text(row: ArmRow) -> tuple[str, str, str]:
    """(parameters, s/epoch, trial-hours) as tables print them; ``-`` when unknown."""
    params = f"{row.params:,}" if row.params is not None else "-"
    per_epoch = f"{row.epoch_seconds:.1f}" if row.epoch_seconds is not None else "-"
    hours = f"{row.trial_hours:.3f}" if row.trial_hours is not None else "-"
    return params, per_epoch, hours
