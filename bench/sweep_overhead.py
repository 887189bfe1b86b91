"""What a sweep spends besides training: slot efficiency, per-trial overhead, and cost at scale.

Three measurements (pick with --part; each starts its own local Ray instance):

* ``efficiency``: sum of the trials' own ``seconds`` ÷ (concurrent slots × wall time of the whole
  ``rayclf sweep`` command, Ray start-up included), on ``sweeps/quickstart.yaml`` and on an 8-trial grid of a
  small CNN (3 epochs, 2,000 synthetic images).
* ``overhead``: trial start (Tune's ``on_trial_start`` in the driver) → first training step, for rayclf's
  in-process single-worker path, rayclf's data-parallel path (a 2-worker Ray Train group) and
  the same training function run by plain Tune. The first step is the first report's arrival minus the time
  the trial says passed since its first step (the whole first epoch for rayclf's trials).
* ``scale``: N trials of a tiny model (1 epoch, a few hundred images) through ``run_sweep`` and the same
  trials through ``ray.tune.Tuner`` over a plain function, in one run; driver peak memory; the time to record
  the 1st and the Nth trial.

Usage: ``python -m bench.sweep_overhead --part efficiency|overhead|scale [--trials 300] [--out FILE]``
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import device_name, emit

SMALL = {"data": {"name": "synthetic", "synthetic": {"num_train": 2000, "num_test": 200, "num_classes": 10,
                                                      "image_size": 32}},
         "model": {"name": "cnn", "widths": [16, 32]}, "train": {"epochs": 3, "batch_size": 100},
         "optim": {"name": "sgd", "lr": 0.05}, "sched": {"name": "constant"}}
TINY = {"data": {"name": "synthetic", "synthetic": {"num_train": 300, "num_test": 50, "num_classes": 4,
                                                     "image_size": 16}},
        "model": {"name": "cnn", "widths": [8, 16]}, "train": {"epochs": 1, "batch_size": 50},
        "optim": {"name": "sgd", "lr": 0.05}, "sched": {"name": "constant"}}


# ----------------------------------------------------------------------------------- efficiency
def run_cli(sweep_file: Path, out: Path) -> dict[str, Any]:
    """Time one whole ``rayclf sweep`` command and read its trials' own seconds back."""
    import pandas as pd

    rayclf = str(Path(sys.executable).with_name("rayclf"))
    start = time.perf_counter()
    subprocess.run([rayclf, "sweep", str(sweep_file), "--out", str(out), "--quiet", "--wandb", "disabled"],
                   check=True, capture_output=True)
    wall = time.perf_counter() - start
    trials = pd.read_parquet(out / "trials.parquet")
    slots = 2  # both files ask for 1 CPU per trial on this 2-core machine
    return {"trials": len(trials), "wall_s": wall, "trial_seconds_sum": float(trials["seconds"].sum()),
            "slots": slots, "slot_efficiency": float(trials["seconds"].sum()) / (slots * wall)}


def efficiency(tmp: Path) -> dict[str, Any]:
    grid = {"name": "grid8", "base": SMALL, "search": {"grid": {"optim.lr": [0.1, 0.05, 0.02, 0.01],
                                                                "model.widths": [[16, 32], [8, 16]]}},
            "resources": {"cpus": 1}}
    (tmp / "grid8.yaml").write_text(yaml.safe_dump(grid))
    return {"quickstart": run_cli(Path("sweeps/quickstart.yaml"), tmp / "qs"),
            "grid8_small_cnn_3_epochs": run_cli(tmp / "grid8.yaml", tmp / "grid")}


# ----------------------------------------------------------------------------------- overhead
STAMPS: dict[str, list[float]] = {}


def timed_recorder() -> type:
    """The sweep's Recorder, also stamping each trial's start and first result (driver clock)."""
    from rayclf.sweep import callbacks

    class Timed(callbacks.Recorder):
        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            STAMPS[callbacks.trial_info(trial)["trial_id"]] = [time.time()]

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            stamp = STAMPS.setdefault(callbacks.trial_info(trial)["trial_id"], [time.time()])
            if len(stamp) == 1:
                stamp.append(time.time() - stamp[0] - float(result.get("epoch_seconds", 0.0)))
            super().on_trial_result(iteration, trials, trial, result, **info)

    return Timed


def rayclf_overhead(tmp: Path, num_workers: int, trials: int) -> list[float]:
    import rayclf.sweep.callbacks as callbacks
    from rayclf.sweep.runner import run_sweep
    from rayclf.sweep.spec import parse_sweep

    STAMPS.clear()
    original = callbacks.Recorder
    callbacks.Recorder = timed_recorder()  # type: ignore[misc]
    try:
        spec = {"name": f"oh{num_workers}", "base": SMALL, "seeds": list(range(trials)),
                "resources": {"cpus": 1, "num_workers": num_workers, "max_concurrent": 1}}
        run_sweep(parse_sweep(spec), out=str(tmp / f"oh{num_workers}"), live=False, wandb_mode="disabled")
    finally:
        callbacks.Recorder = original  # type: ignore[misc]
    return [s[1] for s in STAMPS.values() if len(s) == 2]


def plain_step(config: dict[str, Any]) -> None:
    """The same data and model, built and stepped once by a plain Tune function trainable."""
    import torch
    from ray import tune

    from rayclf.config import build_config
    from rayclf.data.sources import load_dataset
    from rayclf.models import create_model

    cfg = build_config(config["trial"])
    ds = load_dataset(cfg.data)
    model = create_model(cfg.model, ds.num_classes, 3, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.from_numpy(ds.train.x[:100]).float() / 255
    first = time.time()
    torch.nn.functional.cross_entropy(model(x), torch.from_numpy(ds.train.y[:100])).backward()
    opt.step()
    tune.report({"epoch_seconds": time.time() - first})


def plain_overhead(tmp: Path, trials: int) -> list[float]:
    from ray import tune

    STAMPS.clear()

    class Stamp(tune.Callback):
        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            STAMPS[trial.trial_id] = [time.time()]

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            s = STAMPS[trial.trial_id]
            s.append(time.time() - s[0] - result["epoch_seconds"])

    tune.Tuner(tune.with_resources(plain_step, {"cpu": 1}),
               param_space={"trial": SMALL, "i": tune.grid_search(list(range(trials)))},
               tune_config=tune.TuneConfig(max_concurrent_trials=1),
               run_config=tune.RunConfig(storage_path=str(tmp / "plain"), callbacks=[Stamp()], verbose=0)).fit()
    return [s[1] for s in STAMPS.values() if len(s) == 2]


def overhead(tmp: Path, trials: int) -> dict[str, Any]:
    import ray

    from rayclf.sweep.runner import _start_ray

    _start_ray(None, 2)
    try:
        out = {"in_process": rayclf_overhead(tmp, 1, trials), "ddp_worker_group": rayclf_overhead(tmp, 2, 2),
               "plain_tune": plain_overhead(tmp, trials)}
    finally:
        ray.shutdown()
    return {k: {"median_s": statistics.median(v), "all_s": v} for k, v in out.items()}


# ----------------------------------------------------------------------------------- scale
def raw_trial(config: dict[str, Any]) -> None:
    """What a user would write against Tune directly: train the config, report each epoch."""
    from ray import tune

    from rayclf.config import build_config
    from rayclf.train.engine import fit

    class Report:
        def epoch(self, metrics: dict[str, Any], checkpoint_dir: Any, final: bool = False) -> None:
            tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})

        def should_stop(self) -> bool:
            return False

        def end(self, summary: dict[str, Any]) -> None:
            pass

    fit(build_config({**TINY, "seed": config["seed"]}), Report())


def scale(tmp: Path, trials: int) -> dict[str, Any]:
    import ray
    from ray import tune

    import rayclf.results as results
    from rayclf.sweep.runner import _start_ray, run_sweep
    from rayclf.sweep.spec import parse_sweep

    record_times: list[float] = []
    original = results.ResultsStore.add

    def timed_add(self: Any, *a: Any, **k: Any) -> None:
        t0 = time.perf_counter()
        original(self, *a, **k)
        record_times.append(time.perf_counter() - t0)

    results.ResultsStore.add = timed_add  # type: ignore[method-assign]
    _start_ray(None, 2)
    try:
        start = time.perf_counter()
        spec = {"name": "scale", "base": TINY, "seeds": list(range(trials)), "resources": {"cpus": 1}}
        run_sweep(parse_sweep(spec), out=str(tmp / "scale"), live=False, wandb_mode="disabled")
        ours = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        tune.Tuner(tune.with_resources(raw_trial, {"cpu": 1}),
                   param_space={"seed": tune.grid_search(list(range(trials)))},
                   tune_config=tune.TuneConfig(max_concurrent_trials=2),
                   run_config=tune.RunConfig(storage_path=str(tmp / "raw"), verbose=0)).fit()
        raw = time.perf_counter() - start
    finally:
        ray.shutdown()
        results.ResultsStore.add = original  # type: ignore[method-assign]
    first, last = statistics.mean(record_times[:10]), statistics.mean(record_times[-10:])
    return {"trials": trials, "rayclf_wall_s": ours, "raw_tune_wall_s": raw, "ratio": ours / raw,
            "driver_peak_rss_mb": peak_mb, "record_first10_mean_s": first, "record_last10_mean_s": last}


def record_cost(tmp: Path, trials: int) -> dict[str, Any]:
    """The cost of recording the 1st vs the Nth finished trial in the results store alone (no Ray)."""
    from rayclf.config import build_config
    from rayclf.results import ResultsStore
    from rayclf.sweep.rows import trial_row

    store = ResultsStore(str(tmp / "record"))
    infos = [{"trial_id": f"t{i:05d}", "sweep": "s", "arm": f"a{i % 20}", "seed": i // 20, "stage": None,
              "position": i, "overrides": {}, "config": build_config({**TINY, "seed": i}).to_dict()}
             for i in range(trials)]
    store.prepare([trial_row(i, "completed", "", None, [], "val_accuracy", "max") for i in infos])
    epochs = [{"epoch": 1, "val_accuracy": 0.5, "train_loss": 1.0, "epoch_seconds": 0.1}]
    times = []
    for info in infos:
        t0 = time.perf_counter()
        store.add(trial_row(info, "completed", "", {"test_accuracy": 0.5}, epochs, "val_accuracy", "max"), epochs)
        times.append(time.perf_counter() - t0)
    return {"trials": trials, "record_first10_mean_s": statistics.mean(times[:10]),
            "record_last10_mean_s": statistics.mean(times[-10:])}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--part", choices=["efficiency", "overhead", "scale", "record"], required=True)
    p.add_argument("--trials", type=int, default=300)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    import ray
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="rayclf-bench-"))
    record: dict[str, Any] = {"part": args.part, "device": device_name("cpu"), "ray": ray.__version__,
                              "torch": torch.__version__, "cpus": os.cpu_count()}
    if args.part == "efficiency":
        record.update(efficiency(tmp))
    elif args.part == "overhead":
        record.update(overhead(tmp, min(args.trials, 6)))
    elif args.part == "record":
        record.update(record_cost(tmp, args.trials))
    else:
        record.update(scale(tmp, args.trials))
    emit(record, args.out)


if __name__ == "__main__":
    main()
