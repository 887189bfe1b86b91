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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayclf.aggregate import arm_table, best_arm, counts_text, format_table, status_counts, value_key
from rayclf.config import UserError
from rayclf.results import TRIALS, ResultsStore, exists, join, write_text
from rayclf.sweep.connect import connect
from rayclf.sweep.packing import check_packing
from rayclf.sweep.plan import DRIVER_RESOURCE, concurrency, driver_resources, trial_resources, unmet_resources
from rayclf.sweep.resume import check_previous_driver, claim_driver, find_checkpoints, release_driver
from rayclf.sweep.select import Selection
from rayclf.sweep.spec import Arm, Sweep, Trial, dump_sweep
from rayclf.tracking import TrackingSettings, resolve_settings

SWEEP_FILE = "sweep.yaml"
# the pre-flight of the sweep being run on a remote cluster (run_sweep sets it; None on a local instance)
_preflight: Any = None


@dataclass
class SweepOutcome:
    sweep: Sweep
    out: str
    rows: list[dict[str, Any]]
    skipped: int
    winner: Arm | None = None

    def summary_text(self) -> str:
        stats = arm_table(self.rows, self.sweep.file.mode or "max", value_key(self.sweep.file.rank_by))
        lines = [format_table(stats, self.sweep.file.metric), ""]
        lines.append(f"{len(self.rows)} trials recorded ({counts_text(status_counts(self.rows))})"
                     f"; {self.skipped} already done and skipped")
        if self.winner is not None:
            lines.append(f"staged winner: {self.winner.label} {self.winner.overrides}")
        lines.append(f"results: {join(self.out, TRIALS)}")
        return "\n".join(lines)


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


def _arm_board(sweep: Sweep, max_epochs: int) -> Any:
    """The shared state of arm-level early stopping (asha / median over an arm's seeds), or None."""
    from rayclf.sweep.schedulers import ArmBoard, rung_rule

    s = sweep.file.scheduler
    if s.name not in ("asha", "median"):
        return None
    rule = rung_rule(s.name, s.grace_period, s.reduction_factor, s.max_epochs or max_epochs, s.min_arms)
    return ArmBoard(rule, sweep.file.mode or "max", sweep.file.metric)


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


def _identity(sweep: Sweep, t: Trial, index: int) -> dict[str, Any]:
    """A trial's row identity; ``index`` is its place in the sweep's trial order (within its stage)."""
    return {"trial_id": t.trial_id, "sweep": sweep.name, "arm": t.arm.label, "seed": t.seed, "stage": t.arm.stage,
            "position": (t.arm.stage or 0) * 100_000 + index, "overrides": t.arm.overrides,
            "config": t.config.to_dict(), "epochs": t.config.total_epochs()}


def _describe(sweep: Sweep, t: Trial, index: int, storage: str, tracking: TrackingSettings,
              resume_from: str | None) -> dict[str, Any]:
    """What a trial process needs, carried through Tune's param space."""
    res = trial_resources(sweep)
    return {**_identity(sweep, t, index), "storage": storage, "max_failures": sweep.file.max_failures,
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
           n: int, slots: int, storage: str, callbacks: list[Any]) -> Any:
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
                                  callbacks=callbacks, verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  failure_config=tune.FailureConfig(
                                      max_failures=sweep.file.max_failures if in_process else 0)),
    )


def run_trials(sweep: Sweep, trials: list[Trial], store: ResultsStore, out: str, live: bool,
               tracking: TrackingSettings, rerun_stopped: bool = False,
               order: list[Trial] | None = None) -> int:
    """Run the trials not yet finished; return how many were skipped as already done. ``order`` (a superset of
    ``trials``, e.g. every trial of a racing or bayes search) fixes their positions in the results table."""
    import ray

    from rayclf.sweep.callbacks import LiveCallback, PlacementGroupJanitor, Recorder, trial_row
    from rayclf.sweep.live import LiveView

    done = store.finished_ids(rerun_stopped)
    todo = [(i, t) for i, t in enumerate(trials) if t.trial_id not in done]
    if not todo:
        return len(trials)
    _prepare_everywhere([t for _, t in todo])
    storage = storage_path(out)
    res = trial_resources(sweep)
    if _preflight is not None:  # remote cluster: checks and calibrates on a worker node, before any trial
        _preflight.check([t for _, t in todo])
    else:
        check_packing([t for _, t in todo], res.gpus if res.num_workers == 1 else 1.0)
    cluster = ray.cluster_resources()
    found = find_checkpoints(storage, {t.trial_id for _, t in todo})
    pos = {t.trial_id: i for i, t in enumerate(order or trials)}
    descriptions = [_describe(sweep, t, pos[t.trial_id], storage, tracking,
                              found[t.trial_id].uri if t.trial_id in found else None) for _, t in todo]
    metric, mode = sweep.file.metric, sweep.file.mode or "max"
    store.prepare([trial_row(d, "completed", "", None, [], metric, mode) for d in descriptions])
    max_epochs = max(t.config.total_epochs() for _, t in todo)
    board = _arm_board(sweep, max_epochs)
    recorder = Recorder(store, metric, mode, prior={tid: f.history for tid, f in found.items()},
                        storage_scheme=out.split("://", 1)[0] if "://" in out else "", board=board)
    scheduler, search_alg, space = _search(board, descriptions, recorder)
    trainable, in_process = _trainable(sweep, cluster)
    janitor = PlacementGroupJanitor(recorder, {"CPU": res.cpus, "GPU": res.gpus}, res.num_workers)
    callbacks: list[Any] = [recorder] if in_process else [recorder, janitor]
    # on a remote cluster the autoscaler grows it while trials wait: what fits now is no limit (the file's
    # max_concurrent still is); on a local instance it is all there will ever be
    grows = _preflight is not None and not sweep.file.resources.max_concurrent
    slots = len(todo) if grows else min(concurrency(sweep, cluster), len(todo))
    view = LiveView(len(trials), metric, mode, terminal=None if live else False, slots=slots,
                    stream=None if live else _Discard())
    view.skipped(len(trials) - len(todo))
    callbacks.append(LiveCallback(view, recorder))
    tuner = _tuner(sweep, trainable, in_process, space, scheduler, search_alg, len(descriptions), slots, storage,
                   callbacks)
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
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's result grid looks for the per-trial result files rayclf does not write: say nothing about it
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    _keep_credentials_out_of_ray()
    if ray.is_initialized():
        return False
    if address:
        connect(address, verbose)
        return False
    ray.init(num_cpus=num_cpus, resources={DRIVER_RESOURCE: 1000}, include_dashboard=False, log_to_driver=verbose,
             logging_level=level)
    return True


def prepare_out(sweep: Sweep, out: str | None, resume: bool) -> tuple[str, ResultsStore]:
    """The sweep directory and its store: never silently overwrite or mix finished results."""
    out = out or str(Path("runs") / sweep.name)
    if exists(join(out, TRIALS)) and not resume:
        raise UserError(f"{out} already holds results of a sweep; pass --resume to continue it (finished trials "
                        "are skipped, new arms or seeds run) or choose another --out.")
    store = ResultsStore(out)
    problem = store.check_semantics()
    if problem:
        raise UserError(problem)
    write_text(join(out, SWEEP_FILE), dump_sweep(sweep))
    return out, store


def record_unstarted(sweep: Sweep, trials: list[Trial], order: list[Trial], store: ResultsStore, status: str,
                     reason: str) -> None:
    """Rows for trials that will never train (racing eliminated their arm): status, reason, no metrics."""
    from rayclf.sweep.callbacks import trial_row

    pos = {t.trial_id: i for i, t in enumerate(order)}
    done = store.finished_ids()
    metric, mode = sweep.file.metric, sweep.file.mode or "max"
    rows = [trial_row(_identity(sweep, t, pos[t.trial_id]), status, reason, None, [], metric, mode)
            for t in trials if t.trial_id not in done]
    if rows:
        store.prepare(rows)
    for row in rows:
        store.add(row, [])


def run_arms(sweep: Sweep, arms: list[Arm], store: ResultsStore, out: str, live: bool, echo: Callable[[str], None],
             tracking: TrackingSettings, rerun_stopped: bool = False, all_arms: list[Arm] | None = None) -> int:
    """Run a set of arms (all seeds) under the sweep's scheduler: racing gives seeds in rounds, everything
    else is one Tune run (asha / median decide per arm inside it). Returns trials skipped as already done.
    ``all_arms`` (a superset, in order) fixes table positions when arms come in batches (bayes)."""
    order = sweep.trials(all_arms or arms)

    def run(trials: list[Trial]) -> int:
        return run_trials(sweep, trials, store, out, live, tracking, rerun_stopped, order=order)

    if sweep.file.scheduler.name != "racing":
        return run(sweep.trials(arms))
    from rayclf.sweep.racing import run_racing

    def record(trials: list[Trial], reason: str) -> None:
        record_unstarted(sweep, trials, order, store, "eliminated", reason)

    return run_racing(sweep, arms, run, record, lambda: store.trials, echo)


def _bayes_stage(sweep: Sweep, i: int, carried: dict[str, Any], store: ResultsStore, out: str, live: bool,
                 echo: Callable[[str], None], tracking: TrackingSettings, rerun_stopped: bool) -> tuple[int, list[Arm]]:
    """A stage that searches with bayes around the carried winner; its proposals become the stage's arms."""
    from rayclf.sweep.bayes import run_bayes

    view = sweep.bayes_stage(i, carried)

    def run(batch: list[Arm], seen: list[Arm]) -> int:
        return run_arms(sweep, sweep.place(batch, i, carried), store, out, live, echo, tracking, rerun_stopped,
                        sweep.place(seen, i, carried))

    skipped, proposed = run_bayes(view, run, lambda: store.trials, echo)
    return skipped, sweep.place(proposed, i, carried)


def run_staged(sweep: Sweep, store: ResultsStore, out: str, live: bool, echo: Callable[[str], None],
               tracking: TrackingSettings, rerun_stopped: bool = False) -> tuple[int, Arm]:
    """Greedy staged tuning: each stage's winner (best mean over seeds) is the next stage's baseline."""
    carried: dict[str, Any] = {}
    skipped = 0
    winner = Arm("baseline", {})
    for i in range(sweep.stage_count()):
        if sweep.file.search.stages[i].bayes is not None:  # type: ignore[index]
            ran, arms = _bayes_stage(sweep, i, carried, store, out, live, echo, tracking, rerun_stopped)
        else:
            arms = sweep.arms(carried, stage=i)
            ran = run_arms(sweep, arms, store, out, live, echo, tracking, rerun_stopped)
        skipped += ran
        trials = sweep.trials(arms)
        # a stage's arm may be a config an earlier stage already trained (same content address): its stored
        # row keeps the first label, so rank this stage's arms by their own labels, mapped through trial ids
        label = {t.trial_id: t.arm.label for t in trials}
        stage_rows = [{**r, "arm": label[r["trial_id"]]} for r in store.trials if r["trial_id"] in label]
        stats = arm_table(stage_rows, sweep.file.mode or "max", value_key(sweep.file.rank_by))
        best = best_arm(stats, sweep.file.mode or "max")
        if best is None:
            raise UserError(f"stage {i + 1} of sweep '{sweep.name}' produced no completed trial; see trials.parquet.")
        winner = next(a for a in arms if a.label == best.arm)
        carried = sweep.carried_after(i, winner.overrides)
        echo(f"stage {i + 1} winner: {winner.label} ({sweep.file.metric} {best.mean:.4f})")
    if sweep.file.search.final:
        final = Arm("final", {**carried, **sweep.file.search.final}, sweep.stage_count())
        skipped += run_trials(sweep, sweep.trials([final]), store, out, live, tracking, rerun_stopped)
    return skipped, winner


def run_sweep(sweep: Sweep, out: str | None = None, address: str | None = None, resume: bool = False,
              num_cpus: int | None = None, live: bool = True, echo: Callable[[str], None] = print,
              wandb_mode: str | None = None, rerun_stopped: bool = False, verbose: bool = False,
              selection: Selection | None = None) -> SweepOutcome:
    """Run every trial of a sweep (or of the ``selection``'s arms) that is not already finished in ``out``;
    return the recorded rows."""
    import ray

    from rayclf.sweep.preflight import Preflight

    global _preflight
    out, store = prepare_out(sweep, out, resume)
    w = sweep.file.wandb
    tracking = resolve_settings(wandb_mode or w.mode, w.project, w.entity, w.tags, sweep.name, out)
    check_previous_driver(out, echo)
    started = _start_ray(address, num_cpus, verbose)
    claim_driver(out, _session_dir() if started else None)
    try:
        unmet = unmet_resources(sweep, ray.cluster_resources())
        if unmet and started:  # a local instance never grows: the sweep would wait forever
            raise UserError(unmet)
        if unmet:
            echo(f"warning: {unmet} Trials wait until an autoscaler adds such nodes.")
        if address:  # a remote cluster: its worker nodes are not this machine
            _preflight = Preflight(sweep, storage_path(out))
        winner = None
        if selection is not None:  # a subset of arms, FIFO only (select.check_subset): nothing is decided
            skipped = sum(run_arms(sweep, arms, store, out, live, echo, tracking, rerun_stopped, stage_arms)
                          for arms, stage_arms in selection.groups())
        elif sweep.file.search.kind == "stages":
            skipped, winner = run_staged(sweep, store, out, live, echo, tracking, rerun_stopped)
        elif sweep.file.search.kind == "bayes":
            from rayclf.sweep.bayes import run_bayes

            skipped, _ = run_bayes(sweep, lambda arms, seen: run_arms(sweep, arms, store, out, live, echo, tracking,
                                                                      rerun_stopped, seen), lambda: store.trials, echo)
        else:
            skipped = run_arms(sweep, sweep.arms(), store, out, live, echo, tracking, rerun_stopped)
    finally:
        _preflight = None
        release_driver(out)
        if started:
            ray.shutdown()
    outcome = SweepOutcome(sweep, out, store.trials, skipped, winner)
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
