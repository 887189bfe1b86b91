"""Early stopping that decides per arm: ASHA and the median rule over the mean of *all* of an arm's seeds.

rayclf's results are per arm (mean over seeds), so its early stopping is too. Ray Tune's own ASHA and median
rule judge each trial alone: an arm's three seeds could be judged separately at a rung, and every stopped
trial drops out of the per-arm tables. Here three pieces share one ``ArmBoard`` in the sweep driver:

- ``TrialQueue`` (a Tune ``Searcher``) hands Tune rayclf's trial list in order whenever a slot is free (so
  an arm's seeds go out together when the slots allow, and a slot never idles while a seed could start), and
  never hands out a seed of an arm that is already stopped: that seed is recorded at once (status
  ``stopped_early``), so every trial still gets exactly one row. A seed an earlier run left at a rung its arm
  has not judged yet is held back until the arm is judged there.
- ``ArmScheduler`` (a Tune ``FIFOScheduler``) records each seed's best-so-far metric. An arm's decision at a
  rung waits until every *planned* seed has reached it (or ended before it): every decision sees the planned
  number of seeds. Then it takes the arm's mean and applies the rule (ASHA: below the top 1/reduction_factor
  of the arms recorded at that rung so far; median: worse than the median of the other arms). A seed that
  reaches a rung before its siblings *pauses* there (Tune's ``PAUSE``, at the rung's checkpoint, which the
  trial forces; its slot goes to other work) until its arm is decided, whatever the ratio of seeds to slots;
  then it continues or stops with its siblings. So an arm's seeds all stop at one rung or all go on.
- ``Recorder`` asks the board why a trial stopped and at which rung, so the row says so and carries the
  value at that rung.

Every verdict, continue as well as stop, is written to the decision log (``rayclf.sweep.decisions``: kind
``continue`` keyed ``arm/rung``, kind ``stop`` keyed by arm id) before it acts; ``--resume`` rebuilds the
board from that log first and from the stored epochs of every seed (``replay``), so a rung already judged is
never judged again. Nothing is decided once the run is halting (``ArmBoard.halted``: Ctrl-C).
Racing over seeds is a loop of rounds in ``rayclf.sweep.racing``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from ray.tune.experiment import Trial as TuneTrial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from rayclf.sweep.decisions import CONTINUE, STOP, Decision
from rayclf.sweep.keys import SUMMARY_KEY
from rayclf.sweep.trialspec import TrialSpec


@dataclass
class RungRule:
    """Where per-arm decisions are taken (epochs) and the cutoff there. This base takes none (an arm rule that
    stops nothing inside a Tune run: the board then only counts slots); each rung-stopping arm rule
    (``rayclf.sweep.strategies.arm_rules``) brings its own subclass."""

    name: str
    rungs: list[int]
    reduction_factor: float = 2.0
    min_arms: int = 2

    def cutoff(self, others: list[float]) -> float | None:
        """The score (higher is better) an arm must reach at a rung, given the other arms there; None: no rule
        applies (yet)."""
        return None

    def describe(self, n_others: int) -> str:
        return "no cutoff"


class QuantileRungs(RungRule):
    """ASHA: rungs at grace·rf^k below the last epoch; an arm below the top 1/rf of the others there stops."""

    @classmethod
    def at(cls, name: str, grace: int, reduction_factor: float, max_epochs: int, min_arms: int = 2) -> RungRule:
        rungs, r = [], float(grace)
        while r < max_epochs:
            rungs.append(round(r))
            r *= reduction_factor
        return cls(name, sorted(set(rungs)), reduction_factor, min_arms)

    def cutoff(self, others: list[float]) -> float | None:
        return float(np.percentile(others, (1 - 1 / self.reduction_factor) * 100)) if others else None

    def describe(self, n_others: int) -> str:
        return f"the top 1/{self.reduction_factor:g} cutoff"


class MedianRungs(RungRule):
    """The median rule: every epoch from grace on; an arm worse than the median of ``min_arms`` or more others
    stops."""

    @classmethod
    def at(cls, name: str, grace: int, reduction_factor: float, max_epochs: int, min_arms: int = 2) -> RungRule:
        return cls(name, list(range(grace, max_epochs)), reduction_factor, min_arms)

    def cutoff(self, others: list[float]) -> float | None:
        return float(np.median(others)) if len(others) >= self.min_arms else None

    def describe(self, n_others: int) -> str:
        return f"the median of {n_others} other arms"


def rung_rule(name: str, grace: int, reduction_factor: float, max_epochs: int, min_arms: int = 2) -> RungRule:
    """The rung rule of the registered arm rule ``name`` (no rung for one that stops nothing in a run)."""
    from rayclf.sweep.strategies.registry import arm_rule_class

    return arm_rule_class(name).rungs(grace, reduction_factor, max_epochs, min_arms)


def _never() -> bool:
    return False


@dataclass
class ArmBoard:
    """What the queue, the scheduler and the recorder share about arms (keyed by arm id, never by label):
    planned seeds, rung values, paused seeds, verdicts. ``log`` (a ``DecisionLog``) gets every verdict before
    it acts; ``slots`` is how many trials run at once (0: no limit); ``halted`` says the run is being stopped
    (Ctrl-C), when no decision may be taken on what happens to be known."""

    rule: RungRule
    mode: str
    metric: str
    log: Any = None
    slots: int = 0
    halted: Callable[[], bool] = _never
    plan: dict[str, list[str]] = field(default_factory=dict)  # arm -> planned trial ids (every seed)
    arm_of: dict[str, str] = field(default_factory=dict)  # trial id -> arm
    seed_of: dict[str, int] = field(default_factory=dict)
    names: dict[str, tuple[str, int | None]] = field(default_factory=dict)  # arm -> (label, stage) for the log
    stages: dict[str, set[int | None]] = field(default_factory=dict)  # arm -> the stages it is an arm of
    epochs: dict[str, int] = field(default_factory=dict)  # arm -> its trials' epochs (no rung there or later)
    started: set[str] = field(default_factory=set)  # trial ids handed to Tune in this run
    ended: set[str] = field(default_factory=set)
    paused: dict[str, int] = field(default_factory=dict)  # trial id -> the rung it waits at
    best: dict[str, dict[int, float]] = field(default_factory=dict)  # trial id -> epoch -> best so far
    last: dict[str, int] = field(default_factory=dict)  # trial id -> the latest epoch it reported
    decided: dict[str, set[int]] = field(default_factory=dict)  # arm -> rungs already judged
    recorded: dict[int, dict[str, float]] = field(default_factory=dict)  # rung -> arm -> score
    stopped: dict[str, tuple[int, str]] = field(default_factory=dict)  # arm -> (rung, why)

    def add_arm(self, arm: str, label: str, seeds: Iterable[tuple[str, int]], stage: int | None = None,
                epochs: int | None = None) -> None:
        """Plan an arm: its (trial id, seed) pairs, finished ones included (they count in every decision), and
        how many epochs its trials train (a rung at or after that is no rung of this arm: it has finished)."""
        self.names.setdefault(arm, (label, stage))
        if epochs is not None:
            self.epochs.setdefault(arm, epochs)
        self.stages.setdefault(arm, set()).add(stage)  # a carried winner is also an arm of the next stage
        for tid, seed in seeds:
            if tid not in self.arm_of:
                self.plan.setdefault(arm, []).append(tid)
                self.arm_of[tid], self.seed_of[tid] = arm, seed

    def start(self, tid: str) -> None:
        self.started.add(tid)

    def observe(self, tid: str, epoch: int, value: float | None) -> None:
        """A seed's metric at an epoch: kept as the best so far (NaN/None keep the previous best)."""
        self.last[tid] = max(self.last.get(tid, 0), epoch)  # reached, even with no usable value
        seen = self.best.setdefault(tid, {})
        prev = seen[max(e for e in seen if e < epoch)] if any(e < epoch for e in seen) else None
        if value is None or not math.isfinite(value):
            value = prev
        elif prev is not None:
            value = max(value, prev) if self.mode == "max" else min(value, prev)
        if value is not None:
            seen[epoch] = value

    def _at(self, tid: str, rung: int) -> float | None:
        epochs = [e for e in self.best.get(tid, {}) if e <= rung]
        return self.best[tid][max(epochs)] if epochs else None

    def _reached(self, tid: str, rung: int) -> bool:
        return self.last.get(tid, 0) >= rung

    def end(self, tid: str) -> bool:
        """A seed ended (finished, failed for good, stopped): the decision its arm waited for may be due."""
        self.ended.add(tid)
        self.paused.pop(tid, None)
        return tid in self.arm_of and self.decide(self.arm_of[tid])

    def rungs_of(self, arm: str) -> list[int]:
        """The rule's rungs before the arm's last epoch (a later stage may train longer, with more rungs)."""
        last = self.epochs.get(arm)
        return [r for r in self.rule.rungs if last is None or r < last]

    def decide(self, arm: str) -> bool:
        """Judge every rung all of the arm's planned seeds have reached (or ended before); True when this
        call stopped the arm. Nothing is judged while the run halts."""
        if self.halted():
            return False
        done = self.decided.setdefault(arm, set())
        seeds = self.plan.get(arm, [])
        for rung in self.rungs_of(arm):
            if arm in self.stopped:
                return False
            if rung in done:
                continue
            if any(not self._reached(t, rung) and t not in self.ended for t in seeds):
                return False  # a planned seed is still on its way to this rung: wait for it
            if self._judge(arm, rung, seeds):
                return True
        return False

    def _judge(self, arm: str, rung: int, seeds: list[str]) -> bool:
        """One rung's decision for an arm, from the values of its seeds that reached it (the best of each up to
        this rung, never later): logged (continue or stop), then acted on. True: the arm stopped."""
        if not any(self._reached(t, rung) for t in seeds):
            self.decided[arm].add(rung)  # every seed ended before the rung: nothing to judge there
            return False
        values = {t: v for t in seeds if self._reached(t, rung) and (v := self._at(t, rung)) is not None}
        mean = float(np.mean(list(values.values()))) if values else None
        sign = 1.0 if self.mode == "max" else -1.0
        mine = self.stages.get(arm, {None})  # a stage's arms (the carried winner among them) compete
        others = [s for a, s in self.recorded.get(rung, {}).items()
                  if a != arm and self.stages.get(a, {None}) & mine]
        cutoff = self.rule.cutoff(others) if mean is not None else None
        stop = cutoff is not None and mean is not None and sign * mean < cutoff
        self._log(arm, rung, stop, values, mean, None if cutoff is None else sign * cutoff, len(others))
        self.decided[arm].add(rung)
        if mean is not None:
            self.recorded.setdefault(rung, {})[arm] = sign * mean
        return stop

    def _log(self, arm: str, rung: int, stop: bool, values: Mapping[str, float], mean: float | None,
             cutoff: float | None, n_others: int) -> None:
        """Write the verdict (data first); a stop also marks the arm stopped (the action)."""
        planned = self.plan.get(arm, [])
        better, worse = ("at or above", "below") if self.mode == "max" else ("at or below", "above")
        if mean is None:
            how = f"no seed has a {self.metric} value at this rung"
        elif cutoff is None:
            how = f"mean {self.metric} {mean:.4g} over {len(values)} of {len(planned)} seed(s); no cutoff yet"
        else:
            how = (f"mean {self.metric} {mean:.4g} over {len(values)} of {len(planned)} seed(s) "
                   f"{worse if stop else better} {self.rule.describe(n_others)} {cutoff:.4g}")
        verb = "stopped" if stop else "continued"
        why = f"arm {verb} at epoch {rung} by {self.rule.name} over its seeds: {how}"
        if self.log is not None:
            label, stage = self.names.get(arm, ("", None))
            self.log.record(Decision(STOP if stop else CONTINUE, arm if stop else f"{arm}/{rung}", arm, label,
                                     stage, len(planned), {
                "rule": self.rule.name, "rung": rung, "metric": self.metric, "mode": self.mode,
                "values": {str(self.seed_of[t]): v for t, v in values.items()},
                "seeds": [self.seed_of[t] for t in planned], "cutoff": cutoff, "mean": mean, "others": n_others,
                "reason": why}))
        if stop:
            self.stopped[arm] = (rung, why)

    def why_stopped(self, arm: str) -> tuple[int | None, str]:
        rung, why = self.stopped.get(arm, (None, "stopped by the scheduler"))
        return rung, why

    # ------------------------------------------------------------------ pausing and slots
    def should_pause(self, tid: str, epoch: int) -> bool:
        """A seed at a rung its arm has not judged yet waits there (paused, its slot free for other work) until
        its siblings reach the rung and the arm is judged, however many slots there are: seeds that ran on
        would pass a rung their arm may yet be stopped at."""
        arm = self.arm_of.get(tid)
        if arm is None or arm in self.stopped or epoch not in self.rungs_of(arm):
            return False
        if epoch in self.decided.get(arm, set()):
            return False
        self.paused[tid] = epoch
        return True

    def waiting(self, tid: str) -> bool:
        """A seed an earlier run left at (or past) a rung its arm has not judged yet: it may start only once its
        arm is judged there (``TrialQueue`` holds it back), as it would have waited paused at that rung."""
        arm = self.arm_of.get(tid)
        if arm is None or arm in self.stopped:
            return False
        last, done = self.last.get(tid, 0), self.decided.get(arm, set())
        return any(r <= last and r not in done for r in self.rungs_of(arm))

    def ready(self, tid: str) -> bool:
        """A paused seed may continue: its arm was judged at the rung it waits at (and not stopped)."""
        arm = self.arm_of.get(tid, "")
        return tid in self.paused and arm not in self.stopped and self.paused[tid] in self.decided.get(arm, set())

    def unpause(self, tid: str) -> None:
        self.paused.pop(tid, None)

    def running(self) -> int:
        """Handed-out trials that hold a slot (running or about to): neither ended nor paused."""
        return len(self.started - self.ended - set(self.paused))

    def has_room(self) -> bool:
        return not self.slots or self.running() < self.slots

    def free(self) -> int:
        """Slots for new trials: none held, none kept for a paused seed that may continue."""
        waking = sum(1 for t in self.paused if self.ready(t))
        return (self.slots or 1 << 30) - self.running() - waking


# ---------------------------------------------------------------------------------------- replay on --resume
def replay(board: ArmBoard, trials: Iterable[Any], store: Any, log: Any,
           histories: Mapping[str, list[dict[str, Any]]], rerun_stopped: bool = False) -> ArmBoard:
    """Rebuild the board of a (resumed) run: plan every seed of its arms (``trials``: ``spec.Trial``s, finished
    ones included), feed every seed's epochs (stored ones for finished seeds, the checkpoint's for interrupted
    ones: ``histories``), then apply the logged verdicts of each arm (continue and stop, with the scores they
    were taken on), so a rung already judged is never judged again and a new seed of a judged arm follows its
    verdicts (``--rerun-stopped`` forgets them). A directory written before continues were logged has its
    rungs that a finished seed passed (or that lie below a stop) counted as passed, from the stored epochs.
    Any other arm is judged now where all its planned seeds reached a rung."""
    known = set(board.plan)  # a later batch of the same run keeps what this run decided
    for t in trials:
        board.add_arm(t.arm_id, t.arm.label, [(t.trial_id, t.seed)], t.arm.stage, t.config.total_epochs())
    board.log = log
    new = set(board.plan) - known
    if log is not None and rerun_stopped:
        log.forget(STOP, new)
        log.forget(CONTINUE, {d.key for d in log.of_kind(CONTINUE) if d.arm_id in new})
    finished = store.finished_ids(rerun_stopped) & set(board.arm_of)
    stored: dict[str, list[dict[str, Any]]] = {}
    for e in store.epochs:
        if e.get("trial_id") in finished:
            stored.setdefault(e["trial_id"], []).append(e)
    for tid in board.arm_of:
        history = stored.get(tid) if tid in finished else histories.get(tid)
        for e in sorted(history or [], key=lambda e: int(e.get("epoch") or 0)):
            if e.get("epoch") is not None:
                board.observe(tid, int(e["epoch"]), e.get(board.metric))
    board.ended |= finished
    rows = {r["trial_id"]: r for r in store.trials if r["trial_id"] in finished}
    continues: dict[str, list[Decision]] = {}
    for d in log.of_kind(CONTINUE) if log is not None else []:
        continues.setdefault(d.arm_id, []).append(d)
    for arm in [a for a in board.plan if a in new]:
        seeds = board.plan[arm]
        _apply(board, arm, [*continues.get(arm, []), *([d] if log and (d := log.get(STOP, arm)) else [])])
        if arm not in board.stopped:
            _stopped_before_the_log(board, arm, [rows[t] for t in seeds if t in rows])
        _settle(board, arm, [t for t in seeds if t in finished or t in histories], finished)
    for arm in board.plan:
        if arm not in board.stopped:
            board.decide(arm)
    return board


def _apply(board: ArmBoard, arm: str, logged: list[Decision]) -> None:
    """An arm's logged verdicts, as taken: each rung counts as judged, with the score the verdict recorded
    there (the other arms' decisions compare against it); a stop stops the arm."""
    sign = 1.0 if board.mode == "max" else -1.0
    for d in logged:
        rung, mean = int(d.detail.get("rung") or 0), d.detail.get("mean")
        board.decided.setdefault(arm, set()).add(rung)
        if mean is not None:
            board.recorded.setdefault(rung, {})[arm] = sign * float(mean)
        if d.kind == STOP:
            board.stopped[arm] = (rung, str(d.detail.get("reason") or ""))


def _stopped_before_the_log(board: ArmBoard, arm: str, rows: list[dict[str, Any]]) -> bool:
    """A sweep directory older than the decision log: an arm whose stored seeds were all stopped at one rung
    stays stopped (the stop is logged now, from its rows)."""
    rungs = {r.get("stopped_at_epoch") for r in rows}
    if not rows or any(r.get("status") != "stopped_early" for r in rows) or len(rungs) != 1 or None in rungs:
        return False
    rung, why = int(rungs.pop()), str(rows[0].get("reason") or "")
    if board.log is not None:
        label, stage = board.names.get(arm, ("", None))
        board.log.record(Decision(STOP, arm, arm, label, stage, len(rows), {
            "rule": board.rule.name, "rung": rung, "seeds": sorted(r["seed"] for r in rows), "reason": why,
            "from": "trials.parquet"}))
    board.stopped[arm] = (rung, why)
    board.decided.setdefault(arm, set()).add(rung)
    return True


def _settle(board: ArmBoard, arm: str, earlier: list[str], finished: set[str]) -> None:
    """Rungs an earlier run passed without a logged verdict (a directory written before continues were
    logged): those below the rung the arm was stopped at, and those a finished seed of the arm trained past
    (judging them now could stop an arm beside its completed seed). Each is logged as a continue, with the mean
    of the earlier seeds that reached it, and never judged again. In a directory that logs every verdict there
    is none: a seed waits at every rung until its arm's verdict there is logged."""
    sign = 1.0 if board.mode == "max" else -1.0
    done = board.decided.setdefault(arm, set())
    upto = board.stopped[arm][0] if arm in board.stopped else None
    label, stage = board.names.get(arm, ("", None))
    for rung in board.rungs_of(arm):
        passed = any(board.last.get(t, 0) > rung for t in earlier if t in finished)
        values = {t: v for t in earlier if board._reached(t, rung) and (v := board._at(t, rung)) is not None}
        mean = float(np.mean(list(values.values()))) if values else None
        if rung == upto and arm not in board.recorded.get(rung, {}) and mean is not None:
            board.recorded.setdefault(rung, {})[arm] = sign * mean  # a stop logged without its mean
        if rung in done or not (passed or (upto is not None and rung < upto)):
            continue
        if board.log is not None:
            board.log.record(Decision(CONTINUE, f"{arm}/{rung}", arm, label, stage, len(board.plan[arm]), {
                "rule": board.rule.name, "rung": rung, "metric": board.metric, "mode": board.mode,
                "values": {str(board.seed_of[t]): v for t, v in values.items()}, "mean": mean,
                "reason": f"arm passed epoch {rung} in an earlier run (before continues were logged)",
                "from": "trials.parquet"}))
        done.add(rung)
        if mean is not None:
            board.recorded.setdefault(rung, {})[arm] = sign * mean


class ArmScheduler(FIFOScheduler):
    """Tune scheduler side of the arm-level rule: feeds the board, pauses a seed that reached an undecided
    rung before its siblings (on any number of slots), returns STOP for every seed of a stopped arm."""

    def __init__(self, board: ArmBoard, on_complete: Callable[[Any, Any], None] | None = None):
        super().__init__()
        self.board = board
        self.on_complete = on_complete  # (controller, trial): a trial ended by itself (the session records it)
        self._supports_buffered_results = False  # a PAUSE must come at the rung's own result

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its scheduler with the tuner: no live links
        return {**self.__dict__, "on_complete": None}

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        info: TrialSpec = trial.config["trial"]
        tid, arm = info.trial_id, info.arm_id
        if "epoch" in result and arm not in self.board.stopped:
            epoch = int(result["epoch"])
            self.board.observe(tid, epoch, result.get(self.board.metric))
            if self.board.decide(arm):
                self._stop_waiting(tune_controller, arm, trial)
            elif SUMMARY_KEY not in result and self.board.should_pause(tid, epoch):
                return TrialScheduler.PAUSE
        return TrialScheduler.STOP if arm in self.board.stopped else TrialScheduler.CONTINUE

    def _stop_waiting(self, tune_controller: Any, arm: str, current: Any = None) -> None:
        """The arm was stopped: its seeds paused at a rung (or pausing) stop now; running ones at their next
        result (Tune stops other trials only when they are paused, as its HyperBand does)."""
        for t in list(tune_controller.get_trials()):
            same_arm = getattr(t.config.get("trial"), "arm_id", None) == arm
            if t is not current and same_arm and (t.status == TuneTrial.PAUSED or t.is_saving):
                tune_controller.stop_trial(t)

    def _ended(self, tune_controller: Any, trial: Any) -> None:
        info: TrialSpec = trial.config["trial"]
        if self.board.end(info.trial_id):  # this seed may have been the one the arm's decision waited for
            self._stop_waiting(tune_controller, info.arm_id, trial)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._ended(tune_controller, trial)
        if self.on_complete is not None:
            self.on_complete(tune_controller, trial)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._ended(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        if trial.status == TuneTrial.ERROR:  # Tune retries it (it set ERROR before requeueing): not ended
            return
        self._ended(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        """Pending trials first (in order), then a paused seed whose arm was judged, while a slot is free."""
        trials = tune_controller.get_trials()
        for t in trials:
            if t.status == TuneTrial.PENDING:
                return t
        for t in trials:
            tid = getattr(t.config.get("trial"), "trial_id", None)
            if t.status == TuneTrial.PAUSED and self.board.ready(tid) and self.board.has_room():
                self.board.unpause(tid)
                return t
        return None

    def debug_string(self) -> str:
        return f"rayclf arm-level {self.board.rule.name} at epochs {self.board.rule.rungs}"


class TrialQueue(Searcher):
    """Hands Tune rayclf's trials in order, one per free slot (an arm's seeds go out together when the slots
    allow; a slot never idles while a seed could start: seeds that get apart wait for each other paused at
    rungs); a seed whose arm is already stopped is recorded, never started; a seed an earlier run left at a rung
    its arm has not judged is held back (later ones go first) until the arm is judged there.
    ``feed`` (``Lockstep.pop``) brings the batches a sweep's strategy releases during the run: the queue ends
    when the feed says ``FINISHED``, not when its list runs out.

    Tune polls a searcher that returns None every second, ignoring Ctrl-C, when no trial is running, pending or
    paused: the queue returns None only while the board counts a trial holding a slot (or about to), or while
    the strategy waits for trials it handed out. (A held seed waits for a sibling that is running or queued
    before it: the sibling that is furthest behind is never held.)"""

    def __init__(self, descriptions: list[TrialSpec], board: ArmBoard | None,
                 skip: Callable[[TrialSpec, int | None, str], None], feed: Callable[[], Any] | None = None):
        super().__init__()
        self.todo, self.board, self.skip, self.next = list(descriptions), board, skip, 0
        self.taken: set[int] = set()  # positions in ``todo`` past ``next`` already handed out or skipped
        self.feed, self.fed_all = feed, feed is None

    def _pull(self) -> None:
        while not self.fed_all and self.feed is not None:
            item = self.feed()
            if item is None:
                return
            if item == Searcher.FINISHED:
                self.fed_all = True
                return
            self.todo.append(item)

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its searcher with the tuner; rayclf resumes from
        return {**self.__dict__, "feed": None, "skip": None}  # its own store: the copy needs no live links

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Tune's ``max_concurrent_trials``: the queue limits concurrency itself (a paused seed frees its
        slot, which Tune's ``ConcurrencyLimiter`` would keep counting)."""
        self.board.slots = max_concurrent
        return True

    def _first(self) -> int | None:
        """The position of the next seed to hand out or skip: the first one not taken that is not held."""
        while self.next < len(self.todo) and self.next in self.taken:
            self.taken.discard(self.next)
            self.next += 1
        for i in range(self.next, len(self.todo)):
            if i not in self.taken and not self.board.waiting(self.todo[i].trial_id):
                return i
        return None

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        assert self.board is not None, "the queue's board is set before Tune asks for trials"
        while True:
            self._pull()
            i = self._first()
            if i is None:
                done = self.next >= len(self.todo) and self.fed_all
                return Searcher.FINISHED if done else None  # the strategy (or a held seed) waits
            d = self.todo[i]
            if d.arm_id in self.board.stopped:
                self.taken.add(i)
                self._skip(d)
                continue
            if self.board.free() < 1:
                return None  # a handed-out trial holds the slots (safe: Tune does not block on None then)
            self.taken.add(i)
            self.board.start(d.trial_id)
            return {"trial": replace(d, rungs=tuple(self.board.rule.rungs))}

    def _skip(self, d: TrialSpec) -> None:
        rung, why = self.board.why_stopped(d.arm_id)
        trained = d.trial_id in self.board.last
        self.skip(d, rung, f"{why}; this seed was not continued" if trained else f"{why}; this seed never started")
        self.board.end(d.trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # the scheduler hears every end (with Tune's controller, to stop the arm's paused seeds)

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        pass  # rayclf resumes from its own results store and decision log, not from Tune's experiment state

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        pass
