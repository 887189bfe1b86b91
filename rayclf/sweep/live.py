"""The sweep as a person watches it: a live progress view driven by plain trial events. No Ray imports.

The Tune callback (or anything else) turns what happens into five calls::

    with LiveView(total=12, metric="val_accuracy", mode="max", slots=2) as view:
        view.skipped(3)                                        # trials already finished (resume)
        view.reused(2, "s3://team/cache")                      # trials taken from the trial cache
        view.started("a1b2", arm="baseline", seed=0, epochs_total=4, node="10.0.0.5")
        view.result("a1b2", epoch=1, value=0.61, epoch_seconds=2.3)
        view.finished("a1b2", "completed", value=0.74)        # or stopped_early/diverged/failed/skipped

On a terminal it is one in-place rich display (redrawn a few times a second): a progress bar over trials
(done / total, running, failed, time left), a compact table of the running trials (arm, seed,
epoch/total, metric, node) and the best arm so far (best mean over its finished seeds). Anywhere else
(CI, ``ray job`` logs, a pipe) it writes one timestamped line per trial event (start, finish, failure)
and nothing in between, so logs never repeat.

Time left = measured seconds per epoch (mean over every reported epoch) × epochs still to run (the
running trials' remainder plus the not-yet-started trials at the mean epochs per trial seen so far),
divided by ``slots`` (trials that run at once).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from rayclf.aggregate import best_value, mean_std

NOT_DONE = ("stopped_early", "diverged", "failed")
SHOWN_RUNNING = 12


@dataclass
class _Trial:
    arm: str
    seed: int
    epochs_total: int
    node: str | None = None
    epoch: int = 0
    value: float | None = None
    best: float | None = None
    seconds: list[float] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)


def duration(seconds: float | None) -> str:
    """``1h 02m``, ``3m 05s``, ``42s``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def node_label(node_id: str | None, names: dict[str, str]) -> str | None:
    """A node as people name it: its host name or IP from ``names``; else the first 8 characters of Ray's
    56-character node id."""
    if not node_id:
        return None
    return names.get(node_id) or (node_id[:8] if len(node_id) > 16 else node_id)


class LiveView:
    """Progress of one sweep; see the module docstring for the events and what each mode shows."""

    def __init__(self, total: int, metric: str, mode: str = "max", stream: TextIO | None = None,
                 terminal: bool | None = None, slots: int = 1) -> None:
        self.total, self.metric, self.mode, self.slots = total, metric, mode, max(1, slots)
        self.stream = stream if stream is not None else sys.stdout
        self.terminal = terminal if terminal is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.running: dict[str, _Trial] = {}
        self.counts: dict[str, int] = {}
        self.arm_values: dict[str, list[float]] = {}
        self.epoch_seconds: list[float] = []
        self.epochs_seen: list[int] = []
        self.done = 0
        self.tracking_noted = False  # a trial's W&B run went offline: said once
        self._lock = threading.RLock()
        self._live: Live | None = None
        self._progress: Progress | None = None
        if self.terminal:
            self._start_live()

    # ------------------------------------------------------------------------------- events
    def planned(self, n: int) -> None:
        """``n`` more trials belong to the sweep (a strategy released its next stage, round or batch)."""
        with self._lock:
            self.total += n

    def skipped(self, n: int) -> None:
        """``n`` trials finished before this run (resume): they count as done."""
        if n <= 0:
            return
        with self._lock:
            self.done += n
            self.counts["skipped"] = self.counts.get("skipped", 0) + n
        self._say(f"resume: {n} trial(s) already finished, skipped")

    def reused(self, n: int, where: str) -> None:
        """``n`` trials were taken from the trial cache at ``where`` instead of trained: they count as done."""
        if n <= 0:
            return
        with self._lock:
            self.done += n
            self.counts["reused"] = self.counts.get("reused", 0) + n
        line = f"cache: {n} trial(s) reused from {where}, not trained"
        if self._live is not None:
            self._live.console.print(Text(line, style="cyan"))
        self._say(line)

    def started(self, trial_id: str, arm: str, seed: int, epochs_total: int, node: str | None = None) -> None:
        with self._lock:
            self.running[trial_id] = _Trial(arm, seed, epochs_total, node)
            self.epochs_seen.append(epochs_total)
            where = f" on {node}" if node else ""
            line = f"started   {arm} seed {seed} [{trial_id}]{where}, {epochs_total} epochs ({self._counter()})"
        self._say(line)

    def result(self, trial_id: str, epoch: int, value: float | None, epoch_seconds: float | None,
               node: str | None = None) -> None:
        """One finished epoch of a running trial; shown live on a terminal, silent in plain mode."""
        with self._lock:
            t = self.running.get(trial_id)
            if t is None:
                return
            t.epoch = epoch
            if node:
                t.node = node
            if value is not None and math.isfinite(value):
                t.value = value
                t.best = best_value([v for v in (t.best, value) if v is not None], self.mode)
            if epoch_seconds is not None and math.isfinite(epoch_seconds):
                t.seconds.append(epoch_seconds)
                self.epoch_seconds.append(epoch_seconds)

    def finished(self, trial_id: str, status: str, value: float | None = None, reason: str = "") -> None:
        """A trial ended (completed, stopped_early, diverged, failed or skipped); ``value``: its best metric."""
        with self._lock:
            t = self.running.pop(trial_id, None)
            self.done += 1
            self.counts[status] = self.counts.get(status, 0) + 1
            value = value if value is not None else (t.best if t else None)
            if t is not None and status == "completed" and value is not None and math.isfinite(value):
                self.arm_values.setdefault(t.arm, []).append(value)
            line = self._finish_line(trial_id, t, status, value, reason)
        self._say(line, error=status in ("failed", "diverged"))

    def tracking_fell_back(self, trial_id: str, reason: str) -> None:
        """A trial's W&B run went offline: said once per sweep (every later one would say the same)."""
        with self._lock:
            if self.tracking_noted:
                return
            self.tracking_noted = True
        self._say(f"W&B: tracking fell back to offline for [{trial_id}] ({reason.splitlines()[0][:160]}); its run "
                  "is kept on disk (other trials may follow, not repeated here); the last lines give the `wandb "
                  "sync` command", error=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None

    def __enter__(self) -> LiveView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------- numbers
    def eta_seconds(self) -> float | None:
        """Seconds left at the measured mean epoch time; None before any epoch was measured."""
        with self._lock:
            if not self.epoch_seconds:
                return None
            per_epoch = sum(self.epoch_seconds) / len(self.epoch_seconds)
            per_trial = sum(self.epochs_seen) / len(self.epochs_seen) if self.epochs_seen else 0
            left = sum(max(t.epochs_total - t.epoch, 0) for t in self.running.values())
            waiting = max(self.total - self.done - len(self.running), 0)
            return per_epoch * (left + waiting * per_trial) / self.slots

    def best_arm(self) -> tuple[str, float, float, int] | None:
        """(arm, mean, std, seeds) of the best mean over finished (completed) seeds."""
        with self._lock:
            scored = [(arm, *mean_std(vals), len(vals)) for arm, vals in self.arm_values.items() if vals]
        if not scored:
            return None
        sign = 1 if self.mode == "max" else -1
        arm, m, sd, n = max(scored, key=lambda s: sign * s[1])
        return arm, m, sd or 0.0, n

    def failed(self) -> int:
        return sum(self.counts.get(s, 0) for s in ("failed", "diverged"))

    # ------------------------------------------------------------------------------- text
    def _fmt(self, v: float | None) -> str:
        if v is None:
            return "–"
        return f"{100 * v:.2f}%" if self.metric.endswith("accuracy") else f"{v:.4f}"

    def _counter(self) -> str:
        return f"{self.done}/{self.total} done, {len(self.running)} running"

    def _finish_line(self, trial_id: str, t: _Trial | None, status: str, value: float | None, reason: str) -> str:
        who = f"{t.arm} seed {t.seed} [{trial_id}]" if t else f"[{trial_id}]"
        where = f" at epoch {t.epoch}/{t.epochs_total}" if t and status != "completed" else ""
        took = f" in {duration(time.monotonic() - t.started_at)}" if t else ""
        why = f": {reason}" if reason else ""
        eta = self.eta_seconds()
        left = f", about {duration(eta)} left" if eta is not None and self.done < self.total else ""
        return (f"{status:<9} {who}{where}{took}, {self.metric} {self._fmt(value)}{why} "
                f"({self._counter()}{left})")

    def _say(self, line: str, error: bool = False) -> None:
        """Plain mode: one timestamped line. Terminal: failures printed above the live display."""
        if self._live is not None:
            if error:
                self._live.console.print(Text(line, style="red"))
            self._live.refresh()
            return
        if not self.terminal:
            self.stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
            self.stream.flush()

    # ------------------------------------------------------------------------------- terminal
    def _start_live(self) -> None:
        console = Console(file=self.stream, force_terminal=True)
        self._progress = Progress(TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[state]}"), console=console, auto_refresh=False)
        self._task = self._progress.add_task("trials", total=self.total, state="")
        self._live = Live(console=console, refresh_per_second=4, get_renderable=self._render,
                          redirect_stdout=False, redirect_stderr=False)
        self._live.start()

    def _render(self) -> RenderableType:
        with self._lock:
            assert self._progress is not None
            eta = self.eta_seconds()
            early, reused = self.counts.get("stopped_early", 0), self.counts.get("reused", 0)
            state = (f"{len(self.running)} running, {self.failed()} failed"
                     + (f", {early} stopped early" if early else "") + (f", {reused} reused" if reused else "")
                     + f", {duration(eta) if self.done < self.total else '0s'} left")
            self._progress.update(self._task, completed=self.done, total=self.total, state=state)
            parts: list[RenderableType] = [self._progress.get_renderable()]
            if self.running:
                parts.append(self._running_table())
            best = self.best_arm()
            if best:
                arm, m, sd, n = best
                unit = 100 if self.metric.endswith("accuracy") else 1
                parts.append(Text(f"best arm so far: {arm}  {self.metric} {unit * m:.2f} ± {unit * sd:.2f} "
                                  f"over {n} seed(s)", style="green"))
            return Group(*parts)

    def _running_table(self) -> Table:
        table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
        for name, justify in (("arm", "left"), ("seed", "right"), ("epoch", "right"), (self.metric, "right"),
                              ("node", "left")):
            table.add_column(name, justify=justify, no_wrap=True, max_width=40 if name == "arm" else None)
        trials = sorted(self.running.values(), key=lambda t: t.started_at)
        for t in trials[:SHOWN_RUNNING]:
            table.add_row(t.arm, str(t.seed), f"{t.epoch}/{t.epochs_total}", self._fmt(t.value), t.node or "")
        if len(trials) > SHOWN_RUNNING:
            table.add_row(f"… {len(trials) - SHOWN_RUNNING} more", "", "", "", "")
        return table
