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
