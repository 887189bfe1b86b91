"""Greedy staged tuning: each stage's winner is the next stage's baseline, an optional final run re-trains the
last winner. A stage varies a grid (``vary``) or searches with bayes around the carried winner.

Each stage's winner is a decision, logged before it is used; a logged winner is replayed on ``--resume`` (its
stage's new seeds still run, the winner stays); a stage whose arms changed since it was decided is refused;
``--redecide STAGE`` re-opens that stage and every later one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rayclf.aggregate import arm_table, best_arm, value_key
from rayclf.config import UserError, closest
from rayclf.sweep.decisions import PROPOSAL, WINNER, Decision, changed_settings
from rayclf.sweep.spec import Arm, Sweep, factor_levels, grid_arms
from rayclf.sweep.strategies.registry import Planned, SearchStrategy, register_search

if TYPE_CHECKING:
    from rayclf.sweep.runport import StrategyRun
    from rayclf.sweep.spec import SearchSpec


@register_search("stages")
class StagedStrategy(SearchStrategy):
    """Stages of arms, each around the previous stage's winner."""

    fixed_arms = False
    staged = True
    takes_final = True

    @classmethod
    def validate_search(cls, search: SearchSpec) -> None:
        """Two stages of one name would share arm labels (a stage's name prefixes its arms' labels)."""
        labels = [st.name or f"stage{i + 1}" for i, st in enumerate(search.stages or [])]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            i = labels.index(twice[0], labels.index(twice[0]) + 1)
            raise ValueError(f"search.stages.{i}.name {twice[0]!r} names an earlier stage too; give each stage "
                             f"its own name (e.g. '{twice[0]}2')")
        if search.greedy and not any(st.carry for st in search.stages or []):
            raise ValueError("search.greedy: true has no effect: no stage has a carry: (stages are greedy already)")

    def arms(self, base_overrides: Mapping[str, Any] | None = None, stage: int | None = None) -> list[Arm]:
        assert stage is not None, "staged sweeps expand one stage at a time"
        st = self.section[stage]
        if st.bayes is not None:
            raise ValueError("a bayes stage's arms are proposed as results come in: use rayclf.sweep.bayes")
        carried = dict(base_overrides or {})
        prefix = self.sweep.stage_label(stage)
        return [Arm(f"{prefix}:{a.label}", {**carried, **a.overrides}, stage) for a in grid_arms(st.vary or {})]

    def check(self) -> None:
        """Every stage's arms around the stages' pinned carry values (each checked where it applies)."""
        sweep = self.sweep
        carried: dict[str, Any] = {}
        for i in range(sweep.stage_count()):
            if self.section[i].bayes is not None:
                from rayclf.sweep.bayes import check_space

                check_space(sweep.bayes_stage(i, carried))
            else:
                sweep.trials(sweep.arms(carried, stage=i))
            carried = sweep.carried_after(i, carried)
        if sweep.file.search.final:
            sweep.config_for(Arm("final", dict(sweep.file.search.final)), sweep.file.seeds[0])

    def describe(self) -> str:
        sweep = self.sweep
        per_stage = [len(sweep.arms({}, stage=i)) for i in range(sweep.stage_count())]
        extra = " + final" if sweep.file.search.final else ""
        return (f"sweep '{sweep.name}': {sweep.stage_count()} stages of {per_stage} arms{extra} "
                f"× {len(sweep.file.seeds)} seeds")

    def plan(self) -> Planned:
        sweep = self.sweep
        trials = []
        for i in range(sweep.stage_count()):
            spec = self.section[i].bayes
            if spec is not None:  # its first batch, as the stage would propose it around the base
                from rayclf.sweep.bayes import propose

                first = propose(sweep.bayes_stage(i, {}), [], min(spec.batch, spec.num_samples))
                trials += sweep.trials(sweep.place(first, i, {}))
            else:
                trials += sweep.trials(sweep.arms({}, stage=i))
        return Planned(trials, ["staged sweep: each stage's arms are varied around the previous stage's winner; "
                                "the table shows them around the base config"],
                       extra=1 if sweep.file.search.final else 0)

    def labels(self) -> list[str] | None:
        sweep = self.sweep
        if any(st.bayes is not None for st in self.section):
            return None
        labels = [label for i in range(sweep.stage_count()) for a in sweep.arms({}, stage=i)
                  for label in (a.label, *a.aliases)]
        return labels + (["final"] if sweep.file.search.final else [])

    def selectable(self, winners: Mapping[int, Mapping[str, Any]]) -> tuple[list[Arm], list[str]]:
        """Label by label (which labels alias one another depends on the winners too): an arm that sets every
        value only a winner would tell needs no winner; the known ones are deduplicated as the sweep does."""
        sweep, final = self.sweep, self.sweep.file.search.final
        known: list[Arm] = []
        pending: list[str] = []
        for i in range(sweep.stage_count()):
            carried, unknown = self._carried(i, winners)
            if self.section[i].bayes is not None:
                continue  # its proposals exist only in a run's decision log
            levels = grid_arms(self.section[i].vary or {})
            sure = [unknown <= set(lv.overrides) for lv in levels]
            arms = sweep.place(levels, i, carried)
            known += sweep.unique([a for a, ok in zip(arms, sure, strict=True) if ok])
            pending += [a.label for a, ok in zip(arms, sure, strict=True) if not ok]
        if final is not None:
            carried, unknown = self._carried(sweep.stage_count(), winners)
            if unknown - set(final):
                pending.append("final")
            else:
                known.append(Arm("final", {**carried, **final}, sweep.stage_count()))
        return known, pending

    def _stage_keys(self, stage: int) -> set[str]:
        """The config keys a stage's arms set (so a winner of it carries values for them)."""
        st = self.section[stage]
        if st.bayes is not None:
            return set(st.bayes.params)
        return {k for key, spec in (st.vary or {}).items() for _, ov in factor_levels(key, spec) for k in ov}

    def _carried(self, upto: int, winners: Mapping[int, Mapping[str, Any]]) -> tuple[dict[str, Any], set[str]]:
        """What stages ``0..upto-1`` carry into stage ``upto``, and the keys whose values only a winner tells."""
        carried: dict[str, Any] = {}
        unknown: set[str] = set()
        for i in range(upto):
            if i in winners:
                carried, unknown = dict(winners[i]), set()
            else:
                unknown |= self._stage_keys(i)
            carried = self.sweep.carried_after(i, carried)
            unknown -= set(self.sweep.stage_carry(i))
        return carried, unknown

    def execute(self, run: StrategyRun) -> tuple[int, Arm | None]:
        return run_staged(run)


# ------------------------------------------------------------------------------------------ the kernel
def stage_index(sweep: Sweep, name: str) -> int:
    """A stage named by ``--redecide``: its name, its label (``stage2``) or its 1-based number."""
    labels = [sweep.stage_label(i) for i in range(sweep.stage_count())]
    if name in labels:
        return labels.index(name)
    if name.isdigit() and 1 <= int(name) <= len(labels):
        return int(name) - 1
    hint = closest(name, labels)
    raise UserError(f"--redecide {name!r} names no stage of sweep '{sweep.name}'; stages: {', '.join(labels)} "
                    f"(or 1–{len(labels)})." + (f" Did you mean '{hint}'?" if hint else ""))


def reopen_stages(run: StrategyRun) -> None:
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


def _check_logged_stage(run: StrategyRun, i: int, arms: list[Arm]) -> Decision | None:
    """The logged winner of stage ``i``, after checking the stage still has the arms it was decided on."""
    logged = run.log.get(WINNER, str(i))
    if logged is None:
        return None
    now = {run.sweep.arm_id(a): a.label for a in arms}
    then = dict(zip(logged.detail.get("arms", []), logged.detail.get("labels", []), strict=False))
    if set(now) == set(then):
        return logged
    twin = next((a for a in arms if a.label == logged.label), None)
    if twin is not None and run.sweep.arm_id(twin) != logged.arm_id and isinstance(logged.detail.get("config"), dict):
        change = changed_settings(logged.detail["config"], run.sweep.arm_identity(twin))
        raise _decided(run, i, logged, f"arm {logged.arm_id}, which the file now resolves to another arm "
                       f"(changed: {change})", "from the stored results")
    added = [now[a] for a in now if a not in then]
    removed = [then.get(a) or a for a in then if a not in now]
    change = "; ".join(p for p in (f"added {', '.join(added)}" if added else "",
                                   f"removed {', '.join(removed)}" if removed else "") if p)
    raise _decided(run, i, logged, f"other arms than the file now lists ({change})", "from the stored results")


def check_decided_stages(run: StrategyRun) -> None:
    """Before anything trains: every stage whose winner is logged still has the arms (a bayes stage: the
    proposals, each the arm it was) it was decided on, walking the logged winners from the first stage. A stage
    with no logged winner (never decided, or re-opened by --redecide) ends the walk: what follows is decided
    again."""
    from rayclf.sweep.bayes import check_proposals, logged_proposals

    sweep, carried = run.sweep, {}
    for i in range(sweep.stage_count()):
        if sweep.file.search.stages[i].bayes is not None:  # type: ignore[index]
            view = sweep.bayes_stage(i, carried)
            check_proposals(view, run.log, i, sweep.stage_label(i))
            _refuse_more_proposals(run, i)
            arms = sweep.unique(sweep.place(logged_proposals(view, run.log, i), i, carried))
        else:
            arms = sweep.arms(carried, stage=i)
        logged = _check_logged_stage(run, i, arms)
        if logged is None:
            return
        carried = sweep.carried_after(i, logged.detail["overrides"])


def _decided(run: StrategyRun, i: int, logged: Decision, on: str, again: str) -> UserError:
    """Stage ``i`` was decided on other inputs than the file now gives: the way out is --redecide."""
    label = run.sweep.stage_label(i)
    return UserError(f"stage {label} of sweep '{run.sweep.name}' was decided (winner {logged.label}) on {on}. Its "
                     f"winner and every later stage would change: pass --redecide {label} to decide it again "
                     f"{again}, or undo the edit.")


def _decide_stage(run: StrategyRun, i: int, arms: list[Arm]) -> Arm:
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
                                    "rank_by": sweep.file.rank_by, "arms": ids, "labels": [a.label for a in arms],
                                    "config": sweep.arm_identity(winner)}))
    return winner


def _refuse_more_proposals(run: StrategyRun, i: int) -> None:
    """A decided bayes stage whose file now asks for more proposals: refused before any of them trains (the
    winner check after the proposals would refuse too, but only once they had cost their training)."""
    logged = run.log.get(WINNER, str(i))
    asked = run.sweep.file.search.stages[i].bayes.num_samples  # type: ignore[index, union-attr]
    made = sum(1 for d in run.log.of_kind(PROPOSAL) if d.key.split("/", 1)[0] == str(i))
    if logged is not None and asked > made:
        raise _decided(run, i, logged, f"{made} bayes proposals; the file now asks for {asked}",
                       "with the new proposals")


def _bayes_stage(run: StrategyRun, i: int, carried: dict[str, Any]) -> tuple[int, list[Arm]]:
    """A stage that searches with bayes around the carried winner; its proposals become the stage's arms."""
    from rayclf.sweep.bayes import run_bayes

    sweep = run.sweep
    view = sweep.bayes_stage(i, carried)
    _refuse_more_proposals(run, i)

    def run_batch(batch: list[Arm], seen: list[Arm]) -> int:
        return run.run_arms(sweep.place(batch, i, carried), sweep.place(seen, i, carried))

    skipped, proposed = run_bayes(view, run_batch, lambda: run.store.trials, run.echo, run.log, stage=i)
    return skipped, sweep.place(proposed, i, carried)


def run_staged(run: StrategyRun) -> tuple[int, Arm]:
    """Every stage in turn, then the final run; trials skipped as already done and the last stage's winner."""
    sweep = run.sweep
    reopen_stages(run)
    check_decided_stages(run)
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
            ran = run.run_arms(arms)
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

