"""A sweep file → an explicit list of trials ``(trial_id, arm, seed, config)``.

rayclf expands every search (grid, seeded random, one-factor-at-a-time ablation, greedy stages)
itself, before Ray sees anything, so arms, seeds and trial identities are deterministic: a trial's
id is the hash of the resolved settings that can change what it learns (seed included; ``rayclf.identity``).
Tune then only schedules that list.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from rayclf import identity
from rayclf.config import (
    ConfigError,
    Strict,
    TrialConfig,
    apply_overrides,
    build_config,
    closest,
    load_config,
    parse_override,
    read_yaml,
    validation_message,
)
from rayclf.identity import IDENTITY_VERSION
from rayclf.metrics import metric_mode


# ------------------------------------------------------------------------------------- the file
def check_distributions(params: Mapping[str, Mapping[str, Any]], where: str) -> None:
    """``key: {kind: arg}`` with a known kind and a usable argument (random and bayes take the same)."""
    for key, dist in params.items():
        if len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
            kind = next(iter(dist), None)
            hint = closest(str(kind), DISTRIBUTIONS)
            raise ValueError(f"{where}.params.{key} must be one of {{{', '.join(DISTRIBUTIONS)}: ...}}"
                             + (f"; did you mean '{hint}'?" if hint else ""))
        kind, arg = next(iter(dist.items()))
        if kind == "choice" and (not isinstance(arg, list) or not arg):
            raise ValueError(f"{where}.params.{key}.choice must be a non-empty list")
        if kind != "choice" and (not isinstance(arg, list) or len(arg) != 2 or not arg[0] < arg[1]):
            raise ValueError(f"{where}.params.{key}.{kind} must be [low, high] with low < high")
        if kind == "loguniform" and arg[0] <= 0:
            raise ValueError(f"{where}.params.{key}.loguniform needs low > 0")
        if kind == "randint" and not all(isinstance(a, int) for a in arg):
            raise ValueError(f"{where}.params.{key}.randint needs integer bounds")


class RandomSearch(Strict):
    num_samples: int = Field(..., ge=1, le=100_000)
    seed: int = Field(0, ge=0)
    params: dict[str, dict[str, Any]] = Field(..., description="key: {choice: [..]} | {uniform: [lo, hi]} | ...")

    @model_validator(mode="after")
    def _dists(self) -> RandomSearch:
        check_distributions(self.params, "search.random")
        return self


class BayesSearch(Strict):
    """TPE (Optuna ask/tell) driven by rayclf: proposals in seeded batches, each run with every sweep seed."""

    num_samples: int = Field(..., ge=1, le=10_000, description="proposals in all")
    seed: int = Field(0, ge=0, description="search seed: the same seed and results give the same proposals")
    batch: int = Field(1, ge=1, le=1_000, description="proposals asked at once (run in parallel)")
    startup: int = Field(4, ge=0, le=10_000, description="random proposals before TPE models the results")
    params: dict[str, dict[str, Any]] = Field(..., description="as search.random.params")

    @model_validator(mode="after")
    def _dists(self) -> BayesSearch:
        if not self.params:
            raise ValueError("search.bayes.params needs at least one parameter")
        check_distributions(self.params, "search.bayes")
        return self


DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")


class Ablation(Strict):
    factors: dict[str, Any] = Field(..., description="key: [alternative values] or name: {label: {key: value}}")
    include_baseline: bool = True


class Stage(Strict):
    name: str | None = None
    vary: dict[str, Any] | None = Field(None, description="a grid of factors tried around the current best")
    bayes: BayesSearch | None = Field(None, description="or a Bayesian search around the current best")
    carry: dict[str, Any] | None = Field(None, description="values later stages take whatever this stage's "
                                                           "winner (a report's stated carry-forward choice)")

    @model_validator(mode="after")
    def _one(self) -> Stage:
        if (self.vary is None) == (self.bayes is None):
            raise ValueError(f"stage '{self.name or '?'}' takes one of vary (a grid) or bayes, not "
                             + ("both" if self.vary is not None else "neither"))
        return self


class SearchSpec(Strict):
    """One search kind's section. The built-in kinds are typed fields here; a kind registered elsewhere
    (``rayclf.sweep.strategies.register_search``) is an extra key, typed by its strategy's ``options``."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    grid: dict[str, Any] | None = None
    random: RandomSearch | None = None
    bayes: BayesSearch | None = None
    ablation: Ablation | None = None
    stages: list[Stage] | None = None
    final: dict[str, Any] | None = Field(None, description="stages: re-run the winner with these overrides")
    greedy: bool = Field(False, description="stages: ignore every stage's carry: (each stage hands on its best "
                                            "arm: the pure greedy path)")

    @model_validator(mode="after")
    def _one(self) -> SearchSpec:
        from rayclf.sweep.strategies.registry import search_class, search_names

        names = search_names()
        extra = self.model_extra or {}
        for key in extra:
            if key not in names:  # the message pydantic gives an unknown key, with the registry's kinds allowed
                raise PydanticCustomError("unknown_key", "unknown key {key}",
                                          {"key": key, "allowed": sorted({*names, *type(self).model_fields})})
        for key, value in extra.items():
            extra[key] = _typed(search_class(key).options, value, f"search.{key}")
        kinds = [k for k in names if self.section(k) is not None]
        if len(kinds) > 1:
            raise ValueError(f"search takes one of {', '.join(names[:-1])} or {names[-1]}, "
                             f"not {' and '.join(kinds)}")
        search_class(self.kind).validate_search(self)
        return self

    def section(self, kind: str) -> Any:
        """The file's ``search.<kind>`` (None when absent)."""
        if kind in type(self).model_fields:
            return getattr(self, kind)
        return (self.model_extra or {}).get(kind)

    @property
    def kind(self) -> str:
        from rayclf.sweep.strategies.registry import search_names, unkeyed_search

        return next((k for k in search_names() if self.section(k) is not None), None) or unkeyed_search()


def _typed(options: Any, value: Any, where: str) -> Any:
    """A registered search kind's section validated as its strategy's ``options`` type (as given when None)."""
    if options is None:
        return value
    try:
        return TypeAdapter(options).validate_python(value)
    except ValidationError as exc:
        raise ValueError("; ".join(f"{'.'.join([where, *map(str, e['loc'])])}: {e['msg']}"
                                   for e in exc.errors(include_url=False))) from None


class SchedulerSpec(Strict):
    """How trials stop early. asha / median decide per arm on the mean over its seeds (every seed of a stopped
    arm stops); racing gives arms their seeds in rounds and stops giving seeds to arms a paired test shows
    worse than the current best."""

    name: str = Field("fifo", description="the arm rule (rayclf.sweep.strategies): fifo, asha, median, racing")
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)
    max_epochs: int | None = Field(None, ge=1, description="default: the base config's epochs")
    min_arms: int = Field(2, ge=1, description="median: arms that must have reached an epoch before any stops")
    level: float = Field(0.05, gt=0.0, lt=0.5, description="racing: one-sided significance level of the test")
    test: Literal["ttest", "wilcoxon"] = Field("ttest", description="racing: paired test over matched seeds")
    seeds_per_round: int = Field(1, ge=1, description="racing: seeds each surviving arm gets per round")
    first_round: int = Field(2, ge=1, description="racing: seeds every arm gets before any test (≥ 2 for a test)")

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        from rayclf.sweep.strategies.registry import arm_rule_names

        names = arm_rule_names()
        if name not in names:  # the message a Literal of the names gives
            expected = ", ".join(repr(n) for n in names[:-1]) + f" or {names[-1]!r}"
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return name

    @model_validator(mode="after")
    def _fits(self) -> SchedulerSpec:
        from rayclf.sweep.strategies.registry import arm_rule_class

        fields = type(self).model_fields
        given = {k for k in self.model_fields_set if getattr(self, k) != fields[k].default}  # a dumped file re-loads
        arm_rule_class(self.name).validate_spec(self, given)
        return self


def wilcoxon_pairs(level: float) -> int:
    """The fewest pairs with which the exact one-sided Wilcoxon signed-rank test can give p < ``level``: its
    smallest p over n pairs is 1/2^n (every difference on one side)."""
    n = 1
    while 0.5 ** n >= level:
        n += 1
    return n


class ResourcesSpec(Strict):
    cpus: float = Field(1.0, gt=0, description="CPUs per worker")
    gpus: float = Field(0.0, ge=0, description="GPUs per worker; a fraction packs trials on one GPU")
    num_workers: int = Field(1, ge=1, le=1024, description="data-parallel workers per trial")
    max_concurrent: int | None = Field(None, ge=1, description="default: derived from the cluster")

    @model_validator(mode="after")
    def _fractions(self) -> ResourcesSpec:
        if self.num_workers > 1 and self.gpus not in (0, int(self.gpus)):
            raise ValueError("fractional gpus are only allowed for single-worker trials (num_workers: 1)")
        return self


class WandbSpec(Strict):
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str | None = None
    entity: str | None = None
    tags: list[str] = Field(default_factory=list)
    strict: bool = Field(False, description="online and the W&B server does not answer before training: stop "
                                            "(exit 2) instead of logging offline")


ReportedMetric = Literal["test_accuracy", "metric_best", "metric_final", "best_val_accuracy", "final_val_accuracy"]


class Reported(Strict):
    """A number the study's report states, as data: ``rayclf report`` sets the reproduced value beside it."""

    arm: str = Field(..., description="arm label as the sweep names it: baseline, model=mlp, stage:label, final")
    metric: ReportedMetric = Field("test_accuracy", description="the trial column the number is compared with")
    value: float = Field(..., ge=0.0, le=1.0, description="as a fraction (accuracy 0.8434, not 84.34)")
    source: str = Field(..., min_length=1, description="where the report states it: 'Table 1', 'Fig. 6', 'sec. 2.3'")
    epochs: int | None = Field(None, ge=1, description="the epochs the report's number was measured after (at "
                                                      "most, where it stopped early); the arm must train that many")
    note: str = ""


class SweepFile(Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    metric: Literal["val_accuracy", "val_loss", "train_accuracy", "train_loss"] = "val_accuracy"
    mode: Literal["max", "min"] | None = None
    search: SearchSpec = Field(default_factory=SearchSpec)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    max_failures: int = Field(1, ge=0, le=100, description="retries of a failing trial before it is recorded")
    wandb: WandbSpec = Field(default_factory=WandbSpec)
    reported: list[Reported] = Field(default_factory=list, description="the report's numbers, per arm")
    rank_by: Literal["best", "final"] = Field("best", description="a trial's value for tables and winners: its "
                                                                 "best epoch's metric, or its final epoch's")
    cache: str | None = Field(None, description="a trial cache (folder or s3:// prefix): completed trials found "
                                                "there by trial id are reused, not trained; trained ones are added")

    @model_validator(mode="after")
    def _mode(self) -> SweepFile:
        if self.mode is None:
            self.mode = metric_mode(self.metric)
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be distinct")
        from rayclf.sweep.strategies.registry import arm_rule_class, search_class

        arm_rule_class(self.scheduler.name).validate_file(self)
        search_class(self.search.kind).validate_file(self)
        return self


# ------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Arm:
    """One configuration of the study (before seeds): a label and the overrides it applies."""

    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    stage: int | None = None
    aliases: tuple[str, ...] = ()  # other labels of the file that resolve to this very config (one arm)


@dataclass(frozen=True)
class Trial:
    trial_id: str
    arm: Arm
    seed: int
    config: TrialConfig
    arm_id: str  # the identity of the trial's arm (its config with the seed at its default), not its label


@dataclass
class Sweep:
    """A validated sweep: the file's settings, the resolved base config and its arms."""

    file: SweepFile
    base: dict[str, Any]
    source: Path | None = None
    identity_version: int = IDENTITY_VERSION  # the rule ids are computed by: the sweep directory's (rayclf.identity)

    @property
    def name(self) -> str:
        return self.file.name

    def arms(self, base_overrides: Mapping[str, Any] | None = None, stage: int | None = None) -> list[Arm]:
        """The arms of a non-staged search, or of one stage (around ``base_overrides``): one per distinct config,
        under its first label (a level that repeats the baseline's value is the baseline, listed as its alias)."""
        return self.unique(self._listed_arms(base_overrides, stage))

    def unique(self, arms: list[Arm]) -> list[Arm]:
        """Arms that resolve to the same config (same arm id) are one arm: the first label, the others aliases."""
        first: dict[str, int] = {}
        out: list[Arm] = []
        for arm in arms:
            aid = self.arm_id(arm)
            if aid in first:
                kept = out[first[aid]]
                out[first[aid]] = replace(kept, aliases=(*kept.aliases, arm.label, *arm.aliases))
            else:
                first[aid] = len(out)
                out.append(arm)
        return out

    def _listed_arms(self, base_overrides: Mapping[str, Any] | None, stage: int | None) -> list[Arm]:
        from rayclf.sweep.strategies.registry import create_search

        return create_search(self).arms(base_overrides, stage)

    def trials(self, arms: list[Arm]) -> list[Trial]:
        """Arms × seeds, each validated and content-addressed."""
        return [self.trial(arm, seed) for arm in arms for seed in self.file.seeds]

    def trial(self, arm: Arm, seed: int) -> Trial:
        cfg = self.config_for(arm, seed)
        return Trial(self.trial_id(cfg), arm, seed, cfg, self.config_arm_id(cfg))

    def trial_id(self, cfg: TrialConfig) -> str:
        """A trial's id under this sweep's identity rule and world size (``rayclf.identity``)."""
        return identity.trial_id(cfg, self.file.resources.num_workers, self.identity_version)

    def config_arm_id(self, cfg: TrialConfig) -> str:
        return identity.arm_id(cfg, self.file.resources.num_workers, self.identity_version)

    def arm_id(self, arm: Arm) -> str:
        """The arm's identity: the content address of its config with the seed at its default."""
        return self.config_arm_id(self.config_for(arm, TrialConfig.model_fields["seed"].default))

    def arm_identity(self, arm: Arm) -> dict[str, Any]:
        """What the arm id hashes (``rayclf.identity.identity_values``, seed left out): logged beside a decision,
        so a replay that resolves the arm to another id can name the setting that changed."""
        cfg = self.config_for(arm, TrialConfig.model_fields["seed"].default)
        ident = identity.identity_values(cfg, self.file.resources.num_workers, self.identity_version)
        return {k: v for k, v in ident.items() if k != "seed"}

    def config_for(self, arm: Arm, seed: int) -> TrialConfig:
        raw = apply_overrides(self.base, {**arm.overrides, "seed": seed})
        try:
            return build_config(raw)
        except ConfigError as exc:
            raise ConfigError(f"sweep '{self.name}', arm '{arm.label}': {exc}") from None

    def carried_after(self, stage: int, winner: Mapping[str, Any]) -> dict[str, Any]:
        """What stage ``stage`` hands on: its winner's overrides, with the stage's pinned ``carry`` values."""
        return {**winner, **self.stage_carry(stage)}

    def stage_carry(self, stage: int) -> dict[str, Any]:
        """A stage's pinned ``carry`` values; none under ``search.greedy`` (its best arm hands on everything)."""
        search = self.file.search
        return {} if search.greedy else dict(search.stages[stage].carry or {})  # type: ignore[index]

    def stage_count(self) -> int:
        return len(self.file.search.stages or [])

    def stage_label(self, stage: int) -> str:
        return self.file.search.stages[stage].name or f"stage{stage + 1}"  # type: ignore[index]

    def bayes_stage(self, stage: int, carried: Mapping[str, Any]) -> Sweep:
        """A bayes stage as a bayes search of its own, around the carried winner: its base holds the carried
        overrides, so a proposal's trials are the very trials (same content address) the stage runs."""
        spec = self.file.search.stages[stage].bayes  # type: ignore[index]
        file = self.file.model_copy(update={"search": SearchSpec(bayes=spec)})
        return Sweep(file, apply_overrides(self.base, dict(carried)), self.source, self.identity_version)

    def place(self, arms: list[Arm], stage: int, carried: Mapping[str, Any]) -> list[Arm]:
        """A bayes stage's proposals as arms of the staged sweep: stage label, stage index, carried values."""
        return [Arm(f"{self.stage_label(stage)}:{a.label}", {**carried, **a.overrides}, stage) for a in arms]


def alias_note(arm: Arm) -> str:
    """``lr=0.05 is the baseline's config``: how --dry-run and the summary name an arm listed twice."""
    return f"{', '.join(arm.aliases)} {'is' if len(arm.aliases) == 1 else 'are'} {arm.label}'s config"


# ------------------------------------------------------------------------------------- expansion
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)  # labels of distinct values never coincide
    if isinstance(value, list):
        return "/".join(_fmt(v) for v in value)
    return str(value)


def short_names(keys: list[str]) -> dict[str, str]:
    """Shortest unambiguous dotted suffix of each key: ``model.dropout`` → ``dropout``."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[-n:])
            if sum(1 for k in keys if k == name or k.endswith("." + name)) == 1:
                break
        out[key] = name
    return out


def factor_levels(key: str, spec: Any) -> list[tuple[str, dict[str, Any]]]:
    """A factor's levels as (label, overrides). Plain: ``key: [v1, v2]``; named: ``name: {label: {k: v}}``."""
    if isinstance(spec, Mapping):
        levels = []
        for label, overrides in spec.items():
            if not isinstance(overrides, Mapping):
                raise ConfigError(f"factor '{key}': level '{label}' must map config keys to values, "
                                  f"got {overrides!r}.")
            levels.append((str(label), dict(overrides)))
        return levels
    if not isinstance(spec, list) or not spec:
        raise ConfigError(f"factor '{key}' must be a non-empty list of values, or a mapping of named levels; "
                          f"got {spec!r}.")
    return [(None, {key: v}) for v in spec]  # type: ignore[misc]


def _label(key: str, short: str, level_label: str | None, overrides: dict[str, Any]) -> str:
    if level_label is not None:
        return f"{short}={level_label}"
    return f"{short}={_fmt(overrides[key])}"


def grid_arms(grid: Mapping[str, Any]) -> list[Arm]:
    """Cartesian product of every factor's levels."""
    if not grid:
        return [Arm("baseline", {})]
    keys = list(grid)
    shorts = short_names(keys)
    per_key = [[(_label(k, shorts[k], lab, ov), ov) for lab, ov in factor_levels(k, grid[k])] for k in keys]
    arms = []
    for combo in itertools.product(*per_key):
        overrides: dict[str, Any] = {}
        for _, ov in combo:
            overrides.update(ov)
        arms.append(Arm(",".join(label for label, _ in combo), overrides))
    return arms


def ablation_arms(ab: Ablation) -> list[Arm]:
    """The baseline, then one arm per alternative value of each factor (everything else at baseline)."""
    keys = list(ab.factors)
    shorts = short_names(keys)
    arms = [Arm("baseline", {})] if ab.include_baseline else []
    for k in keys:
        arms += [Arm(_label(k, shorts[k], lab, ov), ov) for lab, ov in factor_levels(k, ab.factors[k])]
    return arms


def random_arms(rs: RandomSearch) -> list[Arm]:
    """``num_samples`` seeded draws: the same file always gives the same arms."""
    rng = np.random.default_rng(rs.seed)
    arms = []
    for i in range(rs.num_samples):
        overrides = {}
        for key, dist in rs.params.items():
            kind, arg = next(iter(dist.items()))
            if kind == "choice":
                value = arg[int(rng.integers(len(arg)))]
            elif kind == "uniform":
                value = float(rng.uniform(arg[0], arg[1]))
            elif kind == "loguniform":
                value = float(math.exp(rng.uniform(math.log(arg[0]), math.log(arg[1]))))
            else:
                value = int(rng.integers(arg[0], arg[1]))
            overrides[key] = value
        arms.append(Arm(f"sample-{i}", overrides))  # never padded to num_samples: a label must not drift
    return arms


# ------------------------------------------------------------------------------------- loading
def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def resolve_base(base: Mapping[str, Any], source: Path | None, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """``base: {extends: other.yaml, ...}``: the other file's config (or sweep base), overlaid."""
    base = dict(base)
    parent = base.pop("extends", None)
    if parent is None:
        return base
    path = (source.parent if source else Path.cwd()) / parent
    if path.resolve() in seen:
        raise ConfigError(f"base.extends loops back to {path}.")
    data = read_yaml(path)
    inherited = data["base"] if "base" in data and isinstance(data["base"], dict) else data
    return deep_merge(resolve_base(inherited, path, (*seen, path.resolve())), base)


def split_overrides(overrides: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--set`` items for the sweep file itself (``resources.gpus=0``, ``seeds=[0,1,2]``) and for its base
    config (everything else; ``base.`` may be spelled out)."""
    file_keys = set(SweepFile.model_fields) - {"base"}
    to_file, to_base = {}, {}
    for item in overrides:
        key, value = parse_override(item)
        head, _, rest = key.partition(".")
        if head in file_keys:
            to_file[key] = value
        else:
            to_base[rest if head == "base" and rest else key] = value
    return to_file, to_base


def parse_sweep(data: Mapping[str, Any], source: Path | None = None, overrides: tuple[str, ...] = ()) -> Sweep:
    """Validate a sweep mapping: the file's own schema, the base config, and every arm's config."""
    file_over, base_over = split_overrides(overrides)
    try:
        file = SweepFile.model_validate(apply_overrides(data, file_over))
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, SweepFile)) from None
    base = resolve_base(file.base, source)
    base = apply_overrides(base, base_over)
    try:
        build_config(base, prefix="base.")
    except ConfigError as exc:
        raise ConfigError(f"sweep '{file.name}': {exc}") from None
    sweep = Sweep(file, base, source)
    from rayclf.sweep.strategies.registry import create_search

    create_search(sweep).check()
    check_reported(sweep)
    return sweep


def arm_labels(sweep: Sweep) -> list[str] | None:
    """Every arm label the sweep can produce (stage labels do not depend on earlier winners); None when arms
    are proposed as results come in (bayes), so no list exists before the sweep runs."""
    from rayclf.sweep.strategies.registry import create_search

    return create_search(sweep).labels()


def check_reported(sweep: Sweep) -> None:
    """Each ``reported`` entry names an arm the sweep runs (a typo would silently compare with nothing)."""
    labels = arm_labels(sweep) if sweep.file.reported else None
    if labels is None:
        return
    for i, rep in enumerate(sweep.file.reported):
        if rep.arm not in labels:
            hint = closest(rep.arm, labels)
            raise ConfigError(f"sweep '{sweep.name}': 'reported.{i}.arm' = {rep.arm!r} is not an arm of this sweep; "
                              f"arms: {', '.join(labels[:12])}{' …' if len(labels) > 12 else ''}."
                              + (f" Did you mean '{hint}'?" if hint else ""))


def load_sweep(path: str | Path, overrides: tuple[str, ...] = ()) -> Sweep:
    path = Path(path)
    return parse_sweep(read_yaml(path), path, overrides)


def is_sweep_file(data: Mapping[str, Any]) -> bool:
    return "name" in data and ("search" in data or "base" in data)


def load_trial_config(path: str | Path | None, overrides: tuple[str, ...] = ()) -> TrialConfig:
    """A trial config file, or a sweep file's base config (its first seed unless ``--set seed=``)."""
    if path is None or not is_sweep_file(data := read_yaml(path)):
        return load_config(path, overrides)
    sweep = parse_sweep(data, Path(path), overrides)
    if "seed" in split_overrides(overrides)[1]:
        return build_config(sweep.base)
    return sweep.config_for(Arm("baseline", {}), sweep.file.seeds[0])


def describe_file(path: str | Path) -> str:
    """One line for ``rayclf validate``: a sweep's arms and trials, or a trial config's model."""
    path = Path(path)
    data = read_yaml(path)
    if is_sweep_file(data):
        from rayclf.sweep.strategies.registry import create_search

        return create_search(parse_sweep(data, path)).describe()
    cfg = build_config(data)
    return f"trial config: model {cfg.model.name}, data {cfg.data.name}, {cfg.train.epochs} epochs"


def dump_sweep(sweep: Sweep) -> str:
    """The resolved sweep file (base inlined) as written into the sweep directory."""
    data = sweep.file.model_dump(mode="json", exclude_none=True)
    data["base"] = sweep.base
    return yaml.safe_dump(data, sort_keys=False)

