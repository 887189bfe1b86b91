"""A fake Tune controller for arm-level early stopping: the calls Ray Tune 2.x makes on a ``Searcher`` and a
``TrialScheduler`` (``tune/execution/tune_controller.py``), in its order, on a fixed number of slots, without Ray.

Each step asks the searcher for trials (``suggest`` while fewer than ``slots`` are pending), starts what the
scheduler chooses and the pending trials while slots are free, then delivers one result: the running trial
whose next epoch ends first (seeds train at different speeds). Decisions are carried out as Tune does:
``PAUSE`` checkpoints and frees the slot, ``STOP`` ends the trial (``on_trial_complete``), a trial stopped while
paused gets ``on_trial_remove``. A ``suggest`` that returns None when nothing is running, pending or paused is
an error here: real Tune then polls the searcher every second for ten minutes, deaf to Ctrl-C.
``kill_after`` stops the run after that many results with no callback at all (``kill -9``); what each unfinished
trial could continue from is its last checkpoint (every epoch, as ``train.checkpoint_every: 1``).
``duration`` sets how long each of a trial's epochs takes (seeds slower, faster), ``fail`` the epoch at which a
trial's process dies instead of reporting (Tune's ``on_trial_error``, no retry). ``idle`` counts the steps that
left a slot free while the queue had a seed it could start (or a paused seed could continue there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from rayclf.sweep.keys import SUMMARY_KEY

PENDING, RUNNING, PAUSED, TERMINATED = "PENDING", "RUNNING", "PAUSED", "TERMINATED"


class FakeTrial:
    def __init__(self, config: dict[str, Any], epoch: int = 0):
        self.config, self.status, self.is_saving, self.error_file = config, PENDING, False, None
        self.epoch, self.clock = epoch, 0.0
        self.trial_id = config["trial"].trial_id


class FakeTune:
    """Runs ``queue`` and ``scheduler`` (and ``callbacks``, e.g. rayclf's Recorder) over fake trials."""

    def __init__(self, queue: Any, scheduler: Any, value: Callable[[dict[str, Any], int], float], slots: int,
                 callbacks: list[Any] = (), start: dict[str, int] | None = None,
                 duration: Callable[[Any, int], float] | None = None, fail: Mapping[str, int] | None = None):
        self.queue, self.scheduler, self.value, self.slots = queue, scheduler, value, slots
        self.duration = duration or (lambda info, epoch: 1.0 + 0.37 * (info.seed % 3) + 0.11 * (info.position % 5))
        self.fail = dict(fail or {})
        self.idle = 0
        self.metric = scheduler.board.metric
        self.callbacks, self.start = list(callbacks), start or {}
        self.queue.set_max_concurrency(slots)
        self.trials: list[FakeTrial] = []
        self.finished = False
        self.now = 0.0
        self.pauses: list[tuple[str, int]] = []
        self.staged_in_hook = 0  # batches staged from a trial's completion hook (one per stage boundary)
        self.handouts: list[tuple[str, int]] = []  # (arm, trials holding a slot) as each trial was handed out
        self.checkpoints: dict[str, int] = {}  # trial id -> last checkpointed epoch
        self.history: dict[str, list[dict[str, Any]]] = {}

    def get_trials(self) -> list[FakeTrial]:
        return self.trials

    def _live(self) -> bool:
        return any(t.status in (PENDING, RUNNING, PAUSED) for t in self.trials)

    def stop_trial(self, t: FakeTrial) -> None:
        if t.status in (PENDING, PAUSED):
            self.scheduler.on_trial_remove(self, t)
        elif t.status == RUNNING:
            self.scheduler.on_trial_complete(self, t, {})
        else:
            return
        t.status = TERMINATED
        for cb in self.callbacks:
            cb.on_trial_complete(0, self.trials, t)

    def _ask(self) -> None:
        while not self.finished and sum(t.status == PENDING for t in self.trials) < self.slots:
            config = self.queue.suggest(f"t{len(self.trials)}")
            if config is None:
                assert self._live(), "suggest returned None with nothing running, pending or paused"
                return
            if config == Searcher.FINISHED:
                self.finished = True
                return
            tid = config["trial"].trial_id
            busy = sum(t.status in (PENDING, RUNNING) for t in self.trials)
            self.handouts.append((config["trial"].arm_id, busy))
            trial = FakeTrial(config, self.start.get(tid, 0))
            self.trials.append(trial)
            self.scheduler.on_trial_add(self, trial)

    def _launch(self, t: FakeTrial) -> None:
        if sum(x.status == RUNNING for x in self.trials) >= self.slots:
            return
        t.status, t.clock = RUNNING, self.now
        for cb in self.callbacks:
            getattr(cb, "on_trial_start", lambda *a, **k: None)(0, self.trials, t)

    # What rayclf's session calls on Ray Tune's controller from the scheduler's on_trial_complete (private in
    # Tune): bring the strategy's next batch in and stage it before the ended trial's process is released.
    def _maybe_update_trial_queue(self) -> None:
        self.staged_in_hook += 1
        self._ask()

    def _maybe_add_actors(self) -> None:
        self._start()

    def _start(self) -> None:
        chosen = self.scheduler.choose_trial_to_run(self)
        if chosen is not None:
            if chosen.status == PAUSED:
                chosen.status = PENDING  # Tune stages the chosen trial: PENDING until its actor runs
            self._launch(chosen)
        for t in self.trials:
            if t.status == PENDING:
                self._launch(t)

    def _result(self, t: FakeTrial) -> None:
        info = t.config["trial"]
        t.epoch += 1
        t.clock = self.now = t.clock + self.duration(info, t.epoch)
        if self.fail.get(t.trial_id) == t.epoch:  # the process died during this epoch: no result
            t.status = "ERROR_RAISED"  # (not Tune's ERROR, which means it is retried)
            self.scheduler.on_trial_error(self, t)
            t.status = TERMINATED
            for cb in self.callbacks:
                getattr(cb, "on_trial_error", lambda *a: None)(0, self.trials, t)
            return
        result = {"epoch": t.epoch, self.metric: self.value(info, t.epoch)}
        final = t.epoch >= info.epochs
        if final:
            result[SUMMARY_KEY] = '{"status": "completed"}'
        self.history.setdefault(t.trial_id, []).append({"epoch": t.epoch, self.metric: result[self.metric]})
        self.checkpoints[t.trial_id] = t.epoch
        for cb in self.callbacks:
            cb.on_trial_result(0, self.trials, t, result)
        decision = self.scheduler.on_trial_result(self, t, result)
        if decision == TrialScheduler.PAUSE:
            assert t.epoch in info.rungs, "a trial pauses only at a rung (where it forced a checkpoint)"
            self.pauses.append((t.trial_id, t.epoch))
            t.status = PAUSED
        elif decision == TrialScheduler.STOP or final:
            self.scheduler.on_trial_complete(self, t, result)
            t.status = TERMINATED
            for cb in self.callbacks:
                cb.on_trial_complete(0, self.trials, t)

    def run(self, kill_after: int | None = None, max_steps: int = 10_000) -> bool:
        """Run to the end (True) or until ``kill_after`` results were delivered (False)."""
        results = 0
        for _ in range(max_steps):
            if self.finished and not self._live():
                return True
            self._ask()
            self._start()
            self._count_idle()
            running = [t for t in self.trials if t.status == RUNNING]
            if not running:
                assert self._live() or self.finished, "nothing runs and nothing can start: the sweep is stuck"
                continue
            if kill_after is not None and results >= kill_after:
                return False
            nxt = min(running, key=lambda t: (t.clock + self.duration(t.config["trial"], t.epoch + 1),
                                              t.config["trial"].position))
            self._result(nxt)
            results += 1
        raise AssertionError("the fake sweep did not finish")

    def _count_idle(self) -> None:
        """A slot free after this step while the queue had a seed that could have started in it (a slot kept
        for a paused seed whose arm was judged is not free: Tune starts one chosen trial per step)."""
        board = self.scheduler.board
        running = sum(t.status == RUNNING for t in self.trials)
        ready = sum(t.status == PAUSED and board.ready(t.trial_id) for t in self.trials)
        first = self.queue._first() if hasattr(self.queue, "_first") else None
        startable = first is not None and self.queue.todo[first].arm_id not in board.stopped
        if running + ready < self.slots and startable:
            self.idle += 1

    def interrupted_histories(self) -> dict[str, list[dict[str, Any]]]:
        """What ``find_checkpoints`` finds after a kill: each unfinished trial's epochs up to its checkpoint."""
        return {t.trial_id: list(self.history.get(t.trial_id, [])) for t in self.trials
                if t.status != TERMINATED and self.history.get(t.trial_id)}
