"""Arm-level early stopping (asha / median) decides on all of an arm's seeds, logs each stop before it acts,
and keeps every stop across a kill and ``--resume`` (issue 20, item 3). Driven through a fake Tune controller
(``fake_tune``), with rayclf's real board, queue, scheduler, Recorder, results store and decision log."""

from __future__ import annotations

from typing import Any

import pytest

from rayclf.results import ResultsStore
from rayclf.sweep.callbacks import Recorder, trial_row
from rayclf.sweep.decisions import STOP, DecisionLog
from rayclf.sweep.schedulers import ArmBoard, ArmScheduler, TrialQueue, replay, rung_rule
from rayclf.sweep.spec import Sweep, parse_sweep
from rayclf.sweep.trialspec import TrialSpec

from .conftest import tiny
from .fake_tune import FakeTune

LRS = [0.1, 0.05, 0.02, 0.01]  # arm quality falls with lr: lr=0.01 is the worst arm


def _sweep(mode: str, seeds: list[int], scheduler: str = "asha", lrs: list[float] = LRS) -> Sweep:
    return parse_sweep({
        "name": "rules", "base": tiny(train={"epochs": 4}), "search": {"grid": {"optim.lr": lrs}}, "seeds": seeds,
        "metric": "val_accuracy" if mode == "max" else "val_loss", "mode": mode,
        "scheduler": {"name": scheduler, "grace_period": 1, "reduction_factor": 2}})


def _value(mode: str) -> Any:
    """A seed's metric at an epoch: the arm's quality grows with epochs; seeds differ a little."""
    def value(info: TrialSpec, epoch: int) -> float:
        acc = 5 * info.overrides["optim.lr"] * epoch / 4 + 0.01 * info.seed
        return acc if mode == "max" else 1.0 - acc
    return value


class _LoggedFirst:
    """A callback after the Recorder: every stopped row's arm already has its stop in the log on disk."""

    def __init__(self, out: str, recorder: Recorder):
        self.out, self.recorder = out, recorder

    def on_trial_result(self, *args: Any) -> None:
        pass

    def on_trial_complete(self, iteration: int, trials: list, trial: Any) -> None:
        info = trial.config["trial"]
        if self.recorder.rows[info.trial_id]["status"] == "stopped_early":
            assert DecisionLog(self.out).get(STOP, info.arm_id) is not None, "a trial stopped before its log"


def _run(sweep: Sweep, out: str, slots: int, kill_after: int | None = None, rerun_stopped: bool = False,
         histories: dict[str, list[dict[str, Any]]] | None = None, scheduler: type = ArmScheduler,
         **fake: Any) -> tuple[FakeTune, ResultsStore, bool]:
    """One run of the sweep as ``run_trials`` wires it (board replayed from the store, the log and the
    checkpoints an earlier run left), on the fake controller (``fake``: its seed speeds and failures)."""
    metric, mode = sweep.file.metric, sweep.file.mode or "max"
    store, log, histories = ResultsStore(out), DecisionLog(out), histories or {}
    trials = sweep.trials(sweep.arms())
    done = store.finished_ids(rerun_stopped)
    descriptions = [TrialSpec.of(sweep, t, i) for i, t in enumerate(trials) if t.trial_id not in done]
    store.prepare([trial_row(d, "completed", "", None, [], metric, mode) for d in descriptions])
    s = sweep.file.scheduler
    board = replay(ArmBoard(rung_rule(s.name, s.grace_period, s.reduction_factor, 4, s.min_arms), mode, metric),
                   trials, store, log, histories, rerun_stopped)
    recorder = Recorder(store, metric, mode, prior=histories, board=board)
    queue = TrialQueue(descriptions, board, lambda d, rung, why: recorder.record_unstarted(
        d, "stopped_early", why, rung))
    tune = FakeTune(queue, scheduler(board), _value(mode), slots, [recorder, _LoggedFirst(out, recorder)],
                    start={tid: int(h[-1]["epoch"]) for tid, h in histories.items()}, **fake)
    return tune, store, tune.run(kill_after)


def _stops(out: str) -> dict[str, Any]:
    return {d.key: d for d in DecisionLog(out).of_kind(STOP)}


def _rows_by_arm(store: ResultsStore, sweep: Sweep) -> dict[str, list[dict[str, Any]]]:
    arm_of = {t.trial_id: t.arm_id for t in sweep.trials(sweep.arms())}
    out: dict[str, list[dict[str, Any]]] = {}
    for r in store.trials:
        out.setdefault(arm_of[r["trial_id"]], []).append(r)
    return out


def _check_stops(sweep: Sweep, store: ResultsStore, out: str, n_seeds: int = 3) -> dict[str, Any]:
    """Every logged stop saw every planned seed, and every seed of a stopped arm is recorded stopped at its
    rung, having trained to it; every other arm completed all its seeds."""
    stops = _stops(out)
    assert stops, "the worse arms should have been stopped"
    by_arm = _rows_by_arm(store, sweep)
    for arm, rows in by_arm.items():
        if arm in stops:
            d = stops[arm]
            assert d.n_seeds == n_seeds and sorted(d.detail["seeds"]) == list(range(n_seeds))
            assert len(d.detail["values"]) == n_seeds, f"decision on {d.detail['values']} of {n_seeds} seeds"
            assert {r["status"] for r in rows} == {"stopped_early"}
            assert {r["stopped_at_epoch"] for r in rows} == {d.detail["rung"]}
            assert all(r["epochs"] >= d.detail["rung"] for r in rows)  # none stopped before reaching the rung
        else:
            assert {r["status"] for r in rows} == {"completed"} and len(rows) == n_seeds
    return stops


@pytest.mark.parametrize("mode", ["max", "min"])
def test_three_seeds_on_two_slots_every_decision_sees_all_three(tmp_path, mode):
    sweep = _sweep(mode, [0, 1, 2])
    out = str(tmp_path / "s")
    tune, store, complete = _run(sweep, out, slots=2)
    assert complete and len(store.trials) == 12
    assert tune.pauses, "with 3 seeds on 2 slots, a seed that reached a rung first waits for its siblings"
    stops = _check_stops(sweep, store, out)
    labels = {d.label for d in stops.values()}
    assert "lr=0.01" in labels and "lr=0.1" not in labels  # the worst arm stops, the best never
    d = next(d for d in stops.values() if d.label == "lr=0.01")
    assert d.detail["mode"] == mode and d.detail["rule"] == "asha"
    side = "below" if mode == "max" else "above"  # a loss is stopped for being too high
    assert (d.detail["mean"] < d.detail["cutoff"]) == (mode == "max") and side in d.detail["reason"]
    assert "over 3 of 3 seed(s)" in next(r["reason"] for r in store.trials if r["arm"] == "lr=0.01")


@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize("kill_after", [4, 9, 14, 19])
def test_killed_and_resumed_every_logged_stop_survives(tmp_path, mode, kill_after):
    sweep = _sweep(mode, [0, 1, 2])
    out = str(tmp_path / "s")
    tune, _, complete = _run(sweep, out, slots=2, kill_after=kill_after)
    assert not complete
    before = _stops(out)
    _, store, complete = _run(sweep, out, slots=2, histories=tune.interrupted_histories())
    assert complete and len(store.trials) == 12
    after = _check_stops(sweep, store, out)  # a resumed seed kept its earlier rung values: 3 values each
    for arm, d in before.items():
        assert after[arm].seq == d.seq and after[arm].detail == d.detail  # replayed, not taken again


def test_median_rule_decides_on_all_seeds_too(tmp_path):
    sweep = _sweep("min", [0, 1, 2], scheduler="median")
    out = str(tmp_path / "m")
    _, store, complete = _run(sweep, out, slots=2)
    assert complete
    stops = _check_stops(sweep, store, out)
    assert all(d.detail["rule"] == "median" and "median of" in d.detail["reason"] for d in stops.values())


def test_a_seed_added_on_resume_to_a_stopped_arm_is_recorded_stopped(tmp_path):
    out = str(tmp_path / "s")
    _run(_sweep("max", [0, 1, 2]), out, slots=2)
    before = _stops(out)
    sweep = _sweep("max", [0, 1, 2, 3])  # the README's "add a seed and --resume"
    tune, store, complete = _run(sweep, out, slots=2)
    assert complete
    assert _stops(out) == before  # no arm re-judged: finished arms passed their rungs on their 3 seeds,
    assert not tune.pauses  # so a new seed of a finished arm never waits at a rung for a decision
    for arm, rows in _rows_by_arm(store, sweep).items():
        new = next(r for r in rows if r["seed"] == 3)
        if arm in before:
            assert new["status"] == "stopped_early" and new["epochs"] == 0
            assert new["reason"].startswith(before[arm].detail["reason"]) and "never started" in new["reason"]
            assert new["stopped_at_epoch"] == before[arm].detail["rung"]
        else:
            assert new["status"] == "completed" and new["epochs"] == 4
    # --rerun-stopped forgets the stops: the stopped arms are judged again, now on their 4 seeds
    _, store, complete = _run(sweep, out, slots=2, rerun_stopped=True)
    assert complete
    again = _stops(out)
    assert again and all(d.n_seeds == 4 and len(d.detail["values"]) == 4 for d in again.values())
    assert all(again[a].time > before[a].time for a in again if a in before)  # taken again, logged anew


def test_queue_hands_out_an_arms_seeds_together_and_never_blocks_tune(tmp_path):
    """Seeds go out in the sweep's order, so an arm's seeds go out together when the slots allow; a slot a
    paused seed frees goes to the next seed at once (3 seeds on 2 slots: the third seed's arm-mates wait paused
    while the next arm's first seed trains). (The fake controller fails any suggest that returns None while
    nothing runs, as real Tune would hang.)"""
    for seeds, slots in (([0, 1, 2], 2), ([0, 1], 3), ([0, 1], 2)):
        sweep = _sweep("max", seeds)
        tune, _, complete = _run(sweep, str(tmp_path / f"q{len(seeds)}{slots}"), slots=slots)
        assert complete
        assert [a for a, _ in tune.handouts] == [t.arm_id for t in sweep.trials(sweep.arms())]
        assert tune.handouts[1][1] == 1  # the first arm's second seed went out beside its first
        assert tune.idle == 0, "a slot stayed free while a seed could start"
        assert tune.pauses  # the seeds train at different speeds: the faster waits at each rung


def test_resume_rebuilds_the_board_from_every_seeds_stored_epochs(tmp_path):
    """A replayed board holds every arm's rung scores (the mean of its 3 stored seeds), counts the rungs a
    finished arm passed as decided and never judges it again: replayed in another order (an edited file), the
    median rule would now stop a finished arm that passed when it was judged first."""
    out = str(tmp_path / "r")
    _run(_sweep("min", [0, 1, 2], "median", lrs=sorted(LRS)), out, slots=2)  # worst arm first: none stopped
    assert not _stops(out)
    sweep = _sweep("min", [0, 1, 2], "median")  # best arm first
    s = sweep.file.scheduler
    board = replay(ArmBoard(rung_rule(s.name, s.grace_period, s.reduction_factor, 4, s.min_arms), "min",
                            "val_loss"), sweep.trials(sweep.arms()), ResultsStore(out), DecisionLog(out), {})
    assert not board.stopped and not _stops(out)
    value = _value("min")
    for t in sweep.trials(sweep.arms()):
        seeds = [TrialSpec(t.trial_id, sweep.name, t.arm.label, t.arm_id, s, None, 0, t.arm.overrides, {}, 4)
                 for s in (0, 1, 2)]
        for rung in board.rule.rungs:
            assert rung in board.decided[t.arm_id]
            assert board.recorded[rung][t.arm_id] == pytest.approx(-sum(value(i, rung) for i in seeds) / 3)


def test_no_decision_while_the_run_halts_and_a_directory_without_a_log_keeps_its_stops(tmp_path):
    """Ctrl-C: a seed that ends while the run halts (its process got the signal) does not let its arm be judged
    on the seeds that happen to have reached the rung. And a sweep directory written before the decision log
    keeps its stopped arms stopped (the stop is logged from their rows)."""
    board = ArmBoard(rung_rule("asha", 1, 2, 4), "max", "val_accuracy")
    board.add_arm("a", "a", [("a0", 0), ("a1", 1)])
    board.add_arm("b", "b", [("b0", 0), ("b1", 1)])
    for t, v in (("a0", 0.9), ("a1", 0.9), ("b0", 0.1)):
        board.observe(t, 1, v)
    board.decide("a")
    halting = [True]
    board.halted = lambda: halting[0]
    assert not board.end("b1") and "b" not in board.stopped and 1 not in board.decided.get("b", set())
    halting[0] = False
    assert board.decide("b") and board.stopped["b"][0] == 1  # resumed with full information: judged then
    out = str(tmp_path / "old")
    _run(_sweep("max", [0, 1, 2]), out, slots=2)
    before = _stops(out)
    import shutil

    shutil.rmtree(f"{out}/decisions.parquet")
    sweep = _sweep("max", [0, 1, 2, 3])
    _, store, _ = _run(sweep, out, slots=2)
    after = _stops(out)
    assert set(after) == set(before)
    assert all(after[a].detail["rung"] == d.detail["rung"] and after[a].detail["from"] == "trials.parquet"
               and after[a].detail["reason"] == d.detail["reason"] for a, d in before.items())
    for arm, rows in _rows_by_arm(store, sweep).items():
        assert {r["status"] for r in rows} == ({"stopped_early"} if arm in before else {"completed"})
