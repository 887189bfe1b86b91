"""The trial cache: completed trials kept by trial id in a folder or an object-store prefix, so another sweep
(a follow-up study, a colleague's run of the same baseline) records them instead of training them again.

A trial id is a content address of what can change the result, so a completed trial found under its id is
the same experiment. One entry per trial id, one JSON object written atomically (a temporary name renamed
into place locally, one PUT on object storage)::

    CACHE/identity-v{N}/{trial_id}/entry.json            row, epoch rows, checkpoint, provenance
    CACHE/identity-v{N}/{trial_id}/checkpoint-{uuid}/     a copy of the final checkpoint (one per publisher)

Two sweeps publishing the same trial at once leave one valid entry: each copies its checkpoint into a folder
of its own first, then renames (or PUTs) its entry, which names that folder; whichever entry lands last is
whole and points to its own checkpoint. Only ``completed`` trials are published or taken: a failed trial, one
a rung or racing decision of another sweep stopped (its budget was that study's) and a row of another identity
version are never reused. An entry that cannot be read is ignored with a warning (the trial trains, and its
publication replaces the entry). A leaf for the sweep layer: it imports the store and storage helpers only.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from rayclf.results import TRIAL_COLUMNS, canonical_json, clean
from rayclf.storage import filesystem, join, read_text, shown, to_uri, write_text

CACHE_ENV = "RAYCLF_CACHE"
ENTRY_FILE = "entry.json"
FORMAT = 1
REUSABLE = "completed"  # the one status a cache entry may hold: a trial that ran its whole budget


def identity_version() -> int:
    """The identity rule this rayclf computes new trial ids by (``rayclf.identity``). A sweep directory written
    under an older rule keeps its own (``Sweep.identity_version``): its cache entries live apart."""
    from rayclf.identity import IDENTITY_VERSION

    return IDENTITY_VERSION


def resolve_cache(flag: str | None, no_cache: bool, file_value: str | None,
                  env: Mapping[str, str] | None = None) -> str | None:
    """Where this sweep's cache is: ``--no-cache`` wins, then ``--cache``, then the sweep file's ``cache:``,
    then ``RAYCLF_CACHE``; None (off) when none is set, so a sweep without one behaves as before."""
    if no_cache:
        return None
    env = os.environ if env is None else env
    return flag or file_value or env.get(CACHE_ENV) or None


def provenance(sweep: str, out: str, version: int | None = None) -> dict[str, Any]:
    """Who trained a trial: sweep, its directory, host, time, rayclf version, identity version (the rule its
    trial id was computed by; this rayclf's unless given)."""
    from rayclf import __version__

    return {"sweep": sweep, "out": shown(out), "host": socket.gethostname(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rayclf_version": __version__,
            "identity_version": identity_version() if version is None else version}


@dataclass
class Entry:
    """One cached trial as a sweep reuses it."""

    trial_id: str
    row: dict[str, Any]
    epochs: list[dict[str, Any]]
    checkpoint: str | None
    provenance: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """The trial's end-of-training values as ``rows.trial_row`` takes them (JSON columns decoded)."""
        keys = ("test_accuracy", "test_loss", "params", "seconds", "train_seconds", "images_per_sec", "best_epoch",
                "early_stopped", "world_size", "per_class_accuracy", "confusion_matrix", "classes")
        out = {}
        for k in keys:
            v = self.row.get(k)
            out[k] = json.loads(v) if TRIAL_COLUMNS.get(k) == "json" and isinstance(v, str) else v
        return {k: v for k, v in out.items() if v is not None}


class TrialCache:
    """A cache at ``uri`` (a local folder or ``s3://`` / ``gs://`` prefix) for trial ids of identity rule
    ``version`` (default: this rayclf's). ``warn`` hears each entry that could not be used and why."""

    def __init__(self, uri: str, warn: Callable[[str], None] = print, version: int | None = None):
        self.uri, self.warn = uri, warn
        self.version = identity_version() if version is None else version

    @property
    def where(self) -> str:
        return shown(self.uri)

    def _folder(self, trial_id: str) -> str:
        return join(self.uri, f"identity-v{self.version}/{trial_id}")

    # ------------------------------------------------------------------------------ reading
    def get(self, trial_id: str, quiet: bool = False) -> Entry | None:
        """The trial's completed entry, or None: absent, unreadable (warned unless ``quiet``), or not
        reusable."""
        warn = (lambda _: None) if quiet else self.warn
        uri = join(self._folder(trial_id), ENTRY_FILE)
        try:
            text = read_text(uri)
        except FileNotFoundError:
            return None
        except OSError as exc:
            warn(f"warning: trial cache entry {shown(uri)} could not be read ({exc}); the trial trains")
            return None
        try:
            data = json.loads(text)
            entry = Entry(data["trial_id"], dict(data["row"]), [dict(e) for e in data["epochs"]],
                          data.get("checkpoint"), dict(data["provenance"]))
        except (ValueError, KeyError, TypeError) as exc:
            warn(f"warning: trial cache entry {shown(uri)} is corrupt ({type(exc).__name__}: {exc}); "
                      "ignored, the trial trains")
            return None
        why = self.refusal(trial_id, entry)
        if why:
            warn(f"warning: trial cache entry {shown(uri)} not reused: {why}; the trial trains")
            return None
        return entry

    def refusal(self, trial_id: str, entry: Entry) -> str | None:
        """Why an entry must not stand in for ``trial_id``, or None when it may."""
        if entry.trial_id != trial_id or entry.row.get("trial_id") != trial_id:
            return f"it holds trial {entry.trial_id}, not {trial_id}"
        if entry.provenance.get("identity_version") != self.version:
            return (f"written under identity version {entry.provenance.get('identity_version')}, this rayclf "
                    f"uses {self.version}")
        if entry.row.get("status") != REUSABLE:
            return f"its status is {entry.row.get('status')!r}, only completed trials are reused"
        if not entry.epochs:
            return "it holds no epoch rows"
        return None

    def lookup(self, trial_ids: Iterable[str]) -> dict[str, Entry]:
        """The reusable entries of ``trial_ids`` (one read per cached trial)."""
        found = {}
        for tid in trial_ids:
            entry = self.get(tid)
            if entry is not None:
                found[tid] = entry
        return found

    # ------------------------------------------------------------------------------ publishing
    def stage_checkpoint(self, trial_id: str, checkpoint: str | None) -> str | None:
        """Copy a trial's final checkpoint folder into a folder of this publisher's own in the cache; its URI,
        or the original (a pointer, with a warning) when it cannot be copied, or None without one."""
        if not checkpoint:
            return None
        dest = join(self._folder(trial_id), f"checkpoint-{uuid.uuid4().hex[:12]}")
        try:
            src_fs, src = filesystem(checkpoint)
            dst_fs, dst = filesystem(dest)
            if src_fs.get_file_info(src).type != pafs.FileType.Directory:
                return checkpoint
            dst_fs.create_dir(dst, recursive=True)
            pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs)
        except OSError as exc:
            self.warn(f"warning: could not copy the checkpoint of trial {trial_id} into the trial cache ({exc}); "
                      "the entry points to the sweep's own copy")
            return checkpoint
        return to_uri(self.uri, dst) if "://" in self.uri else dst

    def commit(self, trial_id: str, row: Mapping[str, Any], epochs: Iterable[Mapping[str, Any]],
               checkpoint: str | None, prov: Mapping[str, Any]) -> None:
        """Write the entry in one atomic step (the last of concurrent publishers wins, whole)."""
        data = {"format": FORMAT, "trial_id": trial_id, "row": {k: clean(v) for k, v in row.items()},
                "epochs": [{k: clean(v) for k, v in e.items()} for e in epochs], "checkpoint": checkpoint,
                "provenance": dict(prov)}
        write_text(join(self._folder(trial_id), ENTRY_FILE), canonical_json(data))

    def publish(self, row: Mapping[str, Any], epochs: Iterable[Mapping[str, Any]],
                prov: Mapping[str, Any], replace: bool = False) -> bool:
        """Add a trained trial; True when it was published. Only completed trials are; a trial the cache
        already holds is kept unless ``replace`` (``--refresh``)."""
        if row.get("status") != REUSABLE or row.get("reused_from"):
            return False
        if not replace and self.get(str(row["trial_id"]), quiet=True) is not None:
            return False
        tid = str(row["trial_id"])
        checkpoint = self.stage_checkpoint(tid, row.get("checkpoint"))
        self.commit(tid, {**row, "checkpoint": checkpoint}, epochs, checkpoint, prov)
        return True


def reuse_note(rows: Iterable[Mapping[str, Any]]) -> str | None:
    """"N of M trials reused from CACHE (trained by sweep S)" for the rows of a sweep, or None when none was."""
    rows = list(rows)
    reused = [r for r in rows if r.get("reused_from")]
    if not reused:
        return None
    caches = sorted({str(r["reused_from"]) for r in reused})
    sweeps = sorted({str(p.get("sweep")) for r in reused if isinstance(p := _prov(r), dict) and p.get("sweep")})
    by = f" (trained by sweep {', '.join(sweeps)})" if sweeps else ""
    seconds = sum(float(r.get("seconds") or 0.0) for r in reused)
    return (f"{len(reused)} of {len(rows)} trials reused from the trial cache {', '.join(caches)}{by}, not trained "
            f"again ({trial_time(seconds)} saved)")


def trial_time(seconds: float) -> str:
    """Training time summed over trials, in the unit a person reads it in (trial-hours from 0.1 h)."""
    if seconds >= 360:
        return f"{seconds / 3600:.2f} trial-hours"
    return f"{seconds / 60:.1f} trial-minutes" if seconds >= 60 else f"{seconds:.1f} trial-seconds"


def _prov(row: Mapping[str, Any]) -> Any:
    value = row.get("provenance")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value
