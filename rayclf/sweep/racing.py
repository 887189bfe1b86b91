"""Racing over seeds: arms get their seeds in rounds; an arm a paired test shows worse than the current best
gets no more.

Round 1 gives every arm its first ``first_round`` seeds; each later round gives every surviving arm the next
``seeds_per_round``. After each round the current best arm (the ranking rule of ``rayclf.aggregate``, on the
sweep's ``rank_by`` value) is compared with every other surviving arm over the seeds both have (matched seeds):
a one-sided paired t-test (or Wilcoxon signed-rank test) of "this arm is worse"; below ``level`` the arm is
eliminated. Paired differences that do not vary give no p: the arm is kept and gets more seeds.

Every elimination is a decision, logged (round, test, p, the seeds and values compared, the best arm) before
its arm's never-started seeds are recorded with status ``eliminated``. Arms are told apart by arm id, never by
label. ``--resume`` replays the log: a logged arm gets only the seeds it had been given and is eliminated at
its logged round whatever the stored results say now; its other seeds (a seed added on resume) are recorded
eliminated. ``--rerun-stopped`` forgets the sweep's eliminations and decides again. A round cut short by
Ctrl-C raises ``SweepInterrupted`` out of ``run`` and takes no decision.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rayclf.aggregate import RANK_BY, arm_table, best_arm, paired_comparison, value_key, value_rows
from rayclf.config import UserError
from rayclf.sweep.decisions import ELIMINATE, Decision, DecisionLog
from rayclf.sweep.spec import Arm, Sweep, Trial

TESTS = {"ttest": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}


def seed_values(sweep: Sweep, arm: Arm, trials: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    """An arm's ``rank_by`` value per seed (the seeds that carry its value), from rows matched by trial id."""
    key = value_key(sweep.file.rank_by)
    by_id = {r["trial_id"]: r for r in trials}
    rows = [by_id[t.trial_id] for t in sweep.trials([arm]) if t.trial_id in by_id]
    return {int(r["seed"]): float(r[key]) for r in value_rows(rows, key)}


def one_sided_p(worse: Mapping[int, float], best: Mapping[int, float], mode: str,
                test: str) -> tuple[float | None, int]:
    """p of "``worse`` is worse than ``best``" over their matched seeds, and the number of pairs; no p (None)
    under 2 pairs or when the differences do not vary (the arm then keeps racing). The tables' paired
    comparison, one-sided."""
    c = paired_comparison(worse, best, mode, alternative="worse", test=test)  # type: ignore[arg-type]
    return c.p, c.n_pairs


def best_of(sweep: Sweep, arms: Mapping[str, Arm], trials: Sequence[Mapping[str, Any]]) -> str | None:
    """The arm id of the best of ``arms`` under the ranking rule on the sweep's ``rank_by`` value."""
    arm_of = {t.trial_id: aid for aid, arm in arms.items() for t in sweep.trials([arm])}
    rows = [{**r, "arm": arm_of[r["trial_id"]]} for r in trials if r["trial_id"] in arm_of]
    mode = sweep.file.mode or "max"
    top = best_arm(arm_table(rows, mode, value_key(sweep.file.rank_by)), mode) if rows else None
    return top.arm if top is not None else None


def _elimination(sweep: Sweep, aid: str, arm: Arm, best: tuple[str, Arm], vals: Mapping[int, float],
                 best_vals: Mapping[int, float], round_no: int, seeds_run: list[int],
                 p: float | None) -> Decision:
    """The logged form of one elimination: what it saw and the reason the report shows."""
    s = sweep.file.scheduler
    seeds = sorted(set(vals) & set(best_vals))
    if not vals:
        reason = f"after round {round_no}: no seed produced a value (diverged or failed)"
    else:
        reason = (f"after round {round_no} ({len(seeds)} seeds): one-sided {TESTS[s.test]} vs {best[1].label}, "
                  f"p = {p:.3g} < {s.level:g}")
    detail = {"round": round_no, "test": s.test if vals else "none", "p": p, "level": s.level,
              "value": value_key(sweep.file.rank_by), "seeds": seeds, "values": [vals[x] for x in seeds],
              "best_values": [best_vals[x] for x in seeds], "best_arm_id": best[0], "best_label": best[1].label,
              "seeds_run": seeds_run, "reason": reason}
    return Decision(ELIMINATE, aid, aid, arm.label, arm.stage, len(seeds), detail)


def eliminate(sweep: Sweep, field: Mapping[str, Arm], candidates: Sequence[str],
              trials: Sequence[Mapping[str, Any]], round_no: int, seeds_run: list[int],
              echo: Callable[[str], None]) -> list[Decision]:
    """The eliminations after a round: ``candidates`` (arm ids) a paired test shows worse than the best of
    ``field`` (every arm still racing), or that have no value at all."""
    s, mode = sweep.file.scheduler, sweep.file.mode or "max"
    top = best_of(sweep, field, trials)
    if top is None:
        return []
    best_vals = seed_values(sweep, field[top], trials)
    out = []
    for aid in candidates:
        if aid == top:
            continue
        arm = field[aid]
        vals = seed_values(sweep, arm, trials)
        p, n = one_sided_p(vals, best_vals, mode, s.test)
        if vals and p is None and n >= 2:
            echo(f"racing: {arm.label} vs {field[top].label}: no variance in {n} paired differences; kept")
        if not vals or (p is not None and p < s.level):
            out.append(_elimination(sweep, aid, arm, (top, field[top]), vals, best_vals, round_no, seeds_run, p))
    return out


def unique_arms(sweep: Sweep, arms: Sequence[Arm]) -> dict[str, Arm]:
    """Arms by arm id, first label kept: two labels of one config race as one arm."""
    out: dict[str, Arm] = {}
    for arm in arms:
        out.setdefault(sweep.arm_id(arm), arm)
    return out


def check_eliminations(sweep: Sweep, log: DecisionLog) -> None:
    """Refuse a resume whose file would have decided a logged elimination otherwise: another scheduler, another
    ``rank_by``, another test or level. (Eliminations of arms that had no value depend on none of them.)"""
    from rayclf.sweep.strategies.registry import arm_rule_class

    s, rank_by = sweep.file.scheduler, sweep.file.rank_by or "best"
    if ELIMINATE not in arm_rule_class(s.name).decisions:  # --rerun-stopped cannot help: only racing re-opens them
        from rayclf.sweep.strategies.arm_rules import refuse_eliminations

        refuse_eliminations(sweep, log)
        return
    for d in log.of_kind(ELIMINATE):
        if d.detail["test"] == "none":
            continue
        if d.detail["value"] != value_key(rank_by):
            was = next(k for k, v in RANK_BY.items() if v == d.detail["value"])
            change = f"rank_by: {was}, the file now says rank_by: {rank_by}"
        elif (d.detail["test"], d.detail["level"]) != (s.test, s.level):
            change = (f"test: {d.detail['test']} at level {d.detail['level']:g}, the file now says test: {s.test} "
                      f"at level {s.level:g}")
        else:
            continue
        raise UserError(f"--resume: racing eliminated arm '{d.label}' {d.detail['reason']} under {change}. "
                        "Restore the file's setting, or pass --rerun-stopped to decide the eliminations again.")


RunTrials = Callable[[list[Trial]], int]
Record = Callable[[list[Trial], str], None]


def run_racing(sweep: Sweep, arms: list[Arm], run: RunTrials, record: Record,
               stored: Callable[[], list[dict[str, Any]]], echo: Callable[[str], None], log: DecisionLog,
               rerun_stopped: bool = False) -> int:
    """Rounds of seeds until every surviving arm has all the sweep's seeds; return trials skipped as done.

    ``run`` trains a list of trials (raising ``SweepInterrupted`` on Ctrl-C), ``record`` writes rows for trials
    that will never start (with the reason), ``stored`` reads the store's trial rows, ``log`` holds the
    eliminations already decided."""
    s, seeds = sweep.file.scheduler, sweep.file.seeds
    alive = unique_arms(sweep, arms)
    if rerun_stopped:
        log.forget(ELIMINATE, set(alive))
    else:
        check_eliminations(sweep, log)
    logged = {aid: d for aid in alive if (d := log.get(ELIMINATE, aid)) is not None}
    given, before, round_no, skipped = min(s.first_round, len(seeds)), 0, 1, 0
    while True:
        skipped += run([t for aid, arm in alive.items() for t in sweep.trials([arm]) if t.seed in seeds[before:given]
                        and (aid not in logged or t.seed in logged[aid].detail["seeds_run"])])
        before, last = given, given >= len(seeds)
        due = [d for aid, d in logged.items() if aid in alive and (last or d.detail["round"] <= round_no)]
        field = {aid: arm for aid, arm in alive.items() if aid not in {d.key for d in due}}
        fresh = [] if last else eliminate(sweep, field, [a for a in field if a not in logged], stored(), round_no,
                                          list(seeds[:given]), echo)
        decided = [(d, " (replayed from the decision log)") for d in due]
        decided += [(log.record(d), "") for d in fresh]  # every decision logged before any row is written
        for d, note in decided:
            arm = alive.pop(d.key)
            record([t for t in sweep.trials([arm]) if t.seed not in d.detail["seeds_run"]], d.detail["reason"])
            echo(f"racing: {arm.label} eliminated {d.detail['reason']}{note}")
        if last:
            return skipped
        given, round_no = min(given + s.seeds_per_round, len(seeds)), round_no + 1
