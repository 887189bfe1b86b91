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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from rayclf.sweep.keys import SUMMARY_KEY

PENDING, RUNNING, PAUSED, TERMINATED = "PENDING", "RUNNING", "PAUSED", "TERMINATED"


class FakeTrial:
    def __init__(self, config: dict[str, Any], epoch: int = 0):
        self.config, self.status, self.is_saving = config, PENDING, False
        self.epoch, self.clock = epoch, 0.0
        self.trial_id = config["trial"].trial_id


class FakeTune:
    """Runs ``queue`` and ``scheduler`` (and ``callbacks``, e.g. rayclf's Recorder) over fake trials."""

    def __init__(self, queue: Any, scheduler: Any, value: Callable[[dict[str, Any], int], float], slots: int,
                 callbacks: list[Any] = (), start: dict[str, int] | None = None):
        self.queue, self.scheduler, self.value, self.slots = queue, scheduler, value, slots
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
        duration = 1.0 + 0.37 * (info.seed % 3) + 0.11 * (info.position % 5)
        t.clock = self.now = t.clock + duration
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
            running = [t for t in self.trials if t.status == RUNNING]
            if not running:
                assert self._live() or self.finished, "nothing runs and nothing can start: the sweep is stuck"
                continue
            if kill_after is not None and results >= kill_after:
                return False
            nxt = min(running, key=lambda t: (t.clock + 1.0 + 0.37 * (t.config["trial"].seed % 3),
                                              t.config["trial"].position))
            self._result(nxt)
            results += 1
        raise AssertionError("the fake sweep did not finish")

    def interrupted_histories(self) -> dict[str, list[dict[str, Any]]]:
        """What ``find_checkpoints`` finds after a kill: each unfinished trial's epochs up to its checkpoint."""
        return {t.trial_id: list(self.history.get(t.trial_id, [])) for t in self.trials
                if t.status != TERMINATED and self.history.get(t.trial_id)}
