"""Issue 13: arm-level early stopping, racing over seeds, Bayesian search, one ranking rule."""

from __future__ import annotations

import pytest

from rayclf.aggregate import arm_table, best_arm, stage_winners
from rayclf.config import ConfigError
from rayclf.sweep.schedulers import ArmBoard, rung_rule
from rayclf.sweep.spec import parse_sweep

from .conftest import tiny


def quick_base(epochs: int = 2, **kw):
    return tiny(data={"synthetic": {"num_train": 300, "num_test": 100, "num_classes": 4, "image_size": 16}},
                train={"epochs": epochs, "batch_size": 50}, **kw)


# ----------------------------------------------------------------------------- the ranking rule
def _row(arm, seed, status, value, epochs=4, stopped_at=None, reason="", stage=None):
    return {"arm": arm, "seed": seed, "status": status, "metric_best": value, "test_accuracy": value,
            "epochs": epochs, "stopped_at_epoch": stopped_at, "reason": reason, "stage": stage}


def test_ranking_rule_keeps_stopped_and_eliminated_arms_and_ranks_them_below_finished_ones():
    rows = [_row("full", s, "completed", 0.70 + 0.01 * s) for s in range(3)]
    rows += [_row("stopped", s, "stopped_early", 0.95, epochs=2, stopped_at=2) for s in range(2)]
    rows += [_row("stopped", 2, "stopped_early", None, epochs=0, stopped_at=2)]  # never started
    rows += [_row("early", s, "stopped_early", 0.99, epochs=1, stopped_at=1) for s in range(3)]
    rows += [_row("raced", s, "completed", 0.80) for s in range(2)]
    rows += [_row("raced", 2, "eliminated", None, epochs=0, reason="after round 1: paired t-test p=0.01")]
    stats = {r.arm: r for r in arm_table(rows, "max")}
    assert set(stats) == {"full", "stopped", "early", "raced"}  # nothing dropped
    assert stats["stopped"].mean == pytest.approx(0.95) and stats["stopped"].n == 2
    assert stats["stopped"].stopped_at == 2 and stats["stopped"].note == "stopped at epoch 2"
    assert stats["raced"].eliminated and "paired t-test" in stats["raced"].note
    # finished arms first, then eliminated, then stopped (later rung first) — whatever the values
    assert [stats[a].rank for a in ("full", "raced", "stopped", "early")] == [1, 2, 3, 4]
    assert best_arm(list(stats.values()), "max").arm == "full" and stats["full"].best
    staged = [{**r, "stage": 0} for r in rows]
    assert stage_winners(arm_table(staged, "max"), "max") == {0: "full"}


def test_arm_board_waits_for_every_started_seed_then_stops_the_arm():
    board = ArmBoard(rung_rule("asha", 1, 2, 4), "max", "val_accuracy")
    assert board.rule.rungs == [1, 2]
    for t in ("g0", "g1"):
        board.start("good", t)
    board.observe("g0", 1, 0.9)
    board.decide("good")
    assert 1 not in board.decided["good"]  # g1 has not reached epoch 1 yet
    board.observe("g1", 1, 0.8)
    board.decide("good")
    assert board.recorded[1] == {"good": pytest.approx(0.85)}
    for t in ("b0", "b1"):
        board.start("bad", t)
    board.observe("b0", 1, 0.2)
    board.observe("b0", 2, 0.3)  # the first seed runs ahead of the rung while the second catches up
    board.decide("bad")
    assert "bad" not in board.stopped
    board.ended.add("b1")  # the second seed ended (failed) before the rung: the decision goes ahead without it
    board.decide("bad")
    assert board.stopped["bad"][0] == 1 and "mean val_accuracy 0.2" in board.stopped["bad"][1]


# ----------------------------------------------------------------------------- the sweep file
@pytest.mark.parametrize(("search", "scheduler", "expected"), [
    ({"bayes": {"num_samples": 4, "params": {"optim.lr": {"loguniform": [0, 1]}}}}, None, "low > 0"),
    ({"bayes": {"num_samples": 4, "params": {"optim.lr": {"logunifrom": [1e-3, 1]}}}}, None,
     "did you mean 'loguniform'"),
    ({"bayes": {"num_samples": 4, "params": {}}}, None, "at least one parameter"),
    ({"bayes": {"num_samples": 4, "parms": {"optim.lr": {"uniform": [0.1, 1]}}}}, None, "Did you mean 'params'"),
    ({"bayes": {"num_samples": 4, "params": {"optim.lrr": {"uniform": [0.1, 1]}}}}, None, "Did you mean 'lr'"),
    ({"grid": {"optim.lr": [0.1, 0.2]}}, {"name": "racin"}, "Did you mean 'racing'"),
    ({"grid": {"optim.lr": [0.1, 0.2]}}, {"name": "racing", "level": 0.7}, "scheduler.level"),
    ({"grid": {"optim.lr": [0.1, 0.2]}}, {"name": "asha", "level": 0.1}, "only applies to scheduler name: racing"),
    ({"grid": {"optim.lr": [0.1, 0.2]}}, {"name": "racing", "grace_period": 2}, "only applies to asha"),
    ({"grid": {"optim.lr": [0.1, 0.2]}}, {"name": "racing", "test": "wilcoxn"}, "Did you mean 'wilcoxon'"),
])
def test_bad_bayes_and_racing_blocks_give_clear_errors(search, scheduler, expected):
    spec = {"name": "t", "base": tiny(), "search": search, "seeds": [0, 1]}
    if scheduler:
        spec["scheduler"] = scheduler
    with pytest.raises(ConfigError, match=expected):
        parse_sweep(spec)


def test_racing_needs_two_seeds():
    with pytest.raises(ConfigError, match="at least 2 seeds"):
        parse_sweep({"name": "t", "base": tiny(), "search": {"grid": {"optim.lr": [0.1]}},
                     "scheduler": {"name": "racing"}})


# ----------------------------------------------------------------------------- on Ray
@pytest.mark.ray
def test_asha_by_arm_stops_every_seed_of_an_arm_together_and_keeps_it_in_the_report(ray_local, tmp_path):
    from rayclf.report import build_report
    from rayclf.sweep.runner import run_sweep

    spec = {"name": "asha_arm", "base": quick_base(epochs=3),
            "search": {"grid": {"optim.lr": [0.1, 0.05, 0.00001]}},  # the good arms come first
            "seeds": [0, 1, 2], "resources": {"max_concurrent": 2},
            "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2}}
    out = str(tmp_path / "a")
    outcome = run_sweep(parse_sweep(spec), out=out, live=False, wandb_mode="disabled")
    rows = outcome.rows
    assert len(rows) == 9  # one row per trial, whatever happened
    bad = [r for r in rows if r["arm"] == "lr=1e-05"]
    assert {r["status"] for r in bad} == {"stopped_early"}
    assert {r["stopped_at_epoch"] for r in bad} == {1}
    assert all("asha over its seeds" in r["reason"] for r in bad)
    started = [r for r in bad if r["epochs"]]
    # stopped together at the rung (a seed that got there first may have trained one epoch more meanwhile)
    assert len(started) == 2 and min(r["epochs"] for r in started) == 1 and max(r["epochs"] for r in started) <= 2
    assert {r["status"] for r in rows if r["arm"] == "lr=0.1"} == {"completed"}  # the first arm is never cut
    never = [r for r in bad if not r["epochs"]]
    assert len(never) == 1 and "never started" in never[0]["reason"]  # the third seed did not start
    stats = {s.arm: s for s in arm_table(rows, "max")}
    assert stats["lr=1e-05"].stopped_at == 1 and stats["lr=1e-05"].mean is not None
    assert stats["lr=1e-05"].rank == 3
    assert "stopped at epoch 1" in outcome.summary_text()
    rep = build_report(out)
    assert "stopped at epoch 1" in (rep.out / "results.md").read_text()
    # resume: the stopped arm's seeds (the unstarted one included) never run again
    again = run_sweep(parse_sweep(spec), out=out, resume=True, live=False, wandb_mode="disabled")
    assert again.skipped == 9
