"""Packing several single-worker trials on one GPU (fractional ``resources.gpus``) without running out of memory.

Before a packed sweep starts, each distinct (model, batch size, precision, dataset) is calibrated once on a
real GPU: a few training steps with the data resident, reading the CUDA allocator's peak. The sweep only
starts when ``fraction × GPU memory`` covers that peak with headroom; otherwise it stops with the largest
safe fraction. Calibration trouble never blocks a sweep: it warns and goes on.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from rayclf.config import TrialConfig, UserError

log = logging.getLogger("rayclf.packing")
HEADROOM = 1.15  # allocator fragmentation, cuDNN workspaces, the CUDA context


@dataclass(frozen=True)
class Calibration:
    peak_bytes: int
    total_bytes: int


def calibrate(config: dict[str, Any], steps: int = 3) -> Calibration:
    """Peak CUDA memory of the trial's own training step (the engine's probe, ``steps`` steps) on this GPU."""
    from rayclf.config import build_config
    from rayclf.data.sources import load_dataset
    from rayclf.train.engine import probe

    cfg = build_config(config)
    cfg.train.device = "cuda"
    found = probe(cfg, load_dataset(cfg.data), steps=steps)
    return Calibration(int(found.peak_bytes or 0), int(found.total_bytes or 0))


def safe_fraction(cal: Calibration) -> float:
    """The largest GPU fraction of the form 1/k that still holds the calibrated peak with headroom."""
    need = cal.peak_bytes * HEADROOM / cal.total_bytes
    if need >= 1:
        return 1.0
    return 1.0 / math.floor(1.0 / need)


def check_fraction(fraction: float, cal: Calibration, what: str) -> None:
    if fraction * cal.total_bytes < cal.peak_bytes * HEADROOM:
        raise UserError(
            f"{what} needs {cal.peak_bytes / 2**30:.2f} GiB of GPU memory at peak (measured), but resources.gpus = "
            f"{fraction:g} gives it {fraction * cal.total_bytes / 2**30:.2f} GiB of a "
            f"{cal.total_bytes / 2**30:.0f} GiB GPU; use resources.gpus: {safe_fraction(cal):g} or less packing.")


def shape_key(cfg: TrialConfig) -> str:
    return "|".join([cfg.model.model_dump_json(), str(cfg.train.batch_size), cfg.train.precision,
                     cfg.data.model_dump_json(), str(cfg.augment.double)])


def check_packing(trials: list[Any], gpus_per_trial: float) -> None:
    """Calibrate each distinct trial shape on a GPU of the cluster and refuse packings that would run out."""
    import ray

    if not 0 < gpus_per_trial < 1 or ray.cluster_resources().get("GPU", 0) < 1:
        return
    shapes = {shape_key(t.config): t for t in trials}
    remote = ray.remote(num_gpus=1, num_cpus=1)(calibrate)
    for trial in shapes.values():
        try:
            cal = ray.get(remote.remote(trial.config.to_dict()))
        except Exception as exc:  # calibration is a safety check, never the reason a sweep cannot run
            log.warning("GPU memory calibration failed for arm %s (%s); packing unchecked.", trial.arm.label, exc)
            continue
        check_fraction(gpus_per_trial, cal, f"arm '{trial.arm.label}'")
