"""Ray overhead per trial: time from a trial's start to its first training step.

Two ways of running the same tiny trial under Ray Tune, measured in one run on one local Ray instance:
  * tune-only   — the Tune function trainable builds the data and model and trains in its own process;
  * tune+train  — rayclf's pattern: the Tune trainable fits a Ray Train V2 TorchTrainer whose worker trains.
"Start" is when the Tune trainable function begins; "first step" is when the first optimizer step has run
(the worker stamps both with wall-clock time, the same machine's clock). Usage:
    python -m bench.ray_overhead [--trials 4] [--out bench/results/ray_overhead.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from bench.common import emit

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


def first_step(config: dict[str, Any]) -> float:
    """Build a small model and data on this process and run one training step; return its wall time."""
    import torch

    from rayclf.config import build_config
    from rayclf.data.sources import load_dataset
    from rayclf.models import create_model

    cfg = build_config(config["trial"])
    ds = load_dataset(cfg.data)
    model = create_model(cfg.model, ds.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.from_numpy(ds.train.x[:64]).float() / 255
    loss = torch.nn.functional.cross_entropy(model(x), torch.from_numpy(ds.train.y[:64]))
    loss.backward()
    opt.step()
    return time.time()


def tune_only(config: dict[str, Any]) -> None:
    start = time.time()
    tune.report({"overhead_s": first_step(config) - start})


def tune_train(config: dict[str, Any]) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    start = time.time()

    def worker(cfg: dict[str, Any]) -> None:
        import ray.train

        ray.train.report({"overhead_s": first_step(cfg) - cfg["start"]})

    TorchTrainer(worker, train_loop_config={**config, "start": start},
                 scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                 run_config=RunConfig(name=f"overhead-{config['i']}", storage_path=config["storage"],
                                      callbacks=[TuneReportCallback()])).fit()


def measure(fn, trials: int, storage: str) -> list[float]:
    trial = {"data": {"synthetic": {"num_train": 256, "num_test": 64}}, "model": {"name": "cnn", "widths": [16, 32]}}
    space = {"trial": trial, "storage": storage, "i": tune.grid_search(list(range(trials)))}
    res = tune.Tuner(tune.with_resources(fn, {"cpu": 0, "rayclf_driver": 0.001}), param_space=space,
                     tune_config=tune.TuneConfig(max_concurrent_trials=1),
                     run_config=tune.RunConfig(storage_path=storage, name=fn.__name__, verbose=0)).fit()
    return [r.metrics["overhead_s"] for r in res]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    storage = str(Path("/tmp/rayclf-bench-overhead").resolve())
    ray.init(resources={"rayclf_driver": 1000}, include_dashboard=False, log_to_driver=False)
    record: dict[str, Any] = {"cpus": ray.cluster_resources().get("CPU"), "ray": ray.__version__}
    for fn in (tune_only, tune_train):
        times = measure(fn, args.trials, storage)
        record[fn.__name__] = {"median_s": statistics.median(times), "all_s": times}
    ray.shutdown()
    emit(record, args.out)


if __name__ == "__main__":
    main()
