"""Issue 20, racing and bayes: decisions by arm id, logged before they act, replayed on resume; sound racing.

Everything here runs on a fake trial runner (no Ray): run_trials' contract (finished trials are skipped, one
row per trial) with values from a table, so each test states exactly what the strategy saw.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from rayclf.config import ConfigError
from rayclf.sweep.bayes import run_bayes
from rayclf.sweep.decisions import ELIMINATE, PROPOSAL, DecisionLog
from rayclf.sweep.interrupt import SweepInterrupted
from rayclf.sweep.racing import one_sided_p, run_racing
from rayclf.sweep.spec import Sweep, Trial, parse_sweep

from .conftest import tiny

Value = Callable[[dict[str, Any], int], tuple[float, float]]  # (overrides, seed) -> (metric_best, metric_final)


class FakeRunner:
    """Trains nothing: a trial's row gets the table's values. ``rows`` (trial id → row) is the results store,
    shared by the runs of one sweep directory; ``interrupt_after`` trials, a round is cut short (Ctrl-C)."""

    def __init__(self, sweep: Sweep, value: Value, rows: dict[str, dict[str, Any]] | None = None,
                 interrupt_after: int | None = None):
        self.sweep, self.value, self.rows, self.interrupt_after = sweep, value, {} if rows is None else rows, None
        self.interrupt_after = interrupt_after
        self.ran: list[Trial] = []
        self.recorded: list[Trial] = []
        self.messages: list[str] = []

    def _row(self, t: Trial, status: str, best: float | None, final: float | None, reason: str = "") -> dict:
        return {"trial_id": t.trial_id, "arm": t.arm.label, "seed": t.seed, "status": status, "reason": reason,
                "epochs": 2 if best is not None else 0, "metric_best": best, "metric_final": final,
                "test_accuracy": None, "stage": t.arm.stage, "arm_id": t.arm_id}

    def run(self, trials: list[Trial]) -> int:
        todo = [t for t in trials if t.trial_id not in self.rows]
        for t in todo:
            if self.interrupt_after is not None and len(self.ran) >= self.interrupt_after:
                raise SweepInterrupted()
            self.ran.append(t)
            self.rows[t.trial_id] = self._row(t, "completed", *self.value(t.arm.overrides, t.seed))
        return len(trials) - len(todo)

    def record(self, trials: list[Trial], reason: str) -> None:  # as record_unstarted: finished rows stay
        for t in trials:
            if t.trial_id not in self.rows:
                self.recorded.append(t)
                self.rows[t.trial_id] = self._row(t, "eliminated", None, None, reason)

    def stored(self) -> list[dict[str, Any]]:
        return list(self.rows.values())

    def race(self, log: DecisionLog, rerun_stopped: bool = False) -> int:
        return run_racing(self.sweep, self.sweep.arms(), self.run, self.record, self.stored, self.messages.append,
                          log, rerun_stopped)


def racing_sweep(lrs: list[float], seeds: list[int], metric: str = "val_accuracy", rank_by: str = "best",
                 **scheduler: Any) -> Sweep:
    return parse_sweep({"name": "r", "base": tiny(), "metric": metric, "seeds": seeds, "rank_by": rank_by,
                        "search": {"grid": {"optim.lr": lrs}}, "scheduler": {"name": "racing", **scheduler}})


def seeds_of(trials: list[Trial], label: str) -> list[int]:
    return sorted(t.seed for t in trials if t.arm.label == label)


# ----------------------------------------------------------------------------------------------- racing
# an arm whose best epoch is high but whose last epoch collapses, one that holds its value, one tied with it
PEAKY = ([0.95, 0.94, 0.96, 0.95], [0.60, 0.62, 0.58, 0.61])
STEADY = ([0.85, 0.86, 0.84, 0.85], [0.84, 0.85, 0.83, 0.85])
CLOSE = ([0.84, 0.87, 0.83, 0.86], [0.83, 0.86, 0.82, 0.86])


@pytest.mark.parametrize("metric", ["val_accuracy", "val_loss"])
def test_racing_ranks_by_rank_by_and_logs_each_elimination_before_its_rows(tmp_path, metric):
    """rank_by: final — the arm that collapses at its last epoch is the one eliminated, whatever its best epoch
    says; with a loss (mode min) the same race gives the same decision. The decision is on disk before the
    eliminated rows are written."""
    sweep = racing_sweep([0.1, 0.2, 0.3], [0, 1, 2, 3], metric, rank_by="final")
    table = {0.1: PEAKY, 0.2: STEADY, 0.3: CLOSE}
    loss = metric == "val_loss"

    def value(o: dict[str, Any], s: int) -> tuple[float, float]:
        best, final = table[o["optim.lr"]][0][s], table[o["optim.lr"]][1][s]
        return (1 - best, 1 - final) if loss else (best, final)

    runner, log = FakeRunner(sweep, value), DecisionLog(str(tmp_path))
    peaky, steady = (sweep.arm_id(a) for a in sweep.arms()[:2])
    on_disk_first = []
    record = runner.record

    def checked_record(trials: list[Trial], reason: str) -> None:
        on_disk_first.append(DecisionLog(str(tmp_path)).get(ELIMINATE, trials[0].arm_id) is not None)
        record(trials, reason)

    runner.record = checked_record  # type: ignore[method-assign]
    runner.race(log)
    assert seeds_of(runner.ran, "lr=0.1") == [0, 1] and seeds_of(runner.recorded, "lr=0.1") == [2, 3]
    assert seeds_of(runner.ran, "lr=0.2") == seeds_of(runner.ran, "lr=0.3") == [0, 1, 2, 3]
    assert on_disk_first == [True]
    (d,) = DecisionLog(str(tmp_path)).of_kind(ELIMINATE)
    assert d.key == d.arm_id == peaky and d.label == "lr=0.1" and d.n_seeds == 2
    assert d.detail["round"] == 1 and d.detail["test"] == "ttest" and d.detail["p"] < d.detail["level"] == 0.05
    assert d.detail["best_arm_id"] == steady and d.detail["seeds"] == d.detail["seeds_run"] == [0, 1]
    assert d.detail["values"] == [value({"optim.lr": 0.1}, s)[1] for s in (0, 1)]  # the final epochs compared
    assert d.detail["value"] == "metric_final"
    reasons = {r["reason"] for r in runner.rows.values() if r["status"] == "eliminated"}
    assert reasons == {d.detail["reason"]} and "vs lr=0.2" in d.detail["reason"]


GOOD, BAD = [0.90, 0.80, 0.85, 0.83, 0.86], [0.40, 0.32, 0.35, 0.37, 0.30]


def test_racing_replays_eliminations_on_resume_and_a_new_seed_of_an_eliminated_arm_is_recorded_eliminated(tmp_path):
    sweep = racing_sweep([0.1, 0.001], [0, 1, 2, 3])
    value: Value = lambda o, s: ((GOOD if o["optim.lr"] == 0.1 else BAD)[s],) * 2  # noqa: E731
    first = FakeRunner(sweep, value, interrupt_after=3)
    with pytest.raises(SweepInterrupted):  # Ctrl-C in round 1: no decision on a partial round
        first.race(DecisionLog(str(tmp_path)))
    assert DecisionLog(str(tmp_path)).decisions == [] and first.recorded == []

    done = FakeRunner(sweep, value, first.rows)
    done.race(DecisionLog(str(tmp_path)))
    (logged,) = DecisionLog(str(tmp_path)).of_kind(ELIMINATE)
    assert logged.label == "lr=0.001" and seeds_of(done.recorded, "lr=0.001") == [2, 3]

    # the bad arm's stored results change (re-run seeds now tie with the best): the decision stays made, and
    # the seed added on resume is recorded eliminated instead of trained
    for r in done.rows.values():
        if r["arm"] == "lr=0.001" and r["status"] == "completed":
            r["metric_best"] = r["metric_final"] = GOOD[r["seed"]] + (0.01 if r["seed"] else -0.01)
    grown = racing_sweep([0.1, 0.001], [0, 1, 2, 3, 4])
    resumed = FakeRunner(grown, value, done.rows)
    assert resumed.race(DecisionLog(str(tmp_path))) == 6  # finished and recorded trials are not run again
    assert seeds_of(resumed.ran, "lr=0.1") == [4] and seeds_of(resumed.ran, "lr=0.001") == []
    assert seeds_of(resumed.recorded, "lr=0.001") == [4]
    assert resumed.rows[grown.trials(grown.arms()[1:])[4].trial_id]["reason"] == logged.detail["reason"]
    assert DecisionLog(str(tmp_path)).of_kind(ELIMINATE) == [logged]  # not re-decided, not re-logged
    assert any("replayed from the decision log" in m for m in resumed.messages)

    # --rerun-stopped re-opens the decision: on today's (tied) results the arm is no longer eliminated
    again = FakeRunner(grown, value, resumed.rows)
    again.race(DecisionLog(str(tmp_path)), rerun_stopped=True)
    assert DecisionLog(str(tmp_path)).of_kind(ELIMINATE) == []


def test_racing_keeps_an_arm_whose_paired_differences_do_not_vary(tmp_path):
    """Every seed exactly 0.125 below the best: no p ("no variance"), so the arm is kept and races on."""
    best = [0.5, 0.75, 0.625, 0.875]
    sweep = racing_sweep([0.1, 0.2], [0, 1, 2, 3])
    runner = FakeRunner(sweep, lambda o, s: (best[s] - (0.125 if o["optim.lr"] == 0.2 else 0.0),) * 2)
    runner.race(DecisionLog(str(tmp_path)))
    assert seeds_of(runner.ran, "lr=0.2") == [0, 1, 2, 3] and runner.recorded == []
    assert DecisionLog(str(tmp_path)).of_kind(ELIMINATE) == []
    assert any("no variance" in m for m in runner.messages)
    assert one_sided_p({0: 0.375, 1: 0.625}, {0: 0.5, 1: 0.75}, "max", "ttest") == (None, 2)
    assert one_sided_p({0: 0.2, 1: 0.3}, {0: 0.1, 1: 0.2}, "min", "wilcoxon") == (None, 2)


@pytest.mark.parametrize(("level", "first_round", "smallest"), [(0.05, 2, 5), (0.05, 4, 5), (0.1, 3, 4),
                                                                  (0.25, 2, 3)])
def test_wilcoxon_settings_that_can_never_reach_the_level_are_refused(level, first_round, smallest):
    with pytest.raises(ConfigError, match=rf"first_round = {first_round} .* use first_round: {smallest} or more"):
        racing_sweep([0.1, 0.2], list(range(8)), test="wilcoxon", level=level, first_round=first_round)


def test_racing_with_the_smallest_workable_wilcoxon_first_round_eliminates_after_round_one(tmp_path):
    sweep = racing_sweep([0.1, 0.001], list(range(6)), test="wilcoxon", first_round=5)
    runner = FakeRunner(sweep, lambda o, s: (0.9 - 0.01 * s if o["optim.lr"] == 0.1 else 0.5 + 0.02 * s,) * 2)
    runner.race(DecisionLog(str(tmp_path)))
    (d,) = DecisionLog(str(tmp_path)).of_kind(ELIMINATE)
    assert d.detail["test"] == "wilcoxon" and d.detail["p"] == pytest.approx(1 / 32) and d.n_seeds == 5
    assert seeds_of(runner.recorded, "lr=0.001") == [5]


def test_a_resume_that_would_have_decided_a_logged_elimination_otherwise_is_refused(tmp_path):
    from rayclf.config import UserError
    from rayclf.sweep.racing import check_eliminations
    from rayclf.sweep.strategies.arm_rules import refuse_eliminations

    value: Value = lambda o, s: ((GOOD if o["optim.lr"] == 0.1 else BAD)[s],) * 2  # noqa: E731
    done = FakeRunner(racing_sweep([0.1, 0.001], [0, 1, 2, 3]), value)
    done.race(DecisionLog(str(tmp_path)))
    changed = [({"rank_by": "final"}, r"rank_by: best, the file now says rank_by: final"),
               ({"level": 0.01}, r"test: ttest at level 0.05, the file now says test: ttest at level 0.01")]
    for edit, message in changed:
        again = FakeRunner(racing_sweep([0.1, 0.001], [0, 1, 2, 3], **edit), value, done.rows)
        with pytest.raises(UserError, match=rf"arm 'lr=0.001' after round 1 .* under {message}\. .*--rerun-stopped"):
            again.race(DecisionLog(str(tmp_path)))
        assert again.ran == again.recorded == []
    fifo = parse_sweep({"name": "r", "base": tiny(), "seeds": [0, 1, 2, 3], "search": {"grid": {"optim.lr": [0.1]}}})
    with pytest.raises(UserError, match="now says scheduler: fifo. Restore scheduler: racing"):
        refuse_eliminations(fifo, DecisionLog(str(tmp_path)))
    check_eliminations(racing_sweep([0.1, 0.001], [0, 1, 2, 3]), DecisionLog(str(tmp_path)))  # unchanged: fine


# ----------------------------------------------------------------------------------------------- bayes
SPACE = {"optim.lr": {"loguniform": [1e-4, 1.0]}, "model.dropout": {"uniform": [0.0, 0.5]}}


def bayes_sweep(num_samples: int, seeds: list[int], params: dict[str, Any] | None = None, batch: int = 2,
                startup: int = 2) -> Sweep:
    spec = {"num_samples": num_samples, "seed": 3, "batch": batch, "startup": startup, "params": params or SPACE}
    return parse_sweep({"name": "b", "base": tiny(), "search": {"bayes": spec}, "seeds": seeds})


def peak(o: dict[str, Any], s: int) -> tuple[float, float]:
    """Peaks at lr 0.1; seed 2 (added on resume) prefers small learning rates, which reorders the arms."""
    v = 1 - abs(math.log10(o["optim.lr"]) + 1) / 4 + 0.01 * s
    v = 2 - 3 * v if s == 2 else v  # the mean over seeds 0, 1, 2 falls as the mean over seeds 0, 1 rises
    return v, v


class BayesRun:
    """run_bayes on a FakeRunner; ``calls`` keeps every batch run_arms was given."""

    def __init__(self, sweep: Sweep, rows: dict[str, dict[str, Any]], value: Value = peak):
        self.runner, self.sweep = FakeRunner(sweep, value, rows), sweep
        self.calls: list[list[Any]] = []

    def run_arms(self, batch: list[Any], every: list[Any]) -> int:
        self.calls.append(batch)
        return self.runner.run(self.sweep.trials(batch))

    def __call__(self, root: str, stage: int | None = None) -> tuple[int, list[Any]]:
        return run_bayes(self.sweep, self.run_arms, self.runner.stored, lambda _: None, DecisionLog(root), stage)


def proposals(root: str, stage: str = "") -> dict[int, tuple[str, str, dict[str, Any]]]:
    """The logged proposals of one search: index → (label, arm id, config overrides)."""
    return {d.detail["index"]: (d.label, d.arm_id, d.detail["overrides"]) for d in DecisionLog(root).of_kind(PROPOSAL)
            if d.key.split("/")[0] == stage}


def one_config_per_label(rows: dict[str, dict[str, Any]], runs: list[BayesRun]) -> bool:
    """Every label names one arm id, over the stored rows and every arm any run handed out."""
    ids: dict[str, set[str]] = {}
    for r in rows.values():
        ids.setdefault(r["arm"], set()).add(r["arm_id"])
    for run in runs:
        for arm in (a for batch in run.calls for a in batch):
            ids.setdefault(arm.label, set()).add(run.sweep.arm_id(arm))
    return all(len(v) == 1 for v in ids.values())


def test_bayes_resumed_after_a_changed_result_keeps_every_logged_proposal_and_continues(tmp_path):
    root, rows = str(tmp_path), {}
    first = BayesRun(bayes_sweep(4, [0, 1]), rows)
    first(root)
    logged = proposals(root)
    assert sorted(logged) == [0, 1, 2, 3] and [logged[i][0] for i in range(4)] == [f"bayes-{i}" for i in range(4)]

    # the same search run in one go makes the same first 4 proposals and the resumed one continues it
    straight_root = str(tmp_path / "straight")
    BayesRun(bayes_sweep(6, [0, 1]), {})(straight_root)
    unchanged_root, unchanged_rows = str(tmp_path / "unchanged"), {}
    BayesRun(bayes_sweep(4, [0, 1]), unchanged_rows)(unchanged_root)
    BayesRun(bayes_sweep(6, [0, 1]), unchanged_rows)(unchanged_root)
    assert proposals(unchanged_root) == proposals(straight_root)

    # a result changes (a failed seed re-run): proposal 0 now scores far below proposal 1, so TPE would now
    # propose 2 and 3 elsewhere; resumed with 2 more proposals, 0…3 stay as logged and only 4, 5 are new
    for r in rows.values():
        if r["arm"] == "bayes-0":
            r["metric_best"] = r["metric_final"] = -5.0
    resumed = BayesRun(bayes_sweep(6, [0, 1]), rows)
    skipped, arms = resumed(root)
    now = proposals(root)
    assert {i: now[i] for i in range(4)} == logged and sorted(now) == list(range(6))
    assert skipped == 8 and [a.label for a in arms] == [f"bayes-{i}" for i in range(6)]
    assert [a.overrides for a in arms[:4]] == [logged[i][2] for i in range(4)]
    assert one_config_per_label(rows, [first, resumed]) and len(rows) == 12


def test_bayes_resumed_with_an_added_seed_keeps_labels_and_configs(tmp_path):
    root, rows = str(tmp_path), {}
    first = BayesRun(bayes_sweep(4, [0, 1]), rows)
    first(root)
    logged = proposals(root)
    grown = BayesRun(bayes_sweep(6, [0, 1, 2]), rows)
    skipped, _ = grown(root)
    now = proposals(root)
    assert {i: now[i] for i in range(4)} == logged and len(now) == 6
    assert skipped == 8 and len(rows) == 18  # the new seed ran for the replayed proposals too
    assert {r["seed"] for r in rows.values() if r["arm"] == "bayes-3"} == {0, 1, 2}
    assert one_config_per_label(rows, [first, grown])


def test_bayes_interrupted_mid_batch_resumes_the_same_proposals(tmp_path):
    root, rows = str(tmp_path), {}
    cut = BayesRun(bayes_sweep(6, [0, 1]), rows)
    cut.runner.interrupt_after = 5  # Ctrl-C in the second batch's second trial
    with pytest.raises(SweepInterrupted):
        cut(root)
    assert sorted(proposals(root)) == [0, 1, 2, 3]  # logged before they ran; none asked after the cut
    straight_root = str(tmp_path / "straight")
    BayesRun(bayes_sweep(6, [0, 1]), {})(straight_root)
    BayesRun(bayes_sweep(6, [0, 1]), rows)(root)
    assert proposals(root) == proposals(straight_root) and len(rows) == 12


def test_two_proposals_of_one_config_are_one_arm_and_train_once(tmp_path):
    """Three proposals from two choices in one batch: two share a config; it runs once under its first label,
    and both proposals are logged with its arm id. A bayes stage logs under its stage."""
    params = {"model.widths": {"choice": [[4, 8], [8, 16]]}}
    run = BayesRun(bayes_sweep(3, [0, 1], params, batch=3, startup=3), {}, lambda o, s: (0.5 + 0.1 * s,) * 2)
    _, arms = run(str(tmp_path), stage=1)
    (batch,) = run.calls
    ids = [t.trial_id for t in run.sweep.trials(batch)]
    assert len(ids) == len(set(ids)) == 2 * len(batch) and len(arms) == len(batch) == 2
    logged = proposals(str(tmp_path), stage="1")
    assert sorted(logged) == [0, 1, 2] and len({aid for _, aid, _ in logged.values()}) == 2
    assert {run.sweep.arm_id(a) for a in arms} == {aid for _, aid, _ in logged.values()}


@pytest.mark.parametrize(("edit", "message"), [
    ({"optim.lr": {"loguniform": [1e-4, 1e-3]}}, r"with optim.lr = .*, outside search.bayes.params.optim.lr"),
    ({"optim.momentum": {"uniform": [0.0, 0.9]}}, r"over model.dropout, optim.lr; search.bayes.params now has"),
    ("final", r"from results ranked by metric_best; rank_by now ranks by metric_final"),
])
def test_a_bayes_resume_under_which_a_logged_proposal_could_not_have_been_made_is_refused(tmp_path, edit, message):
    from rayclf.config import UserError

    rows: dict[str, dict[str, Any]] = {}
    BayesRun(bayes_sweep(4, [0, 1]), rows)(str(tmp_path))
    params = {**SPACE, **edit} if isinstance(edit, dict) else SPACE
    spec = {"num_samples": 4, "seed": 3, "batch": 2, "startup": 2, "params": params}
    sweep = parse_sweep({"name": "b", "base": tiny(), "search": {"bayes": spec}, "seeds": [0, 1],
                         "rank_by": edit if isinstance(edit, str) else "best"})
    resumed = BayesRun(sweep, rows)
    with pytest.raises(UserError, match=rf"--resume: bayes proposal \d \(bayes-\d\) was made {message}"):
        resumed(str(tmp_path))
    assert resumed.calls == []
