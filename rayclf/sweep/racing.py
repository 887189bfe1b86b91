"""Racing over seeds: arms get their seeds in rounds; an arm a paired test shows worse than the current best
gets no more.

Round 1 gives every arm its first ``first_round`` seeds; each later round gives every surviving arm the next
``seeds_per_round``. After each round the current best arm (the ranking rule of ``rayclf.aggregate``, on the
sweep's ``rank_by`` value) is compared with every other surviving arm over the seeds both have (matched seeds):
a one-sided paired t-test (or Wilcoxon signed-rank test) of "this arm is worse"; below ``level`` the arm is
eliminated. Paired differences that do not vary give no p: the arm is kept and gets more seeds.

Every verdict is a decision, logged (round, test, p, the seeds and values compared, the best arm) before it
acts: an elimination (keyed by arm id) before its arm's never-started seeds are recorded with status
``eliminated``, a survival (keyed ``arm id/round``) before the arm's next seeds are released. A verdict reads
only the rows of its round's seeds. Arms are told apart by arm id, never by label. ``--resume`` replays the
log: a round already decided is never judged again; an eliminated arm gets only the seeds it had been given
and is eliminated at its logged round whatever the stored results say now, its other seeds (a seed added on
resume) recorded eliminated; a surviving arm's added seeds train. ``--rerun-stopped`` forgets the sweep's
verdicts and decides again. A round cut short by Ctrl-C raises ``SweepInterrupted`` out of ``run`` and takes no
decision.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rayclf.aggregate import RANK_BY, arm_table, best_arm, paired_comparison, value_key, value_rows
from rayclf.config import UserError
from rayclf.sweep.decisions import ELIMINATE, SURVIVE, Decision, DecisionLog
from rayclf.sweep.runport import Record, RunTrials, Stored
from rayclf.sweep.spec import Arm, Sweep

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


def _verdict(sweep: Sweep, kind: str, aid: str, arm: Arm, best: tuple[str, Arm], vals: Mapping[int, float],
             best_vals: Mapping[int, float], round_no: int, seeds_run: list[int], p: float | None) -> Decision:
    """The logged form of one arm's verdict after a round (eliminated or kept): what it saw and the reason the
    report shows."""
    s = sweep.file.scheduler
    seeds = sorted(set(vals) & set(best_vals))
    after = f"after round {round_no} ({len(seeds)} seeds)"
    if not vals:
        reason = f"after round {round_no}: no seed produced a value (diverged or failed)"
    elif aid == best[0]:
        reason = f"{after}: the best arm"
    elif p is None:
        reason = f"{after}: no p vs {best[1].label} (fewer than 2 matched seeds, or differences that do not vary)"
    else:
        sign = "<" if kind == ELIMINATE else "≥"
        reason = f"{after}: one-sided {TESTS[s.test]} vs {best[1].label}, p = {p:.3g} {sign} {s.level:g}"
    detail = {"round": round_no, "test": s.test if vals else "none", "p": p, "level": s.level,
              "value": value_key(sweep.file.rank_by), "seeds": seeds, "values": [vals[x] for x in seeds],
              "best_values": [best_vals[x] for x in seeds], "best_arm_id": best[0], "best_label": best[1].label,
              "seeds_run": seeds_run, "reason": reason}
    key = aid if kind == ELIMINATE else survive_key(aid, round_no)
    return Decision(kind, key, aid, arm.label, arm.stage, len(seeds), detail)


def survive_key(arm_id: str, round_no: int) -> str:
    """The decision-log key of an arm's survival of one round (an arm is eliminated once, keyed by its id)."""
    return f"{arm_id}/{round_no}"


def judge(sweep: Sweep, field: Mapping[str, Arm], candidates: Sequence[str], trials: Sequence[Mapping[str, Any]],
          round_no: int, seeds_run: list[int], echo: Callable[[str], None]) -> list[Decision]:
    """The verdicts after a round on ``candidates`` (arm ids of ``field``, every arm still racing): eliminated
    when a paired test shows it worse than the best of ``field`` or when it has no value at all, else kept.
    ``trials`` must hold only the rows of the round's seeds (``seeds_run``): a verdict never reads later ones."""
    s, mode = sweep.file.scheduler, sweep.file.mode or "max"
    top = best_of(sweep, field, trials)
    if top is None:  # no arm has a value yet: every arm is kept
        return [_verdict(sweep, SURVIVE, aid, field[aid], (aid, field[aid]), {}, {}, round_no, seeds_run, None)
                for aid in candidates]
    best_vals = seed_values(sweep, field[top], trials)
    out = []
    for aid in candidates:
        arm = field[aid]
        vals = seed_values(sweep, arm, trials)
        p, n = (None, 0) if aid == top else one_sided_p(vals, best_vals, mode, s.test)
        if vals and p is None and n >= 2:
            echo(f"racing: {arm.label} vs {field[top].label}: no variance in {n} paired differences; kept")
        out_kind = ELIMINATE if aid != top and (not vals or (p is not None and p < s.level)) else SURVIVE
        out.append(_verdict(sweep, out_kind, aid, arm, (top, field[top]), vals, best_vals, round_no, seeds_run, p))
    return out


def unique_arms(sweep: Sweep, arms: Sequence[Arm]) -> dict[str, Arm]:
    """Arms by arm id, first label kept: two labels of one config race as one arm."""
    out: dict[str, Arm] = {}
    for arm in arms:
        out.setdefault(sweep.arm_id(arm), arm)
    return out


def check_eliminations(sweep: Sweep, log: DecisionLog) -> None:
    """Refuse a resume whose file would have taken a logged verdict (elimination or survival) otherwise: another
    ``rank_by``, another test or level. (Verdicts on arms that had no value depend on none of them.)"""
    s, rank_by = sweep.file.scheduler, sweep.file.rank_by or "best"
    for d in log.of_kind(ELIMINATE) + log.of_kind(SURVIVE):
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
        what = "eliminated" if d.kind == ELIMINATE else "kept"
        raise UserError(f"--resume: racing {what} arm '{d.label}' {d.detail['reason']} under {change}. "
                        "Restore the file's setting, or pass --rerun-stopped to decide the racing again.")


def forget_verdicts(log: DecisionLog, arm_ids: set[str]) -> None:
    """``--rerun-stopped``: every elimination and survival of these arms is decided again."""
    log.forget(ELIMINATE, arm_ids)
    log.forget(SURVIVE, {d.key for d in log.of_kind(SURVIVE) if d.arm_id in arm_ids})


def round_verdicts(sweep: Sweep, alive: Mapping[str, Arm], logged: Mapping[str, Decision], log: DecisionLog,
                   rows: Sequence[Mapping[str, Any]], round_no: int, given: list[int],
                   echo: Callable[[str], None]) -> list[tuple[Decision, str]]:
    """Every racing arm's verdict after round ``round_no``: replayed where logged (an elimination at this round,
    a survival of it; an arm logged eliminated at a later round survived this one), judged and logged where not,
    on the rows of the round's seeds only, against every arm that entered the round (as the uninterrupted run
    judged them). Every new verdict is logged before any acts."""
    replayed, todo = [], []
    for aid in alive:
        elim = logged.get(aid)
        if elim is not None and elim.detail["round"] <= round_no:
            replayed.append(elim)
        elif elim is None and log.get(SURVIVE, survive_key(aid, round_no)) is None:
            todo.append(aid)
    fresh = []
    if todo:
        seen = [r for r in rows if r.get("seed") in set(given)]
        fresh = [log.record(d) for d in judge(sweep, alive, todo, seen, round_no, list(given), echo)]
    return ([(d, " (replayed from the decision log)") for d in replayed]
            + [(d, "") for d in fresh if d.kind == ELIMINATE])


def run_racing(sweep: Sweep, arms: list[Arm], run: RunTrials, record: Record, stored: Stored,
               echo: Callable[[str], None], log: DecisionLog, rerun_stopped: bool = False) -> int:
    """Rounds of seeds until every surviving arm has all the sweep's seeds; return trials skipped as done.

    ``run`` trains a list of trials (raising ``SweepInterrupted`` on Ctrl-C), ``record`` writes rows for trials
    that will never start (with the reason), ``stored`` reads the store's trial rows, ``log`` holds the verdicts
    already taken. A round already decided is never judged again; a seed added on resume follows its arm's
    verdicts (trained while the arm survives, recorded eliminated after)."""
    s, seeds = sweep.file.scheduler, sweep.file.seeds
    alive = unique_arms(sweep, arms)
    if rerun_stopped:
        forget_verdicts(log, set(alive))
    else:
        check_eliminations(sweep, log)
    logged = {aid: d for aid in alive if (d := log.get(ELIMINATE, aid)) is not None}
    given, before, round_no, skipped = min(s.first_round, len(seeds)), 0, 1, 0
    while True:
        skipped += run([t for aid, arm in alive.items() for t in sweep.trials([arm]) if t.seed in seeds[before:given]
                        and (aid not in logged or t.seed in logged[aid].detail["seeds_run"])])
        before, last = given, given >= len(seeds)
        if last:  # no test after the last round: an elimination logged at a round the file no longer has applies
            decided = [(d, " (replayed from the decision log)") for aid, d in logged.items() if aid in alive]
        else:
            decided = round_verdicts(sweep, alive, logged, log, stored(), round_no, list(seeds[:given]), echo)
        for d, note in decided:
            arm = alive.pop(d.key)
            record([t for t in sweep.trials([arm]) if t.seed not in d.detail["seeds_run"]], d.detail["reason"])
            echo(f"racing: {arm.label} eliminated {d.detail['reason']}{note}")
        if last:
            return skipped
        given, round_no = min(given + s.seeds_per_round, len(seeds)), round_no + 1
