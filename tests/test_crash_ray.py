"""Issue 29 on Ray: the sweep driver is killed with SIGKILL mid-sweep (no handler runs, nothing is cleaned up), the
last trial part it wrote is then emptied (the disk lost it), and ``--resume`` finishes the sweep: the emptied part
is moved to quarantine/ and its trial re-run, every other finished trial is kept as it was, and the stage winner is
logged once. The fast version of this (every write boundary, fake runner) is tests/test_crash.py."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from rayclf.results import QUARANTINE, TRIALS
from rayclf.sweep.decisions import WINNER, read_decisions

from .conftest import slow_base

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]


def test_kill_9_of_the_driver_then_a_lost_part_resumes_cleanly(tmp_path):
    spec = {"name": "kill9", "base": slow_base(epochs=2), "seeds": [0, 1],
            "search": {"stages": [{"name": "lr", "vary": {"optim.lr": [0.05, 0.02, 0.1]}}]}, "resources": {"cpus": 1}}
    f = tmp_path / "kill9.yaml"
    f.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).with_name("rayclf")), "sweep", str(f), "--out", str(out), "--quiet",
           "--wandb", "disabled", "--num-cpus", "2"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:  # the event: at least two trials recorded, not all six
        if len(list((out / TRIALS).glob("*.parquet")) if (out / TRIALS).is_dir() else []) >= 2:
            break
        assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
        time.sleep(0.05)
    os.kill(driver.pid, signal.SIGKILL)  # the driver alone: its Ray processes are left behind
    driver.wait(timeout=30)
    parts = sorted((out / TRIALS).glob("*.parquet"), key=lambda p: p.stat().st_mtime_ns)
    assert 2 <= len(parts) < 6, "the kill came after the sweep finished: nothing to resume"
    lost = parts[-1]
    lost.write_bytes(b"")  # the last part written, lost by the disk
    kept = {p.name: pq.read_table(p).to_pylist()[0] for p in parts[:-1]}

    try:
        res = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=500)
    finally:
        with_pgid_gone(driver.pid)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stdout + res.stderr
    assert f"{TRIALS}/{lost.name} cannot be read: moved to {QUARANTINE}/{TRIALS}/{lost.name}" in res.stdout
    assert (out / QUARANTINE / TRIALS / lost.name).stat().st_size == 0  # moved aside, never deleted
    rows = {p.name: pq.read_table(p).to_pylist()[0] for p in (out / TRIALS).glob("*.parquet")}
    assert len(rows) == 6 and {r["status"] for r in rows.values()} == {"completed"}
    assert rows[lost.name]["epochs"] == 2  # the lost trial trained again
    for name, row in kept.items():  # every other finished trial kept exactly
        assert rows[name] == row, name
    assert [d.kind for d in read_decisions(str(out))] == [WINNER]


def with_pgid_gone(pgid: int) -> None:
    """End what is left of the killed driver's session (its Ray processes), by the process group this test
    started; the resume has usually stopped them already."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
