"""Put a sweep's report where a team looks: the sweep-level W&B run gets the per-arm table and every figure.

Called by the CLI at the end of every finished sweep (``rayclf sweep``: ``track_sweep``) and by
``rayclf report --wandb MODE``, so a dashboard always shows the figures of the finished sweep, not those of an
earlier local report.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from rayclf.report import Report, build_report
from rayclf.results import exists, join, read_text
from rayclf.tracking import TrackingSettings, log_sweep_summary, resolve_settings, sync_command


def arm_rows(rep: Report) -> list[dict[str, Any]]:
    return [{"arm": s.arm, "n": s.n, "metric_mean": s.mean, "metric_std": s.std, "delta": s.delta,
             "delta_ci95": s.delta_ci95, "pairs": s.pairs, "p_value": s.p_value, "p_holm": s.p_holm,
             "test_accuracy_mean": s.test_mean, "test_accuracy_std": s.test_std, "statuses": str(s.statuses)}
            for s in rep.rows]


def figure_files(rep: Report) -> list[Path]:
    return [p for name in rep.figures if (p := rep.out / "figures" / f"{name}.png").is_file()]


def render_for_tracking(sweep_dir: str) -> Report:
    """The report of a finished sweep: into SWEEP_DIR/report when local, a temporary folder otherwise."""
    out = None if "://" not in sweep_dir else Path(tempfile.mkdtemp(prefix="rayclf-report-")) / "report"
    return build_report(sweep_dir, out)


def publish(sweep_dir: str, rep: Report, mode: str | None = None,
            settings: TrackingSettings | None = None) -> str | None:
    """Log the report's table and figures to the sweep-level W&B run; returns the run's folder, or None."""
    spec = _spec(sweep_dir)
    name = spec.get("name") or Path(sweep_dir.rstrip("/")).name
    if settings is None:
        w = spec.get("wandb") or {}
        settings = resolve_settings(mode or w.get("mode", "auto"), w.get("project"), w.get("entity"),
                                    w.get("tags", []), name, sweep_dir)
    return log_sweep_summary(settings, name, arm_rows(rep), figure_files(rep))


def _spec(sweep_dir: str) -> dict[str, Any]:
    uri = join(sweep_dir, "sweep.yaml")
    return (yaml.safe_load(read_text(uri)) or {}) if exists(uri) else {}


def track_sweep(out: str, tracking: TrackingSettings | None, echo: Callable[[str], None] = print) -> None:
    """The sweep-level W&B run with a finished sweep's table and report figures, and where offline runs are and
    how to upload them. Called after ``run_sweep`` returns (never after an interrupt): the sweep layer never
    imports the report. ``tracking``: the run's settings (``SweepOutcome.tracking``)."""
    if tracking is None or tracking.mode == "disabled":
        return
    try:
        rep = render_for_tracking(out)
    except Exception as exc:  # a report that cannot be drawn must not cost the finished sweep
        echo(f"warning: the report for W&B could not be rendered ({type(exc).__name__}: {exc}); "
             f"run `rayclf report {out} --wandb {tracking.mode}` later.")
    else:
        publish(out, rep, settings=tracking)
    sync_hint(tracking, echo)


def sync_hint(tracking: TrackingSettings, echo: Callable[[str], None] = print) -> None:
    """The closing lines: where offline runs are and the exact command that uploads them (an offline sweep, a
    sweep the driver's check turned offline, or trials whose runs fell back offline on their own)."""
    fell_back = tracking.dir is not None and any((Path(tracking.dir) / "wandb").glob("offline-run-*"))
    if tracking.mode != "offline" and not fell_back:
        return
    if tracking.fallback:
        echo(f"W&B was not reachable before training ({tracking.fallback}), so this sweep logged offline.")
    elif tracking.mode != "offline":
        echo("Some W&B runs fell back to offline during the sweep (W&B failed for them).")
    echo(f"W&B runs were written offline under {tracking.dir}/wandb; upload them with: "
         f"{sync_command(tracking.dir)}")
