"""Results tables of a sweep directory: ``trials.parquet/`` (one row per trial) and ``epochs.parquet/``
(one row per epoch), each a folder of Parquet parts, one part per trial.

Recording a finished trial writes that trial's two parts and nothing else (O(1) in the sweep's size). A part
is written under a hidden temporary name and renamed into place, so a crash never leaves half a file where a
reader looks, and a re-run trial replaces its own part in one step. Readers load a whole table in one call at
any moment, also while a sweep runs: ``pandas.read_parquet("SWEEP/trials.parquet")`` or DuckDB's
``read_parquet('SWEEP/trials.parquet/*.parquet')``.

Every part of a table has the same typed schema. It is decided from the whole trial list before the first
write and kept in ``_store.json`` beside the tables: a value missing from one trial keeps its column's type,
lists and dicts are always canonical JSON text, and a value keeps its type and text across any number of
resumes. Only a resume that brings a column a new type (an all-empty column gains values, int widens to
float, scalars meet lists) rewrites the older parts once, before anything runs, with their values unchanged:
written ahead in ``_store.json`` and finished by whichever writer opens the store next if a crash cuts it
short, while readers (``read_only``) apply it in memory. Paths may be local or ``s3://`` / ``gs://`` URIs
(pyarrow filesystems); the helpers for them (``filesystem``, ``join``, ``exists``, ``write_atomically``,
``write_text``, ``read_text``) live in ``rayclf.storage`` and stay importable from here.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayclf.config import SEMANTICS_VERSION, UserError
from rayclf.identity import store_version
from rayclf.storage import (
    check_bucket,
    exists,
    filesystem,
    join,
    read_text,
    storage_errors,
    write_atomically,
    write_text,
)

TRIALS = "trials.parquet"
EPOCHS = "epochs.parquet"
STORE_FILE = "_store.json"
MIGRATION = "migration"  # in _store.json while stored parts move to its schema: {"from": the kinds they had}

# Column kinds: how a Python value is stored. "null" is a column that has held no value yet.
ARROW_TYPES = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "string": pa.string(),
               "json": pa.string(), "null": pa.string()}

TRIAL_COLUMNS: dict[str, str] = {
    "trial_id": "string", "sweep": "string", "arm": "string", "arm_id": "string", "stage": "int", "seed": "int",
    "position": "int",
    "status": "string", "reason": "string", "epochs": "int", "stopped_at_epoch": "int",
    "resumed_from_epoch": "int", "data_seconds": "float", "metric": "string", "metric_best": "float",
    "metric_final": "float",
    "best_val_accuracy": "float", "final_val_accuracy": "float", "final_val_loss": "float",
    "final_train_loss": "float", "final_train_accuracy": "float", "test_accuracy": "float", "test_loss": "float",
    "params": "int", "seconds": "float", "train_seconds": "float", "images_per_sec": "float",
    "best_epoch": "int", "early_stopped": "bool", "world_size": "int", "node": "string", "checkpoint": "string",
    "per_class_accuracy": "json", "confusion_matrix": "json", "classes": "json", "overrides": "json",
    # a trial taken from the trial cache (rayclf.cache) instead of trained: the cache, and who trained it
    "reused_from": "string", "provenance": "json",
}
EPOCH_COLUMNS: dict[str, str] = {
    "trial_id": "string", "arm": "string", "seed": "int", "epoch": "int", "phase": "int", "lr": "float",
    "train_loss": "float", "train_accuracy": "float", "train_seconds": "float", "images_per_sec": "float",
    "val_loss": "float", "val_accuracy": "float", "epoch_seconds": "float", "node": "string",
}
FINISHED = ("completed", "diverged", "stopped_early", "eliminated")  # eliminated: racing gave it no seed


def clean(value: Any) -> Any:
    """NaN/inf → None so tables and JSON stay valid."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------------- encoding
def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "json"


def merge_kinds(a: str, b: str) -> str:
    """The one kind that stores values of kinds a and b without changing any of them."""
    if a == b or b == "null":
        return a
    if a == "null":
        return b
    if {a, b} == {"int", "float"}:
        return "float"
    return "json"  # anything else mixed (scalars and lists, bool and number): canonical JSON text


def encode(value: Any, kind: str) -> Any:
    """A Python value as its column stores it."""
    value = clean(value)
    if value is None:
        return None
    if kind == "json":
        return canonical_json(value)
    if kind == "float":
        return float(value)
    return value


def is_canonical_json(value: Any) -> bool:
    """Whether ``value`` is text that is already the canonical JSON of some value."""
    if not isinstance(value, str):
        return False
    try:
        return canonical_json(json.loads(value)) == value
    except ValueError:
        return False


def recode(value: Any, old: str, new: str) -> Any:
    """A stored value moved to a wider kind, meaning unchanged (int → float, scalar → JSON text).

    Idempotent: a value of a non-text kind that is already canonical JSON text (a part an interrupted
    migration rewrote) is not encoded again. Text (``old == "string"``) is always encoded: it is the one
    kind whose values may look like JSON."""
    if value is None or old == new:
        return value
    if new == "json":
        return value if old != "string" and is_canonical_json(value) else canonical_json(value)
    return encode(value, new)


KINDS_KEY = b"rayclf.kinds"  # a part's column kinds, in its Parquet metadata (json and string are both text)


def arrow_table(rows: list[Mapping[str, Any]], schema: Mapping[str, str]) -> pa.Table:
    table = pa.table({name: pa.array([r.get(name) for r in rows], ARROW_TYPES[kind]) for name, kind in schema.items()})
    return table.replace_schema_metadata({KINDS_KEY: json.dumps(dict(schema), sort_keys=True)})


def part_kinds(table: pa.Table) -> dict[str, str] | None:
    """The column kinds a part was written with, or None for a part written before parts recorded them."""
    raw = (table.schema.metadata or {}).get(KINDS_KEY)
    return json.loads(raw) if raw else None


class UnreadablePart(UserWarning):
    """A table part that cannot be read (empty, truncated, not Parquet): readers skip it, naming it once;
    ``rayclf sweep --resume`` moves it to ``quarantine/`` and re-runs the trial (or re-takes the decision)."""


def warn_unreadable(path: str, exc: Exception) -> None:
    """One warning per part and process, whichever reader met it (the warning's location is this line)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    cause = re.sub(r"^Could not open Parquet input source '[^']*': ", "", text)
    warnings.warn(UnreadablePart(f"skipped the unreadable part {path} ({cause}); `rayclf sweep --resume` moves it "
                                 f"to quarantine/ and runs again what it held"), stacklevel=1)


def read_part(fs: pafs.FileSystem, path: str) -> pa.Table | None:
    """One Parquet part, or None (with one warning naming it) when it cannot be read."""
    try:
        return pq.read_table(path, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as exc:  # 0 bytes, truncated footer, garbage
        warn_unreadable(path, exc)
        return None


def list_parts(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    """The parts of a part-folder table in name order (hidden temporary files left out), or the table itself
    when it is one file (rayclf 0.1); [] when it does not exist."""
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return []
    if info.type == pafs.FileType.File:
        return [info]
    listing = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted((f for f in listing if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")
                   and not f.base_name.startswith(".")), key=lambda f: f.path)


def unreadable_parts(uri: str) -> list[str]:
    """The paths of the parts of ``uri`` that cannot be read (warns about none: the caller says what it does)."""
    fs, path = filesystem(uri)
    bad = []
    for f in list_parts(fs, path):
        try:
            pq.read_metadata(f.path, filesystem=fs)
        except (pa.ArrowInvalid, OSError):
            bad.append(f.path)
    return bad


QUARANTINE = "quarantine"  # where --resume moves unreadable parts (never deleted)


def quarantine(root: str, tables: Iterable[str]) -> list[tuple[str, str]]:
    """Move every unreadable part of ``tables`` (folders under ``root``) to ``root/quarantine/<table>/``, so
    that what it held is run or decided again; an unreadable epochs part takes its trial's part with it (the
    trial re-runs, not a trial without its epochs). Returns (moved part, where it went), nothing deleted."""
    moved: list[tuple[str, str]] = []
    tables = list(tables)
    for table in tables:
        for bad in unreadable_parts(join(root, table)):
            name = bad.rsplit("/", 1)[-1]
            moved.append((f"{table}/{name}", _move_aside(root, table, name)))
            if table == EPOCHS and TRIALS in tables:
                tfs, tfolder = filesystem(join(root, TRIALS))
                if tfs.get_file_info(f"{tfolder}/{name}").type == pafs.FileType.File:
                    moved.append((f"{TRIALS}/{name}", _move_aside(root, TRIALS, name)))
    return moved


def _move_aside(root: str, table: str, name: str) -> str:
    fs, src = filesystem(join(join(root, table), name))
    fs_q, folder = filesystem(join(join(root, QUARANTINE), table))
    fs_q.create_dir(folder, recursive=True)
    dest, n = f"{folder}/{name}", 0
    while fs_q.get_file_info(dest).type != pafs.FileType.NotFound:  # an earlier quarantine of the same part
        n += 1
        dest = f"{folder}/{name}.{n}"
    fs.move(src, dest)
    return f"{QUARANTINE}/{table}/{dest.rsplit('/', 1)[-1]}"


def _read_table(uri: str) -> list[dict[str, Any]]:
    fs, path = filesystem(uri)
    rows: list[dict[str, Any]] = []
    for f in list_parts(fs, path):
        table = read_part(fs, f.path)
        if table is not None:
            rows += table.to_pylist()
    return rows


def read_rows(uri: str) -> list[dict[str, Any]]:
    """All rows of a table (a folder of parts, or a single file written by rayclf 0.1), in sweep order. A part
    that cannot be read is skipped with one warning naming it (``UnreadablePart``)."""
    rows = _read_table(uri)
    if rows and "position" in rows[0]:
        rows.sort(key=lambda r: (r.get("position") is None, r.get("position") or 0, r.get("epoch") or 0))
    return rows


def write_table(rows: Iterable[Mapping[str, Any]], uri: str) -> None:
    """One standalone Parquet file (``rayclf train``'s epochs), column kinds inferred from the rows."""
    rows = [{k: clean(v) for k, v in r.items()} for r in rows]
    schema: dict[str, str] = {}
    for r in rows:
        for k, v in r.items():
            schema[k] = merge_kinds(schema.get(k, "null"), kind_of(v))
    table = arrow_table([{k: encode(r.get(k), schema[k]) for k in schema} for r in rows], schema)
    write_atomically(uri, lambda fs, tmp: pq.write_table(table, tmp, filesystem=fs))


# ----------------------------------------------------------------------------------- the store
def read_meta(root: str) -> dict[str, Any]:
    """A sweep directory's ``_store.json`` ({} when there is none). It is only ever replaced whole (written,
    fsync'd, renamed), so one that cannot be read was damaged outside rayclf: a message, not a traceback."""
    uri = join(root, STORE_FILE)
    if not exists(uri):
        return {}
    try:
        meta = json.loads(read_text(uri))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{uri} cannot be read ({exc}): it holds the tables' schema and the directory's identity "
                        "version; restore it from a copy of the directory, or start a new --out.") from None
    if not isinstance(meta, dict):
        raise UserError(f"{uri} is not a rayclf store description; restore it or start a new --out.")
    return meta


def stored_identity_version(root: str) -> int:
    """The identity version of the sweep directory ``root`` (``rayclf.identity``); this rayclf's for a new one.
    Storage that cannot be used is one message (exit 2), as when the sweep itself opens the directory."""
    check_bucket(root)
    with storage_errors(root):
        return store_version(read_meta(root))


def part_name(trial_id: str) -> str:
    return f"{trial_id}.parquet"


class ResultsStore:
    """A sweep directory's two tables: all rows in memory (read once), one part per trial on disk.

    ``read_only`` (``rayclf report``, ``status``, notebooks) never writes: a migration an interrupted writer
    left pending is applied to the rows in memory only. A writer finishes it on opening, before anything else."""

    def __init__(self, root: str, read_only: bool = False):
        self.root, self.read_only = root, read_only
        self.meta: dict[str, Any] = read_meta(root)
        # the rule its trial ids were computed by (rayclf.identity): kept for the directory's whole life
        self.identity_version = store_version(self.meta)
        # keyed by trial id, so recording a trial costs the same at any size of the sweep
        self._trials = {r["trial_id"]: r for r in self._read_trials()}
        self._epochs: dict[str, list[dict[str, Any]]] = {}
        for e in read_rows(join(root, EPOCHS)):
            self._epochs.setdefault(e["trial_id"], []).append(e)
        self.legacy = bool(self._trials) and not self.meta

    @property
    def trials(self) -> list[dict[str, Any]]:
        """Every trial row, in sweep order."""
        return sorted(self._trials.values(), key=lambda r: (r.get("position") is None, r.get("position") or 0))

    @property
    def epochs(self) -> list[dict[str, Any]]:
        return [e for tid in self._trials for e in self._epochs.get(tid, [])]

    @property
    def schema(self) -> dict[str, str]:
        return self.meta.get("trials", {})

    def check_semantics(self) -> str | None:
        """Why this directory cannot be continued by this rayclf, or None."""
        if self.legacy:
            return (f"{self.root} was written by rayclf 0.1 (one rewritten Parquet file, trial ids that hash "
                    "every default), so its trials cannot be matched to this version's; start a new --out.")
        version = self.meta.get("semantics", SEMANTICS_VERSION)
        if version != SEMANTICS_VERSION:
            return (f"{self.root} was written under trial semantics version {version}, this rayclf uses "
                    f"{SEMANTICS_VERSION}: its trial ids and values mean something else; start a new --out.")
        return None

    def finished_ids(self, rerun_stopped: bool = False) -> set[str]:
        """Trials that never run again: completed, diverged and (unless ``--rerun-stopped``) stopped early or
        eliminated by racing."""
        keep = [s for s in FINISHED if not (rerun_stopped and s in ("stopped_early", "eliminated"))]
        return {tid for tid, r in self._trials.items() if r.get("status") in keep}

    def prepare(self, template_rows: Iterable[Mapping[str, Any]]) -> None:
        """Fix the trial table's schema from every trial about to run (plus what is stored) before writing."""
        self._writable()
        schema = dict(self.schema) or dict(TRIAL_COLUMNS)
        for row in template_rows:
            for key, value in row.items():
                kind = TRIAL_COLUMNS.get(key) or merge_kinds(schema.get(key, "null"), kind_of(clean(value)))
                schema[key] = kind
        if self._trials and schema != self.schema:
            self._migrate(schema)
        elif schema != self.schema or not self.meta:
            self._write_meta(schema)
        for table in (TRIALS, EPOCHS):
            fs, path = filesystem(join(self.root, table))
            fs.create_dir(path, recursive=True)

    def _write_meta(self, schema: dict[str, str], migrating_from: dict[str, str] | None = None) -> None:
        self.meta = {"semantics": self.meta.get("semantics", SEMANTICS_VERSION), "identity": self.identity_version,
                     "trials": schema, "epochs": EPOCH_COLUMNS}
        if migrating_from is not None:
            self.meta[MIGRATION] = {"from": migrating_from}
        write_text(join(self.root, STORE_FILE), json.dumps(self.meta, indent=1))

    def _migrate(self, schema: dict[str, str]) -> None:
        """Move the stored trial parts to a wider schema, every value keeping its meaning, so that a crash at
        any point leaves a store the next opening completes: the target schema and the pending migration are
        written ahead into ``_store.json``, then each part is rewritten (temporary name, renamed), then the
        migration is marked done."""
        self._write_meta(schema, migrating_from=self.schema)
        self._trials = {r["trial_id"]: r for r in self._read_trials()}

    def _read_trials(self) -> list[dict[str, Any]]:
        """The trial rows at the schema in ``_store.json``; finishes (or, read-only, applies in memory) a
        pending migration part by part, each part from the kinds it was written with."""
        pending = self.meta.get(MIGRATION)
        if pending is None:
            return read_rows(join(self.root, TRIALS))
        schema, rows = self.schema, []
        fs, folder = filesystem(join(self.root, TRIALS))
        for info in list_parts(fs, folder):
            table = read_part(fs, info.path)
            if table is None:
                continue
            kinds = part_kinds(table) or pending["from"]
            part = table.to_pylist()
            if part and kinds != schema:
                part = [{k: recode(r.get(k), kinds.get(k, "null"), kind) for k, kind in schema.items()} for r in part]
                if not self.read_only:
                    self._write_part(TRIALS, part[0]["trial_id"], arrow_table(part, schema))
            rows += part
        if not self.read_only:
            self._write_meta(schema)
        rows.sort(key=lambda r: (r.get("position") is None, r.get("position") or 0))
        return rows

    def _writable(self) -> None:
        if self.read_only:
            raise RuntimeError(f"the results store of {self.root} was opened read-only")

    def _write_part(self, table: str, trial_id: str, data: pa.Table) -> None:
        uri = join(join(self.root, table), part_name(trial_id))
        write_atomically(uri, lambda fs, tmp: pq.write_table(data, tmp, filesystem=fs))

    def add(self, trial_row: Mapping[str, Any], epoch_rows: Iterable[Mapping[str, Any]]) -> None:
        """Record (or replace) one trial and its epochs: two part files, whatever the sweep's size."""
        self._writable()
        if not self.meta:
            self.prepare([trial_row])
        schema = self.schema
        unknown = [k for k in trial_row if k not in schema]
        if unknown:
            raise ValueError(f"trial row has columns the store was not prepared for: {unknown[:5]}")
        tid = trial_row["trial_id"]
        row = {k: encode(trial_row.get(k), kind) for k, kind in schema.items()}
        epochs = [{k: encode({"trial_id": tid, **e}.get(k), kind) for k, kind in EPOCH_COLUMNS.items()}
                  for e in epoch_rows]
        # epochs first: a reader that sees the trial row also finds its epochs
        self._write_part(EPOCHS, tid, arrow_table(epochs, EPOCH_COLUMNS))
        self._write_part(TRIALS, tid, arrow_table([row], schema))
        self._trials[tid] = row
        self._epochs[tid] = epochs
