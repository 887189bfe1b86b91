"""The strategy thread and Tune's loop take turns (``rayclf.sweep.lockstep``), without Ray."""

from __future__ import annotations

import threading
import time

import pytest

from rayclf.sweep.lockstep import FINISHED, Aborted, Lockstep


class Flag:
    def __init__(self) -> None:
        self.value = False

    def __call__(self) -> bool:
        return self.value


def test_the_next_batch_is_queued_before_the_last_done_returns():
    """Decisions between batches happen inside the callback that reports the batch's last trial, so Tune
    finds the next batch at once (its trial processes never idle, are never torn down for lack of work)."""
    steps = Lockstep(Flag())
    seen: list[list[str]] = []

    def strategy() -> str:
        steps.submit(["a1", "a2"], {"a1", "a2"})
        seen.append(["decided after a"])
        steps.submit(["b1"], {"b1"})
        return "winner"

    steps.start(strategy)
    assert steps.pop() == "a1" and steps.pop() == "a2"
    assert steps.pop() is None  # the strategy waits for running trials
    steps.done("a2")
    assert not seen and steps.pop() is None  # a1 still runs: nothing decided on half a batch
    steps.done("a1")
    assert seen == [["decided after a"]]
    assert steps.pop() == "b1"  # queued before done() returned
    steps.done("b1")
    assert steps.pop() == FINISHED and steps.idle
    assert steps.outcome() == "winner"


def test_only_one_side_runs_at_a_time():
    steps = Lockstep(Flag())
    inside = {"strategy": 0, "tune": 0}
    overlaps = []

    def strategy() -> None:
        for k in range(20):
            inside["strategy"] += 1
            overlaps.append(inside["tune"])
            time.sleep(0.001)
            inside["strategy"] -= 1
            steps.submit([f"t{k}"], {f"t{k}"})

    steps.start(strategy)
    while (item := steps.pop()) != FINISHED:
        if item is None:
            continue
        inside["tune"] += 1
        overlaps.append(inside["strategy"])
        inside["tune"] -= 1
        steps.done(item)
    steps.outcome()
    assert len(overlaps) == 40 and not any(overlaps)


def test_a_stop_wakes_a_waiting_strategy_and_nothing_new_starts():
    stop = Flag()
    steps = Lockstep(stop)
    after: list[str] = []

    def strategy() -> None:
        steps.submit(["a"], {"a"})
        after.append("woke")
        raise KeyboardInterrupt  # what the kernel's stop check raises (SweepInterrupted) in its place

    steps.start(strategy)
    assert steps.pop() == "a"
    stop.value = True
    assert steps.pop() == FINISHED
    with pytest.raises(KeyboardInterrupt):
        steps.outcome(timeout=5)
    assert after == ["woke"]


def test_a_strategy_error_reaches_the_driver_and_ends_the_queue():
    steps = Lockstep(Flag())

    def strategy() -> None:
        steps.submit(["a"], {"a"})
        raise ValueError("stage 1 produced no completed trial")

    steps.start(strategy)
    assert steps.pop() == "a"
    steps.done("a")
    assert steps.pop() == FINISHED
    with pytest.raises(ValueError, match="no completed trial"):
        steps.outcome()


def test_tune_ending_early_aborts_a_waiting_strategy():
    steps = Lockstep(Flag())
    steps.start(lambda: steps.submit(["a"], {"a"}))
    assert steps.pop() == "a"
    steps.abort()  # Tune's run ended without recording "a"
    with pytest.raises(Aborted):
        steps.outcome(timeout=5)


def test_nothing_to_run_needs_no_tune_run():
    steps = Lockstep(Flag())
    steps.start(lambda: steps.submit([], set()) or 7)
    assert steps.idle and steps.outcome() == 7


def test_done_for_an_unknown_trial_does_not_wake_the_strategy():
    steps = Lockstep(Flag())
    woke = threading.Event()

    def strategy() -> None:
        steps.submit(["a"], {"a"})
        woke.set()

    steps.start(strategy)
    steps.done("other")
    assert not woke.is_set()
    steps.done("a")
    assert woke.is_set()
    steps.outcome()
