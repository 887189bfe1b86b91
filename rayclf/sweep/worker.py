"""The code that runs one trial inside Ray: build it from its description, run the engine, report to Tune.

Two entry points share everything but the transport:

- ``train_trial`` is the Tune function trainable of single-worker trials. It trains in the Tune trial's own
  process (which holds the trial's CPUs/GPUs), reports with ``ray.tune.report`` and resumes from
  ``ray.tune.get_checkpoint()``. Tune reuses the process for the next trial, so imports, CUDA context and the
  decoded dataset stay warm: a trial costs its training, not Ray's start-up.
- ``train_worker`` runs on every worker of a data-parallel (DDP) trial's Ray Train worker group; it reports
  with ``ray.train.report`` and carries the group's placement-group id, so the driver can release a group
  Ray leaves behind after an early stop (ray-project/ray#54305).

Either way the last epoch is held back and sent together with the trial summary in one report, so a
scheduler that stops the trial on that result (ASHA at ``max_t``) cannot lose the summary.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rayclf.config import build_config
from rayclf.sweep.keys import CHECKPOINT_META, DATA_KEY, PG_KEY, RESUMED_KEY, SUMMARY_KEY, TRACKING_KEY
from rayclf.sweep.trialspec import TrialSpec
from rayclf.train import CHECKPOINT_FILE

Send = Callable[[dict[str, Any], "Path | None"], None]
_DATA: dict[str, Any] = {}  # the decoded dataset of the last trial in this (reused) process


class SweepReporter:
    """Engine reporter that forwards epochs and checkpoints through ``send`` (Tune or Ray Train).

    Each checkpoint gets a small ``rayclf.json`` (trial id, epoch, the epochs so far): the driver finds a
    trial's latest checkpoint by id after a crash and records the epochs trained before it, without
    loading any weights."""

    def __init__(self, send: Send, trial_id: str, extra: dict[str, Any], history: list[dict[str, Any]]):
        self.send, self.trial_id, self.extra = send, trial_id, extra
        self.history = [dict(h) for h in history]
        self.pending: tuple[dict[str, Any], Path | None] | None = None

    def _send(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is not None:
            meta = {"trial_id": self.trial_id, "epoch": self.history[-1]["epoch"] if self.history else 0,
                    "history": self.history}
            (Path(checkpoint_dir) / CHECKPOINT_META).write_text(json.dumps(meta, default=str))
        self.send({**metrics, **self.extra}, checkpoint_dir)

    def epoch(self, metrics: dict[str, Any], checkpoint_dir: Path | None, final: bool = False) -> None:
        self.history.append(dict(metrics))
        if final:
            self.pending = (dict(metrics), checkpoint_dir)
        else:
            self._send(metrics, checkpoint_dir)

    def should_stop(self) -> bool:
        return False

    def end(self, summary: dict[str, Any]) -> None:
        # a trial resumed from its final checkpoint (the driver died before recording it) trains no epoch:
        # its summary goes out with the last epoch the checkpoint holds, so the result still has the metric
        last = dict(self.history[-1]) if self.history else {}
        metrics, ckpt = self.pending or (last, None)
        self._send({**metrics, SUMMARY_KEY: json.dumps(summary, default=str)}, ckpt)


def _local_copy(checkpoint: Any) -> tuple[Path | None, list[dict[str, Any]]]:
    """Copy a Ray checkpoint (local or on object storage) to a local temporary folder; also its history."""

    if checkpoint is None:
        return None, []
    local = Path(tempfile.mkdtemp(prefix="rayclf-resume-"))
    with checkpoint.as_directory() as folder:
        shutil.copy(Path(folder) / CHECKPOINT_FILE, local / CHECKPOINT_FILE)
        meta = Path(folder) / CHECKPOINT_META
        if meta.is_file():
            return local, list(json.loads(meta.read_text()).get("history", []))
    from rayclf.train.checkpoint import load_checkpoint

    return local, list(load_checkpoint(local)["history"])


def _dataset(cfg: Any) -> Any:
    """The trial's dataset, decoded once per process: a reused trial process keeps the last one."""
    from rayclf.data.sources import load_dataset

    key = cfg.data.model_dump_json()
    if key not in _DATA:
        _DATA.clear()  # one dataset at a time: a process never holds two copies of CIFAR
        _DATA[key] = load_dataset(cfg.data)
    return _DATA[key]


def run_trial(trial: TrialSpec, send: Send, checkpoint: Any, rank: int, device: str | None,
              extra: dict[str, Any]) -> None:
    """Build the trial, continue from ``checkpoint`` if any, train it, report every epoch through ``send``."""
    from rayclf.sweep.warm import fit_threads
    from rayclf.tracking import TrackingSettings, WandbReporter
    from rayclf.train.engine import MultiReporter, fit

    fit_threads()  # torch sized its threads on import, before Ray set this trial's OMP_NUM_THREADS
    cfg = build_config(dict(trial.config))
    if cfg.train.device == "auto" and device is not None:
        cfg.train.device = device
    started = time.perf_counter()
    data = _dataset(cfg)  # on a node that has nothing yet: download, verify, extract, decode (once per node)
    extra = {**extra, DATA_KEY: time.perf_counter() - started}
    settings = TrackingSettings(**trial.tracking)
    resume, history = _local_copy(checkpoint)
    resumed = int(history[-1]["epoch"]) if history else 0
    reporter = SweepReporter(send, trial.trial_id, {**extra, RESUMED_KEY: resumed}, history)
    wandb_reporter = None
    if settings.mode != "disabled" and rank == 0:  # one W&B run per trial; a fallback rides on every later result
        wandb_reporter = WandbReporter(settings, trial, data.test.x, data.classes,
                                       on_fallback=lambda why: reporter.extra.__setitem__(TRACKING_KEY, why))
    try:
        fit(cfg, MultiReporter(reporter, wandb_reporter), data=data, resume=resume,
            checkpoint_at=trial.rungs)  # a seed may pause at a rung and continue from there
    except SystemExit:  # Tune stopped the trial (scheduler decision) at a report: not a failure
        if wandb_reporter is not None:
            wandb_reporter.end({"status": "stopped_early"})
        raise
    except BaseException as exc:
        if wandb_reporter is not None:
            wandb_reporter.fail(exc)
        raise
    finally:
        if resume is not None:
            shutil.rmtree(resume, ignore_errors=True)
        _release_gpu_memory()


def _resume_from(trial: TrialSpec) -> Any:
    """A checkpoint an earlier run of the sweep left for this trial (found by trial id), if any."""
    if not trial.resume_from:
        return None
    from ray.tune import Checkpoint

    return Checkpoint(trial.resume_from)


def train_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: one single-worker trial, trained in this (Tune trial) process."""
    import ray
    from ray import tune

    trial = config["trial"]
    node = ray.get_runtime_context().get_node_id()

    def send(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        ckpt = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report(metrics, checkpoint=ckpt)

    checkpoint = tune.get_checkpoint() or _resume_from(trial)
    run_trial(trial, send, checkpoint, rank=0, device=None, extra={"node": node})


def train_worker(config: dict[str, Any]) -> None:
    """Entry point Ray Train runs on every worker of one data-parallel trial (``config["trial"]``: its spec)."""
    import ray
    import ray.train
    import ray.train.torch
    import ray.util

    pg = ray.util.get_current_placement_group()
    extra = {PG_KEY: pg.id.hex() if pg is not None else "", "node": ray.get_runtime_context().get_node_id()}

    def send(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)

    rank = ray.train.get_context().get_world_rank()
    run_trial(config["trial"], send, ray.train.get_checkpoint(), rank, str(ray.train.torch.get_device()), extra)


def _release_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
