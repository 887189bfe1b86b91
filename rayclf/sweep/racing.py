"""Racing over seeds: arms get their seeds in rounds; an arm a paired test shows worse than the current best
gets no more.

Round 1 gives every arm its first ``first_round`` seeds; each later round gives every surviving arm the next
``seeds_per_round``. After each round the current best arm (ranking rule of ``rayclf.aggregate``) is compared
with every other surviving arm over the seeds both have (matched seeds): a one-sided paired t-test (or
Wilcoxon signed-rank test) of "this arm is worse"; below ``level`` the arm is eliminated. Its seeds that never
started are recorded at once with status ``eliminated`` (no metrics) and the reason (round, test, p, the arm
it lost to), so one trial is one row, and a resumed sweep neither starts them nor re-decides differently:
rounds are recomputed from the stored results, which give the same decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rayclf.aggregate import arm_table, best_arm, paired_comparison, value_rows
from rayclf.sweep.spec import Arm, Sweep, Trial


def seed_values(sweep: Sweep, arm: Arm, trials: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    """An arm's value per seed (the seeds that carry its value), from stored rows matched by trial id."""
    by_id = {r["trial_id"]: r for r in trials}
    rows = [by_id[t.trial_id] for t in sweep.trials([arm]) if t.trial_id in by_id]
    return {int(r["seed"]): float(r["metric_best"]) for r in value_rows(rows)}


def one_sided_p(worse: Mapping[int, float], best: Mapping[int, float], mode: str,
                test: str) -> tuple[float | None, int]:
    """p of "``worse`` is worse than ``best``" over their matched seeds, and the number of pairs; no p (None)
    under 2 pairs or when the differences do not vary (the arm then keeps racing)."""
    c = paired_comparison(worse, best, mode, alternative="worse", test=test)  # type: ignore[arg-type]
    return c.p, c.n_pairs


def eliminate(sweep: Sweep, alive: Sequence[Arm], trials: Sequence[Mapping[str, Any]],
              round_no: int) -> list[tuple[Arm, str]]:
    """The arms to drop after a round, each with the reason the report shows."""
    s, mode = sweep.file.scheduler, sweep.file.mode or "max"
    label = {t.trial_id: a.label for a in alive for t in sweep.trials([a])}
    rows = [{**r, "arm": label[r["trial_id"]]} for r in trials if r["trial_id"] in label]
    top = best_arm(arm_table(rows, mode), mode) if rows else None
    if top is None:
        return []
    best = next(a for a in alive if a.label == top.arm)
    best_vals = seed_values(sweep, best, trials)
    test = "paired t-test" if s.test == "ttest" else "Wilcoxon signed-rank test"
    out = []
    for arm in alive:
        if arm is best:
            continue
        vals = seed_values(sweep, arm, trials)
        if not vals:
            out.append((arm, f"after round {round_no}: no seed produced a value (diverged or failed)"))
            continue
        p, n = one_sided_p(vals, best_vals, mode, s.test)
        if p is not None and p < s.level:
            out.append((arm, f"after round {round_no} ({n} seeds): one-sided {test} vs {best.label}, "
                             f"p = {p:.3g} < {s.level:g}"))
    return out


RunTrials = Callable[[list[Trial]], int]
Record = Callable[[list[Trial], str], None]


def run_racing(sweep: Sweep, arms: list[Arm], run: RunTrials, record: Record,
               stored: Callable[[], list[dict[str, Any]]], echo: Callable[[str], None]) -> int:
    """Rounds of seeds until every surviving arm has all the sweep's seeds; return trials skipped as done.

    ``run`` trains a list of trials, ``record`` writes rows for trials that will never start (with the reason),
    ``stored`` reads the store's trial rows."""
    s, seeds = sweep.file.scheduler, sweep.file.seeds
    alive, given, round_no, skipped, before = list(arms), min(s.first_round, len(seeds)), 1, 0, 0
    while True:
        skipped += run([t for t in sweep.trials(alive) if t.seed in seeds[before:given]])
        before = given
        if given >= len(seeds):
            return skipped
        for arm, reason in eliminate(sweep, alive, stored(), round_no):
            record([t for t in sweep.trials([arm]) if t.seed in seeds[given:]], reason)
            echo(f"racing: {arm.label} eliminated {reason}")
            alive.remove(arm)
        given, round_no = min(given + s.seeds_per_round, len(seeds)), round_no + 1
