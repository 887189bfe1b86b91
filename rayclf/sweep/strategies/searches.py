"""The built-in searches whose arms are one list: grid, seeded random, one-factor-at-a-time ablation, a single
baseline arm (a file that names no search); and bayes, whose arms Optuna proposes as results come in
(the engine is ``rayclf.sweep.bayes``). Registered in this order, which is the order messages list them in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rayclf.config import ConfigError
from rayclf.sweep.spec import Arm, ablation_arms, grid_arms, random_arms
from rayclf.sweep.strategies.registry import Planned, SearchStrategy, register_search

if TYPE_CHECKING:
    from rayclf.sweep.runport import StrategyRun


@register_search("grid")
class GridStrategy(SearchStrategy):
    """The Cartesian product of every factor's levels."""

    def arms(self, base_overrides: Mapping[str, Any] | None = None, stage: int | None = None) -> list[Arm]:
        return grid_arms(self.section or {})


@register_search("random")
class RandomStrategy(SearchStrategy):
    """``num_samples`` seeded draws: the same file always gives the same arms."""

    def arms(self, base_overrides: Mapping[str, Any] | None = None, stage: int | None = None) -> list[Arm]:
        return random_arms(self.section)


@register_search("bayes")
class BayesStrategy(SearchStrategy):
    """TPE proposals in seeded batches, each run with every seed and scored by the mean over them."""

    fixed_arms = False
    proposes = True
    scores_every_seed = True

    @classmethod
    def search_space(cls, search: Mapping[str, Any]) -> dict[str, Any] | None:
        return (search.get(cls.name) or {}).get("params")

    def arms(self, base_overrides: Mapping[str, Any] | None = None, stage: int | None = None) -> list[Arm]:
        raise ValueError("bayes arms are proposed as results come in: use rayclf.sweep.bayes")

    def check(self) -> None:
        from rayclf.sweep.bayes import check_space

        check_space(self.sweep)

    def describe(self) -> str:
        b, n_seeds = self.section, len(self.sweep.file.seeds)
        return (f"sweep '{self.sweep.name}': bayes (TPE), {b.num_samples} proposals × {n_seeds} seeds = "
                f"up to {b.num_samples * n_seeds} trials")

    def plan(self) -> Planned:
        from rayclf.sweep.bayes import propose

        b, sweep = self.section, self.sweep
        first = sweep.trials(propose(sweep, [], min(b.batch, b.num_samples)))
        seeds = len(sweep.file.seeds)
        note = (f"bayes search (Optuna TPE, search seed {b.seed}): {b.num_samples} proposals asked in batches of "
                f"{b.batch} (the first {b.startup} random), each run with all {seeds} seeds and scored by the mean "
                f"over them: up to {b.num_samples * seeds} trials. The table lists the first batch; later "
                "proposals depend on the results.")
        return Planned(first, [note], b.num_samples / min(b.batch, b.num_samples), scope=" in the first batch")

    def labels(self) -> list[str] | None:
        return None

    def selectable(self, winners: Mapping[int, Mapping[str, Any]]) -> tuple[list[Arm], list[str]]:
        raise ConfigError(f"sweep '{self.sweep.name}' is a bayes search: its arms are proposed as results come in, "
                          "so none can be picked by --arm.")

    def execute(self, run: StrategyRun) -> tuple[int, Arm | None]:
        from rayclf.sweep.bayes import run_bayes

        skipped, _ = run_bayes(self.sweep, run.run_arms, lambda: run.store.trials,
                               run.echo, run.log)
        return skipped, None


@register_search("ablation")
class AblationStrategy(SearchStrategy):
    """The baseline, then one arm per alternative level of each factor: effects are read against the baseline,
    and the arms are no grid (pooling or pivoting them would mislead)."""

    factorial = False
    effects_against_baseline = True

    def arms(self, base_overrides: Mapping[str, Any] | None = None, stage: int | None = None) -> list[Arm]:
        return ablation_arms(self.section)


@register_search("single")
class SingleArmStrategy(SearchStrategy):
    """A file that names no search: its base config, one arm."""

    keyed = False

    def arms(self, base_overrides: Mapping[str, Any] | None = None, stage: int | None = None) -> list[Arm]:
        return [Arm("baseline", {})]
