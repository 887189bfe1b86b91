"""Issue 20: the stop signals' handling, without Ray: SIGINT and SIGTERM set the flag (exit 130 / 143), a second
signal stops at once, the previous handlers come back, and the flag survives Tune's pickling."""

from __future__ import annotations

import os
import pickle
import signal

import pytest

from rayclf.sweep.interrupt import StopFlag, StopNow, SweepInterrupted, stop_on_signals


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_sets_the_flag_and_a_second_one_stops_at_once(signum, code):
    said: list[str] = []
    before = signal.getsignal(signum)
    flag = StopFlag()
    with stop_on_signals(flag, said.append):
        os.kill(os.getpid(), signum)
        assert flag.is_set() and flag.signum == signum
        assert "stopping the running trials at their last checkpoints" in said[0]
        with pytest.raises(SweepInterrupted) as info:
            flag.check("out")
        assert info.value.exit_code == code and info.value.out == "out"
        with pytest.raises(StopNow) as now:
            os.kill(os.getpid(), signum)
        assert now.value.exit_code == code
    assert signal.getsignal(signum) is before


def test_the_flag_pickles_for_tune_without_its_lock():
    flag = StopFlag()
    flag.set(signal.SIGTERM)
    copy = pickle.loads(pickle.dumps(flag))
    assert copy.signum == signal.SIGTERM and not copy.is_set()  # the driver's flag stays the driver's
