"""What a sweep will cost before it runs: resources per trial, concurrency, a GPU-hour estimate."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from rayclf.config import TrialConfig
from rayclf.sweep.spec import Sweep, Trial

DRIVER_RESOURCE = "rayclf_driver"
# Assumed sustained training throughput for the estimate (stated with the figure): 15% of an
# H100's ~990 dense bf16 TFLOP/s, typical of small CNNs at study batch sizes.
ASSUMED_GPU_FLOPS = 0.15 * 990e12
ASSUMED_CPU_FLOPS = 50e9

TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "cinic10": 90_000}


@dataclass
class Resources:
    cpus: float
    gpus: float
    num_workers: int

    def per_trial(self) -> dict[str, float]:
        return {"CPU": self.cpus * self.num_workers, "GPU": self.gpus * self.num_workers}


def trial_resources(sweep: Sweep) -> Resources:
    r = sweep.file.resources
    return Resources(r.cpus, r.gpus, r.num_workers)


def concurrency(sweep: Sweep, cluster: dict[str, float]) -> int:
    """Trials that fit at once on this cluster (or the file's ``max_concurrent``)."""
    if sweep.file.resources.max_concurrent:
        return sweep.file.resources.max_concurrent
    need = trial_resources(sweep).per_trial()
    fits = [int(cluster.get(k, 0) // v) for k, v in need.items() if v > 0]
    return max(1, min(fits) if fits else 1)


def unmet_resources(sweep: Sweep, cluster: dict[str, float]) -> str | None:
    """What one trial asks for that the whole cluster does not have (such a trial would wait forever)."""
    need = trial_resources(sweep).per_trial()
    short = [f"{v:g} {k}" for k, v in need.items() if v > cluster.get(k, 0)]
    if not short:
        return None
    have = ", ".join(f"{cluster.get(k, 0):g} {k}" for k in need)
    return (f"each trial of sweep '{sweep.name}' needs {' and '.join(short)}, but the cluster has {have}. "
            "Lower the file's resources, e.g. --set resources.gpus=0 --set resources.cpus=1.")


def train_images(cfg: TrialConfig) -> int | None:
    if cfg.data.name == "synthetic":
        n = cfg.data.synthetic.num_train
    else:
        n = TRAIN_SIZES.get(cfg.data.name)
        if n is None:
            return None
    if cfg.data.train_subset:
        n = min(n, cfg.data.train_subset)
    if cfg.data.name != "cinic10" or not cfg.data.official_val:
        n = int(n * (1 - cfg.data.val_fraction))
    return n * (2 if cfg.augment.double else 1)


def flops_per_image(cfg: TrialConfig) -> float:
    """Training FLOPs per image (forward + backward ≈ 3 × forward), counted on one 32×32 input."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from rayclf.models import create_model

    size = cfg.data.synthetic.image_size if cfg.data.name == "synthetic" else (cfg.data.image_size or 32)
    classes = cfg.data.synthetic.num_classes if cfg.data.name == "synthetic" else (
        100 if cfg.data.name == "cifar100" else 10)
    opts = cfg.model
    if getattr(opts, "pretrained", False) or getattr(opts, "checkpoint", None):
        opts = opts.model_copy(update={"pretrained": False, "checkpoint": None})  # the shape is enough
    model = create_model(opts, classes, 3, size).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return 3.0 * counter.get_total_flops()


def estimate_hours(trials: list[Trial], use_gpu: bool) -> tuple[float | None, str]:
    """Device-hours for all trials at the assumed throughput; None when the data size is unknown."""
    total, cache = 0.0, {}
    for t in trials:
        n = train_images(t.config)
        if n is None:
            return None, "unknown dataset size"
        key = t.config.model.model_dump_json()
        if key not in cache:
            cache[key] = flops_per_image(t.config)
        total += cache[key] * n * t.config.total_epochs()
    rate = ASSUMED_GPU_FLOPS if use_gpu else ASSUMED_CPU_FLOPS
    basis = ("model FLOPs at 15% of an H100's dense bf16 peak" if use_gpu else "model FLOPs at 50 GFLOP/s on CPU")
    return total / rate / 3600, basis


def cluster_resources(address: str | None) -> tuple[dict[str, float], str]:
    """Resources of the cluster at ``address``, or of this machine when there is none."""
    if address:
        import ray

        ray.init(address=address, log_to_driver=False)
        try:
            return dict(ray.cluster_resources()), f"cluster at {address}"
        finally:
            ray.shutdown()
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # torch missing GPU runtime: count none
        gpus = 0
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(gpus)}, "this machine (local Ray)"


def dry_run_text(sweep: Sweep, address: str | None = None) -> str:
    """The trial table (arms × seeds), count, resources, concurrency and a device-hour estimate."""
    file = sweep.file
    if file.search.kind == "stages":
        trials: list[Trial] = []
        for i in range(sweep.stage_count()):
            trials += sweep.trials(sweep.arms({}, stage=i))
        note = ("staged sweep: each stage's arms are varied around the previous stage's winner; the table shows "
                "them around the base config")
    else:
        trials = sweep.trials(sweep.arms())
        note = ""
    lines = [f"sweep '{sweep.name}' ({file.search.kind}): {len(trials) // len(file.seeds)} arms × "
             f"{len(file.seeds)} seeds = {len(trials)} trials" + (" (+1 final run)" if file.search.final else "")]
    if note:
        lines.append(note)
    lines.append(f"{'trial id':<17} {'arm':<48} seed  epochs")
    for t in trials:
        lines.append(f"{t.trial_id:<17} {t.arm.label[:48]:<48} {t.seed:<5} {t.config.total_epochs()}")
    res = trial_resources(sweep)
    cluster, where = cluster_resources(address)
    lines.append(f"resources per trial: {res.num_workers} worker(s) × {res.cpus:g} CPU, {res.gpus:g} GPU")
    lines.append(f"concurrency on {where} ({cluster.get('CPU', 0):g} CPU, {cluster.get('GPU', 0):g} GPU): "
                 f"{concurrency(sweep, cluster)} trials at once")
    hours, basis = estimate_hours(trials, res.gpus > 0)
    unit = "GPU-hours" if res.gpus > 0 else "CPU trial-hours"
    if hours is None:
        lines.append(f"estimate: not available ({basis})")
    else:  # FLOPs over one device's throughput is device time, however trials share or span devices
        lines.append(f"estimate: {hours:.2f} {unit} ({basis}; a rough guide, not a measurement)")
    lines.append(f"scheduler: {file.scheduler.name}; metric: {file.metric} ({file.mode})")
    return "\n".join(lines)


def driver_resources(cluster: dict[str, Any]) -> dict[str, float]:
    """What each Tune trial driver reserves: the custom driver resource when the cluster has it."""
    if cluster.get(DRIVER_RESOURCE, 0) > 0:
        return {"cpu": 0, DRIVER_RESOURCE: 0.001}
    return {"cpu": 0.001}
