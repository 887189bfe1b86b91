"""``rayclf sweep FILE --dry-run --calibrate``: measured cost estimates instead of the FLOP guess.

Each distinct trial shape (model, image size, batch size, precision, data: ``packing.shape_key``, and the
augmentation pipeline, which runs on the device inside each step)
takes a warm-up step and a few timed steps of its own training loop (the engine's ``probe``) and one timed pass
of evaluation, on this machine, or with ``--address`` in one Ray task holding one trial's resources on a worker
node (which may make an autoscaler start a node). The images are a stand-in of the dataset's shape and class
count (timing does not depend on pixel values, and calibration never downloads a dataset). Then:

- seconds per epoch = training steps per epoch × seconds per step + validation images × seconds per image;
- a trial = its epochs × seconds per epoch + one test pass;
- trial-hours = the sum over the planned trials; wall time = the trials laid out in order on the planned
  number of concurrent slots (each starts when a slot frees up); cost = trial-hours × ``--price-per-hour``.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rayclf.config import TrialConfig, build_config
from rayclf.data.catalog import describe, split_sizes
from rayclf.sweep.live import duration
from rayclf.sweep.packing import shape_key
from rayclf.sweep.plan import counted_train_images, train_images
from rayclf.sweep.spec import Trial

WARMUP_STEPS = 1
TIMED_STEPS = 3


def timing_key(cfg: TrialConfig) -> str:
    """What a training step's time depends on: the packing shape and the on-device augmentation."""
    return shape_key(cfg) + "|" + cfg.augment.model_dump_json()


@dataclass(frozen=True)
class Timing:
    seconds_per_step: float
    eval_seconds_per_image: float


def stand_in(cfg: TrialConfig, batches: int) -> Any:
    """Random images shaped like the trial's dataset: ``batches`` training batches and up to two eval batches."""
    from rayclf.data.sources import Dataset, Split

    info = describe(cfg.data)
    size, classes = info.image_size or 32, info.num_classes or 10
    rng = np.random.default_rng(0)

    def split(n: int) -> Split:
        return Split(rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8), np.arange(n, dtype=np.int64) % classes)

    n_eval = min(2 * cfg.train.eval_batch_size, 1024)
    return Dataset("stand-in", split(cfg.train.batch_size * batches), split(n_eval),
                   [f"c{i}" for i in range(classes)], mean=(0.5,) * 3, std=(0.25,) * 3)


def measure_shape(config: dict[str, Any], clock: Callable[[], float] = time.perf_counter,
                  steps: int = TIMED_STEPS, warmup: int = WARMUP_STEPS) -> Timing:
    """Seconds per training step and per evaluated image of one trial shape, on this machine."""
    from rayclf.train.engine import probe

    cfg = build_config(config)
    found = probe(cfg, stand_in(cfg, steps + warmup), steps=steps, warmup=warmup, evaluate=True, clock=clock)
    return Timing(found.seconds_per_step, found.eval_seconds_per_image or 0.0)


def measure_shapes(configs: list[dict[str, Any]], clock: Callable[[], float] | None = None) -> list[Timing]:
    """Every shape in turn (as one Ray task on a worker node with ``--address``)."""
    return [measure_shape(c, clock or time.perf_counter) for c in configs]


def epoch_images(cfg: TrialConfig) -> tuple[int, int, int] | None:
    """(training, validation, test) images of one epoch and the final test; None when the size is unknown."""
    total = counted_train_images(cfg) if cfg.data.name != "synthetic" else cfg.data.synthetic.num_train
    total = total if total is not None else describe(cfg.data).train_size
    n_train, _ = train_images(cfg)
    if total is None or n_train is None:
        return None
    return n_train, split_sizes(cfg.data, total)[1], describe(cfg.data).test_size or 0


def epoch_seconds(cfg: TrialConfig, t: Timing) -> float | None:
    """One epoch's seconds: training steps (the loader drops the last partial batch) plus validation."""
    images = epoch_images(cfg)
    if images is None:
        return None
    n_train, n_val, _ = images
    return n_train // cfg.train.batch_size * t.seconds_per_step + n_val * t.eval_seconds_per_image


def trial_seconds(cfg: TrialConfig, t: Timing) -> float | None:
    """One trial's seconds: its epochs and the final test pass."""
    per_epoch, images = epoch_seconds(cfg, t), epoch_images(cfg)
    if per_epoch is None or images is None:
        return None
    return per_epoch * cfg.total_epochs() + images[2] * t.eval_seconds_per_image


def wall_seconds(durations: Sequence[float], slots: int) -> float:
    """Trials started in order on ``slots`` concurrent slots, each when one frees up: when the last ends."""
    ends = [0.0] * max(1, slots)
    for d in durations:
        start = heapq.heappop(ends)
        heapq.heappush(ends, start + d)
    return max(ends)


@dataclass
class Estimate:
    shapes: list[tuple[str, float, float | None]]  # (first arm, seconds per step, seconds per epoch)
    trial_hours: float
    wall_hours: float


def estimate(trials: list[Trial], timings: dict[str, Timing], slots: int, scale: float = 1.0) -> Estimate | None:
    """Trial-hours and wall time of ``trials`` (× ``scale`` for a search listing its first batch only)."""
    durations = []
    for t in trials:
        s = trial_seconds(t.config, timings[timing_key(t.config)])
        if s is None:
            return None
        durations.append(s)
    shapes, seen = [], set()
    for t in trials:
        key = timing_key(t.config)
        if key not in seen:
            seen.add(key)
            shapes.append((t.arm.label, timings[key].seconds_per_step, epoch_seconds(t.config, timings[key])))
    return Estimate(shapes, sum(durations) * scale / 3600, wall_seconds(durations, slots) * scale / 3600)


def estimate_lines(est: Estimate | None, slots: int, unit: str, where: str, price: float | None) -> list[str]:
    """The measured estimate as the dry run prints it."""
    if est is None:
        return ["estimate: not available (unknown dataset size)"]
    lines = [f"calibrated on {where}: {WARMUP_STEPS} warm-up + {TIMED_STEPS} timed training steps and one "
             "evaluation pass per distinct trial shape:"]
    for label, per_step, per_epoch in est.shapes:
        epoch = f"{per_epoch:.1f} s/epoch" if per_epoch is not None else "? s/epoch"
        lines.append(f"  {1000 * per_step:9.1f} ms/step  {epoch:>14}  {label}")
    lines.append(f"estimate: {est.trial_hours:.2f} {unit} (measured), about {duration(est.wall_hours * 3600)} "
                 f"wall time at {slots} trial(s) at once")
    if price is not None:
        lines.append(f"cost: {est.trial_hours * price:,.2f} at {price:g} per trial-hour (one trial's resources)")
    return lines


def calibrate_lines(trials: list[Trial], slots: int, unit: str, scale: float, price: float | None,
                    address: str | None = None, resources: dict[str, float] | None = None,
                    echo: Callable[[str], None] | None = None, clock: Callable[[], float] | None = None) -> list[str]:
    """Measure each distinct shape (here, or on a worker node of ``address``) and estimate the sweep."""
    shapes: dict[str, TrialConfig] = {}
    for t in trials:
        shapes.setdefault(timing_key(t.config), t.config)
    configs = [c.to_dict() for c in shapes.values()]
    if address:
        import ray

        from rayclf.sweep.connect import connect

        need = ", ".join(f"{v:g} {k[4:].upper()}" for k, v in (resources or {}).items() if v)
        if echo is not None:
            echo(f"calibrating {len(configs)} trial shape(s) on a worker node of {address} holding one trial's "
                 f"resources ({need or 'no resources'}): an autoscaling cluster may start a node for it, which "
                 "costs what the node costs while it runs")
        connect(address)
        try:
            timed = ray.get(ray.remote(measure_shapes).options(**(resources or {})).remote(configs))
        finally:
            ray.shutdown()
        where = f"a worker node of {address}"
    else:
        timed = measure_shapes(configs, clock)
        where = "this machine"
    est = estimate(trials, dict(zip(shapes, timed, strict=True)), slots, scale)
    return estimate_lines(est, slots, unit, where, price)
