"""Issue 13: arm-level early stopping, racing over seeds, Bayesian search, one ranking rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayclf.aggregate import arm_table, best_arm, stage_winners
from rayclf.config import ConfigError
from rayclf.results import ResultsStore
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


def test_arm_board_waits_for_every_planned_seed_then_stops_the_arm():
    board = ArmBoard(rung_rule("asha", 1, 2, 4), "max", "val_accuracy")
    assert board.rule.rungs == [1, 2]
    board.add_arm("good", "good", [("g0", 0), ("g1", 1)])
    board.observe("g0", 1, 0.9)
    board.decide("good")
    assert 1 not in board.decided["good"]  # g1 has not reached epoch 1 yet (whether it started or not)
    board.observe("g1", 1, 0.8)
    board.decide("good")
    assert board.recorded[1] == {"good": pytest.approx(0.85)}
    board.add_arm("bad", "bad", [("b0", 0), ("b1", 1)])
    board.observe("b0", 1, 0.2)
    board.observe("b0", 2, 0.3)  # the first seed runs ahead of the rung while the second catches up
    board.decide("bad")
    assert "bad" not in board.stopped
    board.end("b1")  # the second seed ended (failed) before the rung: the decision goes ahead without it
    assert board.stopped["bad"][0] == 1 and "mean val_accuracy 0.2 over 1 of 2 seed(s)" in board.stopped["bad"][1]
    board.add_arm("nan", "nan", [("n0", 0), ("n1", 1)])
    board.observe("n0", 1, float("nan"))  # a seed at the rung with no usable value has still reached it
    board.observe("n1", 1, 0.95)
    board.decide("nan")
    assert 1 in board.decided["nan"] and board.recorded[1]["nan"] == pytest.approx(0.95)


def test_one_board_for_a_whole_sweep_judges_a_stage_against_its_own_arms_only():
    """One Tune run (and one board) serves every stage: stage 2's arms, built on stage 1's winner, are judged
    against each other, not against stage 1's values; batches of one stage (bayes) share their rung values."""
    board = ArmBoard(rung_rule("asha", 1, 2, 4), "max", "val_accuracy")
    for arm, value in (("s1-a", 0.9), ("s1-b", 0.95)):
        board.add_arm(arm, arm, [(arm, 0)], stage=0)
        board.observe(arm, 1, value)
        board.decide(arm)
    board.add_arm("s2-a", "s2-a", [("s2-a", 0)], stage=1)
    board.observe("s2-a", 1, 0.5)
    assert not board.decide("s2-a")  # far below stage 1's arms, but the first of its own stage
    board.add_arm("s2-b", "s2-b", [("s2-b", 0)], stage=1)  # a later batch of the same stage
    board.observe("s2-b", 1, 0.4)
    assert board.decide("s2-b") and "s2-b" in board.stopped
    board.add_arm("s1-b", "s1-b", [("s1-b", 0)], stage=2)  # stage 1's winner, carried into stage 3 as its arm
    board.add_arm("s3-a", "s3-a", [("s3-a", 0)], stage=2)
    board.observe("s3-a", 1, 0.9)
    assert board.decide("s3-a") and "s3-a" in board.stopped  # below the carried winner's 0.95


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
@pytest.mark.timeout(90)
def test_asha_by_arm_pauses_seeds_at_rungs_decides_on_all_of_them_and_keeps_it_in_the_report(
        ray_local, tmp_path, monkeypatch):
    from rayclf.report import build_report
    from rayclf.sweep import schedulers
    from rayclf.sweep.decisions import STOP, DecisionLog
    from rayclf.sweep.keys import RESUMED_KEY
    from rayclf.sweep.runner import run_sweep

    seen: list[tuple[str, int, int, str]] = []  # (trial id, epoch, resumed from, decision) in Tune's order
    decide = schedulers.ArmScheduler.on_trial_result

    def spy(self, controller, trial, result):
        decision = decide(self, controller, trial, result)
        if "epoch" in result:
            seen.append((trial.config["trial"].trial_id, int(result["epoch"]), int(result.get(RESUMED_KEY) or 0),
                         decision))
        return decision

    monkeypatch.setattr(schedulers.ArmScheduler, "on_trial_result", spy)
    base = quick_base(epochs=3)
    base["train"]["checkpoint_every"] = 0  # only the rungs' forced checkpoints (and the last) to continue from
    spec = {"name": "asha_arm", "base": base,
            "search": {"grid": {"optim.lr": [0.1, 0.05, 0.00001]}},  # the good arms come first
            "seeds": [0, 1, 2], "resources": {"max_concurrent": 2},  # 3 seeds on 2 slots: a seed waits at a rung
            "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2}}
    out = str(tmp_path / "a")
    outcome = run_sweep(parse_sweep(spec), out=out, live=False, wandb_mode="disabled")
    rows = outcome.rows
    assert len(rows) == 9  # one row per trial, whatever happened
    paused = [(tid, epoch) for tid, epoch, _, d in seen if d == "PAUSE"]
    assert paused, "with 3 seeds on 2 slots a seed that reached a rung first pauses"
    for tid, epoch in paused:  # ... and continues from its forced rung checkpoint (checkpoint_every: 0)
        later = [(e, r) for t, e, r, _ in seen if t == tid and e > epoch]
        assert not later or later[0] == (epoch + 1, epoch)
    stops = DecisionLog(out).of_kind(STOP)
    assert stops and all(d.n_seeds == 3 and len(d.detail["values"]) == 3 for d in stops)  # always all 3 seeds
    bad = [r for r in rows if r["arm"] == "lr=1e-05"]
    # which rung cuts it depends on the order arms reach rung 1 (ASHA's own rule: an arm judged before the others
    # arrive passes), which a loaded machine changes; its seeds stop together, at a rung, where the log says
    assert {r["status"] for r in bad} == {"stopped_early"} and len({r["stopped_at_epoch"] for r in bad}) == 1
    rung = bad[0]["stopped_at_epoch"]
    assert rung in (1, 2) and [d.detail["rung"] for d in stops if d.label == "lr=1e-05"] == [rung]
    assert all("asha over its seeds" in r["reason"] and "over 3 of 3 seed(s)" in r["reason"] for r in bad)
    assert all(r["epochs"] >= 1 for r in bad)  # every seed trained to the rung: none judged unseen
    assert {r["status"] for r in rows if r["arm"] == "lr=0.1"} == {"completed"}  # the first arm is never cut
    epochs = [e for e in ResultsStore(out).epochs if e["trial_id"] in
              {r["trial_id"] for r in rows if r["status"] == "completed"}]
    for tid in {e["trial_id"] for e in epochs}:  # a paused seed's epochs once each, none lost or repeated
        assert sorted(e["epoch"] for e in epochs if e["trial_id"] == tid) == [1, 2, 3]
    stats = {s.arm: s for s in arm_table(rows, "max")}
    assert stats["lr=1e-05"].stopped_at == rung and stats["lr=1e-05"].mean is not None
    assert stats["lr=1e-05"].rank > stats["lr=0.1"].rank  # a stopped arm ranks below the one that finished
    assert f"stopped at epoch {rung}" in outcome.summary_text()
    rep = build_report(out)
    assert f"stopped at epoch {rung}" in (rep.out / "results.md").read_text()
    # resume: the stopped arm's seeds never run again
    again = run_sweep(parse_sweep(spec), out=out, resume=True, live=False, wandb_mode="disabled")
    assert again.skipped == 9


# ----------------------------------------------------------------------------- bayes and racing, without Ray
def _fake_rows(sweep, trials, value_of):
    """Stored rows for ``trials`` as a run would leave them, each value a function of (overrides, seed)."""
    return [{"trial_id": t.trial_id, "arm": t.arm.label, "seed": t.seed, "status": "completed", "epochs": 2,
             "metric_best": value_of(t.arm.overrides, t.seed), "test_accuracy": None, "stage": None}
            for t in trials]


BAYES = {"num_samples": 6, "seed": 3, "batch": 2, "startup": 2,
         "params": {"optim.lr": {"loguniform": [1e-4, 1.0]}, "model.dropout": {"uniform": [0.0, 0.5]},
                    "model.widths": {"choice": [[4, 8], [8, 16]]}}}


def _bayes_run(spec, fail_after=None, flip=False):
    """run_bayes with a fake trainer (value peaks at lr 0.1); returns the proposals and the stored rows."""
    import math

    from rayclf.sweep.bayes import run_bayes

    sweep = parse_sweep({"name": "b", "base": tiny(), "search": {"bayes": spec}, "seeds": [0, 1]})
    stored, seen = [], []

    def run_arms(batch, every):
        if fail_after is not None and len(seen) >= fail_after:
            raise RuntimeError("driver killed")
        seen.extend(batch)
        done = {r["trial_id"] for r in stored}
        todo = [t for t in sweep.trials(batch) if t.trial_id not in done]
        peak = -3 if flip else -1
        stored.extend(_fake_rows(sweep, todo, lambda o, s: 1 - abs(math.log10(o["optim.lr"]) - peak) / 4 + 0.01 * s))
        return len(sweep.trials(batch)) - len(todo)

    return sweep, run_bayes, run_arms, stored, seen


def test_bayes_proposals_are_reproducible_and_resume_continues_the_sequence(tmp_path):
    from rayclf.sweep.decisions import DecisionLog

    def log(name):
        return DecisionLog(str(tmp_path / name))

    sweep, run_bayes, run_arms, stored, seen = _bayes_run(BAYES)
    run_bayes(sweep, run_arms, lambda: stored, lambda _: None, log("a"))
    first = [a.overrides for a in seen]
    assert len(first) == 6 and len({a["optim.lr"] for a in first}) == 6
    assert all(a["model.widths"] in ([4, 8], [8, 16]) and 0 <= a["model.dropout"] <= 0.5 for a in first)
    assert [a.label for a in seen] == [f"bayes-{i}" for i in range(6)]

    sweep2, _, run2, stored2, seen2 = _bayes_run(BAYES)
    run_bayes(sweep2, run2, lambda: stored2, lambda _: None, log("b"))
    assert [a.overrides for a in seen2] == first  # same search seed, same sequence

    # a driver killed after the first batch; --resume tells the stored results back and continues
    sweep3, _, run3, stored3, _ = _bayes_run(BAYES, fail_after=2)
    with pytest.raises(RuntimeError):
        run_bayes(sweep3, run3, lambda: stored3, lambda _: None, log("c"))
    assert len(stored3) == 4
    seen4 = []
    stored4 = list(stored3)

    def resumed(batch, every):  # the same store as the killed run
        seen4.extend(batch)
        done = {r["trial_id"] for r in stored4}
        stored4.extend(r for r in _bayes_rows(sweep3, batch, stored) if r["trial_id"] not in done)
        return sum(t.trial_id in done for t in sweep3.trials(batch))

    skipped, _ = run_bayes(sweep3, resumed, lambda: stored4, lambda _: None, log("c"))
    assert skipped == 4 and [a.overrides for a in seen4] == first

    # the results are told: other results, same first (random) batch, different later proposals
    flipped = _bayes_run(BAYES, flip=True)
    flipped[1](flipped[0], flipped[2], lambda: flipped[3], lambda _: None, log("d"))
    got = [a.overrides for a in flipped[4]]
    assert got[:2] == first[:2] and got[2:] != first[2:]

    other = _bayes_run({**BAYES, "seed": 4})
    other[1](other[0], other[2], lambda: other[3], lambda _: None, log("e"))
    assert [a.overrides for a in other[4]] != first


def _bayes_rows(sweep, batch, reference):
    by_id = {r["trial_id"]: r for r in reference}
    return [by_id[t.trial_id] for t in sweep.trials(batch)]


def test_racing_eliminates_a_clearly_worse_arm_and_keeps_a_tied_one(tmp_path):
    from rayclf.sweep.decisions import DecisionLog
    from rayclf.sweep.racing import run_racing

    sweep = parse_sweep({"name": "r", "base": tiny(), "search": {"grid": {"optim.lr": [0.1, 0.11, 0.001]}},
                         "seeds": [0, 1, 2, 3], "scheduler": {"name": "racing", "level": 0.05}})
    value = {0.1: [0.90, 0.80, 0.85, 0.83], 0.11: [0.89, 0.82, 0.84, 0.84], 0.001: [0.40, 0.32, 0.35, 0.37]}
    stored, ran, eliminated = [], [], []

    def run(trials):  # as run_trials: finished trials are skipped
        todo = [t for t in trials if t.trial_id not in {r["trial_id"] for r in stored}]
        ran.extend(todo)
        stored.extend(_fake_rows(sweep, todo, lambda o, s: value[o["optim.lr"]][s]))
        return len(trials) - len(todo)

    def record(trials, reason):
        eliminated.extend(trials)
        stored.extend({"trial_id": t.trial_id, "arm": t.arm.label, "seed": t.seed, "status": "eliminated",
                       "reason": reason, "epochs": 0, "metric_best": None, "stage": None} for t in trials)

    run_racing(sweep, sweep.arms(), run, record, lambda: stored, lambda _: None, DecisionLog(str(tmp_path)))
    assert sorted(t.seed for t in ran if t.arm.label == "lr=0.001") == [0, 1]  # no seed after round 1
    assert sorted(t.seed for t in eliminated) == [2, 3] and {t.arm.label for t in eliminated} == {"lr=0.001"}
    assert sorted(t.seed for t in ran if t.arm.label == "lr=0.11") == [0, 1, 2, 3]  # the tied arm races on
    reason = next(r["reason"] for r in stored if r["status"] == "eliminated")
    assert "after round 1 (2 seeds): one-sided paired t-test vs lr=0.1" in reason
    stats = {s.arm: s for s in arm_table(stored, "max")}
    assert stats["lr=0.001"].eliminated and stats["lr=0.001"].n == 2 and stats["lr=0.001"].rank == 3
    assert len(stored) == 12  # one row per trial


# ----------------------------------------------------------------------------- on Ray: racing and bayes
def _tune_runs(out: str) -> int:
    """Tune runs a sweep started (each writes one experiment folder under the sweep's _ray)."""
    return len(list((Path(out) / "_ray").glob("run-*")))


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_racing_and_bayes_on_ray_record_every_trial_and_report(ray_local, tmp_path):
    from rayclf.report import build_report
    from rayclf.sweep.decisions import read_decisions
    from rayclf.sweep.runner import run_sweep

    racing = {"name": "race", "base": quick_base(epochs=1), "search": {"grid": {"optim.lr": [0.1, 0.000001]}},
              "seeds": [0, 1, 2], "scheduler": {"name": "racing", "level": 0.2}}
    racing["base"]["data"]["synthetic"]["noise"] = 0.0
    out = str(tmp_path / "race")
    outcome = run_sweep(parse_sweep(racing), out=out, live=False, wandb_mode="disabled")
    rows = {(r["arm"], r["seed"]): r for r in outcome.rows}
    assert len(rows) == 6
    assert rows[("lr=1e-06", 2)]["status"] == "eliminated" and rows[("lr=1e-06", 2)]["epochs"] == 0
    assert "after round 1 (2 seeds)" in rows[("lr=1e-06", 2)]["reason"]
    assert rows[("lr=0.1", 2)]["status"] == "completed"
    assert _tune_runs(out) == 1  # both rounds in one Tune run
    assert "eliminated after round 1" in (build_report(out).out / "results.md").read_text()
    (d,) = [x for x in read_decisions(out) if x.kind == "eliminate"]  # logged in the sweep directory, with
    # what it saw; the best arm's survival of round 1 is logged too
    assert [(x.kind, x.label) for x in read_decisions(out) if x.kind != "eliminate"] == [("survive", "lr=0.1")]
    assert (d.kind, d.label, d.detail["seeds"], d.detail["reason"]) == \
        ("eliminate", "lr=1e-06", [0, 1], rows[("lr=1e-06", 2)]["reason"])
    again = run_sweep(parse_sweep(racing), out=out, resume=True, live=False, wandb_mode="disabled")
    assert again.skipped == 5  # the 5 trained trials; the eliminated seed is neither run nor re-recorded
    assert {(r["arm"], r["seed"]): r["status"] for r in again.rows} == {k: r["status"] for k, r in rows.items()}
    assert _tune_runs(out) == 1  # nothing left to train: no Tune run at all

    bayes = {"name": "bo", "base": quick_base(epochs=1), "seeds": [0, 1],
             "search": {"bayes": {"num_samples": 3, "batch": 2, "startup": 2, "seed": 0,
                                  "params": {"optim.lr": {"loguniform": [0.001, 0.3]},
                                             "model.dropout": {"uniform": [0.0, 0.3]}}}}}
    out = str(tmp_path / "bo")
    outcome = run_sweep(parse_sweep(bayes), out=out, live=False, wandb_mode="disabled")
    assert len(outcome.rows) == 6 and {r["arm"] for r in outcome.rows} == {"bayes-0", "bayes-1", "bayes-2"}
    assert [r["position"] for r in outcome.rows] == list(range(6))
    assert _tune_runs(out) == 1  # two batches of proposals, one Tune run
    rep = build_report(out)
    assert "history" in rep.figures and "importance" in rep.figures
    assert run_sweep(parse_sweep(bayes), out=out, resume=True, live=False, wandb_mode="disabled").skipped == 6
    assert [(d.key, d.label) for d in read_decisions(out)] == [(f"/{i}", f"bayes-{i}") for i in range(3)]


def test_heatmap_keeps_a_stopped_arm_at_its_rung_and_marks_it():
    from rayclf.report.figures import _pivot

    def row(lr, wd, seed, status, value, epochs=4, stopped=None):
        return {**_row(f"lr={lr},wd={wd}", seed, status, value, epochs, stopped),
                "config.optim.lr": lr, "config.optim.weight_decay": wd}

    rows = [row(lr, wd, s, "completed", 0.8) for lr in (0.1, 0.01) for wd in (0.0, 0.001) for s in (0, 1)
            if (lr, wd) != (0.01, 0.001)]
    rows += [row(0.01, 0.001, s, "stopped_early", 0.3, epochs=1, stopped=1) for s in (0, 1)]
    r, c, grid, stopped = _pivot(rows, "optim.lr", "optim.weight_decay", "val_accuracy")
    assert not any(v != v for v in grid.ravel())  # no holes
    assert stopped == {(r.index(0.01), c.index(0.001)): 1}
    assert grid[r.index(0.01), c.index(0.001)] == pytest.approx(30.0)


def test_a_stage_may_search_with_bayes_around_the_carried_winner(tmp_path):
    """Staged sweeps may use bayes inside a stage: the dry run lists its first batch, and the proposals are
    the stage's arms (stage label, stage index, the previous winner's values carried)."""
    from rayclf.sweep.plan import dry_run_text

    spec = {"name": "sb", "base": tiny(), "seeds": [0],
            "search": {"stages": [{"name": "lr", "vary": {"optim.lr": [0.01, 0.1]}},
                                  {"name": "reg", "bayes": {"num_samples": 3, "batch": 2, "startup": 2,
                                                            "params": {"model.dropout": {"uniform": [0, 0.5]}}}}]}}
    sweep = parse_sweep(spec)
    text = dry_run_text(sweep)
    assert "reg:bayes-0" in text and "reg:bayes-1" in text and "reg:bayes-2" not in text
    from rayclf.sweep.bayes import propose

    carried = {"optim.lr": 0.1}
    first = propose(sweep.bayes_stage(1, carried), [], 2)
    placed = sweep.place(first, 1, carried)
    assert [a.label for a in placed] == ["reg:bayes-0", "reg:bayes-1"] and all(a.stage == 1 for a in placed)
    # the view's trials are the staged sweep's trials: same content address, so results are found by id
    assert [t.trial_id for t in sweep.bayes_stage(1, carried).trials(first)] == \
        [t.trial_id for t in sweep.trials(placed)]
    assert all(t.config.optim.lr == 0.1 for t in sweep.trials(placed))
    with pytest.raises(ConfigError, match="one of vary"):
        parse_sweep({**spec, "search": {"stages": [{"name": "x"}]}})


@pytest.mark.ray
@pytest.mark.timeout(90)
def test_staged_sweep_with_a_bayes_stage_runs_end_to_end(ray_local, tmp_path):
    from rayclf.sweep.runner import run_sweep

    spec = {"name": "sbr", "base": quick_base(epochs=1), "seeds": [0],
            "search": {"stages": [{"name": "lr", "vary": {"optim.lr": [0.000001, 0.1]}},
                                  {"name": "reg", "bayes": {"num_samples": 2, "batch": 2, "startup": 2,
                                                            "params": {"model.dropout": {"uniform": [0, 0.3]}}}}]}}
    spec["base"]["data"]["synthetic"]["noise"] = 0.0
    outcome = run_sweep(parse_sweep(spec), out=str(tmp_path / "sbr"), live=False, wandb_mode="disabled")
    rows = {r["arm"]: r for r in outcome.rows}
    assert set(rows) == {"lr:lr=1e-06", "lr:lr=0.1", "reg:bayes-0", "reg:bayes-1"}
    assert all(rows[a]["stage"] == 1 and rows[a]["config.optim.lr"] == 0.1 for a in ("reg:bayes-0", "reg:bayes-1"))
    assert outcome.winner is not None and outcome.winner.label.startswith("reg:bayes-")
    from rayclf.sweep.decisions import read_decisions

    logged = read_decisions(str(tmp_path / "sbr"))
    assert [d.key for d in logged if d.kind == "proposal"] == ["1/0", "1/1"]
    assert [(d.key, d.label) for d in logged if d.kind == "winner"] == [("0", "lr:lr=0.1"), ("1", outcome.winner.label)]
