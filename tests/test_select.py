"""Picking arms of a sweep file (``rayclf train FILE --arm``, ``rayclf sweep FILE --arm``): the picked arm is the
sweep's own arm, so its trial id is the sweep's; staged arms take earlier winners from a decision log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rayclf.cli import main
from rayclf.config import ConfigError
from rayclf.sweep.decisions import WINNER, Decision, DecisionLog
from rayclf.sweep.select import arm_trial, select_arms, sweep_arms
from rayclf.sweep.spec import Arm, load_sweep, parse_sweep

from .conftest import tiny

BASE = tiny(data={"synthetic": {"num_train": 60, "num_test": 30, "num_classes": 3, "image_size": 8}},
            train={"epochs": 1, "batch_size": 30})
GRID = {"name": "g", "base": BASE, "seeds": [0, 1],
        "search": {"grid": {"optim.lr": [0.01, 0.1], "model.widths": [[4], [4, 8]]}}}
STAGED = {"name": "st", "base": BASE, "search": {"stages": [
    {"name": "lr", "vary": {"optim.lr": [0.01, 0.1]}},
    {"name": "width", "vary": {"model.widths": [[4], [8]]}},
    {"name": "bs", "vary": {"train.batch_size": [10, 20]}, "carry": {"train.batch_size": 20}},
    {"name": "epochs", "vary": {"train.epochs": [1, 2]}}],
    "final": {"optim.lr": 0.05, "model.widths": [6], "train.epochs": 2}}}


BASE_LR = 0.05  # the default optim.lr of BASE


def write(tmp_path: Path, spec: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_train_arm_trains_the_sweeps_own_trial(tmp_path):
    path = write(tmp_path, GRID)
    sweep = load_sweep(path)
    trials = sweep.trials(sweep.arms())
    label = "lr=0.1,widths=4/8"
    want = next(t for t in trials if t.arm.label == label and t.seed == 1)
    assert arm_trial(path, label, 1, None, ()).trial_id == want.trial_id
    assert arm_trial(path, want.arm_id[:8], 1, None, ()).trial_id == want.trial_id  # by arm id prefix
    first = next(t for t in trials if t.arm.label == label and t.seed == 0)
    assert arm_trial(path, label, None, None, ()).trial_id == first.trial_id  # the sweep's first seed
    # --set applies to the arm as it does to the sweep
    assert (arm_trial(path, label, 0, None, ("train.epochs=2",)).trial_id ==
            next(t for t in load_sweep(path, ("train.epochs=2",)).trials(sweep.arms())
                 if t.arm.label == label and t.seed == 0).trial_id != first.trial_id)

    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", str(path), "--arm", label, "--seed", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"trial {want.trial_id}" in res.output
    assert yaml.safe_load((out / "config.yaml").read_text()) == want.config.to_dict()
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1


def test_unknown_arm_ambiguous_prefix_and_adaptive_subset_exit_2(tmp_path):
    path = write(tmp_path, GRID)
    res = CliRunner().invoke(main, ["train", str(path), "--arm", "lr=0.1,widths=4/9"])
    assert res.exit_code == 2 and "did you mean 'lr=0.1,widths=4/8'" in res.output
    res = CliRunner().invoke(main, ["sweep", str(path), "--arm", "lr=0.1", "--dry-run"])  # whole labels only
    assert res.exit_code == 2 and "neither an arm label nor an arm id" in res.output
    asha = write(tmp_path, {**GRID, "scheduler": {"name": "asha", "grace_period": 1}}, "asha.yaml")
    res = CliRunner().invoke(main, ["sweep", str(asha), "--arm", "lr=0.1,widths=4", "--dry-run"])
    assert res.exit_code == 2 and "scheduler asha" in res.output and "rayclf train FILE --arm" in res.output
    res = CliRunner().invoke(main, ["sweep", str(path), "--arm", "lr=0.1,widths=4", "--arm", "lr=0.01,widths=4",
                                    "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "2 arms × 2 seeds = 4 trials" in res.output and "widths=4/8" not in res.output


def test_staged_arms_need_the_earlier_winners_from_the_decision_log(tmp_path):
    sweep = parse_sweep(STAGED)
    known, pending = sweep_arms(sweep)
    # stage 1 needs no winner; stage 3 follows stage 2's winner (unknown); the final run pins lr and widths,
    # and stage 3's carry pins the batch size, but stage 4's epochs winner is unknown… and final pins epochs
    assert [a.label for a in known] == ["lr:lr=0.01", "lr:lr=0.1", "final"]
    assert "width:widths=4" in pending and "epochs:epochs=2" in pending
    with pytest.raises(ConfigError, match="--from"):
        select_arms(sweep, ["width:widths=4"])

    # what run_staged would run after these winners: carried = carried_after(stage, winner's overrides)
    winners = [{"optim.lr": 0.1}, {"optim.lr": 0.1, "model.widths": [8]},
               {"optim.lr": 0.1, "model.widths": [8], "train.batch_size": 10},
               {"optim.lr": 0.1, "model.widths": [8], "train.batch_size": 20, "train.epochs": 2}]
    log = DecisionLog(str(tmp_path / "done"))
    for i, w in enumerate(winners):
        log.record(Decision(kind=WINNER, key=str(i), arm_id="x", label="?", stage=i, detail={"overrides": w}))
    picked = select_arms(sweep, ["bs:batch_size=10", "epochs:epochs=1", "final", "width:widths=4"],
                         str(tmp_path / "done"))
    carried = {}
    expected = []
    for i in range(sweep.stage_count()):
        expected += sweep.trials(sweep.arms(carried, stage=i))
        carried = sweep.carried_after(i, winners[i])
    final = sweep.trials([Arm("final", {**carried, **STAGED["search"]["final"]}, 4)])
    by_label = {t.arm.label: t.trial_id for t in expected + final}
    got = {t.arm.label: t.trial_id for t in sweep.trials(picked.arms)}
    assert got == {k: by_label[k] for k in got} and len(got) == 4
    # stage 3's carry, not its winner (batch 10), reaches stage 4
    assert dict(next(a for a in picked.arms if a.label == "epochs:epochs=1").overrides)["train.batch_size"] == 20
    # the final run is the same trial with or without --from
    assert got["final"] == next(t.trial_id for t in sweep.trials(known) if t.arm.label == "final")
    assert [(len(p), len(a)) for p, a in picked.groups()] == [(1, 2), (1, 2), (1, 2), (1, 1)]


@pytest.mark.ray
def test_sweep_arm_subset_runs_the_sweeps_trials_and_a_full_run_skips_them(ray_local, tmp_path):
    from rayclf.sweep.runner import run_sweep
    from rayclf.sweep.select import pick

    sweep = parse_sweep({**GRID, "seeds": [0]})
    out = str(tmp_path / "sweep")
    label = "lr=0.1,widths=4"
    outcome = run_sweep(sweep, out=out, live=False, wandb_mode="disabled", selection=pick(sweep, (label,), None))
    assert [(r["arm"], r["trial_id"]) for r in outcome.rows] == [
        (t.arm.label, t.trial_id) for t in sweep.trials(sweep.arms()) if t.arm.label == label]
    full = run_sweep(sweep, out=out, resume=True, live=False, wandb_mode="disabled")
    assert full.skipped == 1 and len(full.rows) == 4


def test_a_stage_arm_that_sets_every_winner_value_itself_needs_no_winner():
    spec = {"name": "st2", "base": BASE, "search": {"stages": [
        {"name": "lr", "vary": {"optim.lr": [0.01, 0.1]}},
        {"name": "pinned", "vary": {"recipe": {"full": {"optim.lr": 0.02, "model.widths": [6]},
                                               "partial": {"model.widths": [6]}}}}]}}
    sweep = parse_sweep(spec)
    known, pending = sweep_arms(sweep)
    assert [a.label for a in known] == ["lr:lr=0.01", "lr:lr=0.1", "pinned:recipe=full"]
    assert pending == ["pinned:recipe=partial"]
    winner = {"optim.lr": 0.01}  # whichever stage 1 picks, the full arm is this very trial
    assert sweep.trials([known[-1]])[0].trial_id == sweep.trials(sweep.arms(winner, stage=1))[0].trial_id
    # a level equal to the base's lr around the base aliases the partial arm, but not around a real winner:
    # aliasing that depends on the winner is never taken for granted
    aliasing = parse_sweep({**spec, "search": {"stages": [spec["search"]["stages"][0], {"name": "pinned", "vary": {
        "recipe": {"full": {"optim.lr": BASE_LR, "model.widths": [6]}, "partial": {"model.widths": [6]}}}}]}})
    assert aliasing.arms({}, stage=1)[0].aliases == ("pinned:recipe=partial",)
    known, pending = sweep_arms(aliasing)
    assert known[-1].label == "pinned:recipe=full" and not known[-1].aliases and pending == ["pinned:recipe=partial"]


def test_estimate_counts_every_training_image_when_the_test_set_validates(tmp_path):
    from rayclf.config import build_config
    from rayclf.sweep.plan import train_images

    data = {"name": "cifar10", "root": str(tmp_path), "download": False}
    assert train_images(build_config({"data": data}))[0] == 45_000
    assert train_images(build_config({"data": {**data, "validate_on": "test"}}))[0] == 50_000


def test_from_a_finished_staged_sweep_picks_the_very_trials_it_ran(tmp_path):
    """The kernel logs each stage winner (its full overrides); --from reads them back, so a later stage's arm and
    the final run picked from that directory are the trials the sweep ran (carry included)."""
    from rayclf.sweep.kernel import execute

    from .fake_runner import FakeTrials, fake_run

    spec = {**STAGED, "seeds": [0, 1]}
    sweep = parse_sweep(spec)
    done = str(tmp_path / "done")
    execute(fake_run(sweep, done))
    ran = {(r["arm"], r["seed"]): r["trial_id"] for r in fake_run(sweep, done).store.trials}
    # stage 3's carry (batch 20) reached stage 4 whatever stage 3 picked
    assert {r["config.train.batch_size"] for r in fake_run(sweep, done).store.trials if r["stage"] == 3} == {20}
    labels = ["width:widths=8", "bs:batch_size=10", "epochs:epochs=2", "final"]
    picked = select_arms(sweep, labels, done)
    got = {(t.arm.label, t.seed): t.trial_id for t in sweep.trials(picked.arms)}
    assert got == {k: v for k, v in ran.items() if k[0] in labels} and len(got) == 8

    # the same arms run alone into a fresh directory (FIFO, nothing decided): the same trial ids, and a full run
    # there afterwards skips them
    fresh = str(tmp_path / "fresh")
    runner = FakeTrials()
    sub = execute(fake_run(sweep, fresh, runner, selection=picked))
    assert {r["trial_id"] for r in sub.rows} == set(got.values()) and sub.winner is None
    assert not (tmp_path / "fresh" / "decisions.parquet").exists()
