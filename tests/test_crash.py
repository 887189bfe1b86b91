"""The store survives the disk: the sweep writer is killed at every write boundary of a sweep (each trial's epochs
part and trial part, the store metadata, each decision, the plan and sweep file) and at random points, the
last part is left emptied or truncated (a power loss on a disk that lost it), and the sweep is resumed.

Invariant after the resume: every trial the uninterrupted sweep records is there with the same values, every
decision it logs is there with the same verdict; a part that was readable before the resume is untouched (kept,
not re-run); an unreadable one is in quarantine/ (never deleted), and what it held ran or was decided again.
The fake runner's values depend only on the trial, so a re-run trial gives the value it gave before."""

from __future__ import annotations

import json
import os
import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import rayclf.results
import rayclf.storage
import rayclf.sweep.decisions
from rayclf.results import EPOCHS, QUARANTINE, TRIALS, UnreadablePart, read_rows
from rayclf.storage import filesystem
from rayclf.sweep.decisions import DECISIONS, read_decisions
from rayclf.sweep.kernel import execute
from rayclf.sweep.lock import DRIVER_FILE
from rayclf.sweep.runner import prepare_out
from rayclf.sweep.spec import parse_sweep

from .fake_runner import fake_run
from .test_kernel import staged

TABLES = (TRIALS, EPOCHS, DECISIONS)


class Killed(BaseException):
    """The writer's process dying (a BaseException: nothing in rayclf may catch it)."""


class Killer:
    """Stands in for ``write_atomically`` everywhere rayclf calls it; dies at write number ``at``:
    before it (``before``), half-way with only a hidden temporary file written (``mid``), just after it
    (``after``), or after it with the file then emptied or cut short (``empty``, ``truncate``: a Parquet part
    on a disk that lost it; the JSON files are replaced whole, fsync'd, so there they die as ``after``)."""

    def __init__(self, real: Callable[..., None], at: int | None = None, mode: str = "after", cut: float = 0.5):
        self.real, self.at, self.mode, self.cut = real, at, mode, cut
        self.count = 0
        self.written: list[str] = []

    def __call__(self, uri: str, write: Callable[..., None]) -> None:
        if uri.endswith(DRIVER_FILE):  # the driver lock: taken over from a dead driver (test_lock covers it)
            return self.real(uri, write)
        n, self.count = self.count, self.count + 1
        if n != self.at:
            self.written.append(uri)
            return self.real(uri, write)
        if self.mode == "before":
            raise Killed
        fs, path = filesystem(uri)
        if self.mode == "mid":
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{os.path.dirname(path)}/.killed.tmp"
            write(fs, tmp)
            _cut(tmp, self.cut)
            raise Killed
        self.real(uri, write)
        if self.mode in ("empty", "truncate") and uri.endswith(".parquet"):  # JSON files: fsync'd, whole or old
            _cut(path, 0.0 if self.mode == "empty" else self.cut)
        raise Killed


def _cut(path: str, share: float) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * share))


def _patch(monkeypatch: pytest.MonkeyPatch, killer: Killer) -> None:
    for module in (rayclf.storage, rayclf.results, rayclf.sweep.decisions):
        monkeypatch.setattr(module, "write_atomically", killer)


def _run(out: Path, resume: bool) -> None:
    sweep = parse_sweep(staged(seeds=(0,)))
    lock = prepare_out(sweep, str(out), resume=resume, echo=lambda _: None)[2]
    try:
        execute(fake_run(sweep, str(out)))
    finally:
        lock.release()


def _parts(out: Path) -> dict[str, bytes]:
    return {f"{t}/{p.name}": p.read_bytes() for t in TABLES for p in sorted((out / t).glob("*.parquet"))}


def _readable(out: Path) -> dict[str, bytes]:
    """The parts a reader can read now (the others: unreadable, skipped with a warning)."""
    import pyarrow.parquet as pq

    ok = {}
    for name, data in _parts(out).items():
        try:
            pq.read_metadata(out / name)
            ok[name] = data
        except Exception:  # any reason a part cannot be read
            pass
    return ok


def _outcome(out: Path) -> tuple[dict[str, Any], dict[tuple[str, str], Any]]:
    trials = {r["trial_id"]: (r["status"], r["arm_id"], r["metric_best"], r["test_accuracy"])
              for r in read_rows(str(out / TRIALS))}
    epochs: dict[str, list[Any]] = {}
    for e in read_rows(str(out / EPOCHS)):
        epochs.setdefault(e["trial_id"], []).append((e["epoch"], e["val_accuracy"]))
    trials = {tid: (*v, tuple(sorted(epochs.get(tid, [])))) for tid, v in trials.items()}
    decisions = {(d.kind, d.key): (d.arm_id, d.label, json.dumps(d.detail, sort_keys=True))
                 for d in read_decisions(str(out))}
    return trials, decisions


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict[str, Any], dict[tuple[str, str], Any], int]:
    """The uninterrupted sweep's trials and decisions, and how many writes it makes."""
    out = tmp_path_factory.mktemp("reference") / "s"
    with pytest.MonkeyPatch.context() as mp:
        killer = Killer(rayclf.storage.write_atomically)
        _patch(mp, killer)
        _run(out, resume=False)
    trials, decisions = _outcome(out)
    assert len(trials) >= 5 and len(decisions) >= 2  # both stages, their winners, the final arm
    return trials, decisions, killer.count


def _kill_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: int, mode: str, cut: float,
                     reference: tuple[Any, ...]) -> None:
    out = tmp_path / f"s{len(list(tmp_path.iterdir()))}-{at}-{mode}"
    with monkeypatch.context() as mp:
        killer = Killer(rayclf.storage.write_atomically, at, mode, cut)
        _patch(mp, killer)
        with pytest.raises(Killed):
            _run(out, resume=False)
    (out / DRIVER_FILE).unlink(missing_ok=True)  # the dead driver's lock (taken over by a real resume)
    before, everything = _readable(out), _parts(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadablePart)
        _run(out, resume=True)
    trials, decisions = _outcome(out)
    want_trials, want_decisions, _ = reference
    assert trials == want_trials, f"kill at write {at} ({mode})"
    assert decisions == want_decisions, f"kill at write {at} ({mode})"
    after = _parts(out)
    kept = {name for name in before if name.rsplit("/", 1)[0] != EPOCHS or _trial_part(name) in before}
    for name in kept:  # a readable part (with its trial's other part) was kept, not re-run or re-decided
        assert after[name] == before[name], f"{name} changed after a kill at write {at} ({mode})"
    quarantined = {f"{p.parent.name}/{p.name}" for p in (out / QUARANTINE).rglob("*.parquet") if p.is_file()}
    unreadable = set(everything) - set(before)
    assert unreadable <= quarantined, f"not moved aside: {unreadable - quarantined}"
    for name in quarantined:  # nothing deleted: the moved part is the very file that was there
        assert (out / QUARANTINE / name).read_bytes() == everything[name]


def _trial_part(epochs_part: str) -> str:
    return f"{TRIALS}/{epochs_part.rsplit('/', 1)[1]}"


@pytest.mark.parametrize("mode", ["before", "mid", "after", "empty", "truncate"])
def test_a_kill_at_every_write_boundary_loses_and_changes_nothing(tmp_path, monkeypatch, reference, mode):
    for at in range(reference[2]):
        _kill_and_resume(tmp_path, monkeypatch, at, mode, 0.5, reference)


def test_kills_at_random_points_lose_and_change_nothing(tmp_path, monkeypatch, reference):
    rng = random.Random(29)
    for _ in range(12):
        at, mode = rng.randrange(reference[2]), rng.choice(["mid", "empty", "truncate"])
        _kill_and_resume(tmp_path, monkeypatch, at, mode, rng.random(), reference)


def test_resume_says_what_it_moved_aside(tmp_path, monkeypatch):
    out = tmp_path / "s"
    _run(out, resume=False)
    part = next((out / DECISIONS).glob("*.parquet"))
    part.write_bytes(b"")
    trial = sorted((out / TRIALS).glob("*.parquet"))[0]
    trial.write_bytes(trial.read_bytes()[:100])
    lines: list[str] = []
    sweep = parse_sweep(staged(seeds=(0,)))
    prepare_out(sweep, str(out), resume=True, echo=lines.append)[2].release()
    assert f"warning: {DECISIONS}/{part.name} cannot be read: moved to {QUARANTINE}/{DECISIONS}/{part.name}; its " \
           "decision is taken again" in lines
    assert f"warning: {TRIALS}/{trial.name} cannot be read: moved to {QUARANTINE}/{TRIALS}/{trial.name}; its " \
           "trial runs again" in lines
    assert not part.exists() and (out / QUARANTINE / DECISIONS / part.name).exists()


def test_an_epochs_part_lost_under_a_kept_trial_part_re_runs_that_trial(tmp_path):
    out = tmp_path / "s"
    _run(out, resume=False)
    want = _outcome(out)
    epochs = sorted((out / EPOCHS).glob("*.parquet"))[1]
    trial_part = out / TRIALS / epochs.name
    kept = trial_part.read_bytes()
    epochs.write_bytes(b"")
    _run(out, resume=True)
    assert _outcome(out) == want  # the trial ran again: its row and its epochs are back, values unchanged
    assert (out / QUARANTINE / TRIALS / epochs.name).read_bytes() == kept  # its old row moved aside with it


# ------------------------------------------------------------------------- readers skip what they cannot read
@pytest.fixture
def damaged(tmp_path) -> Path:
    """A finished sweep with an empty trial part and a truncated decision part."""
    out = tmp_path / "s"
    _run(out, resume=False)
    sorted((out / TRIALS).glob("*.parquet"))[0].write_bytes(b"")
    decision = sorted((out / DECISIONS).glob("*.parquet"))[0]
    decision.write_bytes(decision.read_bytes()[:50])
    return out


def test_every_reader_skips_an_unreadable_part_with_a_warning_naming_it(damaged):
    from rayclf.api import open_sweep
    from rayclf.results import ResultsStore
    from rayclf.sweep.status import read_status

    parts = {p.name for t in (TRIALS, DECISIONS) for p in (damaged / t).glob("*.parquet")}
    n_trials = len(list((damaged / TRIALS).glob("*.parquet")))
    with pytest.warns(UnreadablePart) as seen:
        assert len(ResultsStore(str(damaged), read_only=True).trials) == n_trials - 1
        assert len(read_decisions(str(damaged))) == len(list((damaged / DECISIONS).glob("*.parquet"))) - 1
        status = read_status(str(damaged))
        sweep = open_sweep(str(damaged))
        assert len(sweep.trials) == n_trials - 1 and len(sweep.decisions) == len(status.decisions) >= 1
    assert status.counts["done"] == n_trials - 1
    named = {w.message.args[0].split("unreadable part ", 1)[1].split(" ", 1)[0].rsplit("/", 1)[1] for w in seen}
    assert named <= parts and len(named) == 2


@pytest.mark.parametrize("command", [["status"], ["report", "--out", "REPORT"]])
def test_status_and_report_warn_and_go_on(damaged, command, tmp_path):
    from click.testing import CliRunner

    from rayclf.cli import main

    args = [c.replace("REPORT", str(tmp_path / "report")) for c in command]
    res = CliRunner().invoke(main, [args[0], str(damaged), *args[1:]])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    assert res.output.count("warning: skipped the unreadable part") == 2


# ------------------------------------------------------------------------------------------ durable writes
def test_a_local_part_counts_only_once_it_and_its_folder_are_on_disk(tmp_path, monkeypatch):
    """fsync of the written file before the rename, and of its folder after it (and of a new folder's parent)."""
    synced: list[tuple[str, bool]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((os.path.basename(path), os.path.exists(tmp_path / "t" / "a.parquet")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    rayclf.storage.write_text(str(tmp_path / "t" / "a.parquet"), "x")
    (tmp_name, renamed), *rest = synced
    assert tmp_name.startswith(".") and tmp_name.endswith(".tmp") and not renamed  # the data, before the rename
    assert rest == [("t", True), (tmp_path.name, True)]  # the rename, then the new folder's entry
