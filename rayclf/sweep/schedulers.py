"""Early stopping that decides per arm: ASHA and the median rule over the mean of an arm's seeds.

rayclf's results are per arm (mean over seeds), so its early stopping is too. Ray Tune's own ASHA and median
rule judge each trial alone: an arm's three seeds could be judged separately at a rung, and every stopped
trial drops out of the per-arm tables. Here three pieces share one ``ArmBoard`` in the sweep driver:

- ``TrialQueue`` (a Tune ``Searcher``) hands Tune rayclf's trial list in order, and never hands out a seed
  of an arm that is already stopped: that seed is recorded at once (status ``stopped_early``, no epochs), so
  every trial still gets exactly one row and a resumed sweep does not start it.
- ``ArmScheduler`` (a Tune ``FIFOScheduler``) records each seed's best-so-far metric at every rung. When
  every *started* seed of an arm has reached a rung (or ended before it), it takes the arm's mean there and
  applies the rule (ASHA: below the top 1/reduction_factor of the arms recorded at that rung so far;
  median: worse than the median of the other arms at that epoch). A stopped arm's running seeds stop at
  their next result. Seeds that reached the rung first keep training while they wait for the slower ones.
- ``Recorder`` asks the board why a trial stopped and at which rung, so the row says so and carries the
  value at that rung.

Racing over seeds is a loop of rounds in ``rayclf.sweep.racing``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher


@dataclass
class RungRule:
    """Where decisions are taken (epochs) and how: ``asha`` (quantile cutoff) or ``median``."""

    name: str
    rungs: list[int]
    reduction_factor: float = 2.0
    min_arms: int = 2

    def stops(self, score: float, others: list[float]) -> tuple[bool, str]:
        """Whether an arm scoring ``score`` (higher is better) stops, against the other arms at this rung."""
        if self.name == "asha":
            if not others:
                return False, ""
            cutoff = float(np.percentile(others, (1 - 1 / self.reduction_factor) * 100))
            return score < cutoff, f"below the top 1/{self.reduction_factor:g} cutoff {cutoff:.4g}"
        if len(others) < self.min_arms:
            return False, ""
        median = float(np.median(others))
        return score < median, f"worse than the median {median:.4g} of {len(others)} other arms"


def rung_rule(name: str, grace: int, reduction_factor: float, max_epochs: int, min_arms: int = 2) -> RungRule:
    """ASHA rungs at grace·rf^k below ``max_epochs``; the median rule decides at every epoch from ``grace``."""
    if name == "asha":
        rungs, r = [], float(grace)
        while r < max_epochs:
            rungs.append(round(r))
            r *= reduction_factor
        return RungRule(name, sorted(set(rungs)), reduction_factor)
    return RungRule(name, list(range(grace, max_epochs)), reduction_factor, min_arms)


@dataclass
class ArmBoard:
    """What the queue, the scheduler and the recorder share about arms: started seeds, rung values, stops."""

    rule: RungRule
    mode: str
    metric: str
    started: dict[str, list[str]] = field(default_factory=dict)  # arm -> trial ids handed to Tune
    ended: set[str] = field(default_factory=set)
    best: dict[str, dict[int, float]] = field(default_factory=dict)  # trial id -> epoch -> best so far
    decided: dict[str, set[int]] = field(default_factory=dict)  # arm -> rungs already judged
    recorded: dict[int, dict[str, float]] = field(default_factory=dict)  # rung -> arm -> score
    stopped: dict[str, tuple[int, str]] = field(default_factory=dict)  # arm -> (rung, why)

    def start(self, arm: str, tid: str) -> None:
        self.started.setdefault(arm, []).append(tid)

    def observe(self, tid: str, epoch: int, value: float | None) -> None:
        """A seed's metric at an epoch: kept as the best so far (NaN/None keep the previous best)."""
        seen = self.best.setdefault(tid, {})
        prev = seen[max(seen)] if seen else None
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
        return max(self.best.get(tid, {0: 0.0}), default=0) >= rung

    def decide(self, arm: str) -> None:
        """Judge every rung the arm's started seeds have all reached (or ended before); may stop the arm."""
        done = self.decided.setdefault(arm, set())
        for rung in self.rule.rungs:
            if arm in self.stopped:
                return
            if rung in done:
                continue
            seeds = self.started.get(arm, [])
            if any(not self._reached(t, rung) and t not in self.ended for t in seeds):
                return  # a started seed is still on its way to this rung: wait for it
            done.add(rung)
            values = [v for t in seeds if self._reached(t, rung) and (v := self._at(t, rung)) is not None]
            if not values:
                continue
            mean = float(np.mean(values))
            score = mean if self.mode == "max" else -mean
            others = [s for a, s in self.recorded.get(rung, {}).items() if a != arm]
            stop, why = self.rule.stops(score, others)
            self.recorded.setdefault(rung, {})[arm] = score
            if stop:
                self.stopped[arm] = (rung, f"arm stopped at epoch {rung} by {self.rule.name} over its seeds: "
                                           f"mean {self.metric} {mean:.4g} over {len(values)} seed(s) {why}")

    def why_stopped(self, arm: str) -> tuple[int | None, str]:
        rung, why = self.stopped.get(arm, (None, "stopped by the scheduler"))
        return rung, why


class ArmScheduler(FIFOScheduler):
    """Tune scheduler side of the arm-level rule: feeds the board, returns STOP for every seed of a stopped arm."""

    def __init__(self, board: ArmBoard):
        super().__init__()
        self.board = board

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        info = trial.config["trial"]
        if "epoch" in result:
            self.board.observe(info["trial_id"], int(result["epoch"]), result.get(self.board.metric))
            self.board.decide(info["arm"])
        return TrialScheduler.STOP if info["arm"] in self.board.stopped else TrialScheduler.CONTINUE

    def _ended(self, trial: Any) -> None:
        info = trial.config["trial"]
        self.board.ended.add(info["trial_id"])
        self.board.decide(info["arm"])  # this seed may have been the one the arm's decision waited for

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._ended(trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._ended(trial)

    def debug_string(self) -> str:
        return f"rayclf arm-level {self.board.rule.name} at epochs {self.board.rule.rungs}"


class TrialQueue(Searcher):
    """Hands Tune rayclf's trials in order; a seed whose arm is already stopped is recorded, never started."""

    def __init__(self, descriptions: list[dict[str, Any]], board: ArmBoard,
                 skip: Callable[[dict[str, Any], int | None, str], None]):
        super().__init__()
        self.todo, self.board, self.skip, self.next = descriptions, board, skip, 0

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        while self.next < len(self.todo):
            d = self.todo[self.next]
            self.next += 1
            if d["arm"] in self.board.stopped:
                rung, why = self.board.why_stopped(d["arm"])
                self.skip(d, rung, f"{why}; this seed never started")
                continue
            self.board.start(d["arm"], d["trial_id"])
            return {"trial": d}
        return Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        pass  # rayclf resumes from its own results store, not from Tune's experiment state

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        pass
