"""W&B tracking without Ray: mode resolution, deterministic ids, never-fatal failures, offline run contents."""

from __future__ import annotations

import logging

import numpy as np

from rayclf.sweep.trialspec import TrialSpec
from rayclf.tracking import TrackingSettings, WandbReporter, resolve_settings, run_id
from rayclf.train.engine import MultiReporter

from .conftest import FAKE_WANDB_KEY, files_containing, inspect_wandb_run


def test_mode_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_WANDB_KEY)
    assert resolve_settings("auto", None, None, [], "s", str(tmp_path)).mode == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    s = resolve_settings("auto", "proj", "team", ["a"], "s", str(tmp_path / "sweep"))
    assert (s.mode, s.project, s.entity, s.tags) == ("offline", "proj", "team", ["a"])
    assert s.dir == str((tmp_path / "sweep").resolve())
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_settings("auto", None, None, [], "s", str(tmp_path)).mode == "disabled"
    assert resolve_settings("offline", None, None, [], "s", str(tmp_path)).mode == "offline"  # explicit wins
    assert "api_key" not in str(s.to_dict()).lower()


def test_run_id_is_deterministic_and_valid():
    assert run_id("my.sweep", "abc") == run_id("my.sweep", "abc") == "my-sweep-abc"
    assert run_id("a", "b") != run_id("a", "c")


def test_failures_warn_once_and_never_raise(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    trial = TrialSpec("t", "s", "baseline", None, 0, None, 0, {}, {}, 1)
    with caplog.at_level(logging.WARNING, logger="rayclf.tracking"):
        r = WandbReporter(TrackingSettings("offline", dir=str(blocker / "sub")), trial)
        r.epoch({"epoch": 1, "train_loss": 1.0})
        r.end({"status": "completed"})
    assert r.broken and r.run is None
    assert caplog.text.count("W&B init failed") == 1 and "training continues" in caplog.text


def test_offline_run_records_config_history_and_summary(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    trial = TrialSpec(trial_id="abc", sweep="demo", arm="lr=0.1", arm_id=None, seed=2, stage=None, position=0,
                      overrides={"optim.lr": 0.1}, config={"optim": {"lr": 0.1}, "seed": 2}, epochs=3)
    rep = WandbReporter(TrackingSettings("offline", dir=str(tmp_path)), trial, np.zeros((5, 3, 4, 4), np.uint8),
                        ["a", "b"])
    multi = MultiReporter(rep, None)
    for e in (1, 2, 3):
        multi.epoch({"epoch": e, "train_loss": 1.0 / e, "val_accuracy": 0.2 * e, "note": "text is skipped"})
    multi.end({"status": "completed", "test_accuracy": 0.75, "best_val_accuracy": 0.6, "confusion_matrix": [[2, 0],
               [1, 1]], "per_class_accuracy": [1.0, 0.5], "classes": ["a", "b"],
               "misclassified": [{"index": 1, "true": 1, "pred": 0}]})
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    run = inspect_wandb_run(run_dir)
    assert run["id"] == "demo-abc" and run["group"] == "demo" and run["job_type"] == "lr=0.1"
    assert run["name"] == "lr=0.1 s2" and run["config"]["optim"] == {"lr": 0.1}
    assert run["config"]["rayclf"]["trial_id"] == "abc"
    assert [h["epoch"] for h in run["history"]] == [1, 2, 3]
    assert [h["val_accuracy"] for h in run["history"]] == [0.2, 0.4, 0.6000000000000001]
    assert run["summary"]["status"] == "completed" and run["summary"]["test_accuracy"] == 0.75
    assert {"confusion_matrix", "per_class_accuracy", "misclassified"} <= set(run["summary"])
    assert files_containing([tmp_path], FAKE_WANDB_KEY) == []


# ----------------------------------------------------------------------------- W&B faults (fake server, 127.0.0.1)
import time  # noqa: E402

import pytest  # noqa: E402

from rayclf.config import UserError  # noqa: E402
from rayclf.tracking import FINISH_TIMEOUT_S, LOCAL_START_TIMEOUT_S, START_TIMEOUT_S, check_online  # noqa: E402

from .fake_wandb import FakeWandb  # noqa: E402

FAULTS = ["closed", "hang", "error"]


@pytest.fixture
def no_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


@pytest.fixture(params=FAULTS)
def fault(request, monkeypatch):
    """A fake W&B server with one fault, the API key set, WANDB_BASE_URL pointing at it."""
    import wandb

    server = FakeWandb(request.param)
    monkeypatch.setenv("WANDB_BASE_URL", server.url)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_WANDB_KEY)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    wandb.teardown()  # wandb reads WANDB_BASE_URL once per process (its singleton): as a fresh trial process would
    yield server
    server.close()
    wandb.teardown()


def test_explicit_online_without_a_key_refuses_with_the_fix(no_key, tmp_path):
    online = TrackingSettings("online", dir=str(tmp_path))
    with pytest.raises(UserError) as err:
        check_online(online, "--wandb online", strict=False)
    assert all(s in str(err.value) for s in ("`wandb login`", "WANDB_API_KEY", "--wandb offline", "Nothing was"))
    assert check_online(online, None, strict=False)[0].mode == "offline"  # auto: offline, as before


def test_an_unreachable_server_turns_the_sweep_offline_or_refuses_when_strict(fault, tmp_path):
    online = TrackingSettings("online", dir=str(tmp_path))
    started = time.perf_counter()
    settings, warning = check_online(online, "--wandb online", strict=False, timeout=1.0)
    print(f"{fault.mode}: the check took {time.perf_counter() - started:.2f} s")
    assert settings.mode == "offline" and fault.url in settings.fallback
    assert warning is not None and warning.count("warning:") == 1 and "`wandb sync`" in warning
    if fault.mode == "hang":
        assert "did not answer within 1 s" in settings.fallback  # the check's own bound, not wandb's minute
    with pytest.raises(UserError, match="stops before any trial trains"):
        check_online(online, "--wandb online", strict=True, timeout=1.0)
    fault.mode = "recovered" if fault.mode == "error" else fault.mode  # the same server, working again
    if fault.mode == "recovered":
        assert check_online(online, "--wandb online", strict=True, timeout=1.0) == (online, None)


@pytest.mark.parametrize("fault", [*FAULTS, "flaky"], indirect=True)
def test_a_trials_online_start_is_bounded_and_falls_back_offline_with_its_whole_run(fault, tmp_path, monkeypatch):
    import wandb

    seen: list[dict] = []
    real_init = wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kw: seen.append(kw) or real_init(**kw))
    notes: list[str] = []
    trial = TrialSpec("abc", "demo", "lr=0.1", None, 2, None, 0, {"optim.lr": 0.1}, {"optim": {"lr": 0.1}}, 3)
    started = time.perf_counter()
    rep = WandbReporter(TrackingSettings("online", dir=str(tmp_path)), trial, on_fallback=notes.append)
    for e in (1, 2, 3):
        rep.epoch({"epoch": e, "val_accuracy": 0.2 * e})
    rep.end({"status": "completed", "test_accuracy": 0.75, "confusion_matrix": [[1, 0], [0, 1]],
             "per_class_accuracy": [1.0, 1.0], "classes": ["a", "b"]})
    print(f"{fault.mode}: the trial's tracking took {time.perf_counter() - started:.2f} s in all")
    # the online start was bounded (wandb's own timeouts, and no who-am-I requests before it), then offline
    # refused, 5xx, no answer: the trial's own check (seconds) sends it offline before wandb.init; a server that
    # passes it and fails wandb's requests costs wandb.init's bounded start, then offline
    tried = ["online", "offline"] if fault.mode == "flaky" else ["offline"]
    assert [kw["mode"] for kw in seen] == tried and {kw["id"] for kw in seen} == {"demo-abc"}
    # the offline run waits longer to start: only for wandb's local service, which a loaded machine starts slowly
    assert [kw["settings"].init_timeout for kw in seen] == [
        START_TIMEOUT_S if mode == "online" else LOCAL_START_TIMEOUT_S for mode in tried]
    assert all(kw["settings"].silent and kw["settings"].finish_timeout == FINISH_TIMEOUT_S for kw in seen)
    assert fault.requests > 0 or fault.mode == "closed"  # it did try the server
    assert len(notes) == 1 and ("W&B init failed" if fault.mode == "flaky" else fault.url) in notes[0]
    assert rep.tracked.mode == "offline" and not rep.broken
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    run = inspect_wandb_run(run_dir)
    assert run["id"] == "demo-abc" and [h["epoch"] for h in run["history"]] == [1, 2, 3]
    assert run["summary"]["status"] == "completed" and "confusion_matrix" in run["summary"]


class _DyingRun:
    """Stands in for an online run whose W&B fails in the middle (``log``) or at the upload (``finish``)."""

    def __init__(self, fail_at: str, logged: list[dict]):
        self.fail_at, self.logged, self.summary, self.dir = fail_at, logged, {}, "online-run"

    def define_metric(self, *a, **k):
        pass

    def log(self, row):
        if self.fail_at == "log" and len(self.logged) == 1:
            raise RuntimeError("wandb-core went away")
        self.logged.append(row)

    def finish(self, exit_code=0):
        if self.fail_at == "finish":
            raise TimeoutError("Timed out finishing run.")


@pytest.mark.parametrize("fail_at", ["log", "finish"])
def test_a_failure_mid_run_switches_the_run_offline_without_dropping_its_history(fail_at, tmp_path, monkeypatch,
                                                                                caplog):
    import rayclf.tracking as tracking

    real_open, online_logged = tracking._open_run, []

    def open_run(settings, rid, mode, **identity):
        return _DyingRun(fail_at, online_logged) if mode == "online" else real_open(settings, rid, mode, **identity)

    monkeypatch.setattr(tracking, "_open_run", open_run)
    monkeypatch.setattr(tracking, "server_problem", lambda *a: None)  # the server answered before the run began
    notes: list[str] = []
    trial = TrialSpec("abc", "demo", "base", None, 0, None, 0, {}, {"seed": 0}, 3)
    with caplog.at_level(logging.WARNING, logger="rayclf.tracking"):
        rep = WandbReporter(TrackingSettings("online", dir=str(tmp_path)), trial, on_fallback=notes.append)
        for e in (1, 2, 3):
            rep.epoch({"epoch": e, "train_loss": 1.0 / e})
        rep.end({"status": "completed", "test_accuracy": 0.5})
    assert len(notes) == 1 and f"W&B {fail_at} failed" in notes[0]
    assert f"wandb sync {tmp_path}/wandb/offline-run-*" in caplog.text
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    run = inspect_wandb_run(run_dir)
    assert [h["epoch"] for h in run["history"]] == [1, 2, 3]  # epoch 1 went online first: written again
    assert run["summary"]["status"] == "completed" and run["summary"]["test_accuracy"] == 0.5


def _sweep_file(tmp_path):
    import yaml

    from .conftest import tiny

    f = tmp_path / "s.yaml"
    search = {"ablation": {"factors": {"optim.lr": [0.2]}}}
    f.write_text(yaml.safe_dump({"name": "wb", "base": tiny(), "search": search}))
    return f


def test_the_cli_refuses_an_online_sweep_without_a_key_before_anything_runs(no_key, tmp_path):
    from click.testing import CliRunner

    from rayclf.cli import main

    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["sweep", str(_sweep_file(tmp_path)), "--out", str(out), "--wandb", "online"])
    assert res.exit_code == 2, res.output
    assert "--wandb online" in res.output and "`wandb login`" in res.output and "WANDB_API_KEY" in res.output
    assert "Traceback" not in res.output and not out.exists()  # nothing trained, nothing written


def test_the_cli_refuses_a_strict_online_sweep_when_the_server_does_not_answer(fault, tmp_path):
    from click.testing import CliRunner

    from rayclf.cli import main

    out = tmp_path / "o"
    f = _sweep_file(tmp_path)
    f.write_text(f.read_text() + "wandb: {mode: online, strict: true}\n")  # the file's equivalent of the flag
    res = CliRunner().invoke(main, ["sweep", str(f), "--out", str(out)])
    assert res.exit_code == 2 and fault.url in res.output and "--wandb-strict" in res.output, res.output
    assert not out.exists()


def test_the_live_view_says_once_that_tracking_fell_back():
    import io

    from rayclf.sweep.live import LiveView

    stream = io.StringIO()
    view = LiveView(total=3, metric="val_accuracy", stream=stream, terminal=False)
    for tid in ("t1", "t2", "t1"):
        view.tracking_fell_back(tid, "W&B init failed (CommError: HTTP 500)\nmore detail")
    assert stream.getvalue().count("W&B: tracking fell back to offline") == 1
    assert "[t1] (W&B init failed (CommError: HTTP 500))" in stream.getvalue() and "wandb sync" in stream.getvalue()


def test_an_offline_run_never_contacts_the_server_not_even_at_exit(tmp_path):
    """wandb's own usage analytics post to WANDB_BASE_URL when the process exits, offline runs too: against a
    server that never answers that held every sweep's exit for 10 s. An offline rayclf run turns them off."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    server = FakeWandb("hang")
    code = ("from rayclf.tracking import TrackingSettings, log_sweep_summary\n"
            f"assert log_sweep_summary(TrackingSettings('offline', dir={str(tmp_path)!r}), 'sw', [{{'arm': 'a'}}])\n")
    env = {**os.environ, "WANDB_BASE_URL": server.url, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    finally:
        server.close()
    assert res.returncode == 0, res.stderr[-2000:]
    assert server.requests == 0  # no connection at all, so nothing can wait on it


def test_the_cluster_preflight_names_what_a_worker_nodes_trials_would_meet(fault, monkeypatch, tmp_path):
    from rayclf.sweep.preflight import _tracking_problem

    where = "worker node 10.0.0.7 (node abcd1234)"
    assert fault.url in _tracking_problem(where) and where in _tracking_problem(where)
    fault.mode = "recovered"
    if fault._httpd is not None:  # the HTTP server (not the closed port or the silent socket) works again
        assert _tracking_problem(where) is None
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert "no W&B API key" in _tracking_problem(where) and "Ray does not forward" in _tracking_problem(where)
