"""What a sweep will cost before it runs: resources per trial, concurrency, a GPU-hour estimate."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rayclf.config import TrialConfig
from rayclf.data.catalog import DATASETS, describe, split_sizes
from rayclf.sweep.spec import Arm, Sweep, Trial, alias_note
from rayclf.sweep.strategies.registry import Planned, create_arm_rule, create_search

DRIVER_RESOURCE = "rayclf_driver"
# Assumed sustained training throughput for the estimate (stated with the figure): 15% of an
# H100's ~990 dense bf16 TFLOP/s, typical of small CNNs at study batch sizes.
ASSUMED_GPU_FLOPS = 0.15 * 990e12
ASSUMED_CPU_FLOPS = 50e9


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


def fixing_overrides(sweep: Sweep, cluster: dict[str, float]) -> list[str]:
    """The ``--set`` options that make one trial fit on ``cluster`` (fewest changes first)."""
    r = sweep.file.resources
    cpus, gpus = cluster.get("CPU", 0), cluster.get("GPU", 0)
    fixes = []
    if r.gpus * r.num_workers > gpus:
        fixes.append("resources.gpus=0" if gpus < 1 or r.num_workers > gpus
                     else f"resources.gpus={gpus / r.num_workers:g}")
    if r.cpus * r.num_workers > cpus:
        workers = r.num_workers if cpus >= r.num_workers else max(1, int(cpus))
        if workers != r.num_workers:
            fixes.append(f"resources.num_workers={workers}")
        fixes.append(f"resources.cpus={max(1, int(cpus // workers)):g}")
    return [f"--set {f}" for f in fixes]


def unmet_resources(sweep: Sweep, cluster: dict[str, float]) -> str | None:
    """What one trial asks for that the whole cluster does not have (such a trial would wait forever)."""
    need = trial_resources(sweep).per_trial()
    short = [f"{v:g} {k}" for k, v in need.items() if v > cluster.get(k, 0)]
    if not short:
        return None
    have = ", ".join(f"{cluster.get(k, 0):g} {k}" for k in need)
    fixes = " ".join(fixing_overrides(sweep, cluster)) or "--set resources.gpus=0 --set resources.cpus=1"
    return (f"each trial of sweep '{sweep.name}' needs {' and '.join(short)}, but the cluster has {have}. "
            f"Lower the file's resources: {fixes}.")


def counted_train_images(cfg: TrialConfig) -> int | None:
    """Training images actually present under data.root (read cheaply), or None when the data is not there.

    CIFAR: the label lists of the official pickles; CINIC-10 and imagefolder: image files per class folder."""
    from rayclf.data.sources import IMAGE_EXTS, data_root

    root, info = data_root(cfg.data), DATASETS[cfg.data.name]
    try:
        if info.label_key is not None:  # CIFAR: the official pickles
            folder = root / str(info.folder)
            if not all((folder / f).is_file() for f in info.train_files):
                return None
            total = 0
            for f in info.train_files:
                with (folder / f).open("rb") as fh:
                    total += len(pickle.load(fh, encoding="latin1")[info.label_key])
            return total
        folder = root / str(info.folder) / info.train_files[0] if info.folder else root
        if not folder.is_dir():
            return None
        return sum(1 for c in folder.iterdir() if c.is_dir() for p in c.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    except (OSError, pickle.UnpicklingError, KeyError, EOFError, TypeError):
        return None


def train_images(cfg: TrialConfig) -> tuple[int | None, str]:
    """Training images per epoch and where the number comes from: ``counted``, ``synthetic``, ``assumed``
    (the official full size, the data not being under data.root) or ``unknown``."""
    if cfg.data.name == "synthetic":
        n, source = cfg.data.synthetic.num_train, "synthetic"
    else:
        counted = counted_train_images(cfg)
        n, source = (counted, "counted") if counted is not None else (describe(cfg.data).train_size, "assumed")
        if n is None:
            return None, "unknown"
    n = split_sizes(cfg.data, n)[0]
    return n * (2 if cfg.augment.double else 1), source


def flops_per_image(cfg: TrialConfig) -> float:
    """Training FLOPs per image (forward + backward ≈ 3 × forward), counted on one 32×32 input."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from rayclf.models import create_model

    info = describe(cfg.data)
    size, classes = info.image_size or 32, info.num_classes or 10
    opts = cfg.model
    if getattr(opts, "pretrained", False) or getattr(opts, "checkpoint", None):
        opts = opts.model_copy(update={"pretrained": False, "checkpoint": None})  # the shape is enough
    model = create_model(opts, classes, 3, size).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return 3.0 * counter.get_total_flops()


def estimate_hours(trials: list[Trial], use_gpu: bool) -> tuple[float | None, str]:
    """Device-hours for all trials at the assumed throughput; None when the data size is unknown.
    The basis says the throughput assumed and whether the dataset size was counted or assumed."""
    total, cache, sizes = 0.0, {}, {}
    for t in trials:
        key = t.config.data.model_dump_json()
        if key not in sizes:
            sizes[key] = train_images(t.config)
        n, _ = sizes[key]
        if n is None:
            return None, "unknown dataset size"
        key = t.config.model.model_dump_json()
        if key not in cache:
            cache[key] = flops_per_image(t.config)
        total += cache[key] * n * t.config.total_epochs()
    rate = ASSUMED_GPU_FLOPS if use_gpu else ASSUMED_CPU_FLOPS
    basis = ("model FLOPs at 15% of an H100's dense bf16 peak" if use_gpu else "model FLOPs at 50 GFLOP/s on CPU")
    return total / rate / 3600, f"{basis}; {size_note(trials[0].config, *next(iter(sizes.values())))}"


def size_note(cfg: TrialConfig, n: int | None, source: str) -> str:
    """How the training-set size of the estimate was found, in words."""
    from rayclf.data.sources import data_root

    if source == "counted":
        return f"{n:,} training images per epoch, counted in {data_root(cfg.data)}"
    if source == "assumed":
        return (f"assumed the full-size {cfg.data.name} training set ({n:,} images per epoch): "
                f"the data is not in {data_root(cfg.data)} yet")
    return f"{n:,} training images per epoch"


def cluster_resources(address: str | None) -> tuple[dict[str, float], str]:
    """Resources of the cluster at ``address``, or of this machine when there is none."""
    if address:
        import ray

        from rayclf.sweep.connect import connect

        connect(address)
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


def _planned(sweep: Sweep, picked: list[Arm] | None = None) -> Planned:
    """What the dry run lists (the search strategy says: ``Planned``); ``picked``: only these arms (``--arm``)."""
    if picked is not None:
        return Planned(sweep.trials(picked), [f"{len(picked)} arm(s) picked by --arm, each with all its seeds"])
    return create_search(sweep).plan()


def planned_count(sweep: Sweep) -> int:
    """How many trials the whole sweep plans (a bayes search: all its proposals × seeds; +1 final run)."""
    planned = _planned(sweep)
    return round(len(planned.trials) * planned.scale) + planned.extra


def scheduler_text(sweep: Sweep, n_arms: int) -> str:
    """What the arm rule will do, in one line."""
    return create_arm_rule(sweep).describe(n_arms)


def dry_run_text(sweep: Sweep, address: str | None = None, calibrate: bool = False, price: float | None = None,
                 echo: Callable[[str], None] | None = None, clock: Callable[[], float] | None = None,
                 picked: list[Arm] | None = None, cache: str | None = None, no_cache: bool = False,
                 refresh: tuple[str, ...] = ()) -> str:
    """The trial table (arms × seeds), count, resources, concurrency and a device-hour estimate: a FLOP guess,
    or with ``calibrate`` measured seconds per epoch, trial-hours, wall time (and cost at ``price``); with a
    trial cache (``cache``, the file's ``cache:``, ``RAYCLF_CACHE``), how many planned trials it already holds."""
    file = sweep.file
    planned = _planned(sweep, picked)
    trials, scale = planned.trials, planned.scale
    n_arms = len(trials) // len(file.seeds)
    final = f" (+{planned.extra} final run)" if planned.extra else ""
    lines = [f"sweep '{sweep.name}' ({file.search.kind}): {n_arms} arms × "
             f"{len(file.seeds)} seeds = {len(trials)} trials" + final + planned.scope]
    lines += planned.notes
    aliased = {t.arm.label: t.arm for t in trials if t.arm.aliases}
    lines += [f"{alias_note(arm)}: one arm, trained once per seed" for arm in aliased.values()]
    lines.append(f"{'trial id':<17} {'arm':<48} seed  epochs")
    for t in trials:
        lines.append(f"{t.trial_id:<17} {t.arm.label[:48]:<48} {t.seed:<5} {t.config.total_epochs()}")
    res = trial_resources(sweep)
    cluster, where = cluster_resources(address)
    lines.append(f"resources per trial: {res.num_workers} worker(s) × {res.cpus:g} CPU, {res.gpus:g} GPU")
    have = f"{where} ({cluster.get('CPU', 0):g} CPU, {cluster.get('GPU', 0):g} GPU)"
    unmet = unmet_resources(sweep, cluster)
    if unmet is None:
        lines.append(f"concurrency on {have}: {concurrency(sweep, cluster)} trials at once")
    else:
        grows = ("" if address is None else
                 " (unless the cluster's autoscaler adds such nodes; a fixed cluster never will)")
        lines.append(f"CANNOT RUN on {have}{grows}: {unmet}")
    unit = "GPU-hours" if res.gpus > 0 else "CPU trial-hours"
    if calibrate:
        from rayclf.sweep.calibrate import calibrate_lines
        from rayclf.sweep.preflight import task_resources

        lines += calibrate_lines(trials, concurrency(sweep, cluster), unit, scale, price, address,
                                 task_resources(sweep), echo, clock)
    else:
        lines += guess_lines(trials, res.gpus > 0, scale, unit, price)
    lines.append(scheduler_text(sweep, n_arms) + f"; metric: {file.metric} ({file.mode})")
    lines += cache_lines(sweep, trials, cache, no_cache, refresh, echo)
    lines += model_sizes(trials)
    return "\n".join(lines)


def cache_lines(sweep: Sweep, trials: list[Trial], cache: str | None, no_cache: bool, refresh: tuple[str, ...],
                echo: Callable[[str], None] | None) -> list[str]:
    """What the trial cache already holds of the planned trials, and the trial-hours their training took."""
    from rayclf.cache import resolve_cache, trial_time
    from rayclf.sweep.reuse import open_reuse

    reuse = open_reuse(resolve_cache(cache, no_cache, sweep.file.cache), refresh, sweep, echo or print)
    if reuse is None:
        return []
    wanted = [t for t in trials if not reuse.refreshed(t)]
    found = reuse.cache.lookup(t.trial_id for t in wanted)
    saved = trial_time(sum(float(e.row.get("seconds") or 0.0) for e in found.values()))
    sweeps = sorted({str(e.provenance.get("sweep")) for e in found.values()})
    by = f" (trained by sweep {', '.join(sweeps)})" if sweeps else ""
    refreshed = f"; {len(trials) - len(wanted)} refreshed on purpose (--refresh)" if len(wanted) < len(trials) else ""
    return [f"trial cache {reuse.where}: {len(found)} of the {len(trials)} planned trials are cached as completed"
            f"{by} and will be reused, not trained: {saved} saved (their recorded training time); "
            f"{len(trials) - len(found)} to train{refreshed}"]


def guess_lines(trials: list[Trial], use_gpu: bool, scale: float, unit: str, price: float | None) -> list[str]:
    """The FLOP-count estimate, labelled the guess it is."""
    hours, basis = estimate_hours(trials, use_gpu)
    if hours is None:
        return [f"estimate: not available ({basis})"]
    hours *= scale  # FLOPs over one device's throughput is device time, however trials share or span devices
    minutes = f" = {hours * 60:.1f} min" if hours < 1 else ""
    lines = [f"estimate: {hours:.2f} {unit}{minutes} (a guess from FLOPs, not a measurement; --calibrate measures it; "
             f"{basis})"]
    if price is not None:
        lines.append(f"cost (guessed): {hours * price:,.2f} at {price:g} per trial-hour")
    return lines


def model_sizes(trials: list[Trial]) -> list[str]:
    """Each distinct model's trainable parameter count (built on the meta device, without pretrained weights),
    so a study file can be checked against the counts its report states."""
    import json

    import torch

    from rayclf.models import count_params, create_model

    seen: dict[str, tuple[str, int]] = {}
    for t in trials:
        info = describe(t.config.data)
        classes, size = info.num_classes, info.image_size or 32
        key = json.dumps([t.config.model.model_dump(mode="json"), classes], sort_keys=True)
        if key in seen or classes is None:
            continue
        with torch.device("meta"):
            model = create_model(t.config.model.without_weights(), num_classes=classes, image_size=size)
        seen[key] = (t.arm.label, count_params(model))
    return ["parameters per distinct model (trainable; first arm that uses it):"] + [
        f"  {n:>12,}  {arm}" for arm, n in seen.values()]


def driver_resources(cluster: dict[str, Any]) -> dict[str, float]:
    """What each Tune trial driver reserves: the custom driver resource when the cluster has it."""
    if cluster.get(DRIVER_RESOURCE, 0) > 0:
        return {"cpu": 0, DRIVER_RESOURCE: 0.001}
    return {"cpu": 0.001}
