"""Issue 20: the sweep kernel on a fake trial runner (no Ray): arms as identities, logged stage decisions replayed
on resume, interrupts that take no decision, resume checks, and random sequences of user actions."""

from __future__ import annotations

import copy
import random

import pytest

from rayclf.aggregate import arm_table
from rayclf.config import UserError
from rayclf.results import ResultsStore
from rayclf.sweep.decisions import WINNER, read_decisions
from rayclf.sweep.interrupt import SweepInterrupted
from rayclf.sweep.kernel import execute
from rayclf.sweep.runner import prepare_out as _prepare_out
from rayclf.sweep.spec import parse_sweep

from .fake_runner import FakeTrials, fake_run


def _base(**kw):
    base = {"data": {"name": "synthetic", "synthetic": {"num_train": 64, "num_test": 32, "num_classes": 4,
                                                        "image_size": 8}},
            "model": {"name": "cnn", "widths": [4], "dropout": 0.1}, "train": {"epochs": 3, "batch_size": 32},
            "optim": {"name": "sgd", "lr": 0.05}}
    base.update(kw)
    return base


def ablation(seeds=(0, 1, 2), levels=(0.05, 0.1), metric="val_accuracy"):
    return {"name": "abl", "base": _base(), "metric": metric, "seeds": list(seeds),
            "search": {"ablation": {"factors": {"optim.lr": list(levels), "model.dropout": [0.3]}}}}


def staged(seeds=(0, 1), metric="val_accuracy", stage1=(0.02, 0.1)):
    return {"name": "stg", "base": _base(), "metric": metric, "seeds": list(seeds),
            "search": {"stages": [{"name": "lr", "vary": {"optim.lr": list(stage1)}},
                                  {"name": "drop", "vary": {"model.dropout": [0.0, 0.3]}}],
                       "final": {"train.epochs": 4}}}


def prepare_out(sweep, out, resume):
    """The driver's start-up checks, lock released again (the test is not a running sweep)."""
    _, _, lock = _prepare_out(sweep, out, resume)
    lock.release()


def _table(rows, mode="max"):
    return {r.arm: r for r in arm_table(rows, mode)}


# ----------------------------------------------------------------------------- arms as identities
@pytest.mark.parametrize("metric", ["val_accuracy", "val_loss"])
def test_an_ablation_level_equal_to_the_baseline_is_the_baseline(tmp_path, metric):
    sweep = parse_sweep(ablation(metric=metric))
    arms = sweep.arms()
    assert [a.label for a in arms] == ["baseline", "lr=0.1", "dropout=0.3"]
    assert arms[0].aliases == ("lr=0.05",)
    outcome = execute(fake_run(sweep, str(tmp_path)))
    assert len(outcome.rows) == 9 and len({r["trial_id"] for r in outcome.rows}) == 9
    stats = _table(outcome.rows, sweep.file.mode)
    assert set(stats) == {"baseline", "lr=0.1", "dropout=0.3"}
    assert stats["baseline"].n == 3 and stats["lr=0.1"].pairs == 3
    assert "lr=0.05 is baseline's config" in outcome.summary_text()
    from rayclf.report import build_report
    from rayclf.sweep.spec import dump_sweep

    (tmp_path / "sweep.yaml").write_text(dump_sweep(sweep))  # as the driver writes it
    build_report(str(tmp_path), tmp_path / "report")
    assert "lr=0.05 is baseline's config (one arm, shown once)" in (tmp_path / "report" / "results.md").read_text()


def test_labels_of_distinct_numbers_never_coincide_and_do_not_depend_on_the_sample_count():
    sweep = parse_sweep({**ablation(levels=(0.0500001, 0.05000012)), "seeds": [0]})
    labels = [a.label for a in sweep.arms()]
    assert len(set(labels)) == len(labels) == 4
    few = parse_sweep({"name": "r", "base": _base(), "search": {"random": {"num_samples": 9, "params": {
        "optim.lr": {"loguniform": [0.001, 0.1]}}}}})
    more = parse_sweep({"name": "r", "base": _base(), "search": {"random": {"num_samples": 10, "params": {
        "optim.lr": {"loguniform": [0.001, 0.1]}}}}})
    assert [a.label for a in few.arms()] == [a.label for a in more.arms()][:9]


# ----------------------------------------------------------------------------- stages: logged, replayed
@pytest.mark.parametrize("metric", ["val_accuracy", "val_loss"])
def test_stage_winners_are_logged_and_replayed_on_resume(tmp_path, metric):
    sweep = parse_sweep(staged(metric=metric))
    first = execute(fake_run(sweep, str(tmp_path)))
    winners = [d for d in read_decisions(str(tmp_path)) if d.kind == WINNER]
    assert [d.key for d in winners] == ["0", "1"] and all(d.n_seeds == 2 for d in winners)
    assert first.winner.label == winners[-1].label
    # resumed with a seed more: the logged winners stay, the new seed runs for every arm of every stage
    more = parse_sweep(staged(seeds=(0, 1, 2), metric=metric))
    runner = FakeTrials()
    second = execute(fake_run(more, str(tmp_path), runner))
    assert second.winner.label == first.winner.label
    assert [d.seq for d in read_decisions(str(tmp_path)) if d.kind == WINNER] == [d.seq for d in winners]
    assert sum(len(c) for c in runner.calls) == 2 + 2 + 1  # only the new seed of each planned arm
    before = {r["trial_id"]: r for r in first.rows}
    after = {r["trial_id"]: r for r in second.rows}
    assert all(after[t] == before[t] for t in before)  # nothing finished changed


def test_an_arm_added_to_a_decided_stage_is_refused_until_redecided(tmp_path):
    execute(fake_run(parse_sweep(staged()), str(tmp_path)))
    edited = parse_sweep(staged(stage1=(0.02, 0.1, 0.2)))
    with pytest.raises(UserError, match=r"added lr:lr=0\.2.*--redecide lr"):
        execute(fake_run(edited, str(tmp_path)))
    redone = execute(fake_run(edited, str(tmp_path), redecide=("lr",)))
    logged = {d.key: d for d in read_decisions(str(tmp_path)) if d.kind == WINNER}
    assert len(logged["0"].detail["arms"]) == 3
    assert redone.winner is not None


# ----------------------------------------------------------------------------- interrupts
def test_an_interrupted_stage_takes_no_decision_and_resume_completes_it(tmp_path):
    sweep = parse_sweep(staged())
    with pytest.raises(SweepInterrupted) as info:
        execute(fake_run(sweep, str(tmp_path), FakeTrials(interrupt_after=3)))
    assert info.value.exit_code == 130
    assert read_decisions(str(tmp_path)) == []  # 3 of the stage's 4 trials finished: no winner
    assert len(ResultsStore(str(tmp_path)).trials) == 3
    done = execute(fake_run(sweep, str(tmp_path)))
    twin = execute(fake_run(sweep, str(tmp_path / "twin")))
    assert done.winner.label == twin.winner.label
    assert [(r["trial_id"], r["metric_best"]) for r in done.rows] == \
        [(r["trial_id"], r["metric_best"]) for r in twin.rows]


# ----------------------------------------------------------------------------- resume checks
def test_a_changed_metric_on_resume_is_refused(tmp_path):
    out = str(tmp_path / "s")
    sweep = parse_sweep(ablation(seeds=(0,)))
    prepare_out(sweep, out, resume=False)
    execute(fake_run(sweep, out))
    with pytest.raises(UserError, match=r"val_accuracy \(max\).*val_loss \(min\)"):
        prepare_out(parse_sweep(ablation(seeds=(0,), metric="val_loss")), out, resume=True)
    prepare_out(parse_sweep(ablation(seeds=(0, 1))), out, resume=True)  # a seed more is fine


def test_rank_by_change_is_refused_only_once_decisions_depend_on_it(tmp_path):
    out = str(tmp_path / "s")
    sweep = parse_sweep(staged())
    prepare_out(sweep, out, resume=False)
    execute(fake_run(sweep, out))
    with pytest.raises(UserError, match="rank_by"):
        prepare_out(parse_sweep({**staged(), "rank_by": "final"}), out, resume=True)
    plain = str(tmp_path / "p")
    prepare_out(parse_sweep(ablation()), plain, resume=False)
    execute(fake_run(parse_sweep(ablation()), plain))
    prepare_out(parse_sweep({**ablation(), "rank_by": "final"}), plain, resume=True)  # no decision used it


def test_rows_of_removed_arms_stay_stored_but_leave_the_summary(tmp_path):
    execute(fake_run(parse_sweep(ablation()), str(tmp_path)))
    smaller = {**ablation(), "search": {"ablation": {"factors": {"optim.lr": [0.1]}}}}
    outcome = execute(fake_run(parse_sweep(smaller), str(tmp_path)))
    assert {r["arm"] for r in outcome.rows} == {"baseline", "lr=0.1"}
    assert outcome.removed == 3 and len(ResultsStore(str(tmp_path)).trials) == 9
    assert "3 stored trials belong to arms or seeds no longer in the file" in outcome.summary_text()
    from rayclf.report import build_report
    from rayclf.sweepdir import read_sweep

    data = read_sweep(str(tmp_path))  # what report, status and notebooks read: the same rows as the summary
    assert {r["trial_id"] for r in data.trials} == {r["trial_id"] for r in outcome.rows}
    assert {r["arm"] for r in data.removed} == {"dropout=0.3"}
    rep = build_report(str(tmp_path), tmp_path / "report")
    assert {r.arm for r in rep.rows} == {"baseline", "lr=0.1"}
    assert "dropout=0.3" in (tmp_path / "report" / "removed.md").read_text()
    assert "no longer in the sweep file" in (tmp_path / "report" / "index.html").read_text()
    # an arm added, then the resume interrupted: its finished rows are planned, never shown as removed
    bigger = {**ablation(), "search": {"ablation": {"factors": {"optim.lr": [0.1, 0.2]}}}}
    with pytest.raises(SweepInterrupted):
        execute(fake_run(parse_sweep(bigger), str(tmp_path), FakeTrials(interrupt_after=2)))
    data = read_sweep(str(tmp_path))
    assert {r["arm"] for r in data.trials} == {"baseline", "lr=0.1", "lr=0.2"}
    assert {r["arm"] for r in data.removed} == {"dropout=0.3"}


# ----------------------------------------------------------------------------- random user actions
def _actions(rng: random.Random, n: int) -> list[tuple[str, int]]:
    return [(rng.choice(["run", "interrupt", "kill", "add_seed", "drop_seed", "add_arm", "drop_arm"]),
             rng.randint(0, 3)) for _ in range(n)]


@pytest.mark.parametrize("seed", range(6))
def test_random_sequences_of_runs_interrupts_kills_and_edits_keep_the_store_exact(tmp_path, seed):
    rng = random.Random(seed)
    doc = staged() if seed % 2 else ablation()
    seen: dict[str, dict] = {}
    logged: dict[str, tuple[int, str]] = {}
    for step, (action, k) in enumerate(_actions(rng, 8)):
        doc = _edit(doc, action, k)
        sweep = parse_sweep(doc)
        runner = FakeTrials(interrupt_after=k if action in ("interrupt", "kill") else None)
        redecide = _redecide(sweep, tmp_path)
        if redecide:
            logged.clear()
        run = fake_run(sweep, str(tmp_path), runner, redecide=redecide)
        try:
            execute(run)
        except SweepInterrupted:
            assert action in ("interrupt", "kill")
        rows = ResultsStore(str(tmp_path)).trials
        ids = [r["trial_id"] for r in rows]
        assert len(ids) == len(set(ids)), f"step {step}: a trial recorded twice"
        for r in rows:
            if r["trial_id"] in seen:
                assert r == seen[r["trial_id"]], f"step {step} ({action}): a finished row changed"
            seen[r["trial_id"]] = r
        labels = {}
        for t in run.planned.values():
            assert labels.setdefault(t.arm.label, t.arm_id) == t.arm_id, f"step {step}: a label names two arms"
        winners = [d for d in read_decisions(str(tmp_path)) if d.kind == WINNER]
        assert len({d.key for d in winners}) == len(winners)
        for d in winners:  # a logged decision stays made: replayed, never taken again
            assert logged.setdefault(d.key, (d.seq, d.arm_id)) == (d.seq, d.arm_id), f"step {step}: re-decided"


def _edit(doc: dict, action: str, k: int) -> dict:
    doc = copy.deepcopy(doc)
    if action == "add_seed":
        doc["seeds"] = sorted({*doc["seeds"], len(doc["seeds"]) + k})
    elif action == "drop_seed" and len(doc["seeds"]) > 1:
        doc["seeds"] = doc["seeds"][:-1]
    search = doc["search"]
    values = [0.05, 0.1, 0.2, 0.02][: 2 + k % 3]
    if action in ("add_arm", "drop_arm"):
        if "ablation" in search:
            search["ablation"]["factors"]["optim.lr"] = values if action == "add_arm" else values[:1]
        else:
            search["stages"][0]["vary"]["optim.lr"] = values if action == "add_arm" else values[:2]
    return doc


def _redecide(sweep, tmp_path) -> tuple[str, ...]:
    """Re-open a stage whose arms an edit changed (the user's answer to the refusal)."""
    if sweep.file.search.kind != "stages":
        return ()
    logged = {d.key: d for d in read_decisions(str(tmp_path)) if d.kind == WINNER}
    if "0" in logged and set(logged["0"].detail["arms"]) != {sweep.arm_id(a) for a in sweep.arms({}, stage=0)}:
        return ("lr",)
    return ()


def test_the_report_names_the_stage_winners_the_sweep_carried(tmp_path):
    """A later stage that re-creates an earlier config (its level repeats the carried value) shows that arm once,
    under its first label; the report still marks each stage's logged winner, as the driver announced it."""
    from rayclf.report import build_report

    doc = staged()
    doc["search"]["stages"][1]["vary"] = {"model.dropout": [0.1, 0.3, 0.5]}  # 0.1: the base's (carried) value
    execute(fake_run(parse_sweep(doc), str(tmp_path)))
    logged = {d.stage: d.arm_id for d in read_decisions(str(tmp_path)) if d.kind == WINNER}
    rep = build_report(str(tmp_path), tmp_path / "report")
    label_id = {r.arm: r.arm_id for r in rep.rows}
    starred = {}
    for line in (tmp_path / "report" / "stages.md").read_text().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[4] == "★":
            starred.setdefault(int(cells[0]) - 1, []).append(label_id[cells[1]])
    assert {s: v for s, v in starred.items() if s in logged} == {stage: [aid] for stage, aid in logged.items()}


def test_two_stages_of_one_name_are_refused():
    from rayclf.config import ConfigError

    doc = staged()
    doc["search"]["stages"][1]["name"] = "lr"
    with pytest.raises(ConfigError, match=r"search.stages.1.name 'lr' names an earlier stage"):
        parse_sweep(doc)


def test_a_refusal_names_a_way_through_that_works(tmp_path):
    """rank_by changed under logged stage winners: refused, and --redecide (which re-opens them) goes through."""
    out = str(tmp_path / "s")
    prepare_out(parse_sweep(staged()), out, resume=False)
    execute(fake_run(parse_sweep(staged()), out))
    changed = parse_sweep({**staged(), "rank_by": "final"})
    with pytest.raises(UserError, match="--redecide"):
        prepare_out(changed, out, resume=True)
    _, _, lock = _prepare_out(changed, out, True, redecide=("lr",))
    lock.release()


def test_rows_of_other_model_families_still_group_by_arm_id():
    """The store's schema is the union of every row's columns: a cnn row carries None for mlp-only keys."""
    from rayclf.aggregate import arm_key
    from rayclf.config import build_config, flatten

    cfg = build_config(_base())
    row = {"arm": "a", **{f"config.{k}": v for k, v in flatten(cfg.to_dict()).items()},
           "config.model.hidden": None, "config.model.batch_norm": None}
    from rayclf.identity import LEGACY_VERSION, arm_id

    assert arm_key(row) == arm_id(cfg, version=LEGACY_VERSION)  # rows without arm ids predate identity versions


def test_racing_that_could_never_test_is_refused():
    from rayclf.config import ConfigError

    doc = {**ablation(seeds=(0, 1)), "scheduler": {"name": "racing", "first_round": 2}}
    with pytest.raises(ConfigError, match="never tests"):
        parse_sweep(doc)


def test_a_carried_winner_that_wins_again_is_named_where_the_table_shows_it(tmp_path):
    """Stage 2's dropout=0.1 is stage 1's winner's own config (the base's dropout): trained once, in stage 1, so
    the table shows it under its stage-1 label, and the summary says so when it wins again."""
    spec = {"name": "stg", "base": _base(), "seeds": [0, 1],
            "search": {"stages": [{"name": "lr", "vary": {"optim.lr": [0.02, 0.05]}},
                                  {"name": "drop", "vary": {"model.dropout": [0.1, 0.9]}}]}}
    outcome = execute(fake_run(parse_sweep(spec), str(tmp_path / "o")))
    assert outcome.winner is not None and outcome.winner.label == "drop:dropout=0.1"
    assert "drop:dropout=0.1" not in {r["arm"] for r in outcome.rows}
    assert ("staged winner: drop:dropout=0.1 (shown as lr:lr=0.05: the same config, trained once)"
            in outcome.summary_text())


def test_more_proposals_for_a_decided_bayes_stage_are_refused_before_any_trains(tmp_path):
    bayes = {"num_samples": 2, "batch": 2, "startup": 2, "params": {"model.dropout": {"uniform": [0.0, 0.3]}}}
    spec = {"name": "sb", "base": _base(), "seeds": [0],
            "search": {"stages": [{"name": "lr", "vary": {"optim.lr": [0.02, 0.05]}}, {"name": "reg", "bayes": bayes}]}}
    out = str(tmp_path / "o")
    execute(fake_run(parse_sweep(spec), out))
    more = copy.deepcopy(spec)
    more["search"]["stages"][1]["bayes"]["num_samples"] = 4
    runner = FakeTrials()
    with pytest.raises(UserError, match=r"stage reg .* decided \(winner reg:bayes-\d\) on 2 bayes proposals; the "
                                        r"file now asks for 4.*--redecide reg"):
        execute(fake_run(parse_sweep(more), out, runner))
    assert all(not ids for ids in runner.calls)  # nothing trained
    runner = FakeTrials()
    outcome = execute(fake_run(parse_sweep(more), out, runner, redecide=("reg",)))
    assert sum(map(len, runner.calls)) == 2 and len(outcome.rows) == 6  # the 2 new proposals, then decided
