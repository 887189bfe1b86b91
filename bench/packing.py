"""Sweep throughput: N ResNet-20 trials packed on one device vs the same trials one at a time.

Both sweeps run through ``rayclf.sweep.runner.run_sweep`` (Tune + Ray Train V2, the real path, with its
GPU-memory calibration check before packing) on one local Ray instance, in one run:
  * packed     — every trial asks for 1/N of the GPU (on a CPU-only machine: 1/N of the cores), so all N
                 run at once;
  * sequential — every trial asks for the whole device; one at a time.
Trial-epochs per device-hour = (trials × epochs) ÷ the sweep's wall-clock hours (one device in both).
Trials differ by seed only. Usage:
    python -m bench.packing [--trials 8] [--epochs 5] [--images 20000] [--out bench/results/x.json]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import device_name, emit
from rayclf.sweep.runner import run_sweep
from rayclf.sweep.spec import parse_sweep


def sweep_spec(name: str, trials: int, epochs: int, images: int, resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "base": {"data": {"name": "synthetic", "val_fraction": 0.1,
                          "synthetic": {"num_train": images, "num_test": 2000}},
                 "model": {"name": "resnet_cifar", "depth": 20},
                 "augment": {"crop": {"padding": 4}, "flip": {"p": 0.5}},
                 "train": {"epochs": epochs, "batch_size": 128, "checkpoint_every": 0},
                 "optim": {"name": "sgd", "lr": 0.1, "nesterov": True}, "sched": {"name": "cosine"}},
        "seeds": list(range(trials)),
        "resources": resources,
    }


def timed_sweep(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    start = time.perf_counter()
    outcome = run_sweep(parse_sweep(spec), out=str(out), live=False, echo=lambda _: None, wandb_mode="disabled")
    wall = time.perf_counter() - start
    epochs = sum(r["epochs"] for r in outcome.rows)
    return {"wall_s": wall, "trial_epochs": epochs, "statuses": sorted({r["status"] for r in outcome.rows}),
            "trial_epochs_per_device_hour": epochs / (wall / 3600),
            "mean_trial_images_per_sec": sum(r["images_per_sec"] or 0 for r in outcome.rows) / len(outcome.rows)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    n, cpus = args.trials, float(os.cpu_count() or 1)
    gpu = torch.cuda.is_available()
    packed = ({"gpus": 1 / n, "cpus": max(cpus // n, 1.0) if cpus >= n else cpus / n} if gpu
              else {"gpus": 0, "cpus": cpus / n})
    alone = {"gpus": 1, "cpus": 1.0, "max_concurrent": 1} if gpu else {"gpus": 0, "cpus": cpus, "max_concurrent": 1}
    root = Path(tempfile.mkdtemp(prefix="rayclf-bench-packing-"))
    results = {}
    for name, res in (("packed", packed), ("sequential", alone)):
        results[name] = timed_sweep(sweep_spec(name, n, args.epochs, args.images, res), root / name)
    record = {"device": device_name(), "torch": torch.__version__, "trials": n, "epochs": args.epochs,
              "train_images": int(args.images * 0.9), "model": "resnet_cifar depth 20", "batch_size": 128,
              "packed_resources": packed, "sequential_resources": alone, **results,
              "speedup": results["packed"]["trial_epochs_per_device_hour"]
              / results["sequential"]["trial_epochs_per_device_hour"]}
    emit(record, args.out)


if __name__ == "__main__":
    main()
