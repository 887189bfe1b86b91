"""A fake trial runner for the sweep kernel: trials "train" instantly, with values that depend only on their
config and seed, and are recorded through the real store and row code. No Ray.

A trial's value is a smooth function of its learning rate and dropout plus a small per-seed offset, so arms
differ, seeds vary, and a re-run of the same trial gives the same value."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from rayclf.sweep.decisions import DecisionLog
from rayclf.sweep.interrupt import StopFlag
from rayclf.sweep.kernel import SweepRun
from rayclf.sweep.rows import trial_row
from rayclf.sweep.spec import Sweep, Trial
from rayclf.sweep.trialspec import TrialSpec


def fake_accuracy(t: Trial, epoch: int) -> float:
    """Accuracy after ``epoch``: depends on the config (lr, dropout, width) and the seed, never on the label."""
    cfg = t.config
    lr, drop = cfg.optim.lr, float(getattr(cfg.model, "dropout", 0.0) or 0.0)
    arm = int(hashlib.sha256(t.arm_id.encode()).hexdigest()[:6], 16) / 0xFFFFFF
    seed = int(hashlib.sha256(f"{t.arm_id}/{t.seed}".encode()).hexdigest()[:6], 16) / 0xFFFFFF
    peak = 0.9 - abs(lr - 0.05) * 2 - drop * 0.2 + 0.05 * arm + 0.02 * seed
    return max(0.05, min(0.99, peak * (1 - 0.5 ** epoch)))


class FakeTrials:
    """``execute_trials`` for a :class:`SweepRun`: records each unfinished trial as a completed row with its
    epochs. ``interrupt_after`` trials into a call it sets the stop flag instead (as Ctrl-C would) and records
    nothing more; ``fail`` marks trial ids that fail once."""

    def __init__(self, interrupt_after: int | None = None, fail: set[str] | None = None):
        self.interrupt_after = interrupt_after
        self.fail = set(fail or ())
        self.calls: list[list[str]] = []  # trial ids run per call (a round, a stage, a batch)

    def __call__(self, run: SweepRun, trials: list[Trial], order: list[Trial]) -> int:
        done = run.store.finished_ids(run.rerun_stopped)
        todo = [t for t in trials if t.trial_id not in done]
        pos = {t.trial_id: i for i, t in enumerate(order)}
        self.calls.append([t.trial_id for t in todo])
        for n, t in enumerate(todo):
            if self.interrupt_after is not None and n >= self.interrupt_after:
                run.stop.set()
                break
            self._record(run, t, pos[t.trial_id])
        return len(trials) - len(todo)

    def _record(self, run: SweepRun, t: Trial, position: int) -> None:
        metric, mode = run.sweep.file.metric, run.mode
        epochs = []
        for e in range(1, t.config.total_epochs() + 1):
            acc = fake_accuracy(t, e)
            epochs.append({"epoch": e, "val_accuracy": acc, "val_loss": 2.5 * (1 - acc), "train_loss": 2 * (1 - acc),
                           "train_accuracy": acc, "epoch_seconds": 0.1})
        status, reason = "completed", ""
        if t.trial_id in self.fail:
            self.fail.discard(t.trial_id)
            status, reason, epochs = "failed", "RuntimeError: injected", epochs[:1]
        summary = {"status": status, "test_accuracy": epochs[-1]["val_accuracy"] - 0.01, "params": 1000}
        row = trial_row(TrialSpec.of(run.sweep, t, position), status, reason, summary, epochs, metric, mode)
        run.store.prepare([row])
        run.store.add(row, [{**e, "arm": t.arm.label, "seed": t.seed} for e in epochs])


def fake_run(sweep: Sweep, out: str, execute: Callable[..., int] | None = None, **settings: Any) -> SweepRun:
    """A :class:`SweepRun` over ``out`` whose trials run on :class:`FakeTrials` (or ``execute``)."""
    from rayclf.results import ResultsStore

    return SweepRun(sweep, out, ResultsStore(out), DecisionLog(out), execute or FakeTrials(), StopFlag(),
                    echo=lambda _: None, **settings)
