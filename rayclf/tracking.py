"""Weights & Biases tracking: one run per trial (rank 0 only) plus one sweep-level run.

W&B trouble must never cost a trial: every call is guarded; the first failure is logged once and the
tracker goes quiet while training and the local Parquet results carry on. Run ids are derived from the
trial id, so a retried or resumed trial continues its run. The API key only ever travels in the
environment (``WANDB_API_KEY``); nothing here writes it anywhere.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayclf.sweep.trialspec import TrialSpec

log = logging.getLogger("rayclf.tracking")


@dataclass
class TrackingSettings:
    """What a worker needs to open its trial's run (never the key)."""

    mode: str = "disabled"  # online | offline | disabled (already resolved from "auto")
    project: str = "rayclf"
    entity: str | None = None
    dir: str | None = None
    tags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "project": self.project, "entity": self.entity, "dir": self.dir, "tags": self.tags}


def logged_in() -> bool:
    """An API key in the environment or in ~/.netrc for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def resolve_settings(mode: str, project: str | None, entity: str | None, tags: Sequence[str], sweep_name: str,
                     out: str) -> TrackingSettings:
    """``auto`` → online when logged in, else offline; run files under the sweep directory when it is local."""
    if mode == "auto":  # an explicit mode (sweep file or --wandb) wins over the environment
        env = os.environ.get("WANDB_MODE")
        mode = env if env in ("online", "offline", "disabled") else ("online" if logged_in() else "offline")
    local = "://" not in out
    run_dir = str(Path(out).resolve()) if local else str(Path.home() / ".cache" / "rayclf" / "wandb" / sweep_name)
    return TrackingSettings(mode, project or os.environ.get("WANDB_PROJECT") or "rayclf",
                            entity or os.environ.get("WANDB_ENTITY"), run_dir, list(tags))


def run_id(sweep: str, trial_id: str) -> str:
    """Deterministic W&B run id: the same trial always continues the same run."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{sweep}-{trial_id}")[:64]


def _open_run(settings: TrackingSettings, rid: str, **identity: Any):
    """Every rayclf W&B run opens here: same folder, mode, resume policy and quiet settings."""
    import wandb

    os.makedirs(settings.dir or ".", exist_ok=True)  # wandb would silently fall back to a temp folder
    return wandb.init(project=settings.project, entity=settings.entity, dir=settings.dir, mode=settings.mode,
                      id=rid, resume="allow", reinit="create_new",
                      settings=wandb.Settings(init_timeout=60, console="off", x_disable_stats=True), **identity)


class _Guarded:
    """Runs W&B calls; after the first failure, warns once and turns every later call into a no-op."""

    def __init__(self) -> None:
        self.broken = False

    def call(self, what: str, fn, *args, **kwargs) -> Any:
        if self.broken:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # network, 5xx, bad key, disk: tracking is never fatal
            self.broken = True
            log.warning("W&B %s failed (%s: %s); training continues, local results are kept, W&B logging is "
                        "off for this run.", what, type(exc).__name__, str(exc)[:200])
            return None


class WandbReporter(_Guarded):
    """Engine reporter that streams one trial to W&B."""

    def __init__(self, settings: TrackingSettings, trial: TrialSpec, test_images: Any = None,
                 classes: Sequence[str] = ()):
        super().__init__()
        self.settings, self.trial = settings, trial
        self.test_images, self.classes = test_images, list(classes)
        self.run = None
        if settings.mode != "disabled":
            self.run = self.call("init", self._init)

    def _init(self):
        t = self.trial
        run = _open_run(self.settings, run_id(t.sweep, t.trial_id), group=t.sweep, job_type=t.arm[:64],
                        name=f"{t.arm} s{t.seed}", tags=[*self.settings.tags, t.sweep],
                        config={**t.config, "rayclf": {"trial_id": t.trial_id, "arm": t.arm, "arm_id": t.arm_id,
                                                       "seed": t.seed, "sweep": t.sweep, "overrides": t.overrides}})
        run.define_metric("epoch")
        run.define_metric("*", step_metric="epoch")
        return run

    def epoch(self, metrics: dict[str, Any], checkpoint_dir: Any = None, final: bool = False) -> None:
        if self.run is not None:
            self.call("log", self.run.log, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})

    def should_stop(self) -> bool:
        return False

    def end(self, summary: dict[str, Any]) -> None:
        if self.run is None:
            return
        self.call("summary", self._summary, summary)
        self.call("finish", self.run.finish, exit_code=0 if summary.get("status") != "failed" else 1)

    def fail(self, exc: BaseException) -> None:
        """The trial raised: mark its run failed (with the reason) and close it."""
        if self.run is None:
            return
        reason = f"{type(exc).__name__}: {exc}"[:500]
        self.call("summary", self.run.summary.update, {"status": "failed", "reason": reason})
        self.call("finish", self.run.finish, exit_code=1)

    def _summary(self, s: dict[str, Any]) -> None:
        import wandb

        run = self.run
        for key in ("status", "test_accuracy", "test_loss", "best_val_accuracy", "best_epoch", "epochs", "params",
                    "seconds", "images_per_sec", "reason"):
            if s.get(key) is not None:
                run.summary[key] = s[key]
        classes = s.get("classes") or self.classes
        cm = s.get("confusion_matrix") or []
        if cm:
            rows = [[classes[i], classes[j], n] for i, r in enumerate(cm) for j, n in enumerate(r)]
            # end-of-trial tables go to the summary, so the history holds exactly one row per epoch
            run.summary["confusion_matrix"] = wandb.Table(columns=["true", "predicted", "count"], data=rows)
            run.summary["per_class_accuracy"] = wandb.Table(
                columns=["class", "accuracy"],
                data=[[c, a] for c, a in zip(classes, s.get("per_class_accuracy", []), strict=False)])
        wrong = s.get("misclassified") or []
        if wrong and self.test_images is not None:
            table = wandb.Table(columns=["image", "true", "predicted"])
            for m in wrong:
                img = self.test_images[m["index"]].transpose(1, 2, 0)
                table.add_data(wandb.Image(img), classes[m["true"]], classes[m["pred"]])
            run.summary["misclassified"] = table


def log_sweep_summary(settings: TrackingSettings, sweep: str, table_rows: Sequence[Mapping[str, Any]],
                      figures: Sequence[Path] = ()) -> str | None:
    """One sweep-level run: the arm × metric table (mean ± std over seeds) and any report figures."""
    if settings.mode == "disabled":
        return None
    guard = _Guarded()

    def _log() -> str:
        import wandb

        run = _open_run(settings, run_id(sweep, "summary"), group=sweep, job_type="sweep-summary",
                        name=f"{sweep} (summary)", tags=[*settings.tags, sweep])
        cols = list(table_rows[0]) if table_rows else ["arm"]
        run.log({"arms": wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in table_rows])})
        for fig in figures:
            run.log({f"report/{fig.stem}": wandb.Image(str(fig))})
        path = run.dir
        run.finish()
        return path

    return guard.call("sweep summary", _log)
