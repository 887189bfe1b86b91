"""What a strategy may ask of a sweep run: the one interface the kernel provides and the strategies use.

A search strategy, an arm rule, racing and bayes ask a run to train trials (``run``, ``run_arms``), to record
trials that will never start, for the stored rows, for its decision log and stop flag, and to say something.
``rayclf.sweep.kernel.SweepRun`` provides it; the strategies type against this module only, so neither side
imports the other and the strategies stay free of import circles (racing ↔ arm rules ↔ kernel).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rayclf.sweep.decisions import DecisionLog
    from rayclf.sweep.interrupt import StopFlag
    from rayclf.sweep.spec import Arm, Sweep, Trial

RunTrials = Callable[[list["Trial"]], int]  # trains trials, returns how many were skipped as already done
Record = Callable[[list["Trial"], str], None]  # records trials that never start, with the reason
Stored = Callable[[], list[dict[str, Any]]]  # the store's trial rows now
Echo = Callable[[str], None]


class StrategyRun(Protocol):
    """The run a strategy executes in (``SweepRun``; tests' fake runs)."""

    sweep: Sweep
    out: str
    log: DecisionLog
    stop: StopFlag
    echo: Echo
    rerun_stopped: bool
    redecide: tuple[str, ...]
    store: Any  # results.ResultsStore: ``.trials`` are the stored rows

    def run(self, trials: list[Trial], order: list[Trial] | None = None) -> int:
        """Train the trials not yet finished; raises ``SweepInterrupted`` once a stop was asked for."""
        ...

    def run_arms(self, arms: list[Arm], all_arms: list[Arm] | None = None) -> int:
        """Train every seed of ``arms`` under the sweep's arm rule."""
        ...

    def record_unstarted(self, trials: list[Trial], order: list[Trial], status: str, reason: str) -> None:
        """One row for each trial that will never train (its arm was eliminated), with the reason."""
        ...
