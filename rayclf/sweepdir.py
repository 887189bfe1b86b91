"""A sweep directory as its readers see it (``rayclf report``, ``rayclf status``, ``rayclf.open_sweep``): the
results tables, the sweep file it ran, its metric and the per-arm table, read once and computed in one place,
so the report, the status view and a notebook show the same numbers. Reads only: never writes.

``PartReader`` reads the tables' Parquet parts incrementally: a refresh lists each folder (one listing call
on object storage) and downloads only parts it has not read yet or that changed (size or modification time),
which is what ``rayclf status --watch`` on ``s3://`` pays per refresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from rayclf.aggregate import ArmRow, add_costs, arm_table, value_key
from rayclf.metrics import metric_mode
from rayclf.results import EPOCHS, TRIALS, exists, filesystem, join, list_parts, read_part, read_text
from rayclf.storage import read_plan

SWEEP_FILE = "sweep.yaml"


@dataclass
class PartReader:
    """The rows of a part-folder table, kept between refreshes; ``reads`` counts parts downloaded."""

    root: str
    parts: dict[str, tuple[tuple[int | None, Any], list[dict[str, Any]]]] = field(default_factory=dict)
    reads: int = 0

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of ``table`` now, sorted as ``results.read_rows`` sorts them (sweep order, then epoch)."""
        fs, path = filesystem(join(self.root, table))
        listing = list_parts(fs, path)
        out: list[dict[str, Any]] = []
        seen = set()
        for f in sorted(listing, key=lambda f: f.path):
            stamp = (f.size, f.mtime_ns)
            seen.add(f.path)
            cached = self.parts.get(f.path)
            if cached is None or cached[0] != stamp:
                part = read_part(fs, f.path)  # an unreadable part: skipped with one warning, kept as no rows
                cached = (stamp, part.to_pylist() if part is not None else [])
                self.parts[f.path] = cached
                self.reads += 1
            out += cached[1]
        for gone in [p for p in self.parts if p.startswith(path.rstrip("/") + "/") and p not in seen]:
            del self.parts[gone]
        if out and "position" in out[0]:
            out.sort(key=lambda r: (r.get("position") is None, r.get("position") or 0, r.get("epoch") or 0))
        return out


@dataclass
class SweepData:
    """One reading of a sweep directory."""

    root: str
    spec: dict[str, Any]
    trials: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    removed: list[dict[str, Any]] = field(default_factory=list)  # rows of arms or seeds the file no longer has

    @property
    def metric(self) -> str:
        first = self.trials[0].get("metric") if self.trials else None
        return first or self.spec.get("metric", "val_accuracy")

    @property
    def mode(self) -> str:
        return self.spec.get("mode") or metric_mode(self.metric)

    @property
    def name(self) -> str:
        return self.spec.get("name") or (self.trials[0].get("sweep") if self.trials else None) or "sweep"

    @property
    def effects_against_baseline(self) -> bool:
        """Whether tables show each arm's Δ against the baseline (an ablation), as its search strategy says."""
        from rayclf.sweep.strategies import infer_kind, search_class

        return bool(self.spec) and search_class(infer_kind(self.spec, self.trials)).effects_against_baseline

    @property
    def reused(self) -> str | None:
        """How many trials were taken from a trial cache and from where (``rayclf.cache.reuse_note``), or None."""
        from rayclf.cache import reuse_note

        return reuse_note(self.trials)

    def arm_rows(self, target_ci: float | None = None) -> list[ArmRow]:
        """The per-arm table every reader prints: ``aggregate.arm_table`` (arms grouped by arm id) under the
        sweep's ranking rule, with each arm's cost beside it; ``target_ci``: the planning column's half-width."""
        if not self.trials:
            return []
        rows = arm_table(self.trials, self.mode, value_key(self.spec.get("rank_by")), target_ci)
        return list(add_costs(rows, self.trials))


def read_spec(root: str) -> dict[str, Any]:
    """The sweep file the directory ran (as the driver wrote it), or {} when there is none."""
    uri = join(root, SWEEP_FILE)
    if not exists(uri):
        return {}
    data = yaml.safe_load(read_text(uri))
    return data if isinstance(data, dict) else {}


def read_sweep(root: str, reader: PartReader | None = None, epochs: bool = True) -> SweepData:
    """Read ``root`` (local path, ``s3://`` or ``gs://``); pass the same ``reader`` again to read only what
    changed since."""
    reader = reader or PartReader(root)
    if _migration_pending(root):  # parts of two schemas: the store casts them in memory (and never writes)
        from rayclf.results import ResultsStore

        store = ResultsStore(root, read_only=True)
        trials, epoch_rows = store.trials, (store.epochs if epochs else [])
    else:
        trials, epoch_rows = reader.rows(TRIALS), (reader.rows(EPOCHS) if epochs else [])
    plan = read_plan(root)
    if plan is None:
        return SweepData(root, read_spec(root), trials, epoch_rows)
    return SweepData(root, read_spec(root), [r for r in trials if r["trial_id"] in plan],
                     [e for e in epoch_rows if e["trial_id"] in plan], [r for r in trials if r["trial_id"] not in plan])


def _migration_pending(root: str) -> bool:
    from rayclf.results import MIGRATION, read_meta

    return bool(read_meta(root).get(MIGRATION))
