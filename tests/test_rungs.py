"""Issue 28, asha / median: an arm's seeds move through rungs together on any ratio of seeds to slots, every rung
verdict (continue and stop) is logged before it acts, and ``--resume`` replays the verdicts by arm id instead of
judging a rung again. On the fake Tune controller (``fake_tune``) with rayclf's real board, queue, scheduler,
Recorder, results store and decision log; no Ray."""

from __future__ import annotations

import random
import shutil
from typing import Any

import pytest

from rayclf.results import ResultsStore
from rayclf.sweep.decisions import CONTINUE, STOP, Decision, DecisionLog
from rayclf.sweep.schedulers import ArmBoard, ArmScheduler, rung_rule
from rayclf.sweep.spec import Sweep
from rayclf.sweep.trialspec import TrialSpec

from .test_arm_rules import LRS, _rows_by_arm, _run, _sweep


def _slow_second_seed(info: TrialSpec, epoch: int) -> float:
    """Seed 0 trains six times faster than seed 1: without waiting at rungs it would finish first."""
    return 1.0 if info.seed == 0 else 6.0


def _verdicts(out: str) -> dict[tuple[str, str], Decision]:
    log = DecisionLog(out)
    return {(d.kind, d.key): d for d in (*log.of_kind(CONTINUE), *log.of_kind(STOP))}


def _check_together(sweep: Sweep, store: ResultsStore, out: str) -> dict[str, Decision]:
    """No arm mixes rung statuses: a stopped arm's seeds all stopped at the logged rung, having trained exactly to
    it (or not at all); an arm never stopped has no seed stopped early."""
    stops = {d.key: d for d in DecisionLog(out).of_kind(STOP)}
    for arm, rows in _rows_by_arm(store, sweep).items():
        statuses = {r["status"] for r in rows}
        assert not {"completed", "stopped_early"} <= statuses, f"mixed rung statuses in one arm: {rows}"
        early = [r for r in rows if r["status"] == "stopped_early"]
        if arm in stops:
            rung = stops[arm].detail["rung"]
            assert early and {r["stopped_at_epoch"] for r in early} == {rung}
            assert {r["epochs"] for r in early} <= {0, rung}, "a seed trained past the rung its arm stopped at"
        else:
            assert not early
    return stops


@pytest.mark.parametrize("slots", [2, 3])
@pytest.mark.parametrize("scheduler", ["asha", "median"])
def test_seeds_wait_for_each_other_at_rungs_even_with_a_slot_each(tmp_path, slots, scheduler):
    """Issue 28, Why 1: 4 learning rates × seeds [0, 1] with a slot for each seed. Seed 0 is six times faster;
    it waits paused at every rung for seed 1, so a stop applies to both at that rung, and its slot trains
    another arm's seed meanwhile."""
    sweep = _sweep("max", [0, 1], scheduler)
    out = str(tmp_path / "s")
    tune, store, complete = _run(sweep, out, slots=slots, duration=_slow_second_seed)
    assert complete and len(store.trials) == 8
    stops = _check_together(sweep, store, out)
    assert stops, "the worse arms should have been stopped"
    assert all(len(d.detail["values"]) == 2 for d in stops.values())
    assert any(e == 1 for _, e in tune.pauses)  # the fast seed waited at the first rung
    assert tune.idle == 0, "a slot stayed free while a seed could start"


def test_every_rung_verdict_is_logged_once_before_it_acts(tmp_path):
    """Every arm has one verdict per rung it reached: a continue (key ``arm/rung``) at each rung it passed and a
    stop at the rung it stopped at; a seed trains past a rung only once its arm's continue there is on disk."""
    sweep = _sweep("min", [0, 1, 2])
    out = str(tmp_path / "s")
    passed: list[tuple[str, int]] = []

    class ContinueLoggedFirst:
        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict) -> None:
            info, epoch = trial.config["trial"], int(result["epoch"])
            if epoch - 1 in info.rungs:  # this seed trained past the rung epoch - 1
                assert DecisionLog(out).get(CONTINUE, f"{info.arm_id}/{epoch - 1}") is not None
                passed.append((info.arm_id, epoch - 1))

        def on_trial_complete(self, *args: Any) -> None:
            pass

    tune, store, complete = _run(sweep, out, slots=2)
    assert complete
    stops = _check_together(sweep, store, out)
    continues = DecisionLog(out).of_kind(CONTINUE)
    rungs = tune.scheduler.board.rule.rungs
    arms = {t.arm_id for t in sweep.trials(sweep.arms())}
    expected = {f"{a}/{r}" for a in arms for r in rungs if a not in stops or r < stops[a].detail["rung"]}
    assert [d.key for d in continues] and {d.key for d in continues} == expected  # one per (arm, rung) passed
    for d in continues:
        assert d.arm_id == d.key.split("/")[0] and d.detail["rung"] == int(d.key.split("/")[1])
        assert len(d.detail["values"]) == 3 and d.detail["mode"] == "min" and "continued at epoch" in d.detail[
            "reason"]
    # and on a second sweep, watched: no seed passes a rung before its continue is on disk
    out = str(tmp_path / "watched")
    _, _, complete = _run(sweep, out, slots=2, scheduler=lambda board: _Watched(board, ContinueLoggedFirst()))
    assert complete and passed


class _Watched(ArmScheduler):
    """The scheduler with a callback that sees each result first (as Tune's callbacks do)."""

    def __init__(self, board: ArmBoard, watcher: Any):
        super().__init__(board)
        self.watcher = watcher

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self.watcher.on_trial_result(0, [], trial, result)
        return super().on_trial_result(tune_controller, trial, result)


@pytest.mark.parametrize("kill_after", [3, 7, 11, 16, 22])
def test_resume_never_judges_a_decided_rung_again(tmp_path, kill_after):
    """Killed mid-sweep and resumed: every verdict logged before the kill stays as it was (same sequence number,
    same detail), each (arm, rung) has one verdict, and seeds paused at a rung when the run died wait there
    (held back by the queue) until their arm is judged."""
    sweep = _sweep("max", [0, 1, 2], "median")
    out = str(tmp_path / "s")
    tune, _, complete = _run(sweep, out, slots=2, kill_after=kill_after, duration=_slow_second_seed)
    assert not complete
    before = _verdicts(out)
    tune, store, complete = _run(sweep, out, slots=2, histories=tune.interrupted_histories(),
                                 duration=_slow_second_seed)
    assert complete and len(store.trials) == 12
    after = _verdicts(out)
    for key, d in before.items():
        assert after[key].seq == d.seq and after[key].detail == d.detail, f"{key} judged again"
    _check_together(sweep, store, out)
    assert tune.idle == 0


def test_a_new_seed_follows_its_arms_logged_verdicts(tmp_path):
    """A seed added on resume to an arm continued at a rung passes that rung without a new judgement (no pause,
    no new verdict there); a seed added to a stopped arm is recorded stopped at that rung, never started; rungs
    not judged before the kill are judged on every seed, the new one included."""
    out = str(tmp_path / "s")
    tune, _, complete = _run(_sweep("max", [0, 1]), out, slots=2, kill_after=10, duration=_slow_second_seed)
    assert not complete
    before = _verdicts(out)
    assert any(k == CONTINUE for k, _ in before), "something was continued before the kill"
    sweep = _sweep("max", [0, 1, 2])
    tune, store, complete = _run(sweep, out, slots=2, histories=tune.interrupted_histories(),
                                 duration=_slow_second_seed)
    assert complete
    after = _verdicts(out)
    assert all(after[k].seq == d.seq for k, d in before.items())
    new = {k: d for k, d in after.items() if k not in before}
    assert new and all(d.n_seeds == 3 and len(d.detail["values"]) == 3 for d in new.values())
    seed2 = {t.arm_id: t.trial_id for t in sweep.trials(sweep.arms()) if t.seed == 2}
    for (kind, _), d in before.items():
        if kind == CONTINUE:  # the new seed never waited at a rung its arm had passed
            assert (seed2[d.arm_id], d.detail["rung"]) not in tune.pauses
    stops = _check_together(sweep, store, out)
    rows = {r["trial_id"]: r for r in store.trials}
    for arm in stops:
        if (STOP, arm) in before:
            assert rows[seed2[arm]]["epochs"] == 0 and "never started" in rows[seed2[arm]]["reason"]


class _StopsOnly:
    """The decision log as it was before continues were logged: stops only."""

    def __init__(self, log: DecisionLog):
        self.log = log

    def record(self, d: Decision) -> Decision:
        return self.log.record(d) if d.kind == STOP else d

    def __getattr__(self, name: str) -> Any:
        return getattr(self.log, name)


def _old_scheduler(board: ArmBoard) -> ArmScheduler:
    """The code before this change, with a slot per seed: no seed waits at a rung, only stops are logged."""
    board.should_pause = lambda tid, epoch: False  # type: ignore[method-assign]
    board.log = _StopsOnly(board.log)
    return ArmScheduler(board)


def test_a_directory_with_only_stops_logged_resumes_without_mixing_statuses(tmp_path):
    """A sweep directory written before this change (seeds ran apart; only stops logged), killed while fast seeds
    had completed and slow ones trained on: the rungs a finished seed trained past count as passed (logged now
    as continues from the stored epochs, with each seed's value at the rung), so the resume never stops an arm
    beside its completed seed, and every logged stop stays."""
    sweep = _sweep("max", [0, 1], "median", lrs=[*LRS, 0.03, 0.07])
    out = str(tmp_path / "old")
    tune, _, complete = _run(sweep, out, slots=3, kill_after=16, duration=_slow_second_seed,
                             scheduler=_old_scheduler)
    assert not complete and not DecisionLog(out).of_kind(CONTINUE)
    stops = {d.key: d.seq for d in DecisionLog(out).of_kind(STOP)}
    finished = {r["trial_id"] for r in ResultsStore(out).trials if r["status"] == "completed"}
    assert finished, "a fast seed completed before its slow sibling reached the first rung"
    _, store, complete = _run(sweep, out, slots=3, histories=tune.interrupted_histories())
    assert complete
    after = DecisionLog(out)
    assert {d.key: d.seq for d in after.of_kind(STOP) if d.key in stops} == stops
    for arm, rows in _rows_by_arm(store, sweep).items():  # (an arm the old code stopped beside a completed
        if arm not in stops:  # seed before the kill stays as it was recorded)
            assert not {"completed", "stopped_early"} <= {r["status"] for r in rows}, "the resume mixed statuses"
    arm_of = {t.trial_id: t.arm_id for t in sweep.trials(sweep.arms())}
    settled = [d for d in after.of_kind(CONTINUE) if d.detail.get("from") == "trials.parquet"]
    assert {arm_of[t] for t in finished} <= {d.arm_id for d in settled}  # its passed rungs logged as passed
    epochs = {(e["trial_id"], e["epoch"]): e["val_accuracy"] for e in store.epochs}
    seed_of = {t.trial_id: t.seed for t in sweep.trials(sweep.arms())}
    for d in settled:  # each seed's value at the rung itself (the best up to it), never a later epoch's
        for tid in (t for t in finished if arm_of[t] == d.arm_id):
            best = max(epochs[(tid, e)] for e in range(1, d.detail["rung"] + 1))
            assert d.detail["values"][str(seed_of[tid])] == pytest.approx(best)


def test_a_decision_reads_each_seed_only_up_to_its_rung():
    """A seed an earlier run trained past a rung (a resumed old directory) counts at the rung with its value
    there, not its later, better one."""
    log = _ListLog()
    board = ArmBoard(rung_rule("asha", 1, 2, 4), "max", "val_accuracy", log=log)
    board.add_arm("a", "a", [("a0", 0), ("a1", 1)], epochs=4)
    for epoch, value in ((1, 0.2), (2, 0.9), (3, 0.95)):
        board.observe("a0", epoch, value)
    board.observe("a1", 1, 0.4)
    board.decide("a")
    assert log.decisions[0].kind == CONTINUE and log.decisions[0].detail["values"] == {"0": 0.2, "1": 0.4}
    assert board.recorded[1]["a"] == pytest.approx(0.3)


def test_no_rung_at_or_after_an_arms_last_epoch():
    """One board serves stages of different lengths: an arm that trains 2 epochs is never judged at the rungs
    (2, 4) a longer stage brought (it has finished there), so a finished arm is never stopped."""
    log = _ListLog()
    board = ArmBoard(rung_rule("asha", 1, 2, 8), "max", "val_accuracy", log=log)
    assert board.rule.rungs == [1, 2, 4]
    board.add_arm("long", "long", [("l0", 0)], epochs=8)
    board.add_arm("short", "short", [("s0", 0)], epochs=2)
    for epoch, value in ((1, 0.9), (2, 0.99), (3, 0.99), (4, 0.99)):
        board.observe("l0", epoch, value)
    board.decide("long")
    board.observe("s0", 1, 0.95)  # above the long arm at epoch 1: continues
    board.observe("s0", 2, 0.95)  # below it at epoch 2, its last epoch: no rung for it there
    board.decide("short")
    board.end("s0")
    assert [(d.kind, d.detail["rung"]) for d in log.decisions if d.arm_id == "short"] == [(CONTINUE, 1)]
    assert not board.stopped and board.rungs_of("short") == [1]


# ------------------------------------------------------------------------------------- property-style
class _Spy(ArmScheduler):
    """The scheduler, noting every result and every end the board hears, in order (what an uninterrupted run
    would be fed)."""

    def __init__(self, board: ArmBoard, events: list[tuple[Any, ...]]):
        super().__init__(board)
        self.events = events
        end = board.end

        def noted_end(tid: str) -> bool:
            events.append(("end", tid))
            return end(tid)

        board.end = noted_end  # type: ignore[method-assign]  # the queue's skips end seeds too

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if "epoch" in result:
            self.events.append(("result", trial.config["trial"].trial_id, int(result["epoch"]),
                                result.get(self.board.metric)))
        return super().on_trial_result(tune_controller, trial, result)


class _ListLog:
    def __init__(self) -> None:
        self.decisions: list[Decision] = []

    def record(self, d: Decision) -> Decision:
        self.decisions.append(d)
        return d


def _uninterrupted(sweep: Sweep, events: list[tuple[Any, ...]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The verdicts of one board fed the same results and ends in the same order, with no kill (a failed seed
    that a resume retries is live again from then on, as in one run where Tune retried it)."""
    s = sweep.file.scheduler
    log = _ListLog()
    board = ArmBoard(rung_rule(s.name, s.grace_period, s.reduction_factor, 4, s.min_arms), sweep.file.mode,
                     sweep.file.metric, log=log)
    for t in sweep.trials(sweep.arms()):
        board.add_arm(t.arm_id, t.arm.label, [(t.trial_id, t.seed)], t.arm.stage, t.config.total_epochs())
    for event in events:
        if event[0] == "result":
            _, tid, epoch, value = event
            if board.arm_of[tid] not in board.stopped:
                board.observe(tid, epoch, value)
                board.decide(board.arm_of[tid])
        elif event[0] == "end":
            board.end(event[1])
        else:
            board.ended -= event[1]
    return {(d.kind, d.key): d.detail for d in log.decisions}


def _case(rng: random.Random, out: str) -> None:
    mode = rng.choice(["max", "min"])
    sweep = _sweep(mode, list(range(rng.randint(1, 3))), rng.choice(["asha", "median"]),
                   rng.sample([*LRS, 0.03, 0.07], rng.randint(3, 5)))
    trials = sweep.trials(sweep.arms())
    speed = {t.trial_id: rng.choice([0.3, 1.0, 1.0, 1.7, 4.0]) for t in trials}
    fail = {t.trial_id: rng.randint(1, 4) for t in trials if rng.random() < 0.15}
    slots = rng.randint(1, 4)
    kills = [rng.randint(1, 20) for _ in range(rng.randint(0, 3))]

    def duration(info: TrialSpec, epoch: int) -> float:
        return speed[info.trial_id] * (1.0 + 0.25 * ((epoch * 7 + info.seed) % 3))

    events: list[tuple[Any, ...]] = []
    histories: dict[str, list[dict[str, Any]]] = {}
    for k in range(len(kills) + 1):
        retried = {r["trial_id"] for r in ResultsStore(out).trials if r["status"] == "failed"}
        events.append(("retry", retried))
        tune, store, complete = _run(sweep, out, slots, kill_after=kills[k] if k < len(kills) else None,
                                     histories=histories, scheduler=lambda b: _Spy(b, events),
                                     duration=duration, fail=fail)
        assert tune.idle == 0, "a slot stayed free while a seed could start"
        ran = {t.trial_id for t in tune.trials}
        left = {tid: h for tid, h in histories.items() if tid not in ran}  # held back, never started: as left
        for t in tune.trials:
            if t.status != "TERMINATED" and (tid := t.trial_id) in tune.history:
                left[tid] = histories.get(tid, []) + tune.history[tid]
        histories = left
        if k == len(kills):
            assert complete
    logged = {key: d.detail for key, d in _verdicts(out).items()}
    assert logged == _uninterrupted(sweep, events)
    assert len(store.trials) == len(trials)
    _check_together(sweep, store, out)


@pytest.mark.parametrize("case", range(24))
def test_kills_and_resumes_at_random_points_take_the_decisions_of_one_uninterrupted_run(tmp_path, case):
    """Random sweeps (asha or median, 3-5 arms × 1-3 seeds, 1-4 slots), seeds of random speeds, some failing,
    killed up to three times at random points and resumed: the logged verdicts are exactly those of one board
    fed the same results in the same order with no kill, and no arm has mixed rung statuses."""
    _case(random.Random(case), str(tmp_path / "s"))
    shutil.rmtree(tmp_path / "s", ignore_errors=True)
