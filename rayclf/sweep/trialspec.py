"""The typed description of one trial that crosses the process boundary (a leaf: trial processes unpickle it
without importing the driver's modules)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rayclf.sweep.spec import Sweep, Trial


@dataclass(frozen=True)
class TrialSpec:
    """One trial as it crosses from the driver to the process that trains it (Tune's trial config, Ray Train's
    loop config) and back to the recorder and schedulers: typed, so every reader names what it reads."""

    trial_id: str
    sweep: str
    arm: str
    arm_id: str | None
    seed: int
    stage: int | None
    position: int | None
    overrides: dict[str, Any]
    config: dict[str, Any]  # the resolved TrialConfig, as plain data (``build_config`` rebuilds it)
    epochs: int
    storage: str = ""  # where Ray keeps the sweep's checkpoints
    max_failures: int = 0
    tracking: dict[str, Any] = field(default_factory=dict)  # TrackingSettings, without secrets
    resume_from: str | None = None  # a checkpoint an earlier run left for this trial
    cpus: float = 1.0  # per worker
    gpus: float = 0.0
    num_workers: int = 1
    rungs: tuple[int, ...] = ()  # epochs the trial checkpoints at, to pause there (arm-level early stopping)

    @classmethod
    def of(cls, sweep: Sweep, t: Trial, index: int, **run: Any) -> TrialSpec:
        """The trial's spec; ``index`` is its place in the sweep's trial order (within its stage); ``run``
        sets the run-time fields (storage, tracking, resources, ...)."""
        return cls(trial_id=t.trial_id, sweep=sweep.name, arm=t.arm.label, arm_id=t.arm_id, seed=t.seed,
                   stage=t.arm.stage, position=(t.arm.stage or 0) * 100_000 + index, overrides=t.arm.overrides,
                   config=t.config.to_dict(), epochs=t.config.total_epochs(), **run)
