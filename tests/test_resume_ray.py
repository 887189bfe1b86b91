"""Exact resume on a real Ray: a failed trial continues from its checkpoint; a killed driver loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from rayclf.results import EPOCHS, TRIALS
from rayclf.sweep.keys import CHECKPOINT_META
from rayclf.sweep.lock import DRIVER_FILE, _in_session
from rayclf.sweep.runner import run_sweep
from rayclf.sweep.spec import parse_sweep

from .conftest import assert_continued, assert_same_run, exact_base, kill_trial_processes, slow_base

pytestmark = pytest.mark.ray


def checkpoint_epochs(storage: Path) -> dict[str, int]:
    """Latest checkpointed epoch per trial id, read from the checkpoints' rayclf.json."""
    out: dict[str, int] = {}
    for meta in storage.rglob(CHECKPOINT_META):
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        out[info["trial_id"]] = max(out.get(info["trial_id"], 0), int(info["epoch"]))
    return out


@pytest.mark.timeout(120)
def test_failed_trial_continues_from_its_checkpoint(ray_local, tmp_path):
    """A trial whose process is killed mid-run continues from its checkpoint on ``--resume`` and ends exactly
    where an uninterrupted twin (same config, same seed) ends, epoch by epoch."""
    spec = {"name": "crash", "base": exact_base(epochs=6), "max_failures": 0}
    out = tmp_path / "crash"
    killed: list[int] = []

    def killer() -> None:  # an OOM-killer stand-in: the trial's process dies after its second checkpoint
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            if max(checkpoint_epochs(out / "_ray").values(), default=0) >= 2:
                killed.append(kill_trial_processes())
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    first = run_sweep(parse_sweep(spec), out=str(out), live=False, wandb_mode="disabled")
    thread.join()
    assert killed and killed[0] >= 1
    row = first.rows[0]
    assert row["status"] == "failed" and 2 <= row["epochs"] < 6, row
    reached = row["epochs"]
    before = pd.read_parquet(out / EPOCHS)

    again = run_sweep(parse_sweep(spec), out=str(out), resume=True, live=False, wandb_mode="disabled")
    row = again.rows[0]
    assert row["status"] == "completed" and row["epochs"] == 6
    assert 2 <= row["resumed_from_epoch"] <= reached  # continued from its checkpoint, not from epoch 0
    epochs = pd.read_parquet(out / EPOCHS)
    assert sorted(epochs["epoch"]) == [1, 2, 3, 4, 5, 6]  # every epoch recorded once
    assert len(pd.read_parquet(out / TRIALS)) == 1
    assert_continued(before, epochs, row["resumed_from_epoch"])

    twin = run_sweep(parse_sweep(spec), out=str(tmp_path / "twin"), live=False, wandb_mode="disabled")
    assert twin.rows[0]["resumed_from_epoch"] == 0
    assert_same_run((epochs, row), (pd.read_parquet(tmp_path / "twin" / EPOCHS), twin.rows[0]))


@pytest.mark.slow
@pytest.mark.timeout(270)
def test_kill_driver_mid_sweep_then_resume_loses_and_repeats_nothing(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    spec = {"name": "k9", "base": slow_base(epochs=5), "search": {"grid": {"optim.lr": [0.05, 0.02]}},
            "seeds": [0, 1], "resources": {"cpus": 1}}
    f = tmp_path / "k9.yaml"
    f.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    rayclf = str(Path(sys.executable).with_name("rayclf"))
    cmd = [rayclf, "sweep", str(f), "--out", str(out), "--quiet", "--wandb", "disabled", "--num-cpus", "2"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    finished: set[str] = set()
    while time.monotonic() < deadline:  # wait for a finished trial and an unfinished one with a checkpoint
        finished = {p.stem for p in (out / TRIALS).glob("*.parquet")} if (out / TRIALS).is_dir() else set()
        running = {t for t, e in checkpoint_epochs(out / "_ray").items() if t not in finished and 1 <= e < 5}
        if finished and running:
            break
        assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
        time.sleep(0.1)
    # readers load the tables in one call while the sweep runs
    assert len(pd.read_parquet(out / TRIALS)) >= 1
    assert duckdb.sql(f"select count(*) from read_parquet('{out / EPOCHS}/*.parquet')").fetchall()[0][0] >= 5
    session = json.loads((out / DRIVER_FILE).read_text())["session_dir"]
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    before = {p.name: p.read_bytes() for p in (out / TRIALS).glob("*.parquet")}

    res = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=400)
    (tmp_path / "resume.log").write_text(res.stdout + res.stderr)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    name = os.path.basename(session)
    assert not [p for p in psutil.process_iter(["cmdline"]) if _in_session(p, name)]  # nothing of the killed run
    after = {p.name: p.read_bytes() for p in (out / TRIALS).glob("*.parquet")}
    assert {k: after[k] for k in before} == before  # nothing finished was lost or rewritten
    trials = pd.read_parquet(out / TRIALS)
    assert len(trials) == 4 and set(trials["status"]) == {"completed"}
    resumed = trials[~trials["trial_id"].isin([Path(k).stem for k in before])]
    assert (resumed["resumed_from_epoch"] >= 1).any()  # an interrupted trial continued from its checkpoint
    epochs = pd.read_parquet(out / EPOCHS)
    for _tid, group in epochs.groupby("trial_id"):
        assert sorted(group["epoch"]) == [1, 2, 3, 4, 5]
