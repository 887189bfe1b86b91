"""Run a sweep on Ray: start or join Ray, guard the sweep directory, run the sweep's strategy in one Tune run.

The driver side of ``rayclf sweep``: the sweep directory is checked (bucket, driver lock, edits it cannot take)
before anything is written; Ray is started (or joined); the kernel's strategy (``rayclf.sweep.kernel``) runs
with a ``TuneSession`` (``rayclf.sweep.session``), one ``Tuner.fit()`` for every stage, round and batch.
Ctrl-C or SIGTERM stops at the trials' last checkpoints; ``--resume`` continues them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rayclf.config import UserError
from rayclf.identity import LEGACY_VERSION
from rayclf.results import EPOCHS, TRIALS, ResultsStore, quarantine
from rayclf.storage import check_bucket, exists, join, read_text, storage_errors, write_text
from rayclf.sweep import localray, warm
from rayclf.sweep.connect import connect
from rayclf.sweep.decisions import DECISIONS, DecisionLog
from rayclf.sweep.interrupt import StopFlag, SweepInterrupted, stop_on_signals
from rayclf.sweep.kernel import SweepOutcome, SweepRun, execute, resume_conflict
from rayclf.sweep.lock import DriverLock
from rayclf.sweep.plan import DRIVER_RESOURCE, unmet_resources
from rayclf.sweep.session import TuneSession, storage_path
from rayclf.sweep.spec import Sweep, dump_sweep
from rayclf.sweep.strategies.staged import stage_index
from rayclf.tracking import TrackingSettings, check_online, resolve_settings

SWEEP_FILE = "sweep.yaml"


# --------------------------------------------------------------------------------- driver side
SECRET_ENV_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def _keep_credentials_out_of_ray() -> None:
    """Ray Tune copies the driver's AWS credentials into every trial actor's ``runtime_env``, which Ray's
    runtime-env agent then logs in plain text and keeps in the cluster's metadata. rayclf never forwards them:
    a trial process takes credentials from its node's environment (inherited from the driver on a local
    instance; an instance role or the node's own environment on a cluster)."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE.difference_update(SECRET_ENV_VARS)


def _count_callbacks_without_imports() -> None:
    """Ray Tune's usage telemetry counts a run's callbacks by class, and imports every logger integration it
    knows (W&B's, with ``wandb`` itself) to compare them with: ≈ 3 s of a 2-core machine's CPU on the driver,
    between ``Tuner.fit`` and the first trial (py-spy, BENCHMARKS.md issue 33), whether or not W&B is used.
    rayclf's callbacks are all its own, so the same tag is recorded without those imports."""
    try:
        from ray.air._internal import usage
        from ray.tune import Callback
    except ImportError:  # a later Ray moved it: Tune counts as it does
        return

    def tag_callbacks(callbacks: list[Any] | None) -> bool:
        count = sum(isinstance(c, Callback) for c in callbacks or [])
        if count:
            usage.record_extra_usage_tag(usage.TagKey.AIR_CALLBACKS, json.dumps({"CustomCallback": count}))
        return bool(count)

    if hasattr(usage, "tag_callbacks"):
        usage.tag_callbacks = tag_callbacks


def _start_ray(address: str | None, num_cpus: int | None, verbose: bool = False, data_parallel: bool = False) -> bool:
    """Connect to ``address`` or start a local instance; True when we started it (and must stop it).

    Ray's own start-up and scheduling chatter stays in Ray's log files unless ``verbose``. A local instance
    starts only the processes the sweep uses (``localray``): ``data_parallel`` trials need the dashboard head."""
    import ray

    level = logging.INFO if verbose else logging.ERROR
    logging.getLogger("ray").setLevel(level)

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # trials read data.root relative to where rayclf runs
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # rayclf records results itself
    # Tune's SIGINT handler makes fit() return as if the round had finished: rayclf stops the run itself
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's result grid looks for the per-trial result files rayclf does not write: say nothing about it
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    warm.share_idle_workers(warm.starts_local_instance(address))  # before the credentials are taken out
    _keep_credentials_out_of_ray()
    _count_callbacks_without_imports()
    if ray.is_initialized():
        return False
    if address and address != "local":
        connect(address, verbose)
        return False
    # lean (RAYCLF_LEAN_RAY=0 turns it off): no autoscaler (a local instance never grows), the log monitor only
    # for --verbose, the dashboard head only for Ray Train's worker groups.
    # address="local": a new instance even where `ray start` runs on this machine (Ray's default would join it,
    # and refuse this call's CPUs and resources); a cluster is joined with --address or RAY_ADDRESS only.
    full = not localray.enabled()
    with localray.lean(monitor=full, log_monitor=verbose or full, api_server=data_parallel or full):
        ray.init(address="local", num_cpus=num_cpus, resources={DRIVER_RESOURCE: 1000}, include_dashboard=False,
                 log_to_driver=verbose, logging_level=level, **warm.init_options())
    return True


def _resume_conflict(sweep: Sweep, out: str, store: ResultsStore, rerun_stopped: bool = False,
                     redecide_from: int | None = None) -> str | None:
    """What the file changed that this sweep directory cannot take (compared with the sweep.yaml it holds, and
    with the metric its rows were recorded under)."""
    import yaml
    from pydantic import ValidationError

    from rayclf.sweep.spec import SweepFile

    uri = join(out, SWEEP_FILE)
    if not exists(uri):
        return None
    try:
        old = SweepFile.model_validate({k: v for k, v in yaml.safe_load(read_text(uri)).items() if k != "base"})
    except (ValidationError, AttributeError, yaml.YAMLError):  # written by a release with other file rules
        return None
    workers = (old.resources.num_workers, sweep.file.resources.num_workers)
    if store.identity_version == LEGACY_VERSION and workers[0] != workers[1] and store.trials:
        return (f"{out} was recorded with resources.num_workers={workers[0]} under trial ids that leave the world "
                f"size out (identity version {LEGACY_VERSION}); train.batch_size is per worker, so "
                f"num_workers={workers[1]} would mix two global batch sizes under one id. Keep "
                f"--set resources.num_workers={workers[0]}, or start a new --out.")
    recorded = sorted({r.get("metric") for r in store.trials} - {None})
    if recorded and recorded != [sweep.file.metric]:
        old = old.model_copy(update={"metric": recorded[0]})
    return resume_conflict(old, sweep.file, DecisionLog(out), rerun_stopped, redecide_from)


def _quarantine(out: str, echo: Callable[[str], None]) -> None:
    """Unreadable parts (a crash or power loss mid-write on a disk that lost them) move to quarantine/: their
    trials run again and their decisions are taken again; nothing is deleted."""
    for part, where in quarantine(out, (TRIALS, EPOCHS, DECISIONS)):
        again = "its decision is taken again" if part.startswith(DECISIONS) else "its trial runs again"
        echo(f"warning: {part} cannot be read: moved to {where}; {again}")


def default_out(sweep: Sweep) -> str:
    return str(Path("runs") / sweep.name)


def prepare_out(sweep: Sweep, out: str | None, resume: bool, echo: Callable[[str], None] = print,
                rerun_stopped: bool = False, redecide: tuple[str, ...] = ()) -> tuple[str, ResultsStore, DriverLock]:
    """The sweep directory, its store and its driver lock: never silently overwrite or mix finished results.
    Storage that cannot be used, a live driver, or an edit the directory cannot take stops the sweep here,
    before anything is written."""
    out = out or default_out(sweep)
    redecide_from = min(stage_index(sweep, name) for name in redecide) if redecide else None
    check_bucket(out)
    with storage_errors(out):
        if exists(join(out, TRIALS)) and not resume:
            raise UserError(f"{out} already holds results of a sweep; pass --resume to continue it (finished "
                            "trials are skipped, new arms or seeds run) or choose another --out.")
        lock = DriverLock.acquire(out, echo)
        try:
            _quarantine(out, echo)
            store = ResultsStore(out)
            sweep.identity_version = store.identity_version  # ids as this directory computes them
            problem = store.check_semantics() or _resume_conflict(sweep, out, store, rerun_stopped, redecide_from)
            if problem:
                raise UserError(problem)
            write_text(join(out, SWEEP_FILE), dump_sweep(sweep))
        except BaseException:
            lock.release()
            raise
    return out, store, lock


def run_sweep(sweep: Sweep, out: str | None = None, address: str | None = None, resume: bool = False,
              num_cpus: int | None = None, live: bool = True, echo: Callable[[str], None] = print,
              wandb_mode: str | None = None, rerun_stopped: bool = False, verbose: bool = False,
              redecide: tuple[str, ...] = (), selection: Any = None, wandb_strict: bool = False,
              cache: str | None = None, no_cache: bool = False, refresh: tuple[str, ...] = (),
              on_done: Callable[[SweepOutcome], None] | None = None) -> SweepOutcome:
    """Run every trial of a sweep (or of the ``selection``'s arms, ``--arm``) that is not already finished in
    ``out``; return the recorded rows.

    Ctrl-C or SIGTERM stops the running trials at their last checkpoints and raises ``SweepInterrupted`` (no
    decision is taken on the partial round); ``--resume`` continues them. The sweep layer never imports the
    report: the caller publishes a finished sweep's W&B summary (``rayclf.report.publish.track_sweep``) with
    ``outcome.tracking``, which an interrupted sweep never returns. ``cache`` / ``no_cache`` / ``refresh``: the
    trial cache (``rayclf.cache.resolve_cache``) and the arms that train again anyway. ``on_done`` gets a
    finished sweep's outcome before Ray shuts down: the closing table is shown as soon as the last row is
    written, not after the shutdown."""
    import ray

    from rayclf.cache import TrialCache, resolve_cache
    from rayclf.sweep.preflight import Preflight
    from rayclf.sweep.reuse import open_reuse

    _refuse_ray_client(address)
    address = address or os.environ.get("RAY_ADDRESS") or None  # as the CLI's --address reads it
    address = None if address == "local" else address  # Ray's own word for "start a local instance"
    # a bad --refresh or an unusable cache stops here, before the sweep directory is touched
    reuse = open_reuse(resolve_cache(cache, no_cache, sweep.file.cache), refresh, sweep, echo)
    tracking = _tracking(sweep, out or default_out(sweep), wandb_mode, wandb_strict, echo)  # before any write
    out, store, lock = prepare_out(sweep, out, resume, echo, rerun_stopped, redecide)
    if reuse is not None:  # entries keyed as this directory computes its trial ids (rayclf.identity)
        reuse.cache = TrialCache(reuse.cache.uri, echo, sweep.identity_version)
    started = False
    try:
        started = _start_ray(address, num_cpus, verbose, data_parallel=sweep.file.resources.num_workers > 1)
        lock.set_session(_session_dir() if started else None)
        run = SweepRun(sweep, out, store, DecisionLog(out), _no_session, StopFlag(), echo, rerun_stopped,
                       redecide, live, tracking, driver=lock, selection=selection, cache=reuse)
        session = TuneSession(run)
        run.execute_trials = session.run_batch
        # after ray.init, which installs a SIGTERM handler of its own (exit 15)
        with stop_on_signals(run.stop, echo):
            unmet = unmet_resources(sweep, ray.cluster_resources())
            if unmet and started:  # a local instance never grows: the sweep would wait forever
                raise UserError(unmet)
            if unmet:
                echo(f"warning: {unmet} Trials wait until an autoscaler adds such nodes.")
            if address:  # a remote cluster: its worker nodes are not this machine
                run.preflight = Preflight(sweep, storage_path(out), tracking=tracking,
                                          strict=wandb_strict or sweep.file.wandb.strict, echo=echo)
            outcome = session.execute(lambda: execute(run))
        outcome.tracking = tracking  # the CLI publishes the sweep-level summary (rayclf.report.publish.track_sweep)
        if on_done is not None:
            on_done(outcome)
    except KeyboardInterrupt as exc:  # a second signal (StopNow), or a Ctrl-C before the handlers were set
        raise SweepInterrupted(getattr(exc, "signum", signal.SIGINT), out) from None
    finally:
        lock.release()
        if started:
            ray.shutdown()
    return outcome


def _tracking(sweep: Sweep, out: str, wandb_mode: str | None, strict: bool,
              echo: Callable[[str], None]) -> TrackingSettings:
    """The run's W&B settings after the one check before training (``check_online``): a missing key for an
    explicit online sweep or, with ``strict``, a server that does not answer stops the sweep here (exit 2)."""
    w = sweep.file.wandb
    requested = wandb_mode or w.mode
    tracking = resolve_settings(requested, w.project, w.entity, w.tags, sweep.name, out)
    how = ("--wandb online" if wandb_mode == "online" else "wandb.mode: online in the sweep file"
           if requested == "online" else "WANDB_MODE=online" if os.environ.get("WANDB_MODE") == "online" else None)
    tracking, warning = check_online(tracking, how, strict or w.strict)
    if warning:
        echo(warning)
    return tracking


def _refuse_ray_client(address: str | None) -> None:
    """Ray Client (``ray://``) would run Tune's loop on the cluster, away from this driver's strategy thread,
    results store and decision log, which take their turns with it: the sweep driver must run where Tune runs."""
    target = address or os.environ.get("RAY_ADDRESS", "")
    if target.startswith("ray://"):
        host = target.removeprefix("ray://").split(":", 1)[0]
        raise UserError(f"--address {target}: a sweep's driver runs where Tune runs, and Ray Client (ray://) runs "
                        f"Tune on the cluster. Submit the sweep as a job there (ray job submit --address "
                        f"http://{host}:8265 -- rayclf sweep FILE --out s3://...), or run it on a machine in the "
                        f"cluster's network with --address {host}:6379.")


def _no_session(run: SweepRun, trials: list, order: list) -> int:
    raise RuntimeError("trials run through the sweep's TuneSession")


def _session_dir() -> str | None:
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return node.get_session_dir_path() if node is not None else None
