"""Run a sweep on Ray: Tune schedules rayclf's explicit trial list; each trial trains where Tune puts it.

Single-worker trials (a CPU slot, a GPU or a fraction of one) are Tune function trainables that train in the
trial's own process (``worker.train_trial``), holding the trial's resources; Tune reuses those processes from
trial to trial and retries a failed trial from its last checkpoint (``tune.FailureConfig``). Only
data-parallel trials (``num_workers > 1``) start a Ray Train ``TorchTrainer`` worker group, which Ray Train
retries, and whose placement group a callback releases if Ray leaves it behind after an early stop.
The driver records every trial as it finishes (``Recorder``, one Parquet part per trial) and continues
unfinished trials of an earlier run from their checkpoints, found by trial id (``resume``).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rayclf.config import UserError
from rayclf.results import TRIALS, ResultsStore
from rayclf.storage import check_bucket, exists, join, read_text, storage_errors, write_text
from rayclf.sweep import warm
from rayclf.sweep.connect import connect
from rayclf.sweep.decisions import DecisionLog
from rayclf.sweep.interrupt import StopFlag, SweepInterrupted, stop_on_signals
from rayclf.sweep.kernel import SweepOutcome, SweepRun, execute, resume_conflict
from rayclf.sweep.lock import DriverLock
from rayclf.sweep.packing import check_packing
from rayclf.sweep.plan import DRIVER_RESOURCE, concurrency, driver_resources, trial_resources, unmet_resources
from rayclf.sweep.resume import find_checkpoints
from rayclf.sweep.rows import identity, trial_row
from rayclf.sweep.spec import Sweep, Trial, dump_sweep
from rayclf.tracking import TrackingSettings, resolve_settings

SWEEP_FILE = "sweep.yaml"


# --------------------------------------------------------------------------------- Ray side
def train_driver(config: dict[str, Any]) -> None:
    """The Tune function trainable of a data-parallel trial: one Ray Train V2 TorchTrainer run."""
    from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from rayclf.sweep.worker import train_worker

    trial = config["trial"]
    res = trial["resources"]
    resume = trial.get("resume_from")
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=trial,
        resume_from_checkpoint=Checkpoint(resume) if resume else None,
        scaling_config=ScalingConfig(num_workers=res["num_workers"], use_gpu=res["gpus"] > 0,
                                     resources_per_worker={"CPU": res["cpus"], "GPU": res["gpus"]}),
        run_config=RunConfig(name=f"trial-{trial['trial_id']}", storage_path=trial["storage"],
                             callbacks=[TuneReportCallback()],
                             failure_config=FailureConfig(max_failures=trial["max_failures"]),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    trainer.fit()


def _prepare_everywhere(trials: list[Trial]) -> None:
    """Download / decode each dataset (and fetch pretrained weights) once per node before trials start."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from rayclf.data.sources import prepare_dataset

    @ray.remote(num_cpus=0)
    def prepare(config: dict[str, Any]) -> None:
        from rayclf.config import build_config
        from rayclf.models.timm_models import TimmOptions, prepare_weights

        cfg = build_config(config)
        prepare_dataset(cfg.data)
        if isinstance(cfg.model, TimmOptions):
            prepare_weights(cfg.model)

    # one representative config per distinct (dataset, pretrained weights) pair; synthetic data is generated
    # in the trial's process and needs no preparation (a task per node would only cost a worker start-up)
    todo = {(t.config.data.model_dump_json(), getattr(t.config.model, "pretrained", False) and t.config.model.name):
            t.config.to_dict() for t in trials
            if t.config.data.name != "synthetic" or getattr(t.config.model, "pretrained", False)}
    if not todo:
        return
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    refs = [prepare.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(c)
            for node in nodes for c in todo.values()]
    try:
        ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(getattr(exc, "cause", None), UserError) else None
        if cause is not None:
            raise UserError(str(cause)) from None
        raise


def _arm_board(run: SweepRun, max_epochs: int, trials: list[Trial], found: dict[str, Any]) -> Any:
    """The shared state of arm-level early stopping (asha / median over all of an arm's seeds), rebuilt from
    the decision log and every seed's stored epochs, or None. It takes no decision once a stop was asked for."""
    from rayclf.sweep.schedulers import ArmBoard, replay, rung_rule

    sweep = run.sweep
    s = sweep.file.scheduler
    if s.name not in ("asha", "median"):
        return None
    rule = rung_rule(s.name, s.grace_period, s.reduction_factor, s.max_epochs or max_epochs, s.min_arms)
    board = ArmBoard(rule, sweep.file.mode or "max", sweep.file.metric)
    board.halted = run.stop.is_set
    return replay(board, trials, run.store, run.log, {tid: f.history for tid, f in found.items()},
                  run.rerun_stopped)


def _search(board: Any, descriptions: list[dict[str, Any]], recorder: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(scheduler, search algorithm, param space) for Tune: the trial list as a grid, or, with arm-level
    early stopping, rayclf's queue that never starts a seed of a stopped arm."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from rayclf.sweep.schedulers import ArmScheduler, TrialQueue

    if board is None:
        return FIFOScheduler(), None, {"trial": tune.grid_search(descriptions)}
    skip = lambda d, rung, why: recorder.record_unstarted(d, "stopped_early", why, rung)  # noqa: E731
    return ArmScheduler(board), TrialQueue(descriptions, board, skip), {}


def storage_path(out: str) -> str:
    return join(out, "_ray") if "://" in out else os.path.abspath(os.path.join(out, "_ray"))


def _describe(sweep: Sweep, t: Trial, index: int, storage: str, tracking: TrackingSettings,
              resume_from: str | None) -> dict[str, Any]:
    """What a trial process needs, carried through Tune's param space."""
    res = trial_resources(sweep)
    return {**identity(sweep, t, index), "storage": storage, "max_failures": sweep.file.max_failures,
            "tracking": tracking.to_dict(), "resume_from": resume_from,
            "resources": {"cpus": res.cpus, "gpus": res.gpus, "num_workers": res.num_workers}}


class _Discard:
    """A stream that drops everything (``--quiet``)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _trainable(sweep: Sweep, cluster: dict[str, float]) -> tuple[Any, bool]:
    """The Tune trainable and whether it trains in-process (single worker) rather than in a worker group."""
    from ray import tune

    from rayclf.sweep.worker import train_trial

    res = trial_resources(sweep)
    if res.num_workers == 1:
        return tune.with_resources(train_trial, {"cpu": res.cpus, "gpu": res.gpus}), True
    return tune.with_resources(train_driver, driver_resources(cluster)), False


def _tuner(sweep: Sweep, trainable: Any, in_process: bool, space: dict[str, Any], scheduler: Any, search_alg: Any,
           n: int, slots: int, storage: str, callbacks: list[Any], stopper: Any = None) -> Any:
    """Tune over rayclf's explicit trial list: names and folders by trial id, one checkpoint kept per trial,
    retries by Tune for in-process trials (Ray Train retries a worker group itself)."""
    from ray import tune

    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(metric=sweep.file.metric, mode=sweep.file.mode, scheduler=scheduler,
                                    search_alg=search_alg, num_samples=1 if search_alg is None else n,
                                    max_concurrent_trials=slots, reuse_actors=in_process,
                                    trial_name_creator=lambda tr: f"{tr.config['trial']['arm']}-s"
                                                                  f"{tr.config['trial']['seed']}"[:80],
                                    trial_dirname_creator=lambda tr: f"trial-{tr.config['trial']['trial_id']}"),
        run_config=tune.RunConfig(name=f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}", storage_path=storage,
                                  callbacks=callbacks, verbose=0, stop=stopper,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  failure_config=tune.FailureConfig(
                                      max_failures=sweep.file.max_failures if in_process else 0)),
    )


def run_trials(run: SweepRun, trials: list[Trial], order: list[Trial]) -> int:
    """Run the trials not yet finished in one Tune run; return how many were skipped as already done. ``order``
    (a superset of ``trials``, e.g. every trial of a racing or bayes search) fixes their positions in the table.
    A stop signal ends the run at the trials' last checkpoints (``SweepStopper``) without recording them."""
    import ray

    from rayclf.sweep.callbacks import LiveCallback, PlacementGroupJanitor, Recorder, SweepStopper
    from rayclf.sweep.live import LiveView

    sweep, store, out = run.sweep, run.store, run.out
    done = store.finished_ids(run.rerun_stopped)
    todo = [(i, t) for i, t in enumerate(trials) if t.trial_id not in done]
    if not todo:
        return len(trials)
    _prepare_everywhere([t for _, t in todo])
    storage = storage_path(out)
    res = trial_resources(sweep)
    if run.preflight is not None:  # remote cluster: checks and calibrates on a worker node, before any trial
        run.preflight.check([t for _, t in todo])
    else:
        check_packing([t for _, t in todo], res.gpus if res.num_workers == 1 else 1.0)
    cluster = ray.cluster_resources()
    found = find_checkpoints(storage, {t.trial_id for _, t in todo})
    pos = {t.trial_id: i for i, t in enumerate(order)}
    descriptions = [_describe(sweep, t, pos[t.trial_id], storage, run.tracking,
                              found[t.trial_id].uri if t.trial_id in found else None) for _, t in todo]
    metric, mode = sweep.file.metric, run.mode
    store.prepare([trial_row(d, "completed", "", None, [], metric, mode) for d in descriptions])
    max_epochs = max(t.config.total_epochs() for _, t in todo)
    board = _arm_board(run, max_epochs, trials, found)
    recorder = Recorder(store, metric, mode, prior={tid: f.history for tid, f in found.items()},
                        storage=out, board=board, stop=run.stop)
    scheduler, search_alg, space = _search(board, descriptions, recorder)
    trainable, in_process = _trainable(sweep, cluster)
    janitor = PlacementGroupJanitor(recorder, {"CPU": res.cpus, "GPU": res.gpus}, res.num_workers)
    callbacks: list[Any] = [recorder] if in_process else [recorder, janitor]
    # on a remote cluster the autoscaler grows it while trials wait: what fits now is no limit (the file's
    # max_concurrent still is); on a local instance it is all there will ever be
    grows = run.preflight is not None and not sweep.file.resources.max_concurrent
    slots = len(todo) if grows else min(concurrency(sweep, cluster), len(todo))
    if board is not None:
        board.slots = slots
    view = LiveView(len(trials), metric, mode, terminal=None if run.live else False, slots=slots,
                    stream=None if run.live else _Discard())
    view.skipped(len(trials) - len(todo))
    callbacks.append(LiveCallback(view, recorder, run.driver))
    tuner = _tuner(sweep, trainable, in_process, space, scheduler, search_alg, len(descriptions), slots, storage,
                   callbacks, SweepStopper(run.stop))
    try:
        tuner.fit()
    finally:
        view.close()
    return len(trials) - len(todo)


# --------------------------------------------------------------------------------- driver side
SECRET_ENV_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def _keep_credentials_out_of_ray() -> None:
    """Ray Tune copies the driver's AWS credentials into every trial actor's ``runtime_env``, which Ray's
    runtime-env agent then logs in plain text and keeps in the cluster's metadata. rayclf never forwards them:
    a trial process takes credentials from its node's environment (inherited from the driver on a local
    instance; an instance role or the node's own environment on a cluster)."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE.difference_update(SECRET_ENV_VARS)


def _start_ray(address: str | None, num_cpus: int | None, verbose: bool = False) -> bool:
    """Connect to ``address`` or start a local instance; True when we started it (and must stop it).

    Ray's own start-up and scheduling chatter stays in Ray's log files unless ``verbose``."""
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
    if ray.is_initialized():
        return False
    if address:
        connect(address, verbose)
        return False
    ray.init(num_cpus=num_cpus, resources={DRIVER_RESOURCE: 1000}, include_dashboard=False, log_to_driver=verbose,
             logging_level=level, **warm.init_options())
    return True


def _resume_conflict(sweep: Sweep, out: str, store: ResultsStore, rerun_stopped: bool = False,
                     redecide: bool = False) -> str | None:
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
    recorded = sorted({r.get("metric") for r in store.trials} - {None})
    if recorded and recorded != [sweep.file.metric]:
        old = old.model_copy(update={"metric": recorded[0]})
    return resume_conflict(old, sweep.file, DecisionLog(out), rerun_stopped, redecide)


def default_out(sweep: Sweep) -> str:
    return str(Path("runs") / sweep.name)


def prepare_out(sweep: Sweep, out: str | None, resume: bool, echo: Callable[[str], None] = print,
                rerun_stopped: bool = False, redecide: bool = False) -> tuple[str, ResultsStore, DriverLock]:
    """The sweep directory, its store and its driver lock: never silently overwrite or mix finished results.
    Storage that cannot be used, a live driver, or an edit the directory cannot take stops the sweep here,
    before anything is written."""
    out = out or default_out(sweep)
    check_bucket(out)
    with storage_errors(out):
        if exists(join(out, TRIALS)) and not resume:
            raise UserError(f"{out} already holds results of a sweep; pass --resume to continue it (finished "
                            "trials are skipped, new arms or seeds run) or choose another --out.")
        lock = DriverLock.acquire(out, echo)
        try:
            store = ResultsStore(out)
            problem = store.check_semantics() or _resume_conflict(sweep, out, store, rerun_stopped, redecide)
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
              redecide: tuple[str, ...] = (), selection: Any = None) -> SweepOutcome:
    """Run every trial of a sweep (or of the ``selection``'s arms, ``--arm``) that is not already finished in
    ``out``; return the recorded rows.

    Ctrl-C or SIGTERM stops the running trials at their last checkpoints and raises ``SweepInterrupted`` (no
    decision is taken on the partial round, nothing is published); ``--resume`` continues them."""
    import ray

    from rayclf.sweep.preflight import Preflight

    out, store, lock = prepare_out(sweep, out, resume, echo, rerun_stopped, bool(redecide))
    started = False
    try:
        w = sweep.file.wandb
        tracking = resolve_settings(wandb_mode or w.mode, w.project, w.entity, w.tags, sweep.name, out)
        started = _start_ray(address, num_cpus, verbose)
        lock.set_session(_session_dir() if started else None)
        run = SweepRun(sweep, out, store, DecisionLog(out), run_trials, StopFlag(), echo, rerun_stopped, redecide,
                       live, tracking, driver=lock, selection=selection)
        # after ray.init, which installs a SIGTERM handler of its own (exit 15)
        with stop_on_signals(run.stop, echo):
            unmet = unmet_resources(sweep, ray.cluster_resources())
            if unmet and started:  # a local instance never grows: the sweep would wait forever
                raise UserError(unmet)
            if unmet:
                echo(f"warning: {unmet} Trials wait until an autoscaler adds such nodes.")
            if address:  # a remote cluster: its worker nodes are not this machine
                run.preflight = Preflight(sweep, storage_path(out))
            outcome = execute(run)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the first round started
        raise SweepInterrupted(signal.SIGINT, out) from None
    finally:
        lock.release()
        if started:
            ray.shutdown()
    _track_sweep(outcome, tracking, echo)
    return outcome


def _session_dir() -> str | None:
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return node.get_session_dir_path() if node is not None else None


def _track_sweep(outcome: SweepOutcome, tracking: TrackingSettings, echo: Callable[[str], None]) -> None:
    """The sweep-level W&B run with the finished sweep's table and report figures, and where offline runs
    are and how to upload them."""
    if tracking.mode == "disabled":
        return
    from rayclf.report.publish import publish, render_for_tracking

    try:
        rep = render_for_tracking(outcome.out)
    except Exception as exc:  # a report that cannot be drawn must not cost the finished sweep
        echo(f"warning: the report for W&B could not be rendered ({type(exc).__name__}: {exc}); "
             f"run `rayclf report {outcome.out} --wandb {tracking.mode}` later.")
        return
    publish(outcome.out, rep, settings=tracking)
    if tracking.mode == "offline":
        echo(f"W&B runs were written offline under {tracking.dir}/wandb; upload them with: "
             f"wandb sync {tracking.dir}/wandb/offline-run-*")
