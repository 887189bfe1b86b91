"""One driver per sweep directory: ``_driver.json``, taken before anything in the directory is written.

Locally the file is created exclusively (``O_CREAT | O_EXCL``): of two drivers started at once exactly one
gets it. Object storage has no conditional put in pyarrow, so there the lock is advisory (read, refuse a live
driver, write, read back). The file says who drives the sweep and what runs (``rayclf status`` reads it)::

    {"host", "pid", "start_time" (the process's start, from psutil), "session_dir" (the local Ray session it
     started, or null), "started", "heartbeat" (unix times),
     "running": {trial_id: {"arm_id", "label", "seed", "epoch", "epochs"}}}

The driver refreshes ``heartbeat`` every ``HEARTBEAT_SECONDS`` on a daemon thread, and whenever the running set
changes (``beat``). A driver is live when its pid runs on this host with the recorded start time (a recycled
pid has another), or, seen from another host, when its heartbeat is recent. A dead driver's lock is taken
over, after stopping the local Ray session it left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from rayclf.config import UserError
from rayclf.storage import exists, filesystem, join, read_text, write_text

DRIVER_FILE = "_driver.json"
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0  # seen from another host, a driver whose heartbeat is this old is dead
START_TIME_SLACK = 1.0  # seconds: psutil's start times of one process agree far closer than this


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (unix time), or None if there is no such process (or a zombie)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def is_live(info: dict[str, Any], now: float | None = None) -> bool:
    """Whether the driver ``info`` describes still runs: on this host by pid and start time (a dead or recycled
    pid is not live), from elsewhere by the age of its heartbeat."""
    if info.get("host") != socket.gethostname():
        beat = info.get("heartbeat") or info.get("started") or 0.0
        return (now or time.time()) - float(beat) < STALE_SECONDS
    started = process_start_time(int(info.get("pid") or -1))
    if started is None:
        return False
    recorded = info.get("start_time")
    return recorded is None or abs(started - float(recorded)) < START_TIME_SLACK


def read_driver(out: str) -> dict[str, Any] | None:
    """The driver file of a sweep directory, or None when there is none (or it cannot be read)."""
    uri = join(out, DRIVER_FILE)
    try:
        return json.loads(read_text(uri)) if exists(uri) else None
    except (OSError, ValueError):
        return None


def _in_session(proc: Any, name: str) -> bool:
    """Whether a process belongs to the Ray session ``name``: by its command line, or (Ray's agents rename
    themselves, e.g. ``ray::DashboardAgent``) by the session's log files it holds open."""
    cmdline = proc.info["cmdline"] or ()
    if any(name in part for part in cmdline):
        return True
    if not (cmdline and cmdline[0].startswith("ray::")):
        return False
    return any(name in f.path for f in proc.open_files())


def stop_session(session_dir: str) -> int:
    """Terminate the processes of a local Ray session (raylet, GCS, agents, workers); return how many."""
    import psutil

    name = os.path.basename(session_dir.rstrip("/"))
    victims = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid != os.getpid() and _in_session(proc, name):
                victims.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(victims, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    return len(victims)


def _judge(out: str, info: dict[str, Any] | None, echo: Any) -> None:
    """Refuse beside a live driver; clean up after a dead one of this host (its leftover Ray session)."""
    if info is None:
        return
    if is_live(info):
        raise UserError(f"another rayclf sweep (pid {info.get('pid')} on {info.get('host')}) is still running on "
                        f"{out}; wait for it or stop it before starting or resuming this sweep there (two drivers "
                        "would record the same trials). Nothing was written.")
    session = info.get("session_dir")
    if session and info.get("host") == socket.gethostname():
        stopped = stop_session(session)
        if stopped:
            echo(f"stopped {stopped} leftover Ray process(es) of the killed run (pid {info.get('pid')})")


class DriverLock:
    """The lock this process holds on a sweep directory; ``release`` it when the sweep ends."""

    def __init__(self, out: str, info: dict[str, Any]):
        self.out, self.uri, self.info = out, join(out, DRIVER_FILE), info
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_forever, name="rayclf-driver-heartbeat", daemon=True)

    @classmethod
    def acquire(cls, out: str, echo: Any = print) -> DriverLock:
        """Take the sweep directory's lock before anything in it is written, or raise ``UserError``."""
        now = time.time()
        info = {"host": socket.gethostname(), "pid": os.getpid(), "start_time": process_start_time(os.getpid()),
                "session_dir": None, "started": now, "heartbeat": now, "running": {}}
        lock = cls(out, info)
        text = json.dumps(info)
        if "://" in out:
            lock._take_advisory(text, echo)
        else:
            lock._take_exclusive(text, echo)
        lock._thread.start()
        return lock

    def _take_exclusive(self, text: str, echo: Any) -> None:
        """Create the file exclusively; a dead driver's file is moved aside first (and only if unchanged)."""
        _, path = filesystem(self.uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        for _ in range(5):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._remove_dead(path, echo)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return
        raise UserError(f"could not take the driver lock {path}: other drivers keep taking it.")

    def _remove_dead(self, path: str, echo: Any) -> None:
        try:
            with open(path, "rb") as f:
                seen = f.read()
        except FileNotFoundError:
            return
        try:
            info = json.loads(seen)
        except ValueError:  # a driver between creating its file and writing it, or a file cut short long ago
            if time.time() - os.path.getmtime(path) < STALE_SECONDS:
                raise UserError(f"another rayclf driver is starting on {self.out}; nothing was written.") from None
            info = None
        _judge(self.out, info, echo)
        tomb = f"{path}.{uuid.uuid4().hex}.dead"
        try:
            os.rename(path, tomb)
        except FileNotFoundError:
            return
        with open(tomb, "rb") as f:
            moved = f.read()
        if moved != seen:  # a new driver took the lock meanwhile: give it back, the next try refuses
            with contextlib.suppress(FileExistsError):
                os.link(tomb, path)
        os.remove(tomb)

    def _take_advisory(self, text: str, echo: Any) -> None:
        _judge(self.out, read_driver(self.out), echo)
        write_text(self.uri, text)
        if read_text(self.uri) != text:
            raise UserError(f"another rayclf driver took {self.out} at the same moment; nothing was run.")

    def _write(self) -> None:
        with self._mutex:
            if self._stop.is_set():  # released: the file is gone and stays gone
                return
            self.info["heartbeat"] = time.time()
            write_text(self.uri, json.dumps(self.info))

    def _beat_forever(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):  # a storage hiccup must not end the sweep; the next beat retries
                self._write()

    def beat(self, running: dict[str, dict[str, Any]] | None = None) -> None:
        """Refresh the heartbeat; ``running`` (trial id → arm_id, label, seed, epoch, epochs) replaces the
        running set when given."""
        if running is not None:
            with self._mutex:
                self.info["running"] = {tid: dict(t) for tid, t in running.items()}
        with contextlib.suppress(OSError):
            self._write()

    def set_session(self, session_dir: str | None) -> None:
        """Record the local Ray session this driver started (a later run stops it if this driver dies)."""
        with self._mutex:
            self.info["session_dir"] = session_dir
        self._write()

    def release(self) -> None:
        with self._mutex:
            self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=HEARTBEAT_SECONDS)
        fs, path = filesystem(self.uri)
        with contextlib.suppress(FileNotFoundError, OSError):
            fs.delete_file(path)
