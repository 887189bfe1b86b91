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

from rayclf.aggregate import arm_table, counts_text, format_table, status_counts, value_key
from rayclf.cache import reuse_note
from rayclf.results import TRIALS, ResultsStore
from rayclf.storage import join, read_plan, write_plan
from rayclf.sweep.decisions import CONTINUE, ELIMINATE, PROPOSAL, STOP, SURVIVE, WINNER, Decision, DecisionLog
from rayclf.sweep.interrupt import StopFlag
from rayclf.sweep.spec import Arm, Sweep, SweepFile, Trial, alias_note
from rayclf.sweep.strategies.registry import create_arm_rule, create_search, rule_decisions, search_class

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
    cache: Any = None  # the trial cache (``reuse.Reuse``): planned trials it holds are recorded, not trained
    last_reused: set[str] = field(default_factory=set)  # the trials the current batch took from the cache

    @property
    def mode(self) -> str:
        return self.sweep.file.mode or "max"

    def run(self, trials: list[Trial], order: list[Trial] | None = None) -> int:
        """Run the trials not yet finished (``order``, a superset, fixes table positions); return how many were
        skipped as already done (trials taken from the trial cache, ``reuse``, are not counted: they are
        recorded first, and the batch's newly completed trials are published to it after). Raises
        ``SweepInterrupted`` when a stop was asked for, before or after."""
        self.stop.check(self.out)
        for t in order or trials:
            self.planned.setdefault(t.trial_id, t)
        self.extend_plan()
        self.last_reused = self.cache.take(self, trials, order or trials) if self.cache is not None else set()
        skipped = self.execute_trials(self, trials, order or trials)
        if self.cache is not None:
            self.cache.give(self, trials)
        self.stop.check(self.out)
        return skipped - len(self.last_reused)

    def run_arms(self, arms: list[Arm], all_arms: list[Arm] | None = None) -> int:
        """``runport.StrategyRun.run_arms``: every seed of ``arms`` under the sweep's arm rule."""
        return run_arms(self, arms, all_arms)

    def record_unstarted(self, trials: list[Trial], order: list[Trial], status: str, reason: str) -> None:
        """``runport.StrategyRun.record_unstarted``: rows for trials that will never train."""
        record_unstarted(self, trials, order, status, reason)

    def __post_init__(self) -> None:
        self.log.stop = self.stop  # stops are total: once a stop was asked for, nothing is decided

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
    tracking: Any = None  # the run's W&B settings: the CLI publishes the sweep-level summary with them

    def _shown_as(self, arm: Arm) -> str:
        """Where the table shows an arm whose config an earlier stage trained under another label."""
        labels = {r["arm"] for r in self.rows}
        if arm.label in labels:
            return ""
        arm_id = self.sweep.arm_id(arm)
        first = next((r["arm"] for r in self.rows if r.get("arm_id") == arm_id), None)
        return f" (shown as {first}: the same config, trained once)" if first else ""

    def summary_text(self) -> str:
        stats = arm_table(self.rows, self.sweep.file.mode or "max", value_key(self.sweep.file.rank_by))
        effects = search_class(self.sweep.file.search.kind).effects_against_baseline  # as the report has
        lines = [format_table(stats, self.sweep.file.metric, effects=effects), ""]
        lines.append(f"{len(self.rows)} trials recorded ({counts_text(status_counts(self.rows))})"
                     f"; {self.skipped} already done and skipped")
        reused = reuse_note(self.rows)
        if reused:
            lines.append(reused)
        if self.removed:
            lines.append(f"{self.removed} stored trials belong to arms or seeds no longer in the file: kept in the "
                         "store, left out of this table")
        for arm in self.aliased:
            lines.append(f"{alias_note(arm)} (trained once, shown once)")
        if self.winner is not None:
            lines.append(f"staged winner: {self.winner.label}{self._shown_as(self.winner)} {self.winner.overrides}")
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
    """Run a set of arms (all seeds) under the sweep's arm rule (``scheduler.name``): racing gives seeds in rounds,
    the others run one round (asha / median decide per arm inside it). Returns trials skipped as already done.
    ``all_arms`` (a superset, in order) fixes table positions when arms come in batches (bayes)."""
    sweep = run.sweep
    run.aliased.update({a.label: a for a in arms if a.aliases})
    return create_arm_rule(sweep).run_arms(run, arms, sweep.trials(all_arms or arms))


def execute(run: SweepRun) -> SweepOutcome:
    """Run every trial of the sweep's plan that is not already finished; the kernel of ``rayclf sweep``. The
    sweep's search strategy (``rayclf.sweep.strategies``) decides which arms run and what is decided between."""
    sweep = run.sweep
    winner = None
    if run.selection is not None:  # picked arms only where the arm rule takes subsets (select.check_subset)
        skipped = sum(run_arms(run, arms, stage_arms) for arms, stage_arms in run.selection.groups())
    else:
        skipped, winner = create_search(sweep).execute(run)
    rows = run.plan_rows()
    if run.selection is not None:  # a subset of the file's arms: the rest is not removed, only not run now
        return SweepOutcome(sweep, run.out, rows, skipped, winner, aliased=list(run.aliased.values()))
    write_plan(run.out, set(run.planned))
    return SweepOutcome(sweep, run.out, rows, skipped, winner, removed=len(run.store.trials) - len(rows),
                        aliased=list(run.aliased.values()))


# ------------------------------------------------------------------------------------------ resume
def resume_conflict(old: SweepFile, new: SweepFile, log: DecisionLog, rerun_stopped: bool = False,
                    redecide_from: int | None = None) -> str | None:
    """Why a sweep directory written with ``old`` cannot be continued with ``new``, or None. The metric and mode
    give every stored value its meaning; rank_by, the search kind and the scheduler only matter where logged
    decisions were taken under them, and not for decisions this run re-opens (``--rerun-stopped``: the arm
    rules' stops and verdicts; ``--redecide STAGE``: the winners and proposals of that stage and later ones —
    the earlier stages' stay guarded)."""
    if (old.metric, old.mode) != (new.metric, new.mode):
        return (f"this sweep directory was recorded with metric {old.metric} ({old.mode}); the file now says "
                f"{new.metric} ({new.mode}). Stored values would be mixed with new ones: keep "
                f"--set metric={old.metric} --set mode={old.mode}, or start a new --out.")

    def reopened(d: Decision) -> bool:
        if rerun_stopped and d.kind in rule_decisions():
            return True
        return (redecide_from is not None and d.kind in (WINNER, PROPOSAL) and d.stage is not None
                and d.stage >= redecide_from)

    decided = [d for d in log.decisions if not reopened(d)]
    if not decided:
        return None
    kinds = sorted({d.kind for d in decided})
    what = f"{len(decided)} logged decisions ({', '.join(kinds)})"
    if old.rank_by != new.rank_by and any(d.kind in (WINNER, ELIMINATE, SURVIVE, STOP, CONTINUE) for d in decided):
        return (f"{what} were taken ranking by {old.rank_by}; the file now says rank_by: {new.rank_by}. Keep "
                f"--set rank_by={old.rank_by}, or re-open them (--rerun-stopped, --redecide STAGE) first.")
    if old.search.kind != new.search.kind:
        return (f"{what} belong to a {old.search.kind} search; the file now describes a {new.search.kind} search: "
                "start a new --out.")
    if old.scheduler != new.scheduler and any(d.kind in rule_decisions() for d in decided):
        return (f"{what} were taken by scheduler {old.scheduler.name} {old.scheduler.model_dump(exclude_defaults=True)}"
                f"; the file now has {new.scheduler.name} {new.scheduler.model_dump(exclude_defaults=True)}: undo "
                "the change, pass --rerun-stopped to take those decisions again, or start a new --out.")
    return None
