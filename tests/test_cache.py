"""Issue 30: the trial cache on the fake trial runner (no Ray): a follow-up sweep trains only its new arms and
its tables equal a run without the cache; never-reuse rules; --no-cache / --refresh; a corrupt entry; provenance;
concurrent publishers; the store's schema migration for the new columns; rung values of reused trials."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from rayclf.cache import ENTRY_FILE, TrialCache, identity_version, provenance, resolve_cache
from rayclf.config import UserError
from rayclf.results import TRIAL_COLUMNS, ResultsStore
from rayclf.sweep.kernel import execute
from rayclf.sweep.reuse import Reuse, open_reuse
from rayclf.sweep.spec import parse_sweep

from .fake_runner import FakeTrials, fake_run

TIMING = {"seconds", "train_seconds", "images_per_sec", "data_seconds", "epoch_seconds", "node"}
OWN = {"reused_from", "provenance", "checkpoint"}  # where a row came from, not what it measured


def _base():
    return {"data": {"name": "synthetic", "synthetic": {"num_train": 64, "num_test": 32, "num_classes": 4,
                                                        "image_size": 8}},
            "model": {"name": "cnn", "widths": [4], "dropout": 0.1}, "train": {"epochs": 3, "batch_size": 32},
            "optim": {"name": "sgd", "lr": 0.05}}


def study(name, lrs, dropouts=(), seeds=(0, 1), **extra):
    factors = {"optim.lr": list(lrs)}
    if dropouts:
        factors["model.dropout"] = list(dropouts)
    return parse_sweep({"name": name, "base": _base(), "seeds": list(seeds),
                        "search": {"ablation": {"factors": factors}}, **extra})


A = dict(name="first", lrs=[0.1])  # baseline + lr=0.1
B = dict(name="followup", lrs=[0.1, 0.2], dropouts=[0.3])  # A's baseline and lr=0.1, two new arms


def run_with(sweep, out, cache=None, refresh=(), warn=None, runner=None):
    runner = runner or FakeTrials()
    reuse = None
    if cache is not None:
        reuse = Reuse(TrialCache(str(cache), warn or (lambda _: None)),
                      frozenset(refresh)) if refresh else open_reuse(str(cache), (), sweep, warn or (lambda _: None))
    run = fake_run(sweep, str(out), runner, cache=reuse)
    return execute(run), runner


def trained(runner):
    return [tid for call in runner.calls for tid in call]


def values(rows):
    """Each row as what it measured (identity, status, metrics, config), without timings and provenance."""
    return [{k: v for k, v in r.items() if k not in TIMING | OWN} for r in rows]


def epoch_values(out):
    return sorted(({k: v for k, v in e.items() if k not in TIMING} for e in ResultsStore(str(out)).epochs),
                  key=lambda e: (e["trial_id"], e["epoch"]))


# ------------------------------------------------------------------------------ the follow-up study
def test_a_follow_up_study_trains_only_its_new_arms_and_equals_a_run_without_the_cache(tmp_path):
    cache = tmp_path / "cache"
    first, _ = run_with(study(**A), tmp_path / "a", cache)
    shared = {r["trial_id"] for r in first.rows}
    assert len(shared) == 4

    outcome, runner = run_with(study(**B), tmp_path / "b", cache)
    plain, plain_runner = run_with(study(**B), tmp_path / "plain")

    assert set(trained(runner)) == {r["trial_id"] for r in outcome.rows} - shared  # only the new arms trained
    assert len(trained(plain_runner)) == 8 and len(trained(runner)) == 4
    assert values(outcome.rows) == values(plain.rows)  # value by value, in table order
    assert epoch_values(tmp_path / "b") == epoch_values(tmp_path / "plain")
    reused = [r for r in outcome.rows if r["reused_from"]]
    assert {r["trial_id"] for r in reused} == shared and {r["reused_from"] for r in reused} == {str(cache)}
    assert {json.loads(r["provenance"])["sweep"] for r in reused} == {"first"}
    assert "4 of 8 trials reused from the trial cache" in outcome.summary_text()
    assert "trained by sweep first" in outcome.summary_text() and "(1.2 trial-seconds saved)" in outcome.summary_text()
    assert outcome.skipped == 0  # reused is not "already done in this directory"


def test_labels_positions_and_metric_are_the_follow_ups_own(tmp_path):
    """A cached row is rebuilt under the reusing sweep: its labels, positions, stage and metric."""
    cache = tmp_path / "cache"
    run_with(study(**A), tmp_path / "a", cache)
    b = study(**B, metric="val_loss")
    outcome, _ = run_with(b, tmp_path / "b", cache)
    plain, _ = run_with(b, tmp_path / "plain")
    assert values(outcome.rows) == values(plain.rows)
    assert {r["metric"] for r in outcome.rows} == {"val_loss"} and {r["sweep"] for r in outcome.rows} == {"followup"}


def test_the_follow_up_publishes_its_new_arms_for_the_next_study(tmp_path):
    cache = tmp_path / "cache"
    run_with(study(**A), tmp_path / "a", cache)
    run_with(study(**B), tmp_path / "b", cache)
    third, runner = run_with(study(**B), tmp_path / "c", cache)
    assert trained(runner) == [] and all(r["reused_from"] for r in third.rows)


def test_resume_keeps_reused_rows_and_trains_nothing_again(tmp_path):
    cache = tmp_path / "cache"
    run_with(study(**A), tmp_path / "a", cache)
    run_with(study(**B), tmp_path / "b", cache)
    again, runner = run_with(study(**B), tmp_path / "b", cache)
    assert trained(runner) == [] and again.skipped == 8


# ------------------------------------------------------------------------------ never reused
def _entry_path(cache: Path, tid: str) -> Path:
    return cache / f"identity-v{identity_version()}" / tid / ENTRY_FILE


def _edit_entry(cache: Path, tid: str, **changes) -> None:
    path = _entry_path(cache, tid)
    data = json.loads(path.read_text())
    for key, value in changes.items():
        where, name = key.split("__")
        data[where][name] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change", [{"row__status": "stopped_early"}, {"row__status": "failed"},
                                    {"row__status": "eliminated"}, {"row__status": "diverged"},
                                    {"provenance__identity_version": -1}, {"row__trial_id": "someoneelse"}])
def test_entries_that_are_not_this_completed_experiment_are_never_reused(tmp_path, change):
    cache = tmp_path / "cache"
    first, _ = run_with(study(**A), tmp_path / "a", cache)
    tid = first.rows[0]["trial_id"]
    _edit_entry(cache, tid, **change)
    warnings = []
    outcome, runner = run_with(study(**A), tmp_path / "b", cache, warn=warnings.append)
    assert trained(runner) == [tid]
    assert not next(r for r in outcome.rows if r["trial_id"] == tid)["reused_from"]
    assert any("not reused" in w and tid in w for w in warnings)


def test_failed_and_stopped_trials_are_never_published(tmp_path):
    sweep = study(**A)
    tid = sweep.trials(sweep.arms())[1].trial_id
    cache = TrialCache(str(tmp_path / "cache"))
    run_with(sweep, tmp_path / "a", tmp_path / "cache", runner=FakeTrials(fail={tid}))
    assert cache.get(tid) is None and not _entry_path(tmp_path / "cache", tid).exists()
    row = dict(ResultsStore(str(tmp_path / "a")).trials[0])
    for status in ("stopped_early", "eliminated", "failed", "diverged"):
        assert not cache.publish({**row, "trial_id": "x" + status, "status": status}, [{"epoch": 1}], {})
        assert not _entry_path(tmp_path / "cache", "x" + status).exists()
    # a reused row is never published again as if this sweep trained it
    assert not cache.publish({**row, "trial_id": "again", "reused_from": "elsewhere"}, [{"epoch": 1}], {})


def test_no_cache_and_refresh_train_on_purpose(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYCLF_CACHE", "/from/env")
    assert resolve_cache(None, False, None) == "/from/env"
    assert resolve_cache(None, False, "/from/file") == "/from/file"
    assert resolve_cache("/flag", False, "/from/file") == "/flag"
    assert resolve_cache("/flag", True, "/from/file") is None
    assert resolve_cache(None, False, None, env={}) is None  # off unless set

    cache = tmp_path / "cache"
    run_with(study(**A), tmp_path / "a", cache)
    b = study(**B)
    outcome, runner = run_with(b, tmp_path / "b", cache, refresh={"baseline"})
    base_ids = {r["trial_id"] for r in outcome.rows if r["arm"] == "baseline"}
    assert base_ids <= set(trained(runner)) and len(trained(runner)) == 6
    # the refreshed result replaced the cached one: its provenance is the follow-up's now
    assert {TrialCache(str(cache)).get(t).provenance["sweep"] for t in base_ids} == {"followup"}

    arm_id = next(t.arm_id for t in b.trials(b.arms()) if t.arm.label == "lr=0.1")
    assert open_reuse(str(cache), [arm_id[:8]], b).refresh == {arm_id[:8]}  # an arm-id prefix names it too
    with pytest.raises(UserError, match="did you mean 'baseline'"):
        open_reuse(str(cache), ["baseline_"], b)
    with pytest.raises(UserError, match="needs a cache"):
        open_reuse(None, ["baseline"], b)


# ------------------------------------------------------------------------------ damaged entries
@pytest.mark.parametrize("damage", ["", "{not json", '{"trial_id": "x"}', "[1, 2]"])
def test_a_corrupt_entry_is_ignored_with_a_warning_and_the_trial_trains(tmp_path, damage):
    cache = tmp_path / "cache"
    first, _ = run_with(study(**A), tmp_path / "a", cache)
    tid = first.rows[0]["trial_id"]
    _entry_path(cache, tid).write_text(damage)
    warnings = []
    _, runner = run_with(study(**A), tmp_path / "b", cache, warn=warnings.append)
    assert trained(runner) == [tid]
    assert any("corrupt" in w and tid in w for w in warnings), warnings
    assert TrialCache(str(cache)).get(tid) is not None  # the trained trial replaced the damaged entry


# ------------------------------------------------------------------------------ provenance, publishing
def _row(tmp_path, status="completed"):
    run_with(study(**A), tmp_path / "src")
    store = ResultsStore(str(tmp_path / "src"))
    row = dict(store.trials[0])
    return {**row, "status": status}, [e for e in store.epochs if e["trial_id"] == row["trial_id"]]


def test_provenance_round_trips_through_the_cache_and_the_reusing_row(tmp_path):
    cache = tmp_path / "cache"
    run_with(study(**A), tmp_path / "a", cache)
    c = TrialCache(str(cache))
    ids = [t.trial_id for t in study(**A).trials(study(**A).arms())]
    entry = c.get(ids[0])
    want = provenance("first", str(tmp_path / "a"))
    assert set(entry.provenance) == {"sweep", "out", "host", "time", "rayclf_version", "identity_version"}
    assert {k: entry.provenance[k] for k in ("sweep", "out", "host", "rayclf_version", "identity_version")} == \
        {k: want[k] for k in ("sweep", "out", "host", "rayclf_version", "identity_version")}
    outcome, _ = run_with(study(**A), tmp_path / "b", cache)
    row = next(r for r in outcome.rows if r["trial_id"] == ids[0])
    assert json.loads(row["provenance"]) == entry.provenance
    stored = next(r for r in ResultsStore(str(tmp_path / "b")).trials if r["trial_id"] == ids[0])
    assert json.loads(stored["provenance"]) == entry.provenance and stored["reused_from"] == str(cache)


def test_a_checkpoint_is_copied_into_the_cache_and_the_reused_row_points_to_the_copy(tmp_path):
    row, epochs = _row(tmp_path)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "checkpoint.pt").write_bytes(b"weights")
    (ckpt / "rayclf.json").write_text("{}")
    c = TrialCache(str(tmp_path / "cache"))
    assert c.publish({**row, "checkpoint": str(ckpt)}, epochs, provenance("s", "o"))
    copy = Path(c.get(row["trial_id"]).checkpoint)
    assert copy.parent == _entry_path(tmp_path / "cache", row["trial_id"]).parent
    assert (copy / "checkpoint.pt").read_bytes() == b"weights"


def test_concurrent_publishers_leave_one_whole_entry_pointing_to_its_own_checkpoint(tmp_path):
    """Publisher 1 copies its checkpoint, publisher 2 copies and commits, publisher 1 commits last: the entry is
    publisher 1's whole, and names publisher 1's checkpoint (not a folder publisher 2 overwrote)."""
    row, epochs = _row(tmp_path)
    tid = row["trial_id"]
    c = TrialCache(str(tmp_path / "cache"))
    staged = {}
    for who in ("one", "two"):
        src = tmp_path / who
        src.mkdir()
        (src / "checkpoint.pt").write_text(who)
        staged[who] = c.stage_checkpoint(tid, str(src))
    c.commit(tid, row, epochs, staged["two"], provenance("two", "o"))
    c.commit(tid, row, epochs, staged["one"], provenance("one", "o"))
    entry = c.get(tid)
    assert entry.provenance["sweep"] == "one"
    assert (Path(entry.checkpoint) / "checkpoint.pt").read_text() == "one"

    # and many at once: every read in between and the end state is one whole, valid entry
    errors, seen = [], []

    def publish(i: int) -> None:
        try:
            for _ in range(5):
                c.commit(tid, row, epochs, None, provenance(f"p{i}", "o"))
        except Exception as exc:  # any failure of a publisher fails the test
            errors.append(exc)

    def read() -> None:
        for _ in range(50):
            entry = c.get(tid)
            seen.append(entry is not None and entry.provenance["sweep"])

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(6)] + [threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(seen), seen
    assert c.get(tid).provenance["sweep"].startswith("p")


def test_a_publisher_killed_mid_write_leaves_the_previous_entry(tmp_path, monkeypatch):
    import rayclf.storage as storage

    row, epochs = _row(tmp_path)
    tid = row["trial_id"]
    c = TrialCache(str(tmp_path / "cache"))
    c.commit(tid, row, epochs, None, provenance("before", "o"))

    real = storage.write_atomically

    def dies_halfway(uri, write):
        def half(fs, tmp):
            write(fs, tmp)
            with fs.open_output_stream(tmp) as f:  # half of it on disk, then the process dies
                f.write(b'{"trial_id": ')
            raise KeyboardInterrupt

        real(uri, half)

    monkeypatch.setattr(storage, "write_atomically", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        c.commit(tid, row, epochs, None, provenance("after", "o"))
    monkeypatch.undo()
    assert c.get(tid).provenance["sweep"] == "before"
    assert [p.name for p in _entry_path(tmp_path / "cache", tid).parent.iterdir()] == [ENTRY_FILE]


# ------------------------------------------------------------------------------ the store's schema
def test_an_older_store_gains_the_cache_columns_through_its_migration(tmp_path, monkeypatch):
    """A sweep directory written before the cache columns existed: a resume with a cache migrates its parts
    (every old value kept, the new columns empty) and records the reused rows beside them."""
    import rayclf.results as results

    old = {k: v for k, v in TRIAL_COLUMNS.items() if k not in ("reused_from", "provenance")}
    monkeypatch.setattr(results, "TRIAL_COLUMNS", old)
    a = study(**A)
    store = ResultsStore(str(tmp_path / "b"))
    runner = FakeTrials()
    from rayclf.sweep.rows import trial_row  # rows as the older release wrote them: no cache columns
    from rayclf.sweep.trialspec import TrialSpec

    t = a.trials(a.arms())[0]
    row = trial_row(TrialSpec.of(a, t, 0), "completed", "", {}, [{"epoch": 1, "val_accuracy": 0.5}], "val_accuracy",
                    "max")
    row = {k: v for k, v in row.items() if k not in ("reused_from", "provenance")}
    store.prepare([row])
    store.add(row, [{"epoch": 1, "val_accuracy": 0.5}])
    monkeypatch.undo()
    assert "reused_from" not in ResultsStore(str(tmp_path / "b")).schema

    cache = tmp_path / "cache"
    run_with(study(**B), tmp_path / "warm", cache)
    _, runner = run_with(a, tmp_path / "b", cache)
    stored = ResultsStore(str(tmp_path / "b"))
    assert stored.schema["reused_from"] == "string" and "migration" not in stored.meta
    kept = next(r for r in stored.trials if r["trial_id"] == t.trial_id)
    assert kept["metric_best"] == 0.5 and kept["reused_from"] is None  # the old row, untouched
    assert trained(runner) == [] and sum(bool(r["reused_from"]) for r in stored.trials) == 3


# ------------------------------------------------------------------------------ decisions see reused trials
def test_rung_values_of_reused_trials_count_in_the_board_as_trained_ones_do(tmp_path):
    """The arm board of asha, rebuilt from the store (``schedulers.replay``), holds a reused arm's mean at each
    rung from its cached epochs: the values a trained run of it would have recorded there."""
    from rayclf.sweep.decisions import DecisionLog
    from rayclf.sweep.schedulers import ArmBoard, QuantileRungs, replay

    cache = tmp_path / "cache"
    first, _ = run_with(study(**A), tmp_path / "a", cache)
    b = study(**B, scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2})
    trials = b.trials(b.arms())
    run = fake_run(b, str(tmp_path / "b"), FakeTrials(), cache=open_reuse(str(cache), (), b, lambda _: None))
    taken = run.cache.take(run, trials, trials)
    assert taken == {r["trial_id"] for r in first.rows}

    board = replay(ArmBoard(QuantileRungs.at("asha", 1, 2, 3), "max", "val_accuracy"), trials, run.store,
                   DecisionLog(str(tmp_path / "b")), {})
    epochs = {}
    for e in ResultsStore(str(tmp_path / "a")).epochs:
        epochs.setdefault(e["trial_id"], {})[e["epoch"]] = e["val_accuracy"]
    for arm in {t.arm_id for t in trials if t.trial_id in taken}:
        seeds = [t.trial_id for t in trials if t.arm_id == arm]
        for rung in board.rule.rungs:
            want = sum(max(v for ep, v in epochs[s].items() if ep <= rung) for s in seeds) / len(seeds)
            assert board.recorded[rung][arm] == pytest.approx(want)


# ------------------------------------------------------------------------------ a team's cache on S3
def test_a_cache_on_an_s3_prefix_is_shared_by_two_sweeps(tmp_path, s3_server, monkeypatch):
    """Two sweeps (two machines of a team, say) point at one S3 prefix: the second reuses what the first
    published, checkpoint copy included; the credentials stay in the environment."""
    import pyarrow.fs as pafs

    from .conftest import SENTINEL_SECRET

    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    cache = "s3://bkt/team/cache"
    sweep = study(**A)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "checkpoint.pt").write_bytes(b"weights")

    import tests.fake_runner as fake

    real = fake.trial_row  # trained trials leave a checkpoint, as Ray's do
    monkeypatch.setattr(fake, "trial_row", lambda *a, **kw: real(*a, **kw, checkpoint=str(ckpt)))
    run_with(sweep, tmp_path / "a", cache)
    monkeypatch.setattr(fake, "trial_row", real)
    outcome, runner = run_with(study(**B), tmp_path / "b", cache)
    plain, _ = run_with(study(**B), tmp_path / "plain")
    assert len(trained(runner)) == 4 and values(outcome.rows) == values(plain.rows)
    reused = [r for r in outcome.rows if r["reused_from"]]
    assert len(reused) == 4 and {r["reused_from"] for r in reused} == {cache}
    assert all(r["checkpoint"].startswith("s3://bkt/team/cache/identity-v") for r in reused)
    fs, path = pafs.FileSystem.from_uri(reused[0]["checkpoint"])
    with fs.open_input_stream(path + "/checkpoint.pt") as f:
        assert f.read() == b"weights"
    entry = TrialCache(cache).get(reused[0]["trial_id"])
    assert entry.provenance["sweep"] == "first"
    from .test_s3 import bucket_objects

    objects = bucket_objects(s3_server)
    assert [k for k in objects if k.startswith("team/cache/") and k.endswith("/entry.json")]
    assert [k for k, body in objects.items() if SENTINEL_SECRET.encode() in body] == []


def test_the_dry_run_says_how_many_planned_trials_the_cache_holds_and_the_hours_saved(tmp_path):
    from rayclf.sweep.plan import cache_lines

    cache = tmp_path / "cache"
    first, _ = run_with(study(**A), tmp_path / "a", cache)
    b = study(**B)
    seconds = sum(r["seconds"] for r in first.rows)
    (line,) = cache_lines(b, b.trials(b.arms()), str(cache), False, (), None)
    assert "4 of the 8 planned trials are cached as completed (trained by sweep first)" in line
    assert f"{seconds:.1f} trial-seconds saved" in line and "4 to train" in line
    (line,) = cache_lines(b, b.trials(b.arms()), str(cache), False, ("baseline",), None)
    assert "2 of the 8 planned trials" in line and "2 refreshed on purpose" in line
    assert cache_lines(b, b.trials(b.arms()), str(cache), True, (), None) == []  # --no-cache


def test_a_directory_of_an_older_identity_rule_keeps_its_entries_apart(tmp_path):
    """A sweep directory whose ids follow identity version 1 publishes and reuses under version 1 only: a
    current sweep never takes those entries, whatever their ids."""
    from rayclf.identity import LEGACY_VERSION

    cache = tmp_path / "cache"
    old = study(**A)
    old.identity_version = LEGACY_VERSION
    run_with(old, tmp_path / "old", cache)
    assert {json.loads(p.read_text())["provenance"]["identity_version"]
            for p in cache.glob("identity-v*/*/entry.json")} == {LEGACY_VERSION}
    again = study(**A)
    again.identity_version = LEGACY_VERSION
    _, runner = run_with(again, tmp_path / "again", cache)
    assert trained(runner) == []  # the same rule: reused
    _, runner = run_with(study(**A), tmp_path / "new", cache)
    assert len(trained(runner)) == 4  # another rule: trained


def test_the_live_view_status_and_open_sweep_say_how_many_were_reused_and_from_where(tmp_path):
    import io

    import rayclf
    from rayclf.sweep.live import LiveView
    from rayclf.sweep.status import read_status, status_json, status_lines

    stream = io.StringIO()
    view = LiveView(8, "val_accuracy", stream=stream, terminal=False)
    view.reused(4, "s3://team/cache")
    view.skipped(0)
    assert "cache: 4 trial(s) reused from s3://team/cache, not trained" in stream.getvalue()
    assert view.done == 4 and view.counts == {"reused": 4}

    cache = tmp_path / "cache"
    run_with(study(**A), tmp_path / "a", cache)
    run_with(study(**B), tmp_path / "b", cache)
    st = read_status(str(tmp_path / "b"))
    assert any(line.startswith(f"4 of 8 trials reused from the trial cache {cache}") for line in status_lines(st))
    assert status_json(st)["reused"] == 4 and status_json(st)["reused_from"] == [str(cache)]
    assert rayclf.open_sweep(str(tmp_path / "b")).reused.startswith("4 of 8 trials reused")
    assert rayclf.open_sweep(str(tmp_path / "a")).reused is None


def test_trial_time_reads_in_seconds_minutes_or_hours():
    from rayclf.cache import trial_time

    assert [trial_time(s) for s in (1.24, 90, 7200)] == ["1.2 trial-seconds", "1.5 trial-minutes", "2.00 trial-hours"]
