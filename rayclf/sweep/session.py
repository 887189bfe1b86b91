"""One Tune run per sweep: every batch a strategy releases is fed to a single ``Tuner.fit()``.

The strategy (stages, racing rounds, bayes batches, arm subsets, a plain grid) runs in its own thread in lockstep
with Tune's loop (``rayclf.sweep.lockstep``); its ``SweepRun.execute_trials`` is :meth:`TuneSession.run_batch`,
which prepares the batch (datasets on every node, pre-flight or packing check, checkpoints of an earlier run,
store columns) and hands it to ``TrialQueue``, the run's Tune ``Searcher``. So Tune sets up once, trial
processes (their torch/timm imports and decoded datasets) stay warm from the first trial to the last, and the
arm-level board of asha / median sees every batch of a search.

Single-worker trials train in the trial's own process (``worker.train_trial``), reused from trial to trial;
Tune retries a failed one from its last checkpoint. Only data-parallel trials (``num_workers > 1``) start a Ray
Train ``TorchTrainer`` worker group (``train_driver``), whose placement group a callback releases if Ray leaves
it behind after an early stop.
"""

from __future__ import annotations

import os
import time
from typing import Any

from rayclf.config import UserError
from rayclf.storage import join
from rayclf.sweep.kernel import SweepRun
from rayclf.sweep.lockstep import Lockstep
from rayclf.sweep.packing import check_packing
from rayclf.sweep.plan import concurrency, driver_resources, trial_resources
from rayclf.sweep.resume import find_checkpoints
from rayclf.sweep.rows import trial_row
from rayclf.sweep.spec import Sweep, Trial
from rayclf.sweep.strategies import create_arm_rule
from rayclf.sweep.trialspec import TrialSpec
from rayclf.tracking import TrackingSettings


def train_driver(config: dict[str, Any]) -> None:
    """The Tune function trainable of a data-parallel trial: one Ray Train V2 TorchTrainer run."""
    from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from rayclf.sweep.worker import train_worker

    trial: TrialSpec = config["trial"]
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"trial": trial},
        resume_from_checkpoint=Checkpoint(trial.resume_from) if trial.resume_from else None,
        scaling_config=ScalingConfig(num_workers=trial.num_workers, use_gpu=trial.gpus > 0,
                                     resources_per_worker={"CPU": trial.cpus, "GPU": trial.gpus}),
        run_config=RunConfig(name=f"trial-{trial.trial_id}", storage_path=trial.storage,
                             callbacks=[TuneReportCallback()],
                             failure_config=FailureConfig(max_failures=trial.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    trainer.fit()


def storage_path(out: str) -> str:
    return join(out, "_ray") if "://" in out else os.path.abspath(os.path.join(out, "_ray"))


def _prepare_everywhere(trials: list[Trial], prepared: set[Any]) -> None:
    """Download / decode each dataset (and fetch pretrained weights) once per node before its first trial;
    ``prepared`` keeps what this run already prepared, so a later batch only prepares what is new."""
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
    todo = {k: v for k, v in todo.items() if k not in prepared}
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
    prepared |= set(todo)


def _describe(sweep: Sweep, t: Trial, index: int, storage: str, tracking: TrackingSettings | None, res: Any,
              resume_from: str | None) -> TrialSpec:
    """What a trial process needs, carried through Tune's trial config (``res``: ``plan.trial_resources``)."""
    return TrialSpec.of(sweep, t, index, storage=storage, max_failures=sweep.file.max_failures,
                        tracking=tracking.to_dict() if tracking else {}, resume_from=resume_from, cpus=res.cpus,
                        gpus=res.gpus, num_workers=res.num_workers)


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


def _arm_board(run: SweepRun, max_epochs: int) -> Any:
    """The run's board: the arm rule's rungs (asha / median decide there on all of an arm's seeds; other rules
    have none, and the board only does the run's slot accounting). It takes no decision once a stop was asked
    for."""
    from rayclf.sweep.schedulers import ArmBoard

    rule = create_arm_rule(run.sweep).rung_rule(max_epochs)
    board = ArmBoard(rule, run.mode, run.sweep.file.metric, log=run.log)
    board.halted = run.stop.is_set
    return board


class TuneSession:
    """One ``Tuner.fit()`` for the whole of one ``rayclf sweep``; see the module docstring."""

    def __init__(self, run: SweepRun):
        from rayclf.sweep.schedulers import TrialQueue

        self.run = run
        self.storage = storage_path(run.out)
        self.steps = Lockstep(run.stop.is_set)
        self.queue = TrialQueue([], None, self._skip, feed=self.steps.pop)
        self.handed: set[str] = set()  # trial ids handed to Tune in this run: never handed twice
        self.prepared: set[Any] = set()
        self.recorder: Any = None
        self.view: Any = None
        self.slots = 0
        self.longest = 0  # the most epochs of any trial released so far: the rungs reach that far

    # ---------------------------------------------------------------------------- strategy thread
    def run_batch(self, run: SweepRun, trials: list[Trial], order: list[Trial]) -> int:
        """``SweepRun.execute_trials``: hand the trials not yet finished to Tune and wait until each is
        recorded; return how many were skipped as already done. ``order`` (a superset of ``trials``, e.g.
        every trial of a racing or bayes search) fixes their positions in the table."""
        done = run.store.finished_ids(run.rerun_stopped) | self.handed
        todo = [t for t in trials if t.trial_id not in done]
        if not todo:
            return len(trials)
        self._check(todo)
        found = find_checkpoints(self.storage, {t.trial_id for t in todo})
        pos = {t.trial_id: i for i, t in enumerate(order)}
        res = trial_resources(run.sweep)
        descriptions = [_describe(run.sweep, t, pos[t.trial_id], self.storage, run.tracking, res,
                                  found[t.trial_id].uri if t.trial_id in found else None) for t in todo]
        metric = run.sweep.file.metric
        run.store.prepare([trial_row(d, "completed", "", None, [], metric, run.mode) for d in descriptions])
        histories = {tid: f.history for tid, f in found.items()}
        self._plan(trials, todo, histories)
        self.handed |= {t.trial_id for t in todo}
        self.steps.submit(descriptions, {t.trial_id for t in todo})
        return len(trials) - len(todo)

    def _check(self, todo: list[Trial]) -> None:
        """Datasets on every node, then the trial shapes: on a remote cluster on a worker node (pre-flight),
        locally by packing arithmetic."""
        _prepare_everywhere(todo, self.prepared)
        res = trial_resources(self.run.sweep)
        if self.run.preflight is not None:
            self.run.preflight.check(todo)
        else:
            check_packing(todo, res.gpus if res.num_workers == 1 else 1.0)

    def _slots(self) -> int:
        """Trials at once (0: no limit). On a remote cluster the autoscaler grows it while trials wait: what
        fits now is no limit (the file's max_concurrent still is); a local instance is all there will be."""
        import ray

        run = self.run
        if run.preflight is not None and not run.sweep.file.resources.max_concurrent:
            return 0
        return concurrency(run.sweep, ray.cluster_resources())

    def _plan(self, trials: list[Trial], todo: list[Trial], histories: dict[str, list[dict[str, Any]]]) -> None:
        """The board, the recorder and the live view learn the batch (created with the first one)."""
        from rayclf.sweep.callbacks import Recorder
        from rayclf.sweep.live import LiveView
        from rayclf.sweep.schedulers import replay

        run = self.run
        longest = max(t.config.total_epochs() for t in todo)
        if self.queue.board is None:
            self.slots = self._slots()
            self.queue.board = _arm_board(run, longest)
            self.queue.board.slots = self.slots
            self.longest = longest
            self.recorder = Recorder(run.store, run.sweep.file.metric, run.mode, storage=run.out,
                                     board=self.queue.board, stop=run.stop, on_recorded=self.steps.done)
            self.view = LiveView(0, run.sweep.file.metric, run.mode, terminal=None if run.live else False,
                                 slots=self.slots or len(todo), stream=None if run.live else _Discard())
        board = self.queue.board
        if longest > self.longest:  # a later stage trains longer: its rungs reach further (earlier ones stay)
            board.rule = create_arm_rule(run.sweep).rung_rule(longest)
        self.longest = max(self.longest, longest)
        if board.rule.rungs:
            replay(board, trials, run.store, run.log, histories, run.rerun_stopped)
        else:
            for t in trials:
                board.add_arm(t.arm_id, t.arm.label, [(t.trial_id, t.seed)], t.arm.stage)
        self.recorder.add_prior(histories)
        self.view.planned(len(trials))
        reused = len(run.last_reused & {t.trial_id for t in trials})  # recorded from the trial cache (kernel)
        if reused:
            self.view.reused(reused, run.cache.where)
        self.view.skipped(len(trials) - len(todo) - reused)

    # ---------------------------------------------------------------------------- Tune's thread
    def _skip(self, d: TrialSpec, rung: int | None, why: str) -> None:
        """A queued seed of an arm stopped before it started: recorded, never trained."""
        self.recorder.record_unstarted(d, "stopped_early", why, rung)

    def _complete(self, controller: Any, trial: Any) -> None:
        """A trial ended by itself (Tune's scheduler hook, before Tune decides whether to keep its process):
        recorded now, so a batch's last trial lets the strategy release the next batch here, and Tune stages it
        at once; a process Tune sees no staged trial for is stopped (it keeps at most one idle), and a new one
        costs its imports again. Tune has no public call for this; without those methods the next batch waits
        for Tune's next step, as it would anyway."""
        self.recorder.ended(trial)
        update = getattr(controller, "_maybe_update_trial_queue", None)
        add = getattr(controller, "_maybe_add_actors", None)
        if self.steps.queued and callable(update) and callable(add):
            update()
            add()

    def execute(self, strategy: Any) -> Any:
        """Run ``strategy`` (the kernel's ``execute``) with one Tune run fed by its batches; its result."""
        self.steps.start(strategy)
        try:
            if not self.steps.idle:
                self._fit()
        finally:  # a second stop signal too: the strategy thread ends before the driver goes on
            if not self.steps.close():
                self.run.echo("warning: the sweep's strategy thread did not end within 30 s of Tune's run")
            if self.view is not None:
                self.view.close()
        return self.steps.outcome()

    def _fit(self) -> None:
        import ray

        from rayclf.sweep.callbacks import LiveCallback, PlacementGroupJanitor, SweepStopper
        from rayclf.sweep.schedulers import ArmScheduler

        run = self.run
        res = trial_resources(run.sweep)
        trainable, in_process = _trainable(run.sweep, ray.cluster_resources())
        callbacks: list[Any] = [self.recorder]
        if not in_process:
            callbacks.append(PlacementGroupJanitor(self.recorder, {"CPU": res.cpus, "GPU": res.gpus},
                                                   res.num_workers))
        callbacks.append(LiveCallback(self.view, self.recorder, run.driver))
        # Tune keeps one trial pending for a searcher of its own (the queue counts slots itself): an autoscaler
        # would see the demand of one trial at a time. As many as may run, or Tune's autoscaling default.
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(self.slots or 200)
        _tuner(run.sweep, trainable, in_process, self.queue, ArmScheduler(self.queue.board, self._complete), self.slots,
               self.storage, callbacks, SweepStopper(run.stop)).fit()


def _tuner(sweep: Sweep, trainable: Any, in_process: bool, search_alg: Any, scheduler: Any, slots: int,
           storage: str, callbacks: list[Any], stopper: Any) -> Any:
    """Tune over the trials the strategy releases (``num_samples=-1``: the searcher says when it is done):
    names and folders by trial id, one checkpoint kept per trial, retries by Tune for in-process trials (Ray
    Train retries a worker group itself). The queue counts slots itself (``set_max_concurrency``): Tune's
    ``ConcurrencyLimiter`` would count a paused seed as running and deadlock when seeds outnumber slots."""
    from ray import tune

    return tune.Tuner(
        trainable,
        param_space={},
        tune_config=tune.TuneConfig(metric=sweep.file.metric, mode=sweep.file.mode, scheduler=scheduler,
                                    search_alg=search_alg, num_samples=-1,
                                    max_concurrent_trials=slots or None, reuse_actors=in_process,
                                    trial_name_creator=lambda tr: f"{tr.config['trial'].arm}-s"
                                                                  f"{tr.config['trial'].seed}"[:80],
                                    trial_dirname_creator=lambda tr: f"trial-{tr.config['trial'].trial_id}"),
        run_config=tune.RunConfig(name=f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}", storage_path=storage,
                                  callbacks=callbacks, verbose=0, stop=stopper,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  failure_config=tune.FailureConfig(
                                      max_failures=sweep.file.max_failures if in_process else 0)),
    )

