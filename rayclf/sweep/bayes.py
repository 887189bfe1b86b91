"""Bayesian search: Optuna's TPE through its ask/tell interface, driven by rayclf, every proposal on all seeds.

Ray Tune's Optuna searcher maps one Tune trial to one Optuna trial, so it cannot score a proposal by the mean
over seeds. Here rayclf asks Optuna for proposals in batches (``search.bayes.batch`` at a time, run in
parallel), turns each into an arm (``bayes-007``) whose trials — one per sweep seed — are content-addressed
like any other, runs them with ``run_trials``, and tells Optuna the arm's value under the aggregation
module's ranking rule (the mean over seeds; arms stopped early are told as pruned at the epoch they reached).

Reproducibility and resume: the sampler of batch k is seeded from (search seed, k) and told every earlier
proposal's result, in order, from the results store. So a fixed search seed gives the same sequence of
proposals. Every proposal (index, config, label) is logged in the decision log before it runs, and
``--resume`` replays the logged proposals first, as logged: proposal k is the same config under the same label
on every resume, whatever a result changed since (a failed seed re-run, ``--rerun-stopped``, a seed added).
Optuna is asked only for the indexes after the last logged one, told the stored results of all earlier
proposals, so new proposals continue the sequence. Labels are display names of logged indexes; two proposals
that resolve to one config are one arm (it runs once, under the first label).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rayclf.aggregate import ArmRow, arm_table, value_key
from rayclf.config import UserError
from rayclf.sweep.decisions import PROPOSAL, Decision, DecisionLog, changed_settings
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


def decode(params: Mapping[str, Any], spec: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Optuna's values → config overrides (JSON-text choices back to their lists)."""
    out = {}
    for key, value in params.items():
        kind, arg = next(iter(spec[key].items()))
        if kind == "choice" and isinstance(value, str) and value not in arg:
            value = json.loads(value)
        out[key] = value
    return out


def encode(overrides: Mapping[str, Any], dists: Mapping[str, Any]) -> dict[str, Any]:
    """Config overrides → Optuna's values (the inverse of ``decode``)."""
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
        params = encode(arm.overrides, dists)
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
        arms.append(Arm(arm_label(start + i, spec.num_samples), decode(trial.params, spec.params)))
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


def proposal_key(stage: int | None, index: int) -> str:
    """The decision-log key of proposal ``index`` (``/3`` in a bayes search, ``1/3`` in stage 1's)."""
    return f"{'' if stage is None else stage}/{index}"


def logged_proposals(sweep: Sweep, log: DecisionLog, stage: int | None) -> list[Arm]:
    """The proposals already logged for this search, in index order (up to ``num_samples``, without gaps), each
    under the label it was logged with."""
    spec = sweep.file.search.bayes
    assert spec is not None
    out = []
    for index in range(spec.num_samples):
        d = log.get(PROPOSAL, proposal_key(stage, index))
        if d is None:
            break
        out.append(Arm(d.label, dict(d.detail["overrides"])))
    return out


def _in_space(value: Any, dist: Mapping[str, Any]) -> bool:
    """Whether ``value`` is one the distribution (a ``search.bayes.params`` entry) can propose."""
    kind, arg = next(iter(dist.items()))
    if kind == "choice":
        return value in arg
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return arg[0] <= value < arg[1] if kind == "randint" else arg[0] <= value <= arg[1]


def check_proposals(sweep: Sweep, log: DecisionLog, stage: int | None, stage_label: str | None = None) -> None:
    """Refuse a resume under which a logged proposal could not have been made, or would not be the arm it was:
    a parameter added or removed, a value now outside its range, (for proposals TPE chose from results) another
    ``rank_by``, or a config that resolves to another arm id (an edit of the base or of a carried value).
    Called before anything of the search trains (a staged sweep's, before any stage trains: ``stage_label``
    names the stage ``--redecide`` re-opens)."""
    spec = sweep.file.search.bayes
    assert spec is not None
    where = "search.bayes" if stage is None else f"search.stages.{stage}.bayes"
    key = value_key(sweep.file.rank_by)
    for d in (log.get(PROPOSAL, proposal_key(stage, i)) for i in range(spec.num_samples)):
        if d is None:
            return
        o, index = d.detail["overrides"], d.detail["index"]
        bad = next((k for k in o if k in spec.params and not _in_space(o[k], spec.params[k])), None)
        if set(o) != set(spec.params):
            problem = f"over {', '.join(sorted(o))}; {where}.params now has {', '.join(sorted(spec.params))}"
        elif bad is not None:
            problem = f"with {bad} = {o[bad]!r}, outside {where}.params.{bad} = {spec.params[bad]} now"
        elif index >= spec.startup and d.detail.get("value", key) != key:
            problem = f"from results ranked by {d.detail['value']}; rank_by now ranks by {key}"
        elif d.arm_id and sweep.arm_id(arm := Arm(d.label, dict(o))) != d.arm_id:
            raise UserError(_changed_arm(sweep, d, arm, stage_label))
        else:
            continue
        raise UserError(f"--resume: bayes proposal {index} ({d.label}) was made {problem}. Restore the file's "
                        "setting, or run the search in a new --out.")


def _changed_arm(sweep: Sweep, d: Decision, arm: Arm, stage_label: str | None) -> str:
    """A logged proposal whose config the file now resolves to another arm: name the setting and the way out."""
    then = d.detail.get("config")
    change = (changed_settings(then, sweep.arm_identity(arm)) if isinstance(then, dict)
              else "a setting of the base config")
    way = (f"pass --redecide {stage_label} to propose again from the stored results" if stage_label
           else "run the search in a new --out")
    where = f"stage {stage_label}'s " if stage_label else ""
    return (f"--resume: {where}bayes proposal {d.detail['index']} ({d.label}) was made and trained as arm {d.arm_id}; "
            f"the file now resolves it to another arm (changed: {change}). Nothing was trained. Undo the edit, "
            f"or {way}.")


def _log_batch(sweep: Sweep, log: DecisionLog, stage: int | None, start: int, batch: list[Arm]) -> None:
    """Log each new proposal (index, config) before it runs: on resume it is the same config, same label."""
    for k, arm in enumerate(batch):
        detail = {"index": start + k, "overrides": arm.overrides, "value": value_key(sweep.file.rank_by),
                  "config": sweep.arm_identity(arm)}
        log.record(Decision(PROPOSAL, proposal_key(stage, start + k), sweep.arm_id(arm), arm.label, stage,
                            len(sweep.file.seeds), detail))


def next_batch(sweep: Sweep, log: DecisionLog, stage: int | None, replay: list[Arm], proposals: list[Arm],
               stored: Callable[[], list[dict[str, Any]]]) -> list[Arm]:
    """The next batch: logged proposals first (as logged, whatever the results say now), then Optuna's, asked
    with every earlier proposal's stored result told in index order, so the sequence continues."""
    spec = sweep.file.search.bayes
    assert spec is not None
    start, count = len(proposals), min(spec.batch, spec.num_samples - len(proposals))
    if start < len(replay):
        return replay[start:start + count]
    told = list(zip(proposals, results_of(sweep, proposals, stored()), strict=True))
    batch = propose(sweep, told, count)
    _log_batch(sweep, log, stage, start, batch)
    return batch


RunArms = Callable[[list[Arm], list[Arm]], int]


def run_bayes(sweep: Sweep, run_arms: RunArms, stored: Callable[[], list[dict[str, Any]]],
              echo: Callable[[str], None], log: DecisionLog, stage: int | None = None) -> tuple[int, list[Arm]]:
    """Ask, run (all seeds), tell, batch after batch, until ``num_samples`` proposals; return trials skipped as
    already done and the distinct arms proposed (first label kept). ``run_arms(batch, every arm so far)`` runs
    a batch's new arms with the sweep's scheduler (raising ``SweepInterrupted`` on Ctrl-C, before any further
    proposal); ``stored`` reads the store's trial rows; ``log`` keeps proposals across resumes (``stage``: the
    stage of a bayes stage). A proposal whose config an earlier one already has is that arm: it runs once."""
    spec = sweep.file.search.bayes
    assert spec is not None
    check_proposals(sweep, log, stage)
    replay = logged_proposals(sweep, log, stage)
    proposals: list[Arm] = []
    arms: dict[str, Arm] = {}
    skipped = 0
    while len(proposals) < spec.num_samples:
        batch = next_batch(sweep, log, stage, replay, proposals, stored)
        proposals += batch
        new = [a for a in batch if arms.setdefault(sweep.arm_id(a), a) is a]
        if new:
            skipped += run_arms(new, list(arms.values()))
        best = best_so_far(results_of(sweep, list(arms.values()), stored()), sweep.file.mode or "max")
        shown = f", best mean {best:.4f}" if best is not None else ""
        echo(f"bayes: {len(proposals)}/{spec.num_samples} proposals{shown}")
    return skipped, list(arms.values())


def best_so_far(rows: Sequence[ArmRow | None], mode: str) -> float | None:
    """The best mean among proposals that trained to the end (the ranking rule's top tier)."""
    values = [r.mean for r in rows if r is not None and r.mean is not None and r.stopped_at is None
              and math.isfinite(r.mean)]
    if not values:
        return None
    return max(values) if mode == "max" else min(values)
