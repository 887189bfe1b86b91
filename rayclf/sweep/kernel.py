"""The sweep kernel: which trials run, in what order, and the decisions taken between them — without Ray.

A :class:`SweepRun` carries one ``rayclf sweep``'s context (the sweep, its directory, store and decision log, the
stop flag, the settings); its ``execute_trials`` is the only door to execution — one Tune run fed batch by
batch in ``session.TuneSession.run_batch``,
or a fake trial runner in tests, so every strategy's logic is tested without Ray. Decisions are written to the
decision log before they act, and a logged decision is replayed on ``--resume`` instead of being taken again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rayclf.aggregate import arm_table, best_arm, counts_text, format_table, status_counts, value_key
from rayclf.config import UserError
from rayclf.results import TRIALS, ResultsStore
from rayclf.storage import join, read_plan, write_plan
from rayclf.sweep.decisions import ELIMINATE, PROPOSAL, STOP, WINNER, Decision, DecisionLog
from rayclf.sweep.interrupt import StopFlag
from rayclf.sweep.spec import Arm, Sweep, SweepFile, Trial, alias_note

ExecuteTrials = Callable[["SweepRun", list[Trial], list[Trial]], int]


@dataclass
class SweepRun:
    """What every strategy of one ``rayclf sweep`` needs. ``planned`` collects the trials of the current file's
    plan as strategies release them: the summary, report and decisions use those rows, not rows of arms or seeds
    an edit removed (they stay in the store)."""

    sweep: Sweep
    out: str
    store: ResultsStore
    log: DecisionLog
    execute_trials: ExecuteTrials
    stop: StopFlag = field(default_factory=StopFlag)
    echo: Callable[[str], None] = print
    rerun_stopped: bool = False
    redecide: tuple[str, ...] = ()
    live: bool = True
    tracking: Any = None
    preflight: Any = None  # a remote cluster's pre-flight (checks each new trial shape on a worker node)
    driver: Any = None  # the sweep directory's DriverLock: its heartbeat carries the running trials
    planned: dict[str, Trial] = field(default_factory=dict)
    aliased: dict[str, Arm] = field(default_factory=dict)
    selection: Any = None  # a subset of arms (``--arm``, select.Selection): run as they are, nothing decided
    shown_plan: set[str] | None = None  # the plan readers see now (``_plan.json``), kept in step by extend_plan

    @property
    def mode(self) -> str:
        return self.sweep.file.mode or "max"

    def run(self, trials: list[Trial], order: list[Trial] | None = None) -> int:
        """Run the trials not yet finished (``order``, a superset, fixes table positions); return how many were
        skipped as already done. Raises ``SweepInterrupted`` when a stop was asked for, before or after."""
        self.stop.check(self.out)
        for t in order or trials:
            self.planned.setdefault(t.trial_id, t)
        self.extend_plan()
        skipped = self.execute_trials(self, trials, order or trials)
        self.stop.check(self.out)
        return skipped

    def extend_plan(self) -> None:
        """Add the trials released so far to the stored plan before they run, so readers never list a new arm's
        rows as removed while the sweep runs or after it is interrupted; only a finished run drops trials from
        the plan (``execute``)."""
        if self.shown_plan is None:
            known = read_plan(self.out)
            self.shown_plan = known if known is not None else {r["trial_id"] for r in self.store.trials}
        if not set(self.planned) <= self.shown_plan:
            self.shown_plan |= set(self.planned)
            write_plan(self.out, self.shown_plan)

    def plan_rows(self) -> list[dict[str, Any]]:
        """The stored rows of the current plan's trials, in sweep order."""
        return [r for r in self.store.trials if r["trial_id"] in self.planned]


@dataclass
class SweepOutcome:
    sweep: Sweep
    out: str
    rows: list[dict[str, Any]]
    skipped: int
    winner: Arm | None = None
    removed: int = 0
    aliased: list[Arm] = field(default_factory=list)

    def summary_text(self) -> str:
        stats = arm_table(self.rows, self.sweep.file.mode or "max", value_key(self.sweep.file.rank_by))
        ablation = self.sweep.file.search.kind == "ablation"  # effects against the baseline, as the report has
        lines = [format_table(stats, self.sweep.file.metric, effects=ablation), ""]
        lines.append(f"{len(self.rows)} trials recorded ({counts_text(status_counts(self.rows))})"
                     f"; {self.skipped} already done and skipped")
        if self.removed:
            lines.append(f"{self.removed} stored trials belong to arms or seeds no longer in the file: kept in the "
                         "store, left out of this table")
        for arm in self.aliased:
            lines.append(f"{alias_note(arm)} (trained once, shown once)")
        if self.winner is not None:
            lines.append(f"staged winner: {self.winner.label} {self.winner.overrides}")
        lines.append(f"results: {join(self.out, TRIALS)}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ arms
def record_unstarted(run: SweepRun, trials: list[Trial], order: list[Trial], status: str, reason: str) -> None:
    """Rows for trials that will never train (racing eliminated their arm): status, reason, no metrics."""
    from rayclf.sweep.rows import trial_row
    from rayclf.sweep.trialspec import TrialSpec

    pos = {t.trial_id: i for i, t in enumerate(order)}
    done = run.store.finished_ids()
    metric = run.sweep.file.metric
    rows = [trial_row(TrialSpec.of(run.sweep, t, pos[t.trial_id]), status, reason, None, [], metric, run.mode)
            for t in trials if t.trial_id not in done]
    for t in trials:
        run.planned.setdefault(t.trial_id, t)
    if rows:
        run.store.prepare(rows)
    for row in rows:
        run.store.add(row, [])


def run_arms(run: SweepRun, arms: list[Arm], all_arms: list[Arm] | None = None) -> int:
    """Run a set of arms (all seeds) under the sweep's scheduler: racing gives seeds in rounds, everything else
    is one round (asha / median decide per arm inside it). Returns trials skipped as already done. ``all_arms``
    (a superset, in order) fixes table positions when arms come in batches (bayes)."""
    sweep = run.sweep
    run.aliased.update({a.label: a for a in arms if a.aliases})
    order = sweep.trials(all_arms or arms)
    from rayclf.sweep.racing import check_eliminations, run_racing

    if sweep.file.scheduler.name != "racing":
        check_eliminations(sweep, run.log)
        return run.run(sweep.trials(arms), order)

    def record(trials: list[Trial], reason: str) -> None:
        record_unstarted(run, trials, order, "eliminated", reason)

    return run_racing(sweep, arms, lambda trials: run.run(trials, order), record, lambda: run.store.trials,
                      run.echo, run.log, run.rerun_stopped)


# ------------------------------------------------------------------------------------------ stages
def stage_index(sweep: Sweep, name: str) -> int:
    """A stage named by ``--redecide``: its name, its label (``stage2``) or its 1-based number."""
    labels = [sweep.stage_label(i) for i in range(sweep.stage_count())]
    if name in labels:
        return labels.index(name)
    if name.isdigit() and 1 <= int(name) <= len(labels):
        return int(name) - 1
    from rayclf.config import closest

    hint = closest(name, labels)
    raise UserError(f"--redecide {name!r} names no stage of sweep '{sweep.name}'; stages: {', '.join(labels)} "
                    f"(or 1–{len(labels)})." + (f" Did you mean '{hint}'?" if hint else ""))


def reopen_stages(run: SweepRun) -> None:
    """``--redecide STAGE``: forget that stage's winner and everything decided after it (later stages were
    built on it), so they are decided again from the stored results."""
    if not run.redecide:
        return
    first = min(stage_index(run.sweep, name) for name in run.redecide)
    later = {str(i) for i in range(first, run.sweep.stage_count())}
    n = run.log.forget(WINNER, later)
    n += run.log.forget(PROPOSAL, {d.key for d in run.log.of_kind(PROPOSAL)
                                   if d.key.split("/", 1)[0] in later})
    run.echo(f"--redecide: {n} logged decisions from stage {first + 1} on are taken again")


def _check_logged_stage(run: SweepRun, i: int, arms: list[Arm]) -> Decision | None:
    """The logged winner of stage ``i``, after checking the stage still has the arms it was decided on."""
    logged = run.log.get(WINNER, str(i))
    if logged is None:
        return None
    now = {run.sweep.arm_id(a): a.label for a in arms}
    then = dict(zip(logged.detail.get("arms", []), logged.detail.get("labels", []), strict=False))
    if set(now) != set(then):
        added = [now[a] for a in now if a not in then]
        removed = [then.get(a) or a for a in then if a not in now]
        change = "; ".join(p for p in (f"added {', '.join(added)}" if added else "",
                                       f"removed {', '.join(removed)}" if removed else "") if p)
        label = run.sweep.stage_label(i)
        raise UserError(f"stage {label} of sweep '{run.sweep.name}' was decided (winner {logged.label}) on other "
                        f"arms than the file now lists ({change}). Its winner and every later stage would change: "
                        f"pass --redecide {label} to decide it again from the stored results, or undo the edit.")
    return logged


def _decide_stage(run: SweepRun, i: int, arms: list[Arm]) -> Arm:
    """Stage ``i``'s winner (best under the ranking rule over its arms, grouped by arm id), logged before use."""
    sweep = run.sweep
    trials = sweep.trials(arms)
    label = {t.trial_id: t.arm.label for t in trials}
    # a stage's arm may be a config an earlier stage trained (same content address): its stored row keeps the
    # first label, so rank this stage's arms under their labels here, mapped through trial ids
    rows = [{**r, "arm": label[r["trial_id"]]} for r in run.store.trials if r["trial_id"] in label]
    stats = arm_table(rows, run.mode, value_key(sweep.file.rank_by))
    best = best_arm(stats, run.mode)
    if best is None:
        raise UserError(f"stage {i + 1} of sweep '{sweep.name}' produced no completed trial; see trials.parquet.")
    winner = next(a for a in arms if a.label == best.arm)
    ids = [sweep.arm_id(a) for a in arms]
    run.log.record(Decision(WINNER, str(i), sweep.arm_id(winner), winner.label, stage=i, n_seeds=best.n,
                            detail={"overrides": winner.overrides, "value": best.mean, "metric": sweep.file.metric,
                                    "rank_by": sweep.file.rank_by, "arms": ids, "labels": [a.label for a in arms]}))
    return winner


def _bayes_stage(run: SweepRun, i: int, carried: dict[str, Any]) -> tuple[int, list[Arm]]:
    """A stage that searches with bayes around the carried winner; its proposals become the stage's arms."""
    from rayclf.sweep.bayes import run_bayes

    sweep = run.sweep
    view = sweep.bayes_stage(i, carried)

    def run_batch(batch: list[Arm], seen: list[Arm]) -> int:
        return run_arms(run, sweep.place(batch, i, carried), sweep.place(seen, i, carried))

    skipped, proposed = run_bayes(view, run_batch, lambda: run.store.trials, run.echo, run.log, stage=i)
    return skipped, sweep.place(proposed, i, carried)


def run_staged(run: SweepRun) -> tuple[int, Arm]:
    """Greedy staged tuning: each stage's winner is the next stage's baseline. A logged winner is replayed (its
    stage's new seeds still run, the winner stays); a stage whose arms changed since it was decided is refused."""
    sweep = run.sweep
    reopen_stages(run)
    carried: dict[str, Any] = {}
    skipped = 0
    winner = Arm("baseline", {})
    for i in range(sweep.stage_count()):
        if sweep.file.search.stages[i].bayes is not None:  # type: ignore[index]
            ran, arms = _bayes_stage(run, i, carried)
            logged = _check_logged_stage(run, i, arms)
        else:
            arms = sweep.arms(carried, stage=i)
            logged = _check_logged_stage(run, i, arms)
            ran = run_arms(run, arms)
        skipped += ran
        run.stop.check(run.out)  # never decide a stage on a partial round
        if logged is not None:
            winner = next(a for a in arms if sweep.arm_id(a) == logged.arm_id)
            run.echo(f"stage {i + 1} winner (logged): {winner.label}")
        else:
            winner = _decide_stage(run, i, arms)
            run.echo(f"stage {i + 1} winner: {winner.label}")
        carried = sweep.carried_after(i, winner.overrides)
    if sweep.file.search.final:
        final = Arm("final", {**carried, **sweep.file.search.final}, sweep.stage_count())
        skipped += run.run(sweep.trials([final]))
    return skipped, winner


def execute(run: SweepRun) -> SweepOutcome:
    """Run every trial of the sweep's plan that is not already finished; the kernel of ``rayclf sweep``."""
    sweep = run.sweep
    winner = None
    if run.selection is not None:  # FIFO only (select.check_subset): no stage, rung or round decides anything
        skipped = sum(run_arms(run, arms, stage_arms) for arms, stage_arms in run.selection.groups())
    elif sweep.file.search.kind == "stages":
        skipped, winner = run_staged(run)
    elif sweep.file.search.kind == "bayes":
        from rayclf.sweep.bayes import run_bayes

        skipped, _ = run_bayes(sweep, lambda arms, seen: run_arms(run, arms, seen), lambda: run.store.trials,
                               run.echo, run.log)
    else:
        skipped = run_arms(run, sweep.arms())
    rows = run.plan_rows()
    if run.selection is not None:  # a subset of the file's arms: the rest is not removed, only not run now
        return SweepOutcome(sweep, run.out, rows, skipped, winner, aliased=list(run.aliased.values()))
    write_plan(run.out, set(run.planned))
    return SweepOutcome(sweep, run.out, rows, skipped, winner, removed=len(run.store.trials) - len(rows),
                        aliased=list(run.aliased.values()))


# ------------------------------------------------------------------------------------------ resume
def resume_conflict(old: SweepFile, new: SweepFile, log: DecisionLog, rerun_stopped: bool = False,
                    redecide: bool = False) -> str | None:
    """Why a sweep directory written with ``old`` cannot be continued with ``new``, or None. The metric and mode
    give every stored value its meaning; rank_by, the search kind and the scheduler only matter where logged
    decisions were taken under them, and not for decisions this run re-opens (``--rerun-stopped``: stops and
    eliminations; ``--redecide``: stage winners and proposals)."""
    if (old.metric, old.mode) != (new.metric, new.mode):
        return (f"this sweep directory was recorded with metric {old.metric} ({old.mode}); the file now says "
                f"{new.metric} ({new.mode}). Stored values would be mixed with new ones: keep "
                f"--set metric={old.metric} --set mode={old.mode}, or start a new --out.")
    reopened = ({STOP, ELIMINATE} if rerun_stopped else set()) | ({WINNER, PROPOSAL} if redecide else set())
    decided = [d for d in log.decisions if d.kind not in reopened]
    if not decided:
        return None
    kinds = sorted({d.kind for d in decided})
    what = f"{len(decided)} logged decisions ({', '.join(kinds)})"
    if old.rank_by != new.rank_by and any(d.kind in (WINNER, ELIMINATE, STOP) for d in decided):
        return (f"{what} were taken ranking by {old.rank_by}; the file now says rank_by: {new.rank_by}. Keep "
                f"--set rank_by={old.rank_by}, or re-open them (--rerun-stopped, --redecide STAGE) first.")
    if old.search.kind != new.search.kind:
        return (f"{what} belong to a {old.search.kind} search; the file now describes a {new.search.kind} search: "
                "start a new --out.")
    if old.scheduler != new.scheduler and any(d.kind in (STOP, ELIMINATE) for d in decided):
        return (f"{what} were taken by scheduler {old.scheduler.name} {old.scheduler.model_dump(exclude_defaults=True)}"
                f"; the file now has {new.scheduler.name} {new.scheduler.model_dump(exclude_defaults=True)}: undo "
                "the change, pass --rerun-stopped to take those decisions again, or start a new --out.")
    return None
