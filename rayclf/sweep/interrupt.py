"""Ctrl-C and SIGTERM stop a sweep cleanly: the first signal ends the round at its trials' last checkpoints
(nothing is recorded as finished, no decision is taken on a partial round), a second one stops at once
(:class:`StopNow`, raised in the driver's thread; the session then stops and joins the strategy thread, which
can write no decision once the flag is set).

Tune's own SIGINT handler is turned off (``TUNE_DISABLE_SIGINT_HANDLER``): it makes ``Tuner.fit`` return as if the
round had finished. Instead the driver sets a :class:`StopFlag` that a Tune ``Stopper`` reads (its ``stop_all`` ends
the run without ``on_trial_complete``), and every strategy step raises :class:`SweepInterrupted` once it is set.
The CLI turns that into the conventional exit code: 130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType


class SweepInterrupted(Exception):
    """The sweep was stopped by a signal; ``--resume`` continues it."""

    def __init__(self, signum: int = signal.SIGINT, out: str = ""):
        self.signum, self.out = signum, out
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


class StopNow(KeyboardInterrupt):
    """The second stop signal: the driver stops at once. A ``KeyboardInterrupt`` (whatever the signal), so no
    ``except Exception`` on the way swallows it; ``signum`` keeps the exit code: 130 (SIGINT), 143 (SIGTERM)."""

    def __init__(self, signum: int = signal.SIGINT):
        self.signum = signum
        super().__init__(f"stopped at once by a second {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


class StopFlag:
    """Set once by the first stop signal; read by Tune's stopper and by the strategies between rounds."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None

    def set(self, signum: int = signal.SIGINT) -> None:
        if self.signum is None:
            self.signum = signum
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def __getstate__(self) -> dict[str, int | None]:  # Tune pickles its callbacks with the experiment state
        return {"signum": self.signum}

    def __setstate__(self, state: dict[str, int | None]) -> None:
        self._event, self.signum = threading.Event(), state["signum"]

    def check(self, out: str = "") -> None:
        """Raise :class:`SweepInterrupted` when a stop was asked for (call before taking any decision)."""
        if self.is_set():
            raise SweepInterrupted(self.signum or signal.SIGINT, out)


@contextmanager
def stop_on_signals(flag: StopFlag, echo: Callable[[str], None]) -> Iterator[StopFlag]:
    """SIGINT / SIGTERM set ``flag`` (the sweep stops after the epoch in progress); a second one stops at once.
    Outside the main thread signals cannot be caught: the flag is then only set by the caller."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        if flag.is_set():  # the second signal: stop now
            raise StopNow(signum)
        flag.set(signum)
        echo(f"\n{signal.Signals(signum).name} received: stopping the running trials at their last checkpoints "
             "(press Ctrl-C again to stop at once)")

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handle)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
