"""Bayesian search: Optuna's TPE through its ask/tell interface, driven by rayclf, every proposal on all seeds.

Ray Tune's Optuna searcher maps one Tune trial to one Optuna trial, so it cannot score a proposal by the mean
over seeds. Here rayclf asks Optuna for proposals in batches (``search.bayes.batch`` at a time, run in
parallel), turns each into an arm (``bayes-007``) whose trials — one per sweep seed — are content-addressed
like any other, runs them with ``run_trials``, and tells Optuna the arm's value under the aggregation
module's ranking rule (the mean over seeds; arms stopped early are told as pruned at the epoch they reached).

Reproducibility and resume: the sampler of batch k is seeded from (search seed, k) and told every earlier
proposal's result, in order, from the results store. So a fixed search seed gives the same sequence of
proposals, and ``--resume`` rebuilds the sampler from the finished trials and continues the sequence instead
of starting over (finished trials are skipped as usual; their results are told back).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rayclf.aggregate import ArmRow, arm_table, value_key
from rayclf.sweep.spec import Arm, Sweep

PREFIX = "bayes-"


def distributions(params: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``search.bayes.params`` (the kinds ``random`` takes) as Optuna distributions. Choices that are not
    scalars (lists such as model.widths) are offered as their JSON text."""
    import optuna.distributions as od

    out: dict[str, Any] = {}
    for key, dist in params.items():
        kind, arg = next(iter(dist.items()))
        if kind == "choice":
            scalar = all(v is None or isinstance(v, bool | int | float | str) for v in arg)
            out[key] = od.CategoricalDistribution(arg if scalar else [json.dumps(v) for v in arg])
        elif kind == "randint":  # [low, high): as random search draws it
            out[key] = od.IntDistribution(int(arg[0]), int(arg[1]) - 1)
        else:
            out[key] = od.FloatDistribution(float(arg[0]), float(arg[1]), log=kind == "loguniform")
    return out


def _decode(params: Mapping[str, Any], spec: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Optuna's values → config overrides (JSON-text choices back to their lists)."""
    out = {}
    for key, value in params.items():
        kind, arg = next(iter(spec[key].items()))
        if kind == "choice" and isinstance(value, str) and value not in arg:
            value = json.loads(value)
        out[key] = value
    return out


def _encode(overrides: Mapping[str, Any], dists: Mapping[str, Any]) -> dict[str, Any]:
    """Config overrides → Optuna's values (the inverse of ``_decode``)."""
    out = {}
    for key, dist in dists.items():
        value = overrides[key]
        choices = getattr(dist, "choices", None)
        out[key] = json.dumps(value) if choices is not None and value not in choices else value
    return out


def check_space(sweep: Sweep) -> None:
    """Every parameter names a config key and both ends of its range give a valid config (a clean error
    before anything runs)."""
    spec = sweep.file.search.bayes
    assert spec is not None
    for end in (0, -1):
        overrides = {}
        for key, dist in spec.params.items():
            kind, arg = next(iter(dist.items()))
            overrides[key] = arg[end] if kind != "randint" else int(arg[end]) - (1 if end == -1 else 0)
        sweep.trials([Arm(f"{PREFIX}check", overrides)])


def arm_label(i: int, total: int) -> str:
    return f"{PREFIX}{i:0{len(str(max(total - 1, 1)))}d}"


def _batch_seed(seed: int, batch: int) -> int:
    return int(np.random.SeedSequence([seed, batch]).generate_state(1)[0])


def told_study(sweep: Sweep, told: Sequence[tuple[Arm, ArmRow | None]], seed: int) -> Any:
    """A fresh in-memory study, sampler seeded with ``seed``, told every earlier proposal's result in order."""
    import optuna
    from optuna.trial import TrialState, create_trial

    spec = sweep.file.search.bayes
    assert spec is not None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.startup, constant_liar=True)
    study = optuna.create_study(direction="maximize" if sweep.file.mode == "max" else "minimize", sampler=sampler)
    dists = distributions(spec.params)
    for arm, row in told:
        params = _encode(arm.overrides, dists)
        if row is None or row.mean is None:
            study.add_trial(create_trial(params=params, distributions=dists, state=TrialState.FAIL))
        elif row.stopped_at is not None:
            study.add_trial(create_trial(params=params, distributions=dists, state=TrialState.PRUNED,
                                         intermediate_values={row.stopped_at: row.mean}))
        else:
            study.add_trial(create_trial(params=params, distributions=dists, value=row.mean))
    return study


def propose(sweep: Sweep, told: Sequence[tuple[Arm, ArmRow | None]], count: int) -> list[Arm]:
    """The next ``count`` proposals after ``told`` (one batch): a pure function of the search seed, the
    batch's position and the results told."""
    spec = sweep.file.search.bayes
    assert spec is not None
    start = len(told)
    study = told_study(sweep, told, _batch_seed(spec.seed, start // spec.batch))
    dists = distributions(spec.params)
    arms = []
    for i in range(count):
        trial = study.ask(dists)
        arms.append(Arm(arm_label(start + i, spec.num_samples), _decode(trial.params, spec.params)))
    return arms


def results_of(sweep: Sweep, arms: Sequence[Arm], trials: Sequence[Mapping[str, Any]]) -> list[ArmRow | None]:
    """Each proposal's ArmRow under the ranking rule, from the stored trial rows (matched by trial id, so a
    repeated proposal reads the rows its twin wrote)."""
    by_id = {r["trial_id"]: r for r in trials}
    out: list[ArmRow | None] = []
    for arm in arms:
        rows = [{**by_id[t.trial_id], "arm": arm.label} for t in sweep.trials([arm]) if t.trial_id in by_id]
        stats = arm_table(rows, sweep.file.mode or "max", value_key(sweep.file.rank_by)) if rows else []
        out.append(stats[0] if stats else None)
    return out


RunArms = Callable[[list[Arm], list[Arm]], int]


def run_bayes(sweep: Sweep, run_arms: RunArms, stored: Callable[[], list[dict[str, Any]]],
              echo: Callable[[str], None]) -> tuple[int, list[Arm]]:
    """Ask, run (all seeds), tell, batch after batch, until ``num_samples`` proposals; return trials skipped as
    already done and every proposal. ``run_arms(batch, every proposal so far)`` runs a batch's arms with the
    sweep's scheduler; ``stored`` reads the store's trial rows."""
    spec = sweep.file.search.bayes
    assert spec is not None
    arms: list[Arm] = []
    skipped = 0
    while len(arms) < spec.num_samples:
        told = list(zip(arms, results_of(sweep, arms, stored()), strict=True))
        batch = propose(sweep, told, min(spec.batch, spec.num_samples - len(arms)))
        arms += batch
        skipped += run_arms(batch, arms)
        best = best_so_far(results_of(sweep, arms, stored()), sweep.file.mode or "max")
        echo(f"bayes: {len(arms)}/{spec.num_samples} proposals" + (f", best mean {best:.4f}" if best else ""))
    return skipped, arms


def best_so_far(rows: Sequence[ArmRow | None], mode: str) -> float | None:
    """The best mean among proposals that trained to the end (the ranking rule's top tier)."""
    values = [r.mean for r in rows if r is not None and r.mean is not None and r.stopped_at is None
              and math.isfinite(r.mean)]
    if not values:
        return None
    return max(values) if mode == "max" else min(values)
