"""The live sweep view: one line per trial event when piped, an in-place rich display on a terminal."""

from __future__ import annotations

import io
import re
import sys

from rayclf.sweep.live import LiveView

from .conftest import run_in_pty

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")

DRIVER = """
import time
from rayclf.sweep.live import LiveView
with LiveView(total=5, metric="val_accuracy", mode="max", slots=2) as v:
    v.skipped(1)
    v.started("t1", "baseline", 0, 3, node="node-a")
    v.started("t2", "dropout=0.3", 0, 3, node="node-b")
    for e in (1, 2, 3):
        v.result("t1", e, 0.5 + 0.1 * e, 0.2)
        v.result("t2", e, 0.4 + 0.1 * e, 0.2)
        time.sleep(0.3)
    v.finished("t1", "completed", 0.8)
    v.started("t3", "lr=0.05", 1, 3, node="node-a")
    v.result("t3", 1, 0.31, 0.2)
    time.sleep(0.6)
"""


def drive(view: LiveView) -> None:
    view.skipped(2)
    for i in range(3):
        view.started(f"t{i}", "baseline" if i < 2 else "lr=0.05", i, 4, node="n1")
    for epoch in range(1, 5):  # many results: none of them may print anything in plain mode
        for i in range(3):
            view.result(f"t{i}", epoch, 0.5 + 0.01 * epoch + 0.1 * i, 1.5)
    view.finished("t0", "completed", 0.70)
    view.finished("t1", "completed", 0.74)
    view.finished("t2", "failed", reason="RuntimeError: CUDA out of memory")


def test_plain_output_is_one_timestamped_line_per_event():
    out = io.StringIO()
    with LiveView(total=8, metric="val_accuracy", mode="max", stream=out, slots=2) as view:
        assert not view.terminal  # a StringIO is not a terminal
        drive(view)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 + 3 + 3  # resume note, 3 starts, 3 ends; epochs print nothing
    assert all(STAMP.match(line) for line in lines)
    assert len(set(line[20:] for line in lines)) == len(lines)  # no line repeats
    assert "2 trial(s) already finished" in lines[0]
    assert [ln.split()[2] for ln in lines[1:]] == ["started"] * 3 + ["completed", "completed", "failed"]
    assert "(3/8 done, 2 running" in lines[4]
    assert "RuntimeError: CUDA out of memory" in lines[6] and "at epoch 4/4" in lines[6]
    assert "(5/8 done, 0 running" in lines[6]


def test_numbers_eta_and_best_arm():
    view = LiveView(total=8, metric="val_accuracy", mode="max", stream=io.StringIO(), slots=2)
    assert view.eta_seconds() is None  # nothing measured yet
    drive(view)
    # 8 trials, 5 done (2 skipped + 3), none running: 3 waiting × 4 epochs × 1.5 s / 2 slots
    assert view.eta_seconds() == 3 * 4 * 1.5 / 2
    arm, mean, std, n = view.best_arm()
    assert (arm, n) == ("baseline", 2) and abs(mean - 0.72) < 1e-12 and std > 0
    low = LiveView(total=2, metric="val_loss", mode="min", stream=io.StringIO())
    for i, (arm, v) in enumerate([("a", 0.9), ("b", 0.4)]):
        low.started(str(i), arm, 0, 1)
        low.finished(str(i), "completed", v)
    assert low.best_arm()[0] == "b"


def test_terminal_view_renders_in_place_through_a_pty():
    """A real pseudo-terminal: the view detects it, draws rich's bar and table, and redraws in place."""
    returncode, raw = run_in_pty([sys.executable, "-c", DRIVER], timeout=60)
    assert returncode == 0, raw
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    assert "\x1b[1A" in raw or "\x1b[2K" in raw  # redrawn in place (cursor up / erase line), not appended
    assert "━" in text  # rich's progress bar
    assert "2/5" in text and "1 running" in text  # done/total (1 skipped + 1 completed) and the running count
    assert "lr=0.05" in text and "1/3" in text and "node-a" in text  # the running-trials table
    assert "best arm so far: baseline" in text
    assert "started" not in text  # no plain event lines on a terminal
