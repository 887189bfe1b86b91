"""One driver per sweep directory (``rayclf.sweep.lock``): taken before anything is written, exclusive, with a
heartbeat and the running set; dead and recycled pids are told from live drivers. No Ray."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import rayclf.sweep.lock as lock_module
from rayclf.config import UserError
from rayclf.sweep.lock import DRIVER_FILE, DriverLock, is_live, process_start_time, read_driver
from rayclf.sweep.trialspec import TrialSpec

from .conftest import tiny


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _driver_file(out: Path) -> dict:
    return json.loads((out / DRIVER_FILE).read_text())


def test_a_second_driver_with_another_sweep_file_is_refused_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump({"name": "first", "base": tiny()}))
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"name": "other", "base": tiny(), "seeds": [0, 1, 2]}))
    # the running driver: this process holds the lock and has written its sweep file
    from rayclf.sweep.runner import prepare_out
    from rayclf.sweep.spec import load_sweep

    _, _, held = prepare_out(load_sweep(first, ()), str(out), resume=False, echo=lambda _: None)
    try:
        running_yaml = (out / "sweep.yaml").read_bytes()
        before = _snapshot(out)
        rayclf = str(Path(sys.executable).with_name("rayclf"))
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "RAY_ADDRESS": ""}
        for extra in (["--resume"],):
            run = subprocess.run([rayclf, "sweep", str(other), "--out", str(out), "--quiet", "--wandb", "disabled",
                                  *extra], env=env, capture_output=True, text=True, timeout=120)
            assert run.returncode == 2, run.stdout + run.stderr
            assert f"pid {os.getpid()}" in run.stderr and "Traceback" not in run.stderr
        assert (out / "sweep.yaml").read_bytes() == running_yaml
        after = _snapshot(out)
        assert sorted(after) == sorted(before)  # no new file (no trial table, no Ray storage)
        assert {k: v for k, v in after.items() if k != DRIVER_FILE} == {k: v for k, v in before.items()
                                                                        if k != DRIVER_FILE}
        assert _driver_file(out)["pid"] == os.getpid()  # the running driver's lock is still its own
    finally:
        held.release()
    assert not (out / DRIVER_FILE).exists()


def test_the_lock_records_who_drives_and_what_runs_and_beats(tmp_path, monkeypatch):
    monkeypatch.setattr(lock_module, "HEARTBEAT_SECONDS", 0.05)
    out = tmp_path / "out"
    lock = DriverLock.acquire(str(out))
    info = _driver_file(out)
    assert set(info) == {"host", "pid", "start_time", "session_dir", "started", "heartbeat", "running"}
    assert (info["host"], info["pid"]) == (socket.gethostname(), os.getpid())
    assert info["start_time"] == pytest.approx(process_start_time(os.getpid()))
    time.sleep(0.3)
    assert _driver_file(out)["heartbeat"] > info["heartbeat"]  # the background thread refreshes it
    lock.set_session("/tmp/ray/session_x")
    running = {"t1": {"arm_id": "a1", "label": "lr=0.1", "seed": 0, "epoch": 2, "epochs": 5}}
    lock.beat(running)
    assert _driver_file(out)["running"] == running and _driver_file(out)["session_dir"] == "/tmp/ray/session_x"
    lock.release()
    assert read_driver(str(out)) is None
    lock.beat({})  # a late event after the end writes nothing back
    time.sleep(0.2)
    assert not (out / DRIVER_FILE).exists() and not lock._thread.is_alive()


def test_dead_and_recycled_pids_are_not_live_drivers(tmp_path):
    me = {"host": socket.gethostname(), "pid": os.getpid(), "start_time": process_start_time(os.getpid())}
    assert is_live(me)
    assert not is_live({**me, "start_time": me["start_time"] - 3600})  # same pid, another process: recycled
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not is_live({**me, "pid": gone.pid, "start_time": time.time()})
    # seen from another host only the heartbeat tells
    assert is_live({"host": "elsewhere", "pid": 1, "heartbeat": time.time() - 5})
    assert not is_live({"host": "elsewhere", "pid": 1, "heartbeat": time.time() - 3600})

    # a recycled pid's lock is taken over; a live one is refused
    out = tmp_path / "out"
    out.mkdir()
    (out / DRIVER_FILE).write_text(json.dumps({**me, "start_time": me["start_time"] - 3600, "session_dir": None}))
    lock = DriverLock.acquire(str(out))
    try:
        assert _driver_file(out)["start_time"] == pytest.approx(me["start_time"])
        with pytest.raises(UserError, match="still running"):
            DriverLock.acquire(str(out))
    finally:
        lock.release()


def test_of_drivers_started_at_once_exactly_one_takes_the_lock(tmp_path):
    out = tmp_path / "out"
    won: list[DriverLock] = []
    refused: list[str] = []
    start = threading.Barrier(6)

    def driver() -> None:
        start.wait()
        try:
            won.append(DriverLock.acquire(str(out)))
        except UserError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=driver) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 5
    won[0].release()


def test_the_live_view_callback_keeps_the_running_set_current(tmp_path):
    from rayclf.sweep.callbacks import LiveCallback

    out = tmp_path / "out"
    lock = DriverLock.acquire(str(out))
    trial = SimpleNamespace(config={"trial": TrialSpec("t1", "s", "lr=0.1", "a1", 3, None, 0, {}, {}, 4)})
    callback = LiveCallback(None, SimpleNamespace(rows={}, metric="val_accuracy"), lock)
    try:
        callback.on_trial_start(0, [], trial)
        assert _driver_file(out)["running"] == {"t1": {"arm_id": "a1", "label": "lr=0.1", "seed": 3, "epoch": 0,
                                                       "epochs": 4}}
        callback.on_trial_result(0, [], trial, {"epoch": 2})
        assert _driver_file(out)["running"]["t1"]["epoch"] == 2
        callback.on_trial_complete(0, [], trial)
        assert _driver_file(out)["running"] == {}
    finally:
        lock.release()
