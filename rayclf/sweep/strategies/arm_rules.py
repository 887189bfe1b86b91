"""The built-in arm rules: fifo (every trial to the end), asha and median (per-arm early stopping on the mean
over an arm's seeds, decided inside one Tune run by ``rayclf.sweep.schedulers``), racing (seeds in rounds, a
paired test stops giving seeds to worse arms: ``rayclf.sweep.racing``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rayclf.config import UserError
from rayclf.sweep.decisions import CONTINUE, ELIMINATE, STOP, SURVIVE, DecisionLog
from rayclf.sweep.racing import TESTS, run_racing
from rayclf.sweep.spec import Arm, SchedulerSpec, Sweep, SweepFile, Trial, wilcoxon_pairs
from rayclf.sweep.strategies.registry import ArmRule, deciders, register_arm_rule

if TYPE_CHECKING:
    from rayclf.sweep.runport import StrategyRun


def refuse_eliminations(sweep: Sweep, log: DecisionLog) -> None:
    """A rule that eliminates nothing cannot continue a directory whose arms were eliminated: ``--rerun-stopped``
    cannot help (only the eliminating rule re-opens its eliminations)."""
    for d in log.of_kind(ELIMINATE):
        raise UserError(f"--resume: racing eliminated arm '{d.label}' {d.detail['reason']}; the file now says "
                        f"scheduler: {sweep.file.scheduler.name}. Restore scheduler: "
                        f"{' or '.join(deciders(ELIMINATE))}, or run the sweep in a new --out.")


class OneRound(ArmRule):
    """Every seed of every arm in one ``run.run`` (a Tune run may still stop arms inside it: ``board``)."""

    def run_arms(self, run: StrategyRun, arms: list[Arm], order: list[Trial]) -> int:
        refuse_eliminations(self.sweep, run.log)
        return run.run(self.sweep.trials(arms), order)


@register_arm_rule("fifo")
class FifoRule(OneRound):
    """Every trial trains to the end."""

    def describe(self, n_arms: int) -> str:
        return "scheduler: fifo (every trial trains to the end)"


class RungStopRule(OneRound):
    """Stops whole arms at rungs, on the mean over all of an arm's seeds (``schedulers.ArmBoard``)."""

    options = frozenset({"grace_period", "reduction_factor", "max_epochs"})
    decisions = frozenset({STOP, CONTINUE})
    takes_subsets = False

    def describe(self, n_arms: int) -> str:
        return (f"scheduler: {self.name} by arm — decided on the mean over each arm's seeds (from epoch "
                f"{self.spec.grace_period}), every seed of a stopped arm stops together, seeds not yet started "
                "never start")



@register_arm_rule("asha")
class AshaRule(RungStopRule):
    """ASHA: at each rung an arm below the top 1/reduction_factor of the arms recorded there stops."""

    @classmethod
    def rungs(cls, grace: int, reduction_factor: float, max_epochs: int, min_arms: int = 2) -> Any:
        from rayclf.sweep.schedulers import QuantileRungs

        return QuantileRungs.at(cls.name, grace, reduction_factor, max_epochs, min_arms)


@register_arm_rule("median")
class MedianRule(RungStopRule):
    """The median rule: an arm worse than the median of the other arms at an epoch stops."""

    @classmethod
    def rungs(cls, grace: int, reduction_factor: float, max_epochs: int, min_arms: int = 2) -> Any:
        from rayclf.sweep.schedulers import MedianRungs

        return MedianRungs.at(cls.name, grace, reduction_factor, max_epochs, min_arms)


@register_arm_rule("racing")
class RacingRule(ArmRule):
    """Seeds in rounds; an arm a one-sided paired test shows worse than the current best gets no more."""

    options = frozenset({"level", "test", "seeds_per_round", "first_round"})
    decisions = frozenset({ELIMINATE, SURVIVE})
    every_seed = False
    takes_subsets = False

    @classmethod
    def validate_spec(cls, spec: SchedulerSpec, given: set[str]) -> None:
        super().validate_spec(spec, given)
        if spec.test == "wilcoxon" and spec.first_round < wilcoxon_pairs(spec.level):
            raise ValueError(f"scheduler.first_round = {spec.first_round} with test: wilcoxon can never eliminate "
                             f"an arm after round 1 at level {spec.level:g}: the smallest one-sided Wilcoxon p over "
                             f"{spec.first_round} pairs is {0.5 ** spec.first_round:g}; use first_round: "
                             f"{wilcoxon_pairs(spec.level)} or more, or test: ttest")

    @classmethod
    def validate_file(cls, file: SweepFile) -> None:
        first = file.scheduler.first_round
        if len(file.seeds) < 2:
            raise ValueError("scheduler racing needs at least 2 seeds to compare arms (seeds: [0, 1, ...])")
        if len(file.seeds) <= first:
            raise ValueError(f"scheduler racing with first_round = {first} and {len(file.seeds)} seeds never tests "
                             f"(every arm gets every seed in its first round): give seeds more than first_round, "
                             f"or scheduler name: fifo")

    def describe(self, n_arms: int) -> str:
        s, seeds = self.spec, self.sweep.file.seeds
        first = min(s.first_round, len(seeds))
        return (f"scheduler: racing over seeds — every arm gets seeds {seeds[:first]} first, then "
                f"{s.seeds_per_round} more per round while it survives; after each round an arm a one-sided "
                f"{TESTS[s.test]} over matched seeds shows worse than the current best (p < {s.level:g}) gets no "
                f"more seeds: between {n_arms * first} and {n_arms * len(seeds)} trials")

    def run_arms(self, run: StrategyRun, arms: list[Arm], order: list[Trial]) -> int:
        def record(trials: list[Trial], reason: str) -> None:
            run.record_unstarted(trials, order, "eliminated", reason)

        return run_racing(self.sweep, arms, lambda trials: run.run(trials, order), record,
                          lambda: run.store.trials, run.echo, run.log, run.rerun_stopped)
