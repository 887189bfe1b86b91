"""The Ray Train per-worker function: build the trial from its config and run the engine.

The engine reports through ``RayTrainReporter``: every epoch becomes a ``ray.train.report`` (with
a Ray Train checkpoint from rank 0), and the end-of-trial summary goes out as one last report.
Each report carries the worker group's placement-group id so the Tune driver can release it if
Ray leaves it behind after an early stop (ray-project/ray#54305).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import ray.util

from rayclf.config import build_config
from rayclf.train.checkpoint import CHECKPOINT_FILE
from rayclf.train.engine import MultiReporter, fit

PG_KEY = "rayclf_pg"
SUMMARY_KEY = "rayclf_summary"


def current_pg_hex() -> str:
    pg = ray.util.get_current_placement_group()
    return pg.id.hex() if pg is not None else ""


class RayTrainReporter:
    """Engine reporter that forwards epochs (and checkpoints) to Ray Train, hence to Tune.

    The last epoch is held back and sent together with the trial summary in one report, so a
    scheduler that stops the trial on that result (ASHA at ``max_t``) cannot lose the summary.
    """

    def __init__(self) -> None:
        self.pg = current_pg_hex()
        self.node = ray.get_runtime_context().get_node_id()
        self.pending: tuple[dict[str, Any], Path | None] | None = None

    def _send(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report({**metrics, PG_KEY: self.pg, "node": self.node}, checkpoint=ckpt)

    def epoch(self, metrics: dict[str, Any], checkpoint_dir: Path | None, final: bool = False) -> None:
        if final:
            self.pending = (dict(metrics), checkpoint_dir)
        else:
            self._send(metrics, checkpoint_dir)

    def should_stop(self) -> bool:
        return False

    def end(self, summary: dict[str, Any]) -> None:
        metrics, ckpt = self.pending or ({}, None)
        self._send({**metrics, SUMMARY_KEY: json.dumps(summary, default=str)}, ckpt)


def _resume_copy() -> Path | None:
    """Copy Ray Train's latest checkpoint (after a retry) to a local file the engine can load."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    local = Path(tempfile.mkdtemp(prefix="rayclf-resume-"))
    with ckpt.as_directory() as folder:
        shutil.copy(Path(folder) / CHECKPOINT_FILE, local / CHECKPOINT_FILE)
    return local


def train_worker(trial: dict[str, Any]) -> None:
    """Entry point Ray Train runs on every worker of one trial."""
    import ray.train.torch

    from rayclf.data.sources import load_dataset
    from rayclf.tracking import TrackingSettings, WandbReporter

    cfg = build_config(dict(trial["config"]))
    if cfg.train.device == "auto":
        cfg.train.device = str(ray.train.torch.get_device())
    data = load_dataset(cfg.data)
    settings = TrackingSettings(**trial.get("tracking", {}))
    wandb_reporter = None
    if settings.mode != "disabled" and ray.train.get_context().get_world_rank() == 0:  # one run per trial
        wandb_reporter = WandbReporter(settings, trial, data.test.x, data.classes)
    resume = _resume_copy()
    try:
        fit(cfg, MultiReporter(RayTrainReporter(), wandb_reporter), data=data, resume=resume)
    except BaseException as exc:
        if wandb_reporter is not None:
            wandb_reporter.fail(exc)
        raise
    finally:
        if resume is not None:
            shutil.rmtree(resume, ignore_errors=True)
        _release_gpu_memory()


def _release_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
