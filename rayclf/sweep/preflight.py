"""Pre-flight on a remote cluster: before a sweep fans out, prove on a worker node that its trials can run there.

One Ray task that asks for exactly what one trial (one worker of a data-parallel trial) asks for runs on the
first node that can hold a trial; on an autoscaling cluster that is the node the autoscaler brings up for it.
There it checks, in order:

1. **storage**: the sweep's Ray storage (``OUT/_ray``, inside the sweep directory) is reachable: it reads a
   marker the driver just wrote there. A local ``--out`` (such as the default ``runs/NAME``) exists only on
   the machine that runs rayclf; Ray Train would fail later on the workers with "Unable to set up cluster
   storage";
2. **GPUs**: when trials ask for GPUs and train on them (``train.device`` auto/cuda), the node's torch build
   sees a CUDA device;
3. **W&B** (when the sweep logs online): the trial processes there hold a W&B API key (the node's own
   environment: Ray does not forward the driver's ``WANDB_API_KEY``) and reach the W&B server, in seconds;
   when not, its trials would log offline on that node: a warning, or a refusal with ``--wandb-strict``;
4. **one training step** of each distinct trial shape (model, batch size, precision, data, augmentation), the
   engine's own step, on the trial's device; for packed trials (``0 < resources.gpus < 1``) that step is the
   GPU-memory calibration (``packing.calibrate``), measured on this GPU node — the driver's machine and the
   head often have no GPU at all.

Any failure ends the sweep before a single trial starts: one ``UserError`` (exit 2) that says what failed on
which node and how to fix it. A local sweep (no ``--address``) never runs this.
"""

from __future__ import annotations

import math
import os
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rayclf.config import UserError
from rayclf.results import filesystem, join, write_text
from rayclf.sweep.packing import Calibration, check_fraction, shape_key
from rayclf.sweep.plan import trial_resources
from rayclf.sweep.spec import Sweep, Trial

MARKER_PREFIX = ".rayclf-preflight-"
TIMEOUT_ENV = "RAYCLF_PREFLIGHT_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0  # cloud GPU nodes can take many minutes to come up


@dataclass
class NodeReport:
    node: str = ""
    ip: str = ""
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    calibrations: dict[str, tuple[int, int]] = field(default_factory=dict)  # shape key → (peak, total) bytes
    steps: list[str] = field(default_factory=list)  # arm labels whose step ran


def _uses_gpu(cfg: Any, gpus: float) -> bool:
    return gpus > 0 and cfg.train.device != "cpu"


def _one_step(config: dict[str, Any], device: str | None) -> None:
    """One optimizer step of the trial's own training loop (the engine's probe)."""
    from rayclf.config import build_config
    from rayclf.data.sources import load_dataset
    from rayclf.train.engine import probe

    cfg = build_config(config)
    if device is not None and cfg.train.device == "auto":
        cfg.train.device = device
    probe(cfg, load_dataset(cfg.data), steps=1)


def _tracking_problem(where: str) -> str | None:
    """What a trial process on this node would meet when it opens its W&B run online."""
    from rayclf.tracking import api_key, server_problem

    if api_key() is None:
        return (f"trial processes on {where} have no W&B API key (Ray does not forward the driver's "
                "WANDB_API_KEY): set it in the nodes' environment (the cluster config's env, or `wandb login` there)")
    problem = server_problem()
    return f"from {where}, {problem}" if problem else None


def check_node(marker: str, token: str, shapes: list[tuple[str, str, dict[str, Any]]], gpus: float,
               tracking: dict[str, Any] | None = None, strict: bool = False) -> NodeReport:
    """Runs on the worker node (as a Ray task holding one trial's resources): every check, every problem."""
    import ray
    import torch

    from rayclf.config import build_config
    from rayclf.sweep.packing import calibrate

    ctx = ray.get_runtime_context()
    report = NodeReport(node=ctx.get_node_id(), ip=ray.util.get_node_ip_address())
    where = f"worker node {report.ip} (node {report.node[-8:]})"
    storage = marker.rsplit("/", 1)[0]
    try:
        fs, path = filesystem(marker)
        with fs.open_input_stream(path) as f:
            seen = f.read().decode()
        if seen != token:
            raise OSError("the marker there holds another run's token")
    except Exception as exc:  # FileNotFound, permission, no credentials, unreachable endpoint…
        report.problems.append(
            f"the sweep's storage {storage} is not reachable from {where} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}). A local --out (the default is "
            "runs/NAME) exists only on the machine that runs rayclf, and Ray Train fails on the workers with "
            "'Unable to set up cluster storage'. On a multi-node cluster pass --out s3://BUCKET/PATH or "
            "gs://BUCKET/PATH (credentials from each node's role or environment), or a shared filesystem "
            "mounted at the same path on every node.")
    if tracking and tracking.get("mode") == "online" and (problem := _tracking_problem(where)):
        (report.problems if strict else report.warnings).append(
            problem + ("" if strict else f"; its trials log offline on that node under {tracking.get('dir')}/wandb"))
    cfgs = [(label, key, build_config(config)) for label, key, config in shapes]
    wants_cuda = any(_uses_gpu(cfg, gpus) for _, _, cfg in cfgs)
    if wants_cuda and not torch.cuda.is_available():
        report.problems.append(
            f"trials ask for {gpus:g} GPU each and train on it (train.device auto/cuda), but torch "
            f"{torch.__version__} (CUDA build: {torch.version.cuda or 'none'}) on {where} sees no GPU "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). Install a CUDA build of "
            "torch on the nodes (the cluster image's), check the node's driver (nvidia-smi), or set "
            "train.device: cpu / resources.gpus: 0.")
        return report  # every step would fail the same way
    for label, key, cfg in cfgs:
        try:
            if 0 < gpus < 1 and _uses_gpu(cfg, gpus):
                cal = calibrate(cfg.to_dict())
                report.calibrations[key] = (cal.peak_bytes, cal.total_bytes)
            else:
                _one_step(cfg.to_dict(), "cuda" if _uses_gpu(cfg, gpus) else None)
            report.steps.append(label)
        except Exception as exc:
            last = [ln for ln in traceback.format_exception_only(type(exc), exc) if ln.strip()][-1].strip()
            report.problems.append(f"one training step of arm '{label}' failed on {where}: {last[:400]}")
    return report


def distinct_shapes(trials: list[Trial]) -> list[tuple[str, str, dict[str, Any]]]:
    """(arm label, shape key, config) of one trial per distinct shape, in trial order."""
    seen: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for t in trials:
        key = shape_key(t.config)
        if key not in seen:
            seen[key] = (t.arm.label, key, t.config.to_dict())
    return list(seen.values())


def task_resources(sweep: Sweep) -> dict[str, float]:
    """What the check holds: one trial's (one worker's) CPUs and GPUs; a whole GPU for packed trials, whose
    calibration measures the GPU's memory."""
    res = trial_resources(sweep)
    return {"num_cpus": res.cpus, "num_gpus": float(math.ceil(res.gpus)) if res.gpus > 0 else 0.0}


class Preflight:
    """Checks each distinct trial shape once per sweep run (later stages or bayes batches add shapes)."""

    def __init__(self, sweep: Sweep, storage: str, timeout_s: float | None = None, tracking: Any = None,
                 strict: bool = False, echo: Callable[[str], None] = print):
        self.sweep, self.storage = sweep, storage
        self.tracking, self.strict, self.echo = tracking, strict, echo  # tracking: the run's TrackingSettings
        self.timeout_s = timeout_s if timeout_s is not None else float(os.environ.get(TIMEOUT_ENV,
                                                                                    DEFAULT_TIMEOUT_S))
        self.checked: set[str] = set()
        self.reports: list[NodeReport] = []

    def check(self, trials: list[Trial]) -> NodeReport | None:
        """Run the checks for shapes not checked yet; raise ``UserError`` with every problem found."""
        import ray

        shapes = [s for s in distinct_shapes(trials) if s[1] not in self.checked]
        if not shapes:
            return None
        res = trial_resources(self.sweep)
        token = uuid.uuid4().hex
        marker = join(self.storage, MARKER_PREFIX + token)
        write_text(marker, token)
        try:
            remote = ray.remote(check_node).options(**task_resources(self.sweep), max_retries=0)
            tracking = self.tracking.to_dict() if self.tracking is not None and not self.checked else None  # once
            ref = remote.remote(marker, token, shapes, res.gpus, tracking, self.strict)
            ready, _ = ray.wait([ref], timeout=self.timeout_s)
            if not ready:
                ray.cancel(ref, force=True)
                need = ", ".join(f"{v:g} {k[4:].upper()}" for k, v in task_resources(self.sweep).items() if v)
                raise UserError(
                    f"pre-flight: no node of the cluster could hold one trial ({need}) within "
                    f"{self.timeout_s:g} s; check the autoscaler (`ray status`, its node types and max_workers) "
                    f"or lower the sweep's resources ({TIMEOUT_ENV} sets the wait).")
            try:
                report: NodeReport = ray.get(ref)
            except ray.exceptions.RayError as exc:
                raise UserError(f"pre-flight: the check task failed on the worker node: "
                                f"{str(exc).strip().splitlines()[-1][:400]}") from None
        finally:
            _delete(marker)
        if report.problems:
            raise UserError("pre-flight check failed, no trial started:\n- " + "\n- ".join(report.problems))
        for w in report.warnings:
            self.echo(f"warning: pre-flight: {w} (`wandb sync` uploads them from there; --wandb-strict stops instead)")
        for label, key, _ in shapes:
            if key in report.calibrations:
                peak, total = report.calibrations[key]
                check_fraction(res.gpus, Calibration(peak, total), f"arm '{label}'")
        self.checked.update(key for _, key, _ in shapes)
        self.reports.append(report)
        return report


def _delete(uri: str) -> None:
    try:
        fs, path = filesystem(uri)
        fs.delete_file(path)
    except OSError:
        pass
