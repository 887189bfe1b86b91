"""The decision log of a sweep directory: every decision that shapes which trials run, written before it acts.

An arm continued or stopped at a rung, an arm eliminated by racing or surviving a round, a stage's winner, a
bayes proposal: each is one row of ``decisions.parquet/`` (a folder of one-row Parquet parts, readable mid-sweep by
pandas or DuckDB like the results tables), keyed by ``(kind, key)``. Once the sweep's stop flag is set nothing more
is written (a stop is total: no decision is taken on what it cut short). ``--resume`` reads the log first and
replays it: a decision that is logged stays made, so a resumed sweep takes exactly the path the interrupted one
took. Re-deciding (``--rerun-stopped``, ``--redecide STAGE``) replaces a decision's row in one step, under the
same part name.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from rayclf.results import arrow_table, canonical_json, filesystem, join, read_rows, write_atomically
from rayclf.sweep.interrupt import StopFlag

DECISIONS = "decisions.parquet"
STOP, ELIMINATE, WINNER, PROPOSAL = "stop", "eliminate", "winner", "proposal"
CONTINUE = "continue"  # an arm passed a rung (asha / median): keyed ``arm/rung``, so a resume never re-judges it
SURVIVE = "survive"  # racing: an arm kept after a round (key ``arm id/round``)
KINDS = (STOP, ELIMINATE, WINNER, PROPOSAL, CONTINUE, SURVIVE)
COLUMNS: dict[str, str] = {
    "seq": "int", "kind": "string", "key": "string", "arm_id": "string", "label": "string", "stage": "int",
    "n_seeds": "int", "detail": "json", "time": "float",
}


@dataclass(frozen=True)
class Decision:
    """One logged decision. ``key`` is unique within its kind (an arm id, ``stage``, ``stage/proposal``);
    ``detail`` holds what the decision saw (rule, rung, values, seeds, cutoff / round, test, p / config)."""

    kind: str
    key: str
    arm_id: str
    label: str
    stage: int | None = None
    n_seeds: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    time: float = 0.0

    def row(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "key": self.key, "arm_id": self.arm_id, "label": self.label,
                "stage": self.stage, "n_seeds": self.n_seeds, "detail": canonical_json(self.detail),
                "time": self.time}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Decision:
        detail = row.get("detail")
        return cls(kind=row["kind"], key=row["key"], arm_id=row.get("arm_id") or "", label=row.get("label") or "",
                   stage=row.get("stage"), n_seeds=row.get("n_seeds"),
                   detail=json.loads(detail) if isinstance(detail, str) and detail else {},
                   seq=int(row.get("seq") or 0), time=float(row.get("time") or 0.0))


def read_decisions(root: str) -> list[Decision]:
    """Every logged decision of a sweep directory, in the order taken (reads only: never writes)."""
    rows = read_rows(join(root, DECISIONS))
    return sorted((Decision.from_row(r) for r in rows), key=lambda d: d.seq)


def changed_settings(then: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """What differs between two logged arm identities (``Sweep.arm_identity``): ``train.epochs 3 → 5``."""
    unset = "(default)"
    keys = sorted(k for k in set(then) | set(now) if then.get(k, unset) != now.get(k, unset))
    return ", ".join(f"{k} {then.get(k, unset)!r} → {now.get(k, unset)!r}" for k in keys)


def _part(kind: str, key: str) -> str:
    return f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.parquet"


class DecisionLog:
    """The decisions of one sweep directory, read once, appended to as they are taken."""

    def __init__(self, root: str):
        self.root = root
        self._by_key: dict[tuple[str, str], Decision] = {(d.kind, d.key): d for d in read_decisions(root)}
        self._forgotten = 0  # the highest seq forgotten: numbers are never reused within a run
        self.stop: StopFlag | None = None  # the sweep's stop flag (``SweepRun`` sets it)

    def get(self, kind: str, key: str) -> Decision | None:
        return self._by_key.get((kind, key))

    def of_kind(self, kind: str) -> list[Decision]:
        return sorted((d for d in self._by_key.values() if d.kind == kind), key=lambda d: d.seq)

    @property
    def decisions(self) -> list[Decision]:
        return sorted(self._by_key.values(), key=lambda d: d.seq)

    def record(self, decision: Decision) -> Decision:
        """Write ``decision`` (replacing one of the same kind and key) before the caller acts on it. Once the
        sweep was told to stop, raise ``SweepInterrupted`` instead: the caller neither logs nor acts."""
        if self.stop is not None:
            self.stop.check(self.root)
        if decision.kind not in KINDS:
            raise ValueError(f"unknown decision kind {decision.kind!r}; kinds: {', '.join(KINDS)}")
        seq = max((d.seq for d in self._by_key.values()), default=0) + 1
        seq = max(seq, self._forgotten + 1)
        logged = Decision(**{**decision.__dict__, "seq": seq, "time": time.time()})
        table = arrow_table([logged.row()], {k: ("string" if v == "json" else v) for k, v in COLUMNS.items()})
        write_atomically(join(join(self.root, DECISIONS), _part(logged.kind, logged.key)),
                         lambda fs, tmp: pq.write_table(table, tmp, filesystem=fs))
        self._by_key[(logged.kind, logged.key)] = logged
        return logged

    def forget(self, kind: str, keys: set[str] | None = None) -> int:
        """Remove decisions of ``kind`` (those with ``keys``, or all): how ``--rerun-stopped`` and ``--redecide``
        re-open them. Returns how many were removed."""
        gone = [d for d in self._by_key.values() if d.kind == kind and (keys is None or d.key in keys)]
        fs, folder = filesystem(join(self.root, DECISIONS))
        for d in gone:
            self._forgotten = max(self._forgotten, d.seq)
            fs.delete_file(f"{folder}/{_part(d.kind, d.key)}")
            del self._by_key[(d.kind, d.key)]
        return len(gone)
