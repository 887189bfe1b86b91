"""Issue 28 (part B): racing verdicts logged and replayed exactly, replay that compares identities, --redecide
that re-opens only what it names, total stops, and the store's write order — all without Ray."""

from __future__ import annotations

from typing import Any

import pytest

from rayclf.sweep.decisions import ELIMINATE, SURVIVE, WINNER, Decision, DecisionLog
from rayclf.sweep.interrupt import SweepInterrupted
from rayclf.sweep.racing import run_racing

from .test_racing_bayes import FakeRunner, Value, racing_sweep, seeds_of


def verdicts(root: str) -> list[tuple[str, str, dict[str, Any]]]:
    """The log's racing verdicts by value (kind, key, what they saw), in the order taken."""
    return [(d.kind, d.key, d.detail) for d in DecisionLog(root).decisions]


# lr=0.1 is the best; lr=0.01 a little worse (p = 0.10, 0.059, 0.018 after rounds 1, 2, 3); lr=0.001 is bad
TABLE = {0.1: [0.90, 0.80, 0.85, 0.88, 0.86, 0.84], 0.01: [0.87, 0.785, 0.79, 0.82, 0.80, 0.78],
         0.001: [0.40, 0.32, 0.35, 0.37, 0.30, 0.33]}
VALUE: Value = lambda o, s: (TABLE[o["optim.lr"]][s],) * 2  # noqa: E731
LRS, SEEDS = [0.1, 0.01, 0.001], [0, 1, 2, 3, 4, 5]


def straight(tmp_path, name: str = "straight") -> tuple[str, FakeRunner]:
    root = str(tmp_path / name)
    runner = FakeRunner(racing_sweep(LRS, SEEDS), VALUE)
    runner.race(DecisionLog(root))
    return root, runner


def test_racing_logs_a_survival_per_arm_and_round_and_a_verdict_reads_only_its_rounds_seeds(tmp_path):
    root, runner = straight(tmp_path)
    log = DecisionLog(root)
    sweep = runner.sweep
    ids = {a.label: sweep.arm_id(a) for a in sweep.arms()}
    kept1 = {d.label for d in log.of_kind(SURVIVE) if d.detail["round"] == 1}
    assert kept1 == {"lr=0.1", "lr=0.01"}  # both survive round 1 (seeds 0, 1): lr=0.01 is close there
    assert {d.label: d.detail["round"] for d in log.of_kind(ELIMINATE)} == {"lr=0.001": 1, "lr=0.01": 3}
    for d in log.of_kind(SURVIVE) + log.of_kind(ELIMINATE):  # each verdict saw its round's seeds, no later ones
        assert d.detail["seeds"] == SEEDS[:d.detail["round"] + 1] or d.detail["seeds"] == []
        assert d.detail["seeds_run"] == SEEDS[:d.detail["round"] + 1]
    assert log.get(SURVIVE, f"{ids['lr=0.1']}/1").detail["reason"].endswith("the best arm")
    assert seeds_of(runner.ran, "lr=0.01") == [0, 1, 2, 3]

    # --rerun-stopped forgets every verdict and decides again on the same stored rows: round 1 reads seeds 0, 1
    # only (the stored seeds 2-5 of lr=0.1 and seed 2 of lr=0.01 are later rounds'), so the verdicts are equal
    before = verdicts(root)
    again = FakeRunner(sweep, VALUE, runner.rows)
    again.race(DecisionLog(root), rerun_stopped=True)
    assert verdicts(root) == before and again.ran == []


def test_a_decided_round_is_replayed_not_judged_again_on_resume(tmp_path):
    """Round 1 decided (lr=0.01 kept), then Ctrl-C in round 2; a re-run seed of lr=0.01 now scores far below
    (a failed trial trained again) so that a judge of round 1 would eliminate it: round 1 stays decided, and
    lr=0.01 is eliminated at round 2, on seeds 0-2."""
    root = str(tmp_path)
    sweep = racing_sweep(LRS, SEEDS)
    first = FakeRunner(sweep, VALUE, interrupt_after=7)  # 6 trials of round 1, then 1 of round 2
    with pytest.raises(SweepInterrupted):
        first.race(DecisionLog(root))
    round1 = verdicts(root)
    assert {(k, d["round"]) for k, _, d in round1} == {(SURVIVE, 1), (ELIMINATE, 1)}
    for r in first.rows.values():
        if r["arm"] == "lr=0.01" and r["seed"] == 1:
            r["metric_best"] = r["metric_final"] = 0.768  # 0.032 below the best, as seed 0 is 0.03 below
    resumed = FakeRunner(sweep, VALUE, first.rows)
    resumed.race(DecisionLog(root))
    log = DecisionLog(root)
    assert verdicts(root)[:len(round1)] == round1  # the log starts with round 1's verdicts, unchanged
    assert log.get(ELIMINATE, sweep.arm_id(sweep.arms()[1])).detail["round"] == 2
    assert log.get(SURVIVE, f"{sweep.arm_id(sweep.arms()[1])}/1") is not None


@pytest.mark.parametrize("crash_at", range(1, 6))
def test_a_crash_while_a_round_is_logged_resumes_to_the_uninterrupted_decisions(tmp_path, crash_at):
    """kill -9 after the ``crash_at``-th verdict is written: the resumed race ends with the verdicts of the
    uninterrupted one, by value."""
    straight_root, _ = straight(tmp_path)
    root = str(tmp_path / "cut")
    log = DecisionLog(root)
    record, written = log.record, []

    def crashing(d: Decision) -> Decision:
        if len(written) == crash_at:
            raise KeyboardInterrupt  # the process dies here: nothing after this is written
        written.append(d)
        return record(d)

    log.record = crashing  # type: ignore[method-assign]
    runner = FakeRunner(racing_sweep(LRS, SEEDS), VALUE)
    with pytest.raises(KeyboardInterrupt):
        runner.race(log)
    FakeRunner(racing_sweep(LRS, SEEDS), VALUE, runner.rows).race(DecisionLog(root))
    assert sorted(verdicts(root), key=str) == sorted(verdicts(straight_root), key=str)


@pytest.mark.parametrize(("level", "eliminated"), [(0.01, False), (0.05, True), (0.2, True)])
def test_racing_decides_at_the_files_level(tmp_path, level, eliminated):
    """p = 0.028 for the worse arm after round 1 (3 seeds): kept at level 0.01, eliminated at 0.05 and 0.2; a
    racing that read the default level (0.05) would eliminate it at 0.01 too."""
    best, worse = [0.90, 0.80, 0.85, 0.88], [0.85, 0.78, 0.80, 0.87]
    sweep = racing_sweep([0.1, 0.2], [0, 1, 2, 3], first_round=3, level=level)
    runner = FakeRunner(sweep, lambda o, s: ((best if o["optim.lr"] == 0.1 else worse)[s],) * 2)
    run_racing(sweep, sweep.arms(), runner.run, runner.record, runner.stored, runner.messages.append,
               DecisionLog(str(tmp_path)))
    (d,) = [d for d in DecisionLog(str(tmp_path)).decisions if d.label == "lr=0.2"]
    assert d.detail["p"] == pytest.approx(0.028, abs=0.002) and d.detail["level"] == level
    assert (d.kind == ELIMINATE) == eliminated and (seeds_of(runner.recorded, "lr=0.2") == [3]) == eliminated


# ----------------------------------------------------------------------------------------------- identities
def _base(epochs: int = 3) -> dict[str, Any]:
    return {"data": {"name": "synthetic", "synthetic": {"num_train": 64, "num_test": 32, "num_classes": 4,
                                                        "image_size": 8}},
            "model": {"name": "cnn", "widths": [4], "dropout": 0.1}, "train": {"epochs": epochs, "batch_size": 32},
            "optim": {"name": "sgd", "lr": 0.05}}


BAYES = {"num_samples": 4, "batch": 2, "startup": 2, "params": {"model.dropout": {"uniform": [0.0, 0.3]}}}


def flat_bayes(epochs: int = 3) -> dict[str, Any]:
    return {"name": "bo", "base": _base(epochs), "seeds": [0, 1], "search": {"bayes": dict(BAYES)}}


def staged_bayes(seeds: tuple[int, ...] = (0,), widths: tuple[int, ...] = (4,)) -> dict[str, Any]:
    return {"name": "sb", "base": _base(), "seeds": list(seeds),
            "search": {"stages": [{"name": "lr", "vary": {"optim.lr": [0.02, 0.05]},
                                   "carry": {"model.widths": list(widths)}},
                                  {"name": "reg", "bayes": dict(BAYES)},
                                  {"name": "drop", "vary": {"optim.weight_decay": [0.0, 0.001]}}]}}


def test_a_logged_bayes_proposal_the_edited_base_resolves_to_another_arm_is_refused_before_training(tmp_path):
    from rayclf.config import UserError
    from rayclf.sweep.kernel import execute
    from rayclf.sweep.spec import parse_sweep

    from .fake_runner import FakeTrials, fake_run

    out = str(tmp_path)
    execute(fake_run(parse_sweep(flat_bayes()), out))
    runner = FakeTrials()
    with pytest.raises(UserError, match=r"bayes proposal 0 \(bayes-0\) was made and trained as arm [0-9a-f]+; the "
                                        r"file now resolves it to another arm \(changed: train.epochs 3 → 5\)\. "
                                        r"Nothing was trained"):
        execute(fake_run(parse_sweep(flat_bayes(epochs=5)), out, runner))
    assert runner.calls == []


def test_a_decided_bayes_stage_whose_proposals_changed_is_refused_before_any_stage_trains(tmp_path):
    """Stage 1's carry now sets other widths: the bayes stage's logged proposals resolve to other arms. With a
    seed added, stage 0 would have trials to train first: the refusal comes before any of them."""
    from rayclf.config import UserError
    from rayclf.sweep.kernel import execute
    from rayclf.sweep.spec import parse_sweep

    from .fake_runner import FakeTrials, fake_run

    out = str(tmp_path)
    execute(fake_run(parse_sweep(staged_bayes()), out))
    runner = FakeTrials()
    message = (r"stage reg's bayes proposal 0 \(bayes-0\) .* \(changed: model.widths \[4\] → \[8\]\)\. "
               r"Nothing was trained\. Undo the edit, or pass --redecide reg")
    with pytest.raises(UserError, match=message):
        execute(fake_run(parse_sweep(staged_bayes(seeds=(0, 1), widths=(8,))), out, runner))
    assert runner.calls == []


def test_redecide_of_the_last_stage_keeps_the_earlier_stages_guarded(tmp_path):
    """rank_by changed under three decided stages: --redecide of the last one still refuses (stages lr and reg
    were ranked by best), --redecide of the first goes through."""
    from rayclf.config import UserError
    from rayclf.sweep.kernel import execute
    from rayclf.sweep.runner import prepare_out
    from rayclf.sweep.spec import parse_sweep

    from .fake_runner import fake_run

    out = str(tmp_path / "s")
    _, _, lock = prepare_out(parse_sweep(staged_bayes()), out, False)
    lock.release()
    execute(fake_run(parse_sweep(staged_bayes()), out))
    changed = parse_sweep({**staged_bayes(), "rank_by": "final"})
    for last in ("drop", "reg"):
        with pytest.raises(UserError, match="were taken ranking by best"):
            prepare_out(changed, out, True, redecide=(last,))
    _, _, lock = prepare_out(changed, out, True, redecide=("lr",))
    lock.release()


@pytest.mark.parametrize(("stage", "kept"), [("lr", set()), ("reg", {(WINNER, "0")}),
                                             ("drop", {(WINNER, "0"), (WINNER, "1")})])
def test_redecide_forgets_that_stages_and_the_later_ones_decisions_and_proposals_only(tmp_path, stage, kept):
    from rayclf.sweep.decisions import PROPOSAL
    from rayclf.sweep.kernel import execute
    from rayclf.sweep.spec import parse_sweep
    from rayclf.sweep.strategies.staged import reopen_stages

    from .fake_runner import fake_run

    out = str(tmp_path)
    execute(fake_run(parse_sweep(staged_bayes()), out))
    assert {d.key.split("/")[0] for d in DecisionLog(out).of_kind(PROPOSAL)} == {"1"}
    reopen_stages(fake_run(parse_sweep(staged_bayes()), out, redecide=(stage,)))
    left = {(d.kind, d.key.split("/")[0]) for d in DecisionLog(out).decisions}
    proposals = {(PROPOSAL, "1")} if stage == "drop" else set()
    assert left == kept | proposals


# ----------------------------------------------------------------------------------------------- stops
def test_after_a_stop_the_decision_log_writes_nothing(tmp_path):
    from rayclf.sweep.decisions import read_decisions
    from rayclf.sweep.interrupt import StopFlag
    from rayclf.sweep.spec import parse_sweep

    from .fake_runner import fake_run

    run = fake_run(parse_sweep(staged_bayes()), str(tmp_path))
    run.stop.set(15)
    with pytest.raises(SweepInterrupted) as info:
        run.log.record(Decision(WINNER, "0", "a", "lr:lr=0.02", 0))
    assert info.value.exit_code == 143 and read_decisions(str(tmp_path)) == [] and run.log.decisions == []
    assert isinstance(run.log.stop, StopFlag)


def _fake_fit(session: Any) -> None:
    """Tune's loop without Ray: each queued trial trains at once (a completed row, as the recorder writes it)
    and is reported done; once the stop flag is set nothing more is recorded and ``pop`` ends the run."""
    from rayclf.sweep.lockstep import FINISHED
    from rayclf.sweep.rows import trial_row

    run = session.run
    while (d := session.steps.pop()) not in (FINISHED, None):
        epochs = [{"epoch": 1, "val_accuracy": 0.5 + d.config["optim"]["lr"], "val_loss": 1.0}]
        row = trial_row(d, "completed", "", {"status": "completed"}, epochs, run.sweep.file.metric, run.mode)
        run.store.add(row, epochs)
        session.steps.done(d.trial_id)


@pytest.mark.parametrize("signals", [1, 2])
@pytest.mark.parametrize("signum", [2, 15])
def test_the_cli_exits_130_or_143_and_no_thread_writes_a_decision_after_the_stop(tmp_path, monkeypatch, signum,
                                                                                  signals):
    """A staged sweep from the CLI on a Ray-free session: the signal(s) arrive while the strategy thread takes
    stage 1's winner decision. The first signal makes that decision refuse to be written; a second one stops
    the driver at once, and the strategy thread is joined before the CLI exits, 128 + the signal's number."""
    import os
    import signal as signals_module
    import threading
    import time

    import ray
    import yaml
    from click.testing import CliRunner

    from rayclf.cli import main
    from rayclf.sweep import runner as runner_module
    from rayclf.sweep.decisions import read_decisions
    from rayclf.sweep.session import TuneSession

    monkeypatch.setattr(runner_module, "_start_ray", lambda *a, **k: False)
    monkeypatch.setattr(runner_module, "unmet_resources", lambda *a, **k: None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(TuneSession, "_check", lambda self, todo: None)
    monkeypatch.setattr(TuneSession, "_fit", _fake_fit)
    record = DecisionLog.record
    flags = []

    def signalled_record(self: DecisionLog, d: Decision) -> Decision:  # in the strategy thread
        if d.kind == WINNER and not flags:
            flags.append(self.stop)
            for _ in range(signals):
                before = self.stop.is_set()
                os.kill(os.getpid(), signum)
                while before == self.stop.is_set() and not before:  # the main thread's handler ran
                    time.sleep(0.01)
            time.sleep(0.5)  # the driver goes on meanwhile: only a join makes it wait for this thread
        return record(self, d)

    monkeypatch.setattr(DecisionLog, "record", signalled_record)
    spec = {"name": "stg", "base": _base(), "seeds": [0],
            "search": {"stages": [{"name": "lr", "vary": {"optim.lr": [0.02, 0.05]}},
                                  {"name": "wd", "vary": {"optim.weight_decay": [0.0, 0.001]}}]}}
    file = tmp_path / "s.yaml"
    file.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["sweep", str(file), "--out", str(out), "--quiet", "--wandb", "disabled"])
    assert result.exit_code == 128 + signum, result.output
    assert "Continue with: rayclf sweep" in result.output and flags and flags[0].signum == signum
    assert read_decisions(str(out)) == []  # stage lr's winner was never written
    assert not [t for t in threading.enumerate() if t.name == "rayclf-strategy" and t.is_alive()]
    assert signals_module.getsignal(signum) is not None


# ----------------------------------------------------------------------------------------------- the record
def test_a_trial_interrupted_by_the_stop_is_not_recorded_and_one_the_scheduler_stopped_is(tmp_path):
    """The recorder's two skips: once the stop flag is set, a trial that ended without its summary (stopped at
    its checkpoint) or that errored (its process went down with the stop) gets no row: it continues from its
    checkpoint on --resume. Without a stop, the same calls record it (stopped early, failed)."""
    from types import SimpleNamespace

    from rayclf.results import ResultsStore
    from rayclf.sweep.callbacks import Recorder
    from rayclf.sweep.interrupt import StopFlag
    from rayclf.sweep.spec import parse_sweep
    from rayclf.sweep.trialspec import TrialSpec

    sweep = parse_sweep(flat_bayes())
    ends = {"ended": lambda rec, t: rec.ended(t), "error": lambda rec, t: rec.on_trial_error(0, [], t)}
    for stopped in (True, False):
        for how, end in ends.items():
            out = str(tmp_path / f"{how}-{stopped}")
            store, flag = ResultsStore(out), StopFlag()
            rec = Recorder(store, "val_accuracy", "max", storage=out, stop=flag)
            spec = TrialSpec.of(sweep, sweep.trial(_arm(), 0), 0)
            trial = SimpleNamespace(config={"trial": spec}, checkpoint=None, error_file=None)
            rec.on_trial_result(0, [], trial, {"epoch": 1, "val_accuracy": 0.4, "val_loss": 1.2})
            if stopped:
                flag.set()
            end(rec, trial)
            rows = ResultsStore(out).trials
            if stopped:
                assert rows == [] and rec.rows == {}, how
            else:
                assert [r["status"] for r in rows] == ["stopped_early" if how == "ended" else "failed"], how


def _arm() -> Any:
    from rayclf.sweep.spec import Arm

    return Arm("bayes-0", {"model.dropout": 0.1})


def test_a_crash_between_a_trials_epochs_and_its_row_reruns_that_trial_on_resume(tmp_path, monkeypatch):
    """kill -9 after the second trial's epochs part is written but before its trial part: on resume the trial
    is not finished, so it trains again, and every row and epoch equals an uninterrupted run's."""
    from rayclf.results import ResultsStore
    from rayclf.sweep.kernel import execute
    from rayclf.sweep.spec import parse_sweep

    from .fake_runner import FakeTrials, fake_run

    spec = {"name": "g", "base": _base(), "seeds": [0, 1], "search": {"grid": {"optim.lr": [0.02, 0.05]}}}
    out, twin = str(tmp_path / "cut"), str(tmp_path / "twin")
    real_add, adds = ResultsStore.add, []

    def crashing_add(self: ResultsStore, row: dict[str, Any], epochs: Any) -> None:
        adds.append(row["trial_id"])
        if len(adds) == 2:
            real_part, parts = self._write_part, []

            def part(table: str, tid: str, data: Any) -> None:
                parts.append(table)
                if len(parts) == 2:
                    raise KeyboardInterrupt  # the process dies between the two parts
                real_part(table, tid, data)

            self._write_part = part  # type: ignore[method-assign]
        real_add(self, row, epochs)

    monkeypatch.setattr(ResultsStore, "add", crashing_add)
    with pytest.raises(KeyboardInterrupt):
        execute(fake_run(parse_sweep(spec), out))
    monkeypatch.undo()
    cut = adds[1]
    assert cut not in ResultsStore(out).finished_ids() and len(ResultsStore(out).trials) == 1
    runner = FakeTrials()
    done = execute(fake_run(parse_sweep(spec), out, runner))
    assert cut in runner.calls[0] and len(runner.calls[0]) == 3
    execute(fake_run(parse_sweep(spec), twin))

    def by_value(root: str) -> tuple[Any, Any]:
        store = ResultsStore(root)
        keep = ("trial_id", "status", "metric_best", "metric_final", "epochs")
        return ({r["trial_id"]: {k: r[k] for k in keep} for r in store.trials},
                sorted((e["trial_id"], e["epoch"], e["val_accuracy"]) for e in store.epochs))

    assert by_value(out) == by_value(twin) and len(done.rows) == 4
