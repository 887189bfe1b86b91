"""Issue 20: Ctrl-C stops a sweep — the CLI's process group gets SIGINT mid-round, exits 130 with the resume
command, records nothing unfinished and takes no decision; ``--resume`` continues from the checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from rayclf.results import TRIALS
from rayclf.sweep.decisions import read_decisions

from .conftest import slow_base
from .test_resume_ray import checkpoint_epochs

pytestmark = [pytest.mark.ray, pytest.mark.timeout(150)]


def test_sigint_mid_round_stops_a_racing_sweep_and_resume_completes_it(tmp_path):
    spec = {"name": "race", "base": slow_base(epochs=6), "search": {"grid": {"optim.lr": [0.05, 0.005]}},
            "seeds": [0, 1, 2], "scheduler": {"name": "racing", "first_round": 2}, "resources": {"cpus": 1}}
    f = tmp_path / "race.yaml"
    f.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).with_name("rayclf")), "sweep", str(f), "--out", str(out), "--quiet",
           "--wandb", "disabled", "--num-cpus", "2"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # the event: some trial of the first round checkpointed mid-run
        finished = {p.stem for p in (out / TRIALS).glob("*.parquet")} if (out / TRIALS).is_dir() else set()
        if any(1 <= e < 6 and t not in finished for t, e in checkpoint_epochs(out / "_ray").items()):
            break
        assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
        time.sleep(0.05)
    # the driver's own instance runs without the processes a local sweep does not use (rayclf.sweep.localray)
    started = [" ".join(p.cmdline()) for p in psutil.Process(driver.pid).children(recursive=True)]
    assert any("raylet" in c for c in started), started
    assert not [c for c in started if "autoscaler/_private/monitor.py" in c or "log_monitor.py" in c
                or "dashboard/dashboard.py" in c], started
    os.killpg(driver.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole foreground process group
    output = driver.communicate(timeout=180)[0].decode()
    assert driver.returncode == 130, output[-3000:]
    assert "Continue with: rayclf sweep" in output and "--resume" in output
    rows = pd.read_parquet(out / TRIALS) if any((out / TRIALS).glob("*.parquet")) else pd.DataFrame()
    assert rows.empty or set(rows["status"]) == {"completed"}  # nothing interrupted recorded as finished
    assert rows.empty or (rows["epochs"] == 6).all()
    assert read_decisions(str(out)) == []  # no elimination on a partial round
    interrupted = set(checkpoint_epochs(out / "_ray")) - set(rows.get("trial_id", []))
    assert interrupted

    # the resume's driver, with Python's import log: a whole sweep (continued trials' checkpoints found, Tune's
    # run, the closing table) imports neither torch nor, with W&B disabled, wandb or matplotlib (BENCHMARKS.md,
    # issue 33: ≈ 5 s of a 2-core machine's CPU before the first trial, and ≈ 1 s before the table)
    driver_cmd = [sys.executable, "-X", "importtime", "-m", "rayclf.cli", *cmd[1:], "--resume"]
    res = subprocess.run(driver_cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert len(imported) > 100 and "ray.tune" in imported, res.stderr[-2000:]
    assert not {"torch", "wandb", "matplotlib"} & imported, sorted({"torch", "wandb", "matplotlib"} & imported)
    trials = pd.read_parquet(out / TRIALS).set_index("trial_id")
    assert set(trials["status"]) <= {"completed", "eliminated"}
    resumed = trials.loc[sorted(interrupted & set(trials.index))]
    assert (resumed["resumed_from_epoch"] > 0).any(), resumed[["arm", "seed", "resumed_from_epoch"]]
    if not rows.empty:  # rows finished before the interrupt are unchanged
        before = rows.set_index("trial_id")
        assert (trials.loc[before.index, "metric_best"] == before["metric_best"]).all()
