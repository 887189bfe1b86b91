"""The two registries of sweep strategies, in the style of timm's model registry: a ``register_*`` decorator
and a ``create_*`` factory, and nothing else kept at module level.

- A **search strategy** (``search: {grid: ...}``, random, bayes, ablation, stages) says which arms a sweep
  has and how they unfold: it validates its part of the sweep file, describes itself for ``--dry-run`` and
  ``rayclf validate``, lists (or proposes) its arms, and executes them in the Ray-free kernel.
- An **arm rule** (``scheduler: {name: fifo}``, asha, median, racing) says how a set of arms runs and which
  arms stop early: it validates its options, describes itself, runs arms (one ``SweepRun.run``, or rounds)
  and builds the arm-level early-stopping board Tune's scheduler shares.

Every other module asks the strategy (``create_search(sweep).execute(run)``, ``arm_rule_class(name).decisions``)
instead of comparing a kind or a name: a new strategy is one registered class. This module imports no
strategy: the built-in ones register when ``rayclf.sweep.strategies`` is first imported (``_load_builtins``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from rayclf.schema import ConfigError, closest

if TYPE_CHECKING:
    from rayclf.sweep.runport import StrategyRun
    from rayclf.sweep.spec import Arm, SchedulerSpec, SearchSpec, Sweep, SweepFile, Trial

_SEARCHES: dict[str, type[SearchStrategy]] = {}
_ARM_RULES: dict[str, type[ArmRule]] = {}

S = TypeVar("S", bound="type[SearchStrategy]")
R = TypeVar("R", bound="type[ArmRule]")


@dataclass
class Planned:
    """What ``--dry-run`` lists for a search: the trials, notes on how it unfolds, the factor from the listed
    trials to the whole search's cost, runs beyond the listed trials (a final run) and what the count covers."""

    trials: list[Trial]
    notes: list[str] = field(default_factory=list)
    scale: float = 1.0
    extra: int = 0
    scope: str = ""  # appended to the header's trial count (" in the first batch")


# ------------------------------------------------------------------------------------ search strategies
class SearchStrategy:
    """One search kind. Class attributes are the facts other modules ask instead of comparing kinds."""

    name: ClassVar[str] = ""
    keyed: ClassVar[bool] = True  # named by its own key under ``search:``; False: the search of a file naming none
    options: ClassVar[Any] = None  # the type of its ``search.<name>`` section when SearchSpec has no field for it
    fixed_arms: ClassVar[bool] = True  # one list of arms, known from the file alone (not per stage, not proposed)
    staged: ClassVar[bool] = False  # arms come in stages, each varied around the previous stage's winner
    proposes: ClassVar[bool] = False  # arms are proposed as results come in (the report draws the proposals)
    factorial: ClassVar[bool] = True  # arms vary factors jointly: pooled / pivoted factor figures make sense
    effects_against_baseline: ClassVar[bool] = False  # tables show each arm's Δ against the baseline arm
    scores_every_seed: ClassVar[bool] = False  # its decisions need every arm on every seed (no racing)
    takes_final: ClassVar[bool] = False  # ``search.final`` (re-run the winner) applies

    def __init__(self, sweep: Sweep):
        self.sweep = sweep

    # -------------------------------------------------------------- the file
    @classmethod
    def validate_search(cls, search: SearchSpec) -> None:
        """Checks of the ``search:`` section that need no base config (raise ``ValueError``)."""
        if search.final is not None and not cls.takes_final:
            takers = " and ".join(n for n, c in _SEARCHES.items() if c.takes_final)
            raise ValueError(f"search.final only applies to {takers}")
        if search.greedy and not cls.staged:
            raise ValueError("search.greedy only applies to stages (it ignores their carry:)")

    @classmethod
    def validate_file(cls, file: SweepFile) -> None:
        """Checks against the rest of the sweep file (seeds, scheduler); raise ``ValueError``."""
        if cls.scores_every_seed and not arm_rule_class(file.scheduler.name).every_seed:
            fits = " or ".join(n for n, c in _ARM_RULES.items() if c.every_seed and c.decisions)
            raise ValueError(f"search.{cls.name} scores every proposal on all seeds; use scheduler {fits} with it, "
                             f"not {file.scheduler.name}")

    @classmethod
    def search_space(cls, search: Mapping[str, Any]) -> dict[str, Any] | None:
        """The parameter space a stored file's ``search:`` section searched (proposal figures), if any."""
        return None

    @property
    def section(self) -> Any:
        """This search's part of the file (``search.<name>``)."""
        return self.sweep.file.search.section(self.name)

    def check(self) -> None:
        """Every arm the file lists resolves to a valid trial config (a clean error before anything runs)."""
        self.sweep.trials(self.sweep.arms())

    def describe(self) -> str:
        """One line for ``rayclf validate``."""
        arms, n_seeds = self.sweep.arms(), len(self.sweep.file.seeds)
        return f"sweep '{self.sweep.name}': {len(arms)} arms × {n_seeds} seeds = {len(arms) * n_seeds} trials"

    def plan(self) -> Planned:
        """What ``--dry-run`` lists."""
        return Planned(self.sweep.trials(self.sweep.arms()))

    def labels(self) -> list[str] | None:
        """Every arm label the sweep can produce; None when arms are proposed as results come in."""
        return [label for a in self.sweep.arms() for label in (a.label, *a.aliases)]

    # -------------------------------------------------------------- the arms
    def arms(self, base_overrides: Mapping[str, Any] | None = None, stage: int | None = None) -> list[Arm]:
        """The arms as the file lists them (before ``Sweep.unique`` merges arms of one config)."""
        raise NotImplementedError

    def selectable(self, winners: Mapping[int, Mapping[str, Any]]) -> tuple[list[Arm], list[str]]:
        """Arms ``--arm`` can pick now, and labels that need earlier stage winners (``select.sweep_arms``)."""
        return self.sweep.arms(), []

    def execute(self, run: StrategyRun) -> tuple[int, Arm | None]:
        """Run the whole search in the kernel: trials skipped as already done, and the winner it declares (or
        None). It runs arms through ``run.run_arms`` (the sweep's arm rule) or ``run.run``, which block."""
        return run.run_arms(self.sweep.arms()), None


def register_search(name: str) -> Callable[[S], S]:
    """Decorator: ``@register_search("grid")`` on a :class:`SearchStrategy` subclass."""

    def wrap(cls: S) -> S:
        cls.name = name
        _SEARCHES[name] = cls
        return cls

    return wrap


def search_names(keyed: bool = True) -> list[str]:
    """Registered search kinds in registration order (``keyed``: only those a file names under ``search:``)."""
    _load_builtins()
    return [n for n, c in _SEARCHES.items() if c.keyed or not keyed]


def _lookup(registry: dict[str, Any], name: str, what: str, choices: list[str]) -> Any:
    """A registered class by name, or the usual error: the bad value, the choices, the closest one."""
    _load_builtins()
    if name not in registry:
        hint = closest(name, registry)
        raise ConfigError(f"{what}; choose one of: {', '.join(choices)}."
                          + (f" Did you mean '{hint}'?" if hint else ""))
    return registry[name]


def search_class(kind: str) -> type[SearchStrategy]:
    return _lookup(_SEARCHES, kind, f"'search' kind {kind!r} is not registered", search_names())


def create_search(sweep: Sweep) -> SearchStrategy:
    """The sweep's search strategy."""
    return search_class(sweep.file.search.kind)(sweep)


def unkeyed_search() -> str:
    """The search of a file that names none (one baseline arm)."""
    _load_builtins()
    return next(n for n, c in _SEARCHES.items() if not c.keyed)


def infer_kind(spec: Mapping[str, Any], trials: Sequence[Mapping[str, Any]] = ()) -> str:
    """The search kind of a stored sweep file (a dict, as a sweep directory holds it); without a file, a staged
    search when rows carry a stage, else a grid (whose figures say they pool)."""
    search = spec.get("search") or {}
    kind = next((k for k in search_names() if k in search), None)
    if kind:
        return kind
    staged = any(t.get("stage") is not None for t in trials)
    return next(n for n, c in _SEARCHES.items() if c.staged == staged and c.keyed)


# ------------------------------------------------------------------------------------ arm rules
class ArmRule:
    """How a set of arms runs and which arms stop early. Class attributes are the facts other modules ask."""

    name: ClassVar[str] = ""
    options: ClassVar[frozenset[str]] = frozenset()  # the ``scheduler.*`` options it reads (others are refused)
    decisions: ClassVar[frozenset[str]] = frozenset()  # decision kinds it logs (``--rerun-stopped`` re-opens them)
    every_seed: ClassVar[bool] = True  # every arm gets every seed (racing stops giving seeds)
    takes_subsets: ClassVar[bool] = True  # a subset of arms (``--arm``) may run: it decides nothing across arms

    def __init__(self, sweep: Sweep):
        self.sweep = sweep

    @property
    def spec(self) -> SchedulerSpec:
        return self.sweep.file.scheduler

    @classmethod
    def validate_spec(cls, spec: SchedulerSpec, given: set[str]) -> None:
        """Checks of ``scheduler:`` (``given``: the options set to other than their defaults); ``ValueError``."""
        claimed = sorted(o for o in type(spec).model_fields if any(o in c.options for c in _ARM_RULES.values()))
        for option in claimed:
            if option in given and option not in cls.options:
                users = [n for n, c in _ARM_RULES.items() if option in c.options]
                raise ValueError(f"scheduler.{option} only applies to scheduler name: {users[0]}" if len(users) == 1
                                 else f"scheduler.{option} only applies to {' and '.join(users)}, not {cls.name}")

    @classmethod
    def validate_file(cls, file: SweepFile) -> None:
        """Checks against the rest of the sweep file (its seeds); ``ValueError``."""

    def describe(self, n_arms: int) -> str:
        """What the rule will do, in one line (``--dry-run``)."""
        return f"scheduler: {self.name}"

    def run_arms(self, run: StrategyRun, arms: list[Arm], order: list[Trial]) -> int:
        """Run every seed of ``arms`` (``order``: every trial whose table position counts); return the trials
        skipped as already done."""
        return run.run(self.sweep.trials(arms), order)

    @classmethod
    def rungs(cls, grace: int, reduction_factor: float, max_epochs: int, min_arms: int = 2) -> Any:
        """Where and how the rule stops whole arms inside a Tune run (a ``schedulers.RungRule``); the base
        stops nothing there (no rung)."""
        from rayclf.sweep.schedulers import RungRule

        return RungRule(cls.name, [], reduction_factor, min_arms)

    def rung_rule(self, max_epochs: int) -> Any:
        """The run's rung rule, for trials of up to ``max_epochs`` epochs."""
        s = self.spec
        return self.rungs(s.grace_period, s.reduction_factor, s.max_epochs or max_epochs, s.min_arms)


def register_arm_rule(name: str) -> Callable[[R], R]:
    """Decorator: ``@register_arm_rule("asha")`` on an :class:`ArmRule` subclass."""

    def wrap(cls: R) -> R:
        cls.name = name
        _ARM_RULES[name] = cls
        return cls

    return wrap


def arm_rule_names() -> list[str]:
    _load_builtins()
    return list(_ARM_RULES)


def arm_rule_class(name: str) -> type[ArmRule]:
    return _lookup(_ARM_RULES, name, f"'scheduler.name' = {name!r} is not allowed", arm_rule_names())


def create_arm_rule(sweep: Sweep) -> ArmRule:
    """The sweep's arm rule (``scheduler.name``)."""
    return arm_rule_class(sweep.file.scheduler.name)(sweep)


def rule_decisions() -> frozenset[str]:
    """Every decision kind some arm rule logs (what ``--rerun-stopped`` re-opens)."""
    _load_builtins()
    return frozenset().union(*(c.decisions for c in _ARM_RULES.values()))


def deciders(kind: str) -> list[str]:
    """The arm rules that log decisions of ``kind``."""
    _load_builtins()
    return [n for n, c in _ARM_RULES.items() if kind in c.decisions]


def _load_builtins() -> None:
    import rayclf.sweep.strategies  # noqa: F401  (importing the package registers the built-in strategies)
