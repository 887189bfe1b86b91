"""Per-arm aggregation over seeds: mean ± std, 95% CI, and the effect against the baseline on matched seeds
(Δ, its 95% CI and a paired test, all from the same seed pairs; p Holm-adjusted over the sweep's arms).

One module serves the sweep summary, staged winners, racing, W&B and reports, so every place shows the same
numbers.

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

import functools
import json
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) of the finite values."""
    xs = finite(values)
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


NO_VARIANCE = "no variance"  # what a table shows for p when every paired difference is the same
TEST_UNDEFINED = "test undefined"  # scipy returned no finite p
LEVEL = 0.05  # the significance mark of every table (on the Holm-adjusted p)


@dataclass(frozen=True)
class PairedComparison:
    """``a − b`` on the seeds both have: Δ, its CI and p all come from these same pairs."""

    delta: float | None  # mean of the paired differences a − b (metric units); None without a pair
    ci95: float | None  # half-width of the 95% Student t interval of that mean (None under 2 pairs or no variance)
    p: float | None  # None under 2 pairs or when the differences do not vary (never 0 for that)
    n_pairs: int
    sd: float | None = None  # sample standard deviation of the differences (None under 2 pairs)
    note: str = ""  # why p is missing: "no matched seeds", "1 pair", "no variance"


def paired_comparison(a: Mapping[int, float], b: Mapping[int, float], mode: str = "max",
                      alternative: Literal["two-sided", "worse"] = "two-sided",
                      test: Literal["ttest", "wilcoxon"] = "ttest") -> PairedComparison:
    """Compare ``a`` with ``b`` over the seeds where both have a finite value.

    ``alternative="worse"``: one-sided, "a is worse than b" under ``mode`` (racing); otherwise two-sided (tables).
    Constant differences (quantized accuracies on few seeds) leave the test undefined: no p, note "no variance"."""
    seeds = sorted(s for s in set(a) & set(b) if math.isfinite(float(a[s])) and math.isfinite(float(b[s])))
    diffs = [float(a[s]) - float(b[s]) for s in seeds]
    n = len(diffs)
    if n == 0:
        return PairedComparison(None, None, None, 0, note="no matched seeds")
    delta, sd = mean_std(diffs)
    if n < 2:
        return PairedComparison(delta, None, None, n, note="1 pair")
    if max(diffs) - min(diffs) <= 1e-12 * max(1.0, abs(diffs[0])):
        return PairedComparison(delta, None, None, n, 0.0, NO_VARIANCE)
    from scipy import stats as sps  # here, not at the top: the driver imports this module before Ray starts

    better = diffs if mode == "max" else [-d for d in diffs]  # > 0: a is better than b
    side = "less" if alternative == "worse" else "two-sided"
    with warnings.catch_warnings():  # scipy warns about ties and zeros on tiny samples; the p stands
        warnings.simplefilter("ignore")
        res = sps.wilcoxon(better, alternative=side) if test == "wilcoxon" else sps.ttest_1samp(
            better, 0.0, alternative=side)
    p = float(res.pvalue)
    if not math.isfinite(p):
        return PairedComparison(delta, ci95(diffs), None, n, sd, TEST_UNDEFINED)
    return PairedComparison(delta, ci95(diffs), p, n, sd)


def holm(ps: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of one family of p-values (entries that are None are no test and stay None):
    the k-th smallest of m becomes max over j ≤ k of min(1, (m − j + 1)·p_(j))."""
    tested = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    out: list[float | None] = [None] * len(ps)
    running = 0.0
    for k, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - k) * p))
        out[i] = running
    return out


def seeds_for_half_width(sd: float | None, half_width: float) -> int | None:
    """Planning figure (not post-hoc power): the fewest seeds n ≥ 2 at which the 95% t interval of a mean
    difference with spread ``sd`` would be ± ``half_width``: t(0.975, n − 1)·sd/√n ≤ half_width."""
    if sd is None or sd <= 0 or half_width <= 0:
        return None
    from scipy import stats as sps

    n = max(2, math.ceil((sps.norm.ppf(0.975) * sd / half_width) ** 2))  # t > z: the answer is at least this
    while sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n) > half_width:
        n += 1
    return n


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
    effect: PairedComparison | None = None  # vs the baseline, on matched seeds (None for the baseline itself)
    p_holm: float | None = None  # the paired p, Holm-adjusted over every arm compared with the baseline
    unmatched: bool = False  # the pairs are fewer than this arm's or the baseline's seeds
    seeds_needed: int | None = None  # planning: seeds for the target half-width of Δ's 95% CI
    baseline: bool = False
    statuses: dict[str, int] = field(default_factory=dict)
    best: bool = False
    stopped_at: int | None = None  # the arm was stopped early at this epoch (its value is taken there)
    eliminated: str | None = None  # racing eliminated the arm: when and by what test
    rank: int | None = None  # 1 = best, by ``rank_key``
    params: int | None = None  # trainable parameters (``add_costs``)
    epoch_seconds: float | None = None  # measured seconds per trained epoch, over the arm's trials
    trial_hours: float | None = None  # every trial of the arm, stopped and failed ones included
    arm_id: str | None = None  # the identity the rows were grouped by (``arm_key``)

    @property
    def delta(self) -> float | None:
        """Mean paired difference to the baseline over matched seeds, in metric units."""
        return self.effect.delta if self.effect else None

    @property
    def delta_ci95(self) -> float | None:
        return self.effect.ci95 if self.effect else None

    @property
    def p_value(self) -> float | None:
        """Two-sided paired t-test against the baseline (None: under 2 pairs or no variance)."""
        return self.effect.p if self.effect else None

    @property
    def pairs(self) -> int:
        return self.effect.n_pairs if self.effect else 0

    @property
    def significant(self) -> bool:
        """The Holm-adjusted p is below ``LEVEL``."""
        return self.p_holm is not None and self.p_holm < LEVEL

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
    from scipy import stats as sps

    _, sd = mean_std(values)
    return float(sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


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


def arm_key(row: Mapping[str, Any]) -> str:
    """What makes trial rows one arm in every table: the arm id (the content address of the arm's config), so a
    label never splits or merges an arm. Rows written before arm ids were stored derive it from their
    ``config.*`` columns; rows with neither (hand-made tables) fall back to the label."""
    if row.get("arm_id"):
        return str(row["arm_id"])
    # None: a key of another model family (the store's schema is the union of every row's columns)
    config = {k[len("config."):]: _decoded(v) for k, v in row.items() if k.startswith("config.") and v is not None}
    if not config:
        return row["arm"]
    try:
        return _derived_arm_id(json.dumps(config, sort_keys=True, default=str))
    except ValueError:  # a config this release cannot rebuild (ConfigError is a ValueError): group by label
        return row["arm"]


def _decoded(value: Any) -> Any:
    """A config value as stored: lists and dicts are canonical JSON text in the results tables."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


@functools.lru_cache(maxsize=4096)
def _derived_arm_id(flat_config: str) -> str:
    from rayclf.config import build_config, set_path
    from rayclf.identity import LEGACY_VERSION, arm_id

    tree: dict[str, Any] = {}
    for key, value in json.loads(flat_config).items():
        set_path(tree, key, value)
    return arm_id(build_config(tree), version=LEGACY_VERSION)  # rows without arm ids predate identity versions


def group_arms(trials: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Trial rows per arm (``arm_key``), in first-seen order."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in trials:
        groups.setdefault(arm_key(r), []).append(r)
    return groups


def scored_trials(trials: Sequence[Mapping[str, Any]], key: str = "metric_best") -> list[Mapping[str, Any]]:
    """Every trial that carries its arm's value under the ranking rule (what figures plot)."""
    keep = {id(r) for g in group_arms(trials).values() for r in value_rows(g, key)}
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


def baseline_arm(groups: Mapping[str, Sequence[Mapping[str, Any]]]) -> str | None:
    """The key of the arm labelled ``baseline``, else of the first arm."""
    return next((k for k, g in groups.items() if g[0]["arm"] == "baseline"), next(iter(groups), None))


RANK_BY = {"best": "metric_best", "final": "metric_final"}  # a trial's value: its best epoch, or its last


def value_key(rank_by: str | None) -> str:
    """The trial-row column a sweep ranks by (``rank_by`` in the sweep file; best epoch by default)."""
    return RANK_BY[rank_by or "best"]


def arm_table(trials: Sequence[Mapping[str, Any]], mode: str, value_key: str = "metric_best",
              target_ci: float | None = None) -> list[ArmRow]:
    """One row per arm (first-seen order) with everything the results table shows; ``target_ci``: the
    half-width of Δ's 95% CI (metric units) the planning column ``seeds_needed`` aims at."""
    groups = group_arms(trials)
    base = baseline_arm(groups)
    base_vals = _values(groups[base], value_key) if base is not None else {}
    rows = []
    for key, group in groups.items():
        vals = _values(group, value_key)
        m, sd = mean_std(vals.values())
        tm, tsd = mean_std(_values(group, "test_accuracy").values())
        row = ArmRow(group[0]["arm"], group[0].get("stage"), len(vals), m, sd, ci95(list(vals.values())), tm, tsd,
                     baseline=key == base, statuses=status_counts(group), stopped_at=_stopped_at(group),
                     eliminated=_eliminated(group), arm_id=key)
        if not row.baseline and vals and base_vals:
            row.effect = paired_comparison(vals, base_vals, mode)
            row.unmatched = row.effect.n_pairs != len(vals) or row.effect.n_pairs != len(base_vals)
            row.seeds_needed = seeds_for_half_width(row.effect.sd, target_ci) if target_ci else None
        rows.append(row)
    for row, p in zip(rows, holm([r.p_value for r in rows]), strict=True):  # the family: every arm vs baseline
        row.p_holm = p
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


def finite(values: Iterable[float | None]) -> list[float]:
    """The values that are numbers (no None, NaN or ±inf): a NaN epoch never decides a best or final value."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def best_value(values: Iterable[float | None], mode: str) -> float | None:
    """The best finite value under ``mode`` (max or min); None when there is none."""
    xs = finite(values)
    if not xs:
        return None
    return max(xs) if mode == "max" else min(xs)


def final_value(values: Iterable[float | None]) -> float | None:
    """The last finite value; None when there is none."""
    xs = finite(values)
    return xs[-1] if xs else None


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


def number(v: float | None, pct: bool, signed: bool = False) -> str:
    """A value as every table prints it: percent (2 decimals) for accuracies, 4 decimals otherwise."""
    if v is None:
        return "–"
    sign = "+" if signed else ""
    return f"{100 * v:{sign}.2f}" if pct else f"{v:{sign}.4f}"


def delta_text(row: ArmRow, pct: bool) -> str:
    """Δ vs baseline, with the number of pairs when it is not every seed of the arm and of the baseline."""
    text = number(row.delta, pct, signed=True)
    if row.delta is None or not row.unmatched:
        return text
    return f"{text} ({row.pairs} pair{'s' if row.pairs != 1 else ''})"


def p_text(row: ArmRow, adjusted: bool = False) -> str:
    """The raw or Holm-adjusted p (adjusted: ``*`` below ``LEVEL``), or why there is none ("no variance")."""
    p = row.p_holm if adjusted else row.p_value
    if p is not None:
        return f"{p:.3g}" + (" *" if adjusted and row.significant else "")
    return row.effect.note if row.effect and row.effect.note in (NO_VARIANCE, TEST_UNDEFINED) else "–"


def effects_legend(rows: Sequence[ArmRow]) -> str:
    """What Δ, its CI and both p columns mean, for every table that shows them."""
    m = sum(r.p_value is not None for r in rows)
    return ("Δ: mean paired difference to the baseline over matched seeds (the seeds both ran; the number of "
            "pairs is shown when it is not every seed), with the 95% Student t CI of those differences. "
            "p: two-sided paired t-test on the same pairs; \"no variance\" where every paired difference is the "
            f"same (the test is undefined). p (Holm): Holm-adjusted over the {m} arm{'s' if m != 1 else ''} "
            f"tested against the baseline (family-wise error); * adjusted p < {LEVEL:g}.")


def format_table(stats: list[ArmRow], metric: str, effects: bool = False) -> str:
    """The per-arm table ``rayclf sweep`` prints; ``effects`` adds Δ vs baseline, its CI and the Holm p."""
    pct = metric.endswith("accuracy")
    unit = " %" if pct else ""
    eff = f"  {'Δ vs baseline' + unit:>17}  {'Δ 95% CI ±':>10}  {'p (Holm)':>11}" if effects else ""
    head = f"{'arm':<44} {'n':>3}  {metric + unit:>18}{eff}  {'test acc %':>16}  status"
    lines = [head, "-" * len(head)]
    for s in stats:
        note = f"; {s.note}" if s.note else ""
        eff = (f"  {delta_text(s, pct):>17}  {number(s.delta_ci95, pct):>10}  {p_text(s, adjusted=True):>11}"
               if effects else "")
        lines.append(f"{s.arm[:44]:<44} {s.n:>3}  {pm(s.mean, s.std, pct):>18}{eff}  "
                     f"{pm(s.test_mean, s.test_std):>16}  {counts_text(s.statuses)}{note}")
    if effects:
        lines += ["", effects_legend(stats)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- cost beside accuracy
def arm_costs(trials: Sequence[Mapping[str, Any]]) -> list[tuple[int | None, float | None, float]]:
    """Per arm (``group_arms``, the order ``arm_table`` lists them): (trainable parameters, seconds per trained
    epoch, trial-hours). Time counts every trial that trained (completed, stopped, diverged, failed): what the
    arm cost, not only what scored."""
    out: list[tuple[int | None, float | None, float]] = []
    for rows in group_arms(trials).values():
        params = [int(r["params"]) for r in rows if r.get("params") is not None]
        timed = [r for r in rows if _finite(r, "seconds") and r.get("epochs")]
        seconds = sum(float(r["seconds"]) for r in timed)
        epochs = sum(int(r["epochs"]) for r in timed)
        out.append((max(params) if params else None, seconds / epochs if epochs else None, seconds / 3600))
    return out


def add_costs(rows: Sequence[ArmRow], trials: Sequence[Mapping[str, Any]]) -> Sequence[ArmRow]:
    """Fill the ``params``, ``epoch_seconds`` and ``trial_hours`` of ``arm_table(trials, …)``'s rows; returns
    ``rows``."""
    for r, (params, per_epoch, hours) in zip(rows, arm_costs(trials), strict=True):
        r.params, r.epoch_seconds, r.trial_hours = params, per_epoch, hours
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
