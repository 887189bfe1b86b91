"""A sweep's strategy and Tune's event loop taking turns, so one Tune run serves a whole sweep.

A strategy (``rayclf.sweep.kernel``: stages, racing rounds, bayes batches) is sequential code: it releases a
batch of trials, waits until they are recorded, decides, releases the next. Tune's loop pulls trials from a
``Searcher`` as it pleases. ``Lockstep`` runs the strategy in a thread of its own and lets exactly one of the
two run at a time: the strategy runs until it releases a batch (``submit``) and then sleeps; Tune runs, and
when the recorder reports the batch's last trial (``done``), Tune's thread sleeps inside that callback until
the strategy has decided and released its next batch, or finished. So the next stage's trials are in the
queue before Tune looks for work again (its trial processes stay busy and warm), no lock guards the store,
the decision log or the live view (only one thread touches them at a time), and a decision never sees half a
batch. However Tune's run ends (a second stop signal included), ``close`` wakes the strategy and joins its
thread, so none is left writing once the driver goes on. This module knows nothing of Ray, so it is tested
alone.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

FINISHED = "FINISHED"  # what ``pop`` returns once the strategy is done and its queue is empty
_POLL_S = 0.2  # how often a sleeping side looks at the stop flag


class Aborted(Exception):
    """Tune's run ended while the strategy still waited for trials (an error in Tune's loop)."""


class Lockstep:
    """Turns between a strategy thread (``start``, ``submit``) and Tune's thread (``pop``, ``done``).

    ``stopped`` is the sweep's stop flag (Ctrl-C): a waiting strategy wakes on it and raises through its own
    stop check; no decision is taken on a partial batch."""

    def __init__(self, stopped: Callable[[], bool]):
        self._cv = threading.Condition()
        self._turn = "tune"
        self._queue: deque[Any] = deque()
        self._waiting: set[str] = set()
        self._finished = False
        self._aborted = False
        self._stopped = stopped
        self._thread: threading.Thread | None = None
        self.result: Any = None
        self.error: BaseException | None = None

    # ------------------------------------------------------------------------------ driver thread
    def start(self, strategy: Callable[[], Any]) -> None:
        """Run ``strategy`` in its own thread until it first releases trials or finishes."""

        def body() -> None:
            try:
                self.result = strategy()
            except BaseException as exc:  # re-raised in the driver's thread by ``outcome``
                self.error = exc
            finally:
                with self._cv:
                    self._finished, self._turn = True, "tune"
                    self._cv.notify_all()

        with self._cv:
            self._turn = "kernel"
        self._thread = threading.Thread(target=body, name="rayclf-strategy", daemon=True)
        self._thread.start()
        self._sleep_until(lambda: self._turn == "tune")

    @property
    def idle(self) -> bool:
        """Nothing queued and the strategy finished: no Tune run is needed (or the current one may end)."""
        return self._finished and not self._queue

    @property
    def queued(self) -> bool:
        """Items wait for Tune (the strategy just released a batch)."""
        return bool(self._queue)

    def abort(self) -> None:
        """Tune's run is over: a strategy still waiting for trials raises ``Aborted`` (unless stopping)."""
        with self._cv:
            self._aborted = True
            self._cv.notify_all()

    def close(self, timeout: float = 30.0) -> bool:
        """Tune's run is over, however it ended (a second stop signal included): wake the strategy and wait for
        its thread to end, so no thread is left writing once the driver goes on. With the stop flag set, the
        strategy raises at its next stop check or decision. False if it is still running after ``timeout``."""
        self.abort()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    def outcome(self, timeout: float = 60.0) -> Any:
        """The strategy's return value once its thread ended; its exception is raised here."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        if not self._finished:
            raise Aborted("the sweep's strategy did not finish after Tune's run ended")
        return self.result

    # ------------------------------------------------------------------------------ strategy side
    def submit(self, items: list[Any], wait_for: set[str]) -> None:
        """Queue ``items`` for Tune and sleep until every id in ``wait_for`` was reported ``done`` (or a stop
        was asked for: the caller's stop check raises)."""
        with self._cv:
            self._queue.extend(items)
            self._waiting = set(wait_for)
            if not self._waiting:
                return
            self._turn = "tune"
            self._cv.notify_all()
            while self._turn != "kernel":
                if self._stopped():
                    return
                if self._aborted:
                    raise Aborted("Tune's run ended before the trials the sweep waited for were recorded")
                self._cv.wait(_POLL_S)

    # ------------------------------------------------------------------------------ Tune's side
    def pop(self) -> Any:
        """The next queued item; None while the strategy waits for running trials; ``FINISHED`` at the end
        (or once a stop was asked for: nothing new starts)."""
        with self._cv:
            if self._stopped():
                return FINISHED
            if self._queue:
                return self._queue.popleft()
            return FINISHED if self._finished or self._aborted else None

    def done(self, trial_id: str) -> None:
        """A trial was recorded. If it was the last one the strategy waits for, the strategy runs now, and
        this call returns once it released its next batch or finished."""
        with self._cv:
            if self._finished or trial_id not in self._waiting:
                return
            self._waiting.discard(trial_id)
            if self._waiting or self._turn != "tune":
                return
            self._turn = "kernel"
            self._cv.notify_all()
            self._sleep_until(lambda: self._turn == "tune", locked=True)

    def _sleep_until(self, ready: Callable[[], bool], locked: bool = False) -> None:
        if not locked:
            with self._cv:
                self._sleep_until(ready, locked=True)
            return
        while not ready():
            self._cv.wait(_POLL_S)
