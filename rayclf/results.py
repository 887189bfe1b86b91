"""Results tables: ``trials.parquet`` (one row per trial) and ``epochs.parquet`` (one row per epoch).

Files are rewritten whole and atomically (write a temporary file, then rename) each time a trial
finishes, so a crash never loses a finished trial and readers never see half a file. Paths may be
local or ``s3://`` / ``gs://`` URIs (pyarrow filesystems).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

TRIALS = "trials.parquet"
EPOCHS = "epochs.parquet"


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or an ``s3://`` / ``gs://`` URI."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def _column(values: list[Any]) -> pa.Array:
    """A typed Arrow column from Python values; anything not scalar becomes JSON text."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, pa.bool_())
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, pa.int64())
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if all(isinstance(v, str) for v in present):
        return pa.array(values, pa.string())
    return pa.array([None if v is None else json.dumps(v) for v in values], pa.string())


def to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    rows = list(rows)
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in names]
    return pa.table({n: _column([row.get(n) for row in rows]) for n in names})


def write_atomically(uri: str, write: Callable[[pafs.FileSystem, str], None]) -> None:
    """``write`` a temporary file beside ``uri``, then rename it over ``uri``: readers never see half a file.

    The temporary name is unique, so concurrent writers of the same target never collide (results tables,
    checkpoints, the decoded-dataset cache)."""
    fs, path = filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{uuid.uuid4().hex}.tmp"
    write(fs, tmp)
    fs.move(tmp, path)


def write_table(rows: Iterable[Mapping[str, Any]], uri: str) -> None:
    """Write rows as Parquet atomically."""
    table = to_table(rows)
    write_atomically(uri, lambda fs, tmp: pq.write_table(table, tmp, filesystem=fs))


def read_rows(uri: str) -> list[dict[str, Any]]:
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    return pq.read_table(path, filesystem=fs).to_pylist()


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_text(uri: str, text: str) -> None:
    def write(fs: pafs.FileSystem, tmp: str) -> None:
        with fs.open_output_stream(tmp) as f:
            f.write(text.encode())

    write_atomically(uri, write)


def read_text(uri: str) -> str:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def clean(value: Any) -> Any:
    """NaN/inf → None so tables and JSON stay valid."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ResultsStore:
    """A sweep directory's tables, kept in memory and flushed atomically on every finished trial."""

    def __init__(self, root: str):
        self.root = root
        self.trials = read_rows(join(root, TRIALS))
        self.epochs = read_rows(join(root, EPOCHS))

    def completed_ids(self) -> set[str]:
        """Trials that need not run again: they finished (completed or diverged)."""
        return {r["trial_id"] for r in self.trials if r.get("status") in ("completed", "diverged")}

    def add(self, trial_row: Mapping[str, Any], epoch_rows: Iterable[Mapping[str, Any]]) -> None:
        """Record (or replace) one trial and its epochs, then flush both files."""
        tid = trial_row["trial_id"]
        self.trials = [r for r in self.trials if r["trial_id"] != tid] + [{k: clean(v) for k, v in trial_row.items()}]
        self.epochs = [r for r in self.epochs if r["trial_id"] != tid]
        self.epochs += [{"trial_id": tid, **{k: clean(v) for k, v in e.items()}} for e in epoch_rows]
        write_table(self.epochs, join(self.root, EPOCHS))
        write_table(self.trials, join(self.root, TRIALS))
