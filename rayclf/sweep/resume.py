"""What an earlier run of a sweep left behind: checkpoints of unfinished trials, and a driver that died.

Trials are found by id, not through ``Tuner.restore`` (which cannot take an edited trial list): every
checkpoint a trial reports carries a small ``rayclf.json`` (trial id, epoch, epochs so far), so one listing
of the sweep's Ray storage tells where each unfinished trial can continue. A driver writes ``_driver.json``
(pid, host, its local Ray session) while it runs; a later ``--resume`` stops that session's Ray processes if
the driver was killed, and refuses to run beside a driver that is still alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from rayclf.config import UserError
from rayclf.results import exists, filesystem, join, read_text, write_text
from rayclf.sweep.keys import CHECKPOINT_META

DRIVER_FILE = "_driver.json"


@dataclass
class FoundCheckpoint:
    uri: str
    epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)


def find_checkpoints(storage: str, trial_ids: set[str]) -> dict[str, FoundCheckpoint]:
    """The latest checkpoint (highest epoch) of each of ``trial_ids`` anywhere under the sweep's storage."""
    fs, root = filesystem(storage)
    if not trial_ids or fs.get_file_info(root).type == pafs.FileType.NotFound:
        return {}
    scheme = storage.split("://", 1)[0] + "://" if "://" in storage else ""
    found: dict[str, FoundCheckpoint] = {}
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.base_name != CHECKPOINT_META:
            continue
        try:
            with fs.open_input_stream(info.path) as f:
                meta = json.loads(f.read().decode())
        except (OSError, ValueError):  # a checkpoint being written or half-deleted: not a candidate
            continue
        tid, epoch = meta.get("trial_id"), int(meta.get("epoch") or 0)
        folder = info.path.rsplit("/", 1)[0]
        # a checkpoint whose copy to storage was cut off by the crash has no complete weights file: skip it
        if tid in trial_ids and epoch > (found[tid].epoch if tid in found else 0) and _complete(fs, folder):
            found[tid] = FoundCheckpoint(scheme + folder, epoch, list(meta.get("history", [])))
    return found


def _complete(fs: pafs.FileSystem, folder: str) -> bool:
    from rayclf.train.checkpoint import CHECKPOINT_FILE

    info = fs.get_file_info(f"{folder}/{CHECKPOINT_FILE}")
    return info.type == pafs.FileType.File and (info.size or 0) > 0


# ------------------------------------------------------------------------------------ the driver
def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).is_running() and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


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


def check_previous_driver(out: str, echo: Any = print) -> None:
    """Before a run: refuse beside a live driver of this sweep; clean up after a killed one."""
    uri = join(out, DRIVER_FILE)
    if not exists(uri):
        return
    try:
        info = json.loads(read_text(uri))
    except (OSError, ValueError):
        return
    same_host = info.get("host") == socket.gethostname()
    if same_host and _alive(int(info.get("pid", -1))):
        raise UserError(f"another rayclf sweep (pid {info['pid']}) is still running on {out}; wait for it or stop "
                        "it before resuming (two drivers would record the same trials).")
    session = info.get("session_dir")
    if same_host and session:
        stopped = stop_session(session)
        if stopped:
            echo(f"stopped {stopped} leftover Ray process(es) of the killed run (pid {info.get('pid')})")


def claim_driver(out: str, session_dir: str | None) -> None:
    """Mark this process as the sweep's driver (and the local Ray session it started, if any)."""
    info = {"pid": os.getpid(), "host": socket.gethostname(), "session_dir": session_dir, "started": time.time()}
    write_text(join(out, DRIVER_FILE), json.dumps(info))


def release_driver(out: str) -> None:
    fs, path = filesystem(join(out, DRIVER_FILE))
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_file(path)
