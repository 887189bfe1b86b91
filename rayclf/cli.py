"""The ``rayclf`` command: parse arguments, call one function, print. No logic lives here."""

from __future__ import annotations

import functools
import shlex
import sys
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from rayclf.config import UserError


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Problems the user can fix print as one paragraph and exit with code 2 — never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)

    return wrapper


def _stamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


SET_HELP = "override a config key, e.g. --set train.epochs=5 (repeatable)"


@click.group()
@click.version_option(package_name="rayclf")
def main() -> None:
    """Declarative image-classifier ablation sweeps on Ray."""
    if not getattr(warnings.showwarning, "rayclf", False):
        warnings.showwarning = _user_warning(warnings.showwarning)


def _user_warning(shown: Callable[..., Any]) -> Callable[..., Any]:
    """Warnings meant for the user (``results.UnreadablePart``: a part skipped) print as one ``warning:`` line,
    without Python's file and line; every other warning as Python shows it."""
    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if category.__name__ == "UnreadablePart":
            click.echo(f"warning: {message}", err=True)
        else:
            shown(message, category, *args, **kwargs)

    show.rayclf = True  # type: ignore[attr-defined]
    return show


ARM_HELP = "an arm of the sweep file: its whole label (quote it) or a unique prefix of its arm id"
FROM_HELP = "a finished directory of this sweep: later stages' arms take the earlier stage winners logged there"


@main.command()
@click.argument("config", required=False, type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--arm", help=ARM_HELP + "; trains it exactly as the sweep would (the same trial id)")
@click.option("--seed", type=int, help="with --arm: the seed (default: the sweep's first)")
@click.option("--from", "from_dir", help="with --arm: " + FROM_HELP)
@click.option("--out", type=click.Path(path_type=Path), help="output folder (default runs/train-TIMESTAMP)")
@click.option("--resume", type=click.Path(path_type=Path), help="continue from this checkpoint (file or folder)")
@user_errors
def train(config: Path | None, overrides: tuple[str, ...], arm: str | None, seed: int | None, from_dir: str | None,
          out: Path | None, resume: Path | None) -> None:
    """Train one config (a trial config, a sweep file's base, or one arm of a sweep file) on this machine.

    Writes summary.json, epochs.parquet and the checkpoint."""
    from rayclf.local import train_local
    from rayclf.sweep.spec import load_trial_config

    if arm is None and (seed is not None or from_dir):
        raise UserError("--seed and --from choose an arm's trial: they need --arm LABEL.")
    if arm is not None:
        from rayclf.sweep.select import arm_trial

        trial = arm_trial(config, arm, seed, from_dir, overrides)
        click.echo(f"arm {trial.arm.label!r} (arm id {trial.arm_id}), seed {trial.seed}: trial {trial.trial_id}")
        cfg = trial.config
    else:
        cfg = load_trial_config(config, overrides)
    out = out or Path("runs") / f"train-{_stamp()}"
    if (out / "summary.json").exists() and resume is None:
        raise UserError(f"{out} already holds a finished run; choose another --out or pass --resume.")
    result = train_local(cfg, out, resume=resume, echo=click.echo)
    click.echo(f"wrote {out}/summary.json, {out}/epochs.parquet, {out}/checkpoint/")
    if result.status == "diverged":
        sys.exit(1)


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--data-root", required=True, type=click.Path(path_type=Path),
              help="dataset folder in the training data's layout, a class-per-folder tree, or a folder of images")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="predicted class indices (.npy)")
@click.option("--device", default="auto", show_default=True)
@user_errors
def predict(checkpoint: Path, data_root: Path, split: str, out: Path, device: str) -> None:
    """Predict classes for a dataset with a trained checkpoint."""
    import numpy as np

    from rayclf.local import predict as run_predict

    preds, probs, acc = run_predict(checkpoint, data_root, split, device=device)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, preds)
    np.save(out.with_name(out.stem + "_probs.npy"), probs)
    click.echo(f"wrote {len(preds)} predictions to {out}")
    if acc is not None:
        click.echo(f"accuracy: {acc:.2%}")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@user_errors
def validate(files: tuple[Path, ...]) -> None:
    """Check sweep files (or trial configs) without running anything."""
    from rayclf.sweep.spec import describe_file

    failed = False
    for f in files:
        try:
            click.echo(f"ok: {f}: {describe_file(f)}")
        except UserError as exc:
            failed = True
            click.echo(f"invalid: {f}: {exc}", err=True)
    if failed:
        sys.exit(2)


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--out", help="sweep directory: local path, s3:// or gs:// (default runs/NAME)")
@click.option("--address", envvar="RAY_ADDRESS", help="Ray cluster address (default: start a local instance)")
@click.option("--resume", is_flag=True,
              help="continue an existing sweep directory: finished trials are kept, failed and interrupted ones "
                   "continue from their last checkpoint, new arms or seeds run")
@click.option("--rerun-stopped", is_flag=True, help="with --resume: also re-run trials the scheduler stopped early")
@click.option("--dry-run", is_flag=True, help="print the trial table and resources; train nothing")
@click.option("--calibrate", is_flag=True,
              help="with --dry-run: time a few training steps of each distinct trial shape (here, or on a worker "
                   "node with --address) for measured seconds per epoch, trial-hours and wall time")
@click.option("--price-per-hour", type=click.FloatRange(min=0), metavar="X",
              help="with --dry-run: also print the cost at X per trial-hour (one trial's resources)")
@click.option("--arm", "arms", multiple=True, help=ARM_HELP + "; runs only these arms (repeatable; FIFO only)")
@click.option("--from", "from_dir", help="with --arm: " + FROM_HELP)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a base config key (train.epochs=5) or a sweep-file key (resources.gpus=0, seeds=[0,1])")
@click.option("--num-cpus", type=int, help="local Ray instance: CPUs to use")
@click.option("--quiet", is_flag=True, help="no live progress view")
@click.option("--verbose", is_flag=True, help="show Ray's own log output (kept in Ray's log files otherwise)")
@click.option("--wandb", "wandb_mode", type=click.Choice(["auto", "online", "offline", "disabled"]),
              help="W&B mode (default: the sweep file's wandb.mode, auto = online when logged in, else offline)")
@click.option("--wandb-strict", is_flag=True,
              help="with W&B online: stop before training when the W&B server does not answer (default: warn and "
                   "log offline, then print the `wandb sync` command)")
@click.option("--redecide", multiple=True, metavar="STAGE",
              help="with --resume: decide this stage's winner (and every later stage) again from stored results")
@click.option("--cache", metavar="DIR|s3://...",
              help="trial cache: completed trials found there by trial id are reused instead of trained, trained "
                   "ones are added (default: the sweep file's cache:, else $RAYCLF_CACHE, else none)")
@click.option("--no-cache", is_flag=True, help="use no trial cache, whatever the file or RAYCLF_CACHE say")
@click.option("--refresh", multiple=True, metavar="ARM",
              help="train this arm again even if the trial cache holds it, and replace its entries (repeatable)")
@user_errors
def sweep(file: Path, out: str | None, address: str | None, resume: bool, rerun_stopped: bool, dry_run: bool,
          calibrate: bool, price_per_hour: float | None, arms: tuple[str, ...], from_dir: str | None,
          overrides: tuple[str, ...], num_cpus: int | None, quiet: bool, verbose: bool, wandb_mode: str | None,
          wandb_strict: bool, redecide: tuple[str, ...], cache: str | None, no_cache: bool,
          refresh: tuple[str, ...]) -> None:
    """Run a sweep file on Ray (local or --address) and write trials.parquet / epochs.parquet."""
    from rayclf.sweep.select import pick
    from rayclf.sweep.spec import load_sweep

    if (calibrate or price_per_hour is not None) and not dry_run:
        raise UserError("--calibrate and --price-per-hour go with --dry-run (they estimate a sweep, run nothing); "
                        "add --dry-run.")
    spec = load_sweep(file, overrides)
    if out or resume:  # trial and arm ids as the sweep directory computes them (its identity version)
        from rayclf.results import stored_identity_version

        spec.identity_version = stored_identity_version(out or str(Path("runs") / spec.name))
    selection = pick(spec, arms, from_dir)
    if dry_run:
        from rayclf.sweep.plan import dry_run_text

        click.echo(dry_run_text(spec, address=address, calibrate=calibrate, price=price_per_hour, echo=click.echo,
                                picked=selection.arms if selection else None, cache=cache, no_cache=no_cache,
                                refresh=refresh))
        return
    from rayclf.sweep.interrupt import SweepInterrupted
    from rayclf.sweep.runner import default_out, run_sweep

    if redecide and not resume:
        raise UserError("--redecide re-opens decisions of an existing sweep directory: pass --resume with it.")
    out = out or default_out(spec)

    def closing(outcome: Any) -> None:
        """The closing table, then the sweep-level W&B run: while Ray is still up (its shutdown comes after)."""
        click.echo(outcome.summary_text())
        if outcome.tracking is None or outcome.tracking.mode == "disabled":
            return  # the report (and matplotlib, ≈ 1 s of a 2-core machine) is imported only to publish it
        from rayclf.report.publish import track_sweep

        track_sweep(outcome.out, outcome.tracking, click.echo)  # only a finished sweep is published

    try:
        run_sweep(spec, out=out, address=address, resume=resume, num_cpus=num_cpus, live=not quiet, echo=click.echo,
                  wandb_mode=wandb_mode, rerun_stopped=rerun_stopped, verbose=verbose, redecide=redecide,
                  selection=selection, wandb_strict=wandb_strict, cache=cache, no_cache=no_cache, refresh=refresh,
                  on_done=closing)
    except (SweepInterrupted, KeyboardInterrupt) as exc:
        code = getattr(exc, "exit_code", 130)  # 130 (SIGINT), 143 (SIGTERM), a second signal too
        kept = {"--address": address, "--num-cpus": num_cpus, "--wandb": wandb_mode, "--from": from_dir,
                "--cache": cache}
        again = " ".join(["rayclf sweep", shlex.quote(str(file)), "--out", shlex.quote(out), "--resume",
                          *(["--rerun-stopped"] if rerun_stopped else []),  # its decisions are already re-opened
                          *(["--wandb-strict"] if wandb_strict else []),
                          *(f"--set {shlex.quote(o)}" for o in overrides), *(f"--arm {shlex.quote(a)}" for a in arms),
                          *(["--no-cache"] if no_cache else []),
                          *(f"{k} {shlex.quote(str(v))}" for k, v in kept.items() if v is not None)])
        click.echo(f"\nsweep interrupted: finished trials are recorded; interrupted trials keep their last "
                   f"checkpoints and no decision was taken on the unfinished round.\nContinue with: {again}",
                   err=True)
        sys.exit(code)


@main.command()
@click.argument("sweep_dir")
@click.option("--out", type=click.Path(path_type=Path), help="report folder (default SWEEP_DIR/report)")
@click.option("--wandb", "wandb_mode", type=click.Choice(["auto", "online", "offline"]),
              help="also log the table and figures to the sweep's W&B run")
@click.option("--target-ci", "target_ci", type=click.FloatRange(min=0, min_open=True), metavar="W",
              help="planning column: seeds for a 95%% CI of Δ of ±W (percentage points for accuracies, default 1; "
                   "metric units otherwise, default 0.01)")
@user_errors
def report(sweep_dir: str, out: Path | None, wandb_mode: str | None, target_ci: float | None) -> None:
    """Tables (Markdown, CSV, LaTeX), figures (PNG, SVG) and index.html from a sweep directory."""
    from rayclf.report import build_report

    rep = build_report(sweep_dir, out, target_ci)
    click.echo(f"wrote {rep.out}/index.html, results.md/.csv/.tex and {len(rep.figures)} figures "
               f"({', '.join(rep.figures)})")
    if wandb_mode:
        from rayclf.report.publish import publish

        where = publish(sweep_dir, rep, wandb_mode)
        click.echo(f"logged the table and {len(rep.figures)} figures to W&B" + (f" ({where})" if where else
                                                                                  " (failed: see the warning)"))


@main.command()
@click.argument("sweep_dir")
@click.option("--watch", is_flag=True, help="refresh until the sweep's driver is gone (reads only new parts)")
@click.option("--json", "json_out", is_flag=True, help="one machine-readable JSON object (a line per change with "
                                                       "--watch)")
@click.option("--interval", default=5.0, show_default=True, type=click.FloatRange(min=0.1),
              help="seconds between refreshes with --watch")
@user_errors
def status(sweep_dir: str, watch: bool, json_out: bool, interval: float) -> None:
    """Where a sweep stands, from its directory alone (local, s3:// or gs://), while it runs or after:
    trials done / running / failed / waiting, the per-arm table, decisions, time left, the driver's heartbeat."""
    import json

    from rayclf.results import exists, join
    from rayclf.sweep.status import read_status, status_json, status_lines
    from rayclf.sweep.status import watch as watch_status

    if not any(exists(join(sweep_dir, f)) for f in ("sweep.yaml", "trials.parquet", "_driver.json")):
        raise UserError(f"{sweep_dir} is not a sweep directory (no sweep.yaml, trials.parquet or _driver.json); "
                        "pass the --out of a rayclf sweep.")
    if watch:
        watch_status(sweep_dir, interval, lambda s: click.echo(s), sys.stdout.isatty(), json_out)
        return
    st = read_status(sweep_dir)
    click.echo(json.dumps(status_json(st), indent=1) if json_out else "\n".join(status_lines(st)))


@main.command("models")
def list_models_cmd() -> None:
    """List rayclf's model families (any timm model name works too)."""
    from rayclf.models import list_models

    for name in list_models():
        click.echo(name)


if __name__ == "__main__":
    main()
