"""One Tune run per sweep, without Ray: the real ``TuneSession`` (lockstep, queue, board, recorder) driven by the
fake Tune controller (``fake_tune``), which calls the searcher and scheduler as Ray Tune 2.x does and fails if
``suggest`` returns None while nothing runs (real Tune would then poll for ten minutes, deaf to Ctrl-C)."""

from __future__ import annotations

from typing import Any

import pytest

from rayclf.sweep.decisions import STOP, WINNER, DecisionLog
from rayclf.sweep.kernel import execute
from rayclf.sweep.schedulers import ArmScheduler
from rayclf.sweep.session import TuneSession
from rayclf.sweep.spec import parse_sweep
from rayclf.sweep.trialspec import TrialSpec

from .conftest import tiny
from .fake_runner import fake_run
from .fake_tune import FakeTune


def _value(info: TrialSpec, epoch: int) -> float:
    """Accuracy rises with epochs; higher lr and wider models are better; seeds differ a little."""
    lr = info.config["optim"]["lr"]
    width = info.config["model"]["widths"][0]
    return min(0.99, (10 * lr + width / 64) * epoch / 4 + 0.01 * info.seed)


def _staged(scheduler: dict[str, Any], seeds: list[int]) -> Any:
    return parse_sweep({
        "name": "one-run", "base": tiny(train={"epochs": 4}), "seeds": seeds, "scheduler": scheduler,
        "search": {"stages": [{"name": "lr", "vary": {"optim.lr": [0.01, 0.02, 0.03]}},
                              {"name": "width", "vary": {"model.widths": [[4, 8], [8, 16], [16, 32]]}}],
                   "final": {"train.epochs": 5}}})


def _one_run(sweep: Any, out: str, slots: int) -> tuple[Any, FakeTune, TuneSession]:
    """The sweep through ``TuneSession`` with the fake controller as its single Tune run."""
    run = fake_run(sweep, out, live=False)
    session = TuneSession(run)
    session._check = lambda todo: None  # datasets and packing: Ray's business, not this test's
    session._slots = lambda: slots
    run.execute_trials = session.run_batch
    session.steps.start(lambda: execute(run))
    if session.steps.error is not None:
        raise session.steps.error
    tune = FakeTune(session.queue, ArmScheduler(session.queue.board, session._complete), _value, slots,
                    [session.recorder])
    assert tune.run(), "the single run ended"
    session.steps.abort()
    return session.steps.outcome(), tune, session


@pytest.mark.parametrize(("scheduler", "seeds", "slots"), [
    ({"name": "fifo"}, [0], 2),
    ({"name": "asha", "grace_period": 1, "reduction_factor": 2}, [0, 1, 2], 2),  # seeds outnumber slots: pauses
])
def test_a_staged_sweep_runs_every_stage_in_one_tune_run(tmp_path, scheduler, seeds, slots):
    out = str(tmp_path / "out")
    outcome, tune, _ = _one_run(_staged(scheduler, seeds), out, slots)
    rows = {(r["arm"], r["seed"]): r for r in outcome.rows}
    # stage 2's "widths=8/16" is stage 1's winner's own config: carried, not retrained
    assert {a for a, _ in rows} == {"lr:lr=0.01", "lr:lr=0.02", "lr:lr=0.03", "width:widths=4/8",
                                    "width:widths=16/32", "final"}
    assert len(tune.trials) == 6 * len(seeds)  # every trial handed out once, in one run
    # the next stage (and the final) is staged inside the completion of the stage's last trial, before Tune
    # would release that trial's process for want of a staged trial
    assert tune.staged_in_hook == 2
    winners = {d.key: d.label for d in DecisionLog(out).of_kind(WINNER)}
    assert winners == {"0": "lr:lr=0.03", "1": "width:widths=16/32"}
    assert rows[("final", 0)]["config.optim.lr"] == 0.03 and rows[("final", 0)]["epochs"] == 5
    assert rows[("final", 0)]["config.model.widths"] in ([16, 32], "[16,32]")  # the store keeps lists as JSON
    if scheduler["name"] == "asha":
        stops = {d.label for d in DecisionLog(out).of_kind(STOP)}
        # below the carried stage-1 winner (an arm of stage 2 too, trained in stage 1) at the first rung
        assert "width:widths=4/8" in stops and stops <= {a for a, _ in rows} - {"final"}
        assert tune.pauses, "seeds outnumbering slots wait at rungs for their arm's decision"
        # stage 2's arms were judged among themselves: the first of them at a rung is never stopped there by
        # stage 1's values, so at least one stage-2 arm trained to the end on every seed
        assert any(all(rows[(a, s)]["status"] == "completed" for s in seeds)
                   for a in ("width:widths=4/8", "width:widths=16/32"))


def test_the_strategy_decides_inside_the_last_trials_callback(tmp_path):
    """The next stage is queued before Tune asks again: the fake controller never sees an idle queue while
    nothing runs (it would fail), and the stage-2 trials are handed out in the same step stage 1 ended."""
    out = str(tmp_path / "out")
    _, tune, session = _one_run(_staged({"name": "fifo"}, [0]), out, 2)
    handed = [h for h, _ in tune.handouts]
    assert len(handed) == 6 and session.steps.idle


def test_a_later_stage_that_trains_longer_gets_rungs_that_reach_its_epochs(tmp_path):
    sweep = parse_sweep({
        "name": "longer", "base": tiny(train={"epochs": 2}), "seeds": [0],
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "search": {"stages": [{"name": "lr", "vary": {"optim.lr": [0.01, 0.03]}},
                              {"name": "len", "vary": {"train.epochs": [4, 8]}}]}})
    _, tune, session = _one_run(sweep, str(tmp_path / "out"), 2)
    rungs = {t.config["trial"].arm: t.config["trial"].rungs for t in tune.trials}
    assert rungs["lr:lr=0.01"] == (1,) and rungs["len:epochs=8"] == (1, 2, 4)
    assert session.queue.board.rule.rungs == [1, 2, 4]


def test_without_rungs_a_free_slot_never_waits_for_a_whole_arm(tmp_path):
    """fifo hands out the next seed as soon as one slot frees (asha keeps an arm's seeds together for its
    rungs): on 2 slots, 3 seeds per arm, a new arm's first seed starts while the other slot still trains."""
    sweep = parse_sweep({"name": "ff", "base": tiny(train={"epochs": 2}), "seeds": [0, 1, 2],
                         "search": {"grid": {"optim.lr": [0.01, 0.02, 0.03]}}})
    _, tune, _ = _one_run(sweep, str(tmp_path / "out"), 2)
    busy = [b for _, b in tune.handouts]
    assert busy.count(0) == 1 and len(busy) == 9  # only the first seed found both slots idle
