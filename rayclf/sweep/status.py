"""``rayclf status``: where a sweep stands, from its sweep directory alone (local, ``s3://`` or ``gs://``), while
it runs or after. No Ray imports; reads only, never writes.

Finished trials come from ``trials.parquet/``, decisions from ``decisions.parquet/``, the planned total from
the ``sweep.yaml`` the driver wrote. Running trials have no row until they finish, so they come from the
driver's lock ``_driver.json``, whose heartbeat the driver refreshes every ~10 s with the trials it is running
and their epochs. The driver counts as alive while its heartbeat is younger than three intervals (and, on the
driver's own host, while its pid runs); a lock without a heartbeat (an older driver) is judged by its pid on
its host only.

Time left = measured seconds per epoch (mean over every stored epoch) × epochs still to run (the running
trials' remainder plus the waiting trials at the mean epochs per trial), over the trials running at once.
"""

from __future__ import annotations

import json
import math
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from rayclf.aggregate import ArmRow, cost_text, counts_text, format_table, status_counts
from rayclf.results import exists, join, read_text
from rayclf.sweep.decisions import CONTINUE, DECISIONS, Decision
from rayclf.sweep.live import duration
from rayclf.sweep.lock import DRIVER_FILE
from rayclf.sweepdir import PartReader, SweepData, read_sweep

HEARTBEAT_S = 10.0
STALE_AFTER = 3  # heartbeats missed before the driver counts as gone
FAILED = ("failed", "diverged")


@dataclass
class Driver:
    """The driver lock as a reader judges it: ``state`` is alive, gone (a lock left by a killed driver) or
    none (no lock: never started, or ended cleanly)."""

    state: str
    info: dict[str, Any] = field(default_factory=dict)
    heartbeat_age_s: float | None = None
    why: str = ""


def read_driver(root: str) -> dict[str, Any] | None:
    uri = join(root, DRIVER_FILE)
    if not exists(uri):
        return None
    try:
        info = json.loads(read_text(uri))
    except (OSError, ValueError):  # being replaced this instant: read next time
        return None
    return info if isinstance(info, dict) else None


def judge_driver(info: dict[str, Any] | None, now: float, host: str) -> Driver:
    """Alive or not, from the heartbeat's age (any host) and the pid (on the driver's own host)."""
    from rayclf.sweep.lock import is_live

    if info is None:
        return Driver("none", why="no driver lock: not started, or ended cleanly")
    beat = info.get("heartbeat")
    age = now - float(beat) if beat is not None else None
    same_host = info.get("host") == host
    pid_ok = is_live(info) if same_host else None  # by pid and its start time: a recycled pid is not the driver
    where = f"pid {info.get('pid')} on {info.get('host')}"
    if age is not None and age > STALE_AFTER * HEARTBEAT_S:
        return Driver("gone", info, age, f"{where}: last heartbeat {duration(age)} ago")
    if pid_ok is False:
        return Driver("gone", info, age, f"{where}: that process is not running")
    if age is None and pid_ok is None:
        return Driver("unknown", info, None, f"{where}: its lock has no heartbeat (an older rayclf)")
    seen = f", heartbeat {duration(age)} ago" if age is not None else ""
    return Driver("alive", info, age, where + seen)


@dataclass
class Status:
    """Everything ``rayclf status`` shows."""

    data: SweepData
    total: int | None
    driver: Driver
    running: list[dict[str, Any]]
    decisions: list[Decision]
    arms: list[ArmRow]

    @property
    def counts(self) -> dict[str, int]:
        running_ids = {r["trial_id"] for r in self.running}
        stored = [t for t in self.data.trials if t["trial_id"] not in running_ids]
        failed = sum(t.get("status") in FAILED for t in stored)
        done = len(stored) - failed
        known = done + failed + len(self.running)
        waiting = max((self.total or known) - known, 0)
        return {"done": done, "running": len(self.running), "failed": failed, "waiting": waiting,
                "total": max(self.total or 0, known)}

    def eta_seconds(self) -> float | None:
        """Seconds left at the measured mean epoch time; None before any epoch was measured."""
        secs = [float(e["epoch_seconds"]) for e in self.data.epochs
                if e.get("epoch_seconds") is not None and math.isfinite(float(e["epoch_seconds"]))]
        if not secs:
            return None
        per_trial = [int(r.get("epochs") or 0) for r in self.running] + [
            int(t.get("config.train.epochs") or t.get("epochs") or 0) for t in self.data.trials]
        per_trial = [n for n in per_trial if n > 0]
        mean_epochs = sum(per_trial) / len(per_trial) if per_trial else 0.0
        left = sum(max(int(r.get("epochs") or 0) - int(r.get("epoch") or 0), 0) for r in self.running)
        slots = max(len(self.running), 1)
        return sum(secs) / len(secs) * (left + self.counts["waiting"] * mean_epochs) / slots


def planned_total(spec: dict[str, Any]) -> int | None:
    """The trials the sweep file plans; None when the directory holds no readable sweep file."""
    if not spec:
        return None
    from rayclf.sweep.plan import planned_count
    from rayclf.sweep.spec import parse_sweep

    try:
        return planned_count(parse_sweep(spec))
    except Exception:  # a sweep file of another rayclf version: the count is then what is seen
        return None


def running_trials(driver: Driver) -> list[dict[str, Any]]:
    """The driver's running trials (from its heartbeat), only while it is alive."""
    if driver.state != "alive":
        return []
    running = driver.info.get("running") or {}
    return [{"trial_id": tid, **(v if isinstance(v, dict) else {})} for tid, v in running.items()]


def read_status(root: str, reader: PartReader | None = None, now: float | None = None,
                host: str | None = None, total: int | None = None) -> Status:
    """Read a sweep directory's state; pass the same ``reader`` to re-read only new or changed parts."""
    reader = reader or PartReader(root)
    data = read_sweep(root, reader)
    driver = judge_driver(read_driver(root), time.time() if now is None else now, host or socket.gethostname())
    decisions = sorted((Decision.from_row(r) for r in reader.rows(DECISIONS)), key=lambda d: d.seq)
    total = total if total is not None else planned_total(data.spec)
    return Status(data, total, driver, running_trials(driver), decisions, data.arm_rows())


def arm_record(row: ArmRow) -> dict[str, Any]:
    """One arm as a flat record (the JSON view and ``sweep.arms()``): every ``ArmRow`` field, its effect against
    the baseline flattened (delta, its CI, p, pairs, why p is missing) and its note."""
    fields = {k: v for k, v in asdict(row).items() if k != "effect"}
    effect = {"delta": row.delta, "delta_ci95": row.delta_ci95, "p_value": row.p_value, "pairs": row.pairs,
              "p_note": row.effect.note if row.effect else ""}
    return {**fields, **effect, "note": row.note}


def decision_record(d: Decision) -> dict[str, Any]:
    return {"seq": d.seq, "kind": d.kind, "key": d.key, "arm_id": d.arm_id, "label": d.label, "stage": d.stage,
            "n_seeds": d.n_seeds, "detail": d.detail, "time": d.time}


def status_json(st: Status) -> dict[str, Any]:
    """The machine-readable status (``rayclf status --json``)."""
    d = st.driver
    return {
        "sweep": st.data.name, "root": st.data.root, "metric": st.data.metric, "mode": st.data.mode,
        "trials": st.counts, "statuses": status_counts(st.data.trials), "eta_seconds": st.eta_seconds(),
        "reused": sum(1 for t in st.data.trials if t.get("reused_from")),
        "reused_from": sorted({str(t["reused_from"]) for t in st.data.trials if t.get("reused_from")}),
        "driver": {"state": d.state, "host": d.info.get("host"), "pid": d.info.get("pid"),
                   "started": d.info.get("started"), "heartbeat": d.info.get("heartbeat"),
                   "heartbeat_age_s": d.heartbeat_age_s, "detail": d.why},
        "running": st.running, "arms": [arm_record(r) for r in st.arms],
        "decisions": [decision_record(x) for x in st.decisions],
    }


def decision_text(d: Decision) -> str:
    where = f"stage {d.stage + 1}: " if d.stage is not None else ""
    seeds = f" after {d.n_seeds} seed(s)" if d.n_seeds else ""
    detail = ", ".join(f"{k} {v}" for k, v in d.detail.items() if not isinstance(v, (list, dict)))
    return f"{d.kind:<9} {where}{d.label or d.key}{seeds}" + (f" ({detail})" if detail else "")


def status_lines(st: Status) -> list[str]:
    """The human view: counts, driver, time left, running trials, the arm table, costs, decisions."""
    c, data = st.counts, st.data
    eta = st.eta_seconds()
    if c["running"] + c["waiting"] == 0:
        left = "nothing left to run"
    elif finished(st):
        left = f"no driver running (about {duration(eta)} of trials left; rayclf sweep --resume continues)"
    else:
        left = f"about {duration(eta)} left"
    lines = [f"sweep '{data.name}' ({data.root}): {c['done']} done, {c['running']} running, {c['failed']} failed, "
             f"{c['waiting']} waiting of {c['total']} trials; {left}",
             f"driver: {st.driver.state} ({st.driver.why})"]
    if data.reused:
        lines.append(data.reused)
    if st.running:
        lines += ["", f"{'running':<44} {'seed':>4} {'epoch':>7}  node"]
        for r in st.running:
            lines.append(f"{str(r.get('label') or r.get('arm') or r['trial_id'])[:44]:<44} {r.get('seed', ''):>4} "
                         f"{r.get('epoch', 0)}/{r.get('epochs', '?'):>3}  {r.get('node') or ''}".rstrip())
    if st.arms:
        lines += ["", format_table(st.arms, data.metric, effects=data.effects_against_baseline), "",
                  f"{'cost per arm':<44} {'params':>12} {'s/epoch':>8} {'trial-h':>8}"]
        lines += [f"{r.arm[:44]:<44} {p:>12} {s:>8} {h:>8}" for r in st.arms for p, s, h in [cost_text(r)]]
    if st.decisions:  # an arm passing a rung is the common case: counted, not listed (``--json`` lists them)
        passed = [d for d in st.decisions if d.kind == CONTINUE]
        lines += ["", "decisions:"] + [f"  {decision_text(d)}" for d in st.decisions if d.kind != CONTINUE]
        if passed:
            lines.append(f"  {CONTINUE:<9} {len(passed)} (an arm passed a rung on all its seeds)")
    if data.trials:
        lines += ["", f"trials by status: {counts_text(status_counts(data.trials))}"]
    return lines


def finished(st: Status) -> bool:
    """Nothing more will change: no live driver."""
    return st.driver.state in ("none", "gone")


def change_key(st: Status) -> str:
    """What a refresh compares: the status without the heartbeat's age (which changes every second)."""
    data = status_json(st)
    data["driver"] = {k: v for k, v in data["driver"].items() if k not in ("heartbeat", "heartbeat_age_s", "detail")}
    return json.dumps(data, sort_keys=True, default=str)


def watch(root: str, interval: float, emit: Any, terminal: bool, json_out: bool = False) -> Status:
    """Refresh every ``interval`` seconds until the driver is gone, reading only parts not read yet: in place
    on a terminal (rich), else one block (or JSON line) whenever something changed. Returns the last status."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    reader = PartReader(root)
    total = planned_total(read_sweep(root, reader, epochs=False).spec)
    live = Live(console=Console(force_terminal=True), auto_refresh=False) if terminal and not json_out else None
    last = None
    if live is not None:
        live.start()
    try:
        while True:
            st = read_status(root, reader, total=total)
            shown = json.dumps(status_json(st)) if json_out else "\n".join(status_lines(st))
            if live is not None:
                live.update(Text(shown), refresh=True)
            elif change_key(st) != last:
                emit(shown if json_out else shown + "\n")
            last = change_key(st)
            if finished(st):
                return st
            time.sleep(interval)
    finally:
        if live is not None:
            live.stop()
