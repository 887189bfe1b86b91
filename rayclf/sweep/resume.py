"""What an earlier run of a sweep left behind: checkpoints of unfinished trials.

Trials are found by id, not through ``Tuner.restore`` (which cannot take an edited trial list): every
checkpoint a trial reports carries a small ``rayclf.json`` (trial id, epoch, epochs so far) inside a folder
named after its trial (``trial-{id}``), so one listing of the sweep's Ray storage tells where each unfinished
trial can continue, and only the wanted trials' checkpoints are read. (The driver lock that refuses a second
driver and cleans up after a killed one is ``rayclf.sweep.lock``.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from rayclf.storage import filesystem, to_uri
from rayclf.sweep.keys import CHECKPOINT_META
from rayclf.sweep.lock import DRIVER_FILE  # noqa: F401  (moved to rayclf.sweep.lock; still importable here)
from rayclf.train import CHECKPOINT_FILE

TRIAL_DIR_PREFIX = "trial-"  # Tune's trial folders and Ray Train's run folders: trial-{trial_id}


@dataclass
class FoundCheckpoint:
    uri: str
    epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)


def _trial_of(path: str) -> str | None:
    """The trial id of the ``trial-{id}`` folder a listed path lies in, if any."""
    for part in reversed(path.split("/")[:-1]):
        if part.startswith(TRIAL_DIR_PREFIX):
            return part[len(TRIAL_DIR_PREFIX):]
    return None


def find_checkpoints(storage: str, trial_ids: set[str]) -> dict[str, FoundCheckpoint]:
    """The latest checkpoint (highest epoch) of each of ``trial_ids`` anywhere under the sweep's storage.

    One recursive listing; only checkpoints inside the wanted trials' ``trial-{id}`` folders are read (one
    small GET each on object storage), and a checkpoint's weights are checked in the listing itself."""
    fs, root = filesystem(storage)
    if not trial_ids or fs.get_file_info(root).type == pafs.FileType.NotFound:
        return {}
    listing = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    sizes = {i.path: i.size or 0 for i in listing if i.type == pafs.FileType.File}
    found: dict[str, FoundCheckpoint] = {}
    for info in listing:
        if info.base_name != CHECKPOINT_META or _trial_of(info.path) not in trial_ids:
            continue
        folder = info.path.rsplit("/", 1)[0]
        # a checkpoint whose copy to storage was cut off by the crash has no complete weights file: skip it
        if not sizes.get(f"{folder}/{CHECKPOINT_FILE}"):
            continue
        try:
            with fs.open_input_stream(info.path) as f:
                meta = json.loads(f.read().decode())
        except (OSError, ValueError):  # a checkpoint being written or half-deleted: not a candidate
            continue
        tid, epoch = meta.get("trial_id"), int(meta.get("epoch") or 0)
        if tid in trial_ids and epoch > (found[tid].epoch if tid in found else 0):
            found[tid] = FoundCheckpoint(to_uri(storage, folder), epoch, list(meta.get("history", [])))
    return found
