"""A sweep directory written before identity versions (tests/fixtures/legacy_v1, by rayclf at 5695c7e) keeps
working: --resume finds every finished trial, retrains nothing, relabels nothing; its checkpoints and W&B run
ids (derived from trial ids) stay its own. The fixture is a one-stage staged sweep whose two arms
(momentum 0.5 and 0.9) were two arms under version 1 (0.9 is SGD's default spelled out: one arm under
version 2) and whose stage winner is logged under its version-1 arm id."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rayclf.identity import IDENTITY_VERSION, LEGACY_VERSION
from rayclf.results import STORE_FILE, TRIALS, ResultsStore
from rayclf.schema import UserError
from rayclf.sweep.kernel import execute
from rayclf.sweep.resume import find_checkpoints
from rayclf.sweep.runner import prepare_out
from rayclf.sweep.spec import load_sweep
from rayclf.tracking import run_id

from .fake_runner import FakeTrials, fake_run

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_v1"
FILE = Path(__file__).parent / "fixtures" / "legacy_v1.yaml"


@pytest.fixture
def legacy(tmp_path) -> Path:
    out = tmp_path / "legacy"
    shutil.copytree(FIXTURE, out)
    return out


def _parts(out: Path, table: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / table).glob("*.parquet"))}


def _resume(out: Path, sweep_overrides: tuple[str, ...] = ()) -> tuple[FakeTrials, object]:
    sweep = load_sweep(FILE, sweep_overrides)
    lock = prepare_out(sweep, str(out), resume=True, echo=lambda _: None)[2]
    lock.release()
    runner = FakeTrials()
    outcome = execute(fake_run(sweep, str(out), runner))
    return runner, outcome


def test_a_directory_written_before_identity_versions_resumes_with_nothing_retrained(legacy):
    before = {t: _parts(legacy, t) for t in ("trials.parquet", "epochs.parquet", "decisions.parquet")}
    stored = {r["trial_id"]: r for r in ResultsStore(str(legacy), read_only=True).trials}
    assert ResultsStore(str(legacy), read_only=True).identity_version == LEGACY_VERSION
    runner, outcome = _resume(legacy)
    assert all(call == [] for call in runner.calls), f"retrained: {runner.calls}"
    assert outcome.skipped == len(stored) == 2
    assert {r["trial_id"]: (r["arm"], r["arm_id"], r["metric_best"]) for r in outcome.rows} == {
        tid: (r["arm"], r["arm_id"], r["metric_best"]) for tid, r in stored.items()}
    assert outcome.winner is not None and outcome.winner.label == "momentum:momentum=0.9"  # the logged winner
    after = {t: _parts(legacy, t) for t in ("trials.parquet", "epochs.parquet", "decisions.parquet")}
    assert after == before  # not one stored part rewritten
    meta = json.loads((legacy / STORE_FILE).read_text())
    assert meta.get("identity", LEGACY_VERSION) == LEGACY_VERSION  # still computed the old way next time
    # checkpoints and W&B runs are found under the same trial ids
    assert set(find_checkpoints(str(legacy / "_ray"), set(stored))) == set(stored)
    assert {run_id("legacy", t) for t in stored} == {run_id("legacy", r["trial_id"]) for r in outcome.rows}


def test_a_legacy_directory_refuses_another_world_size(legacy):
    with pytest.raises(UserError, match="num_workers=1"):
        prepare_out(load_sweep(FILE, ("resources.num_workers=2",)), str(legacy), resume=True, echo=lambda _: None)


def test_a_new_directory_records_this_identity_version(tmp_path):
    sweep = load_sweep(FILE)
    out = tmp_path / "new"
    lock = prepare_out(sweep, str(out), resume=False, echo=lambda _: None)[2]
    lock.release()
    runner = FakeTrials()
    execute(fake_run(sweep, str(out), runner))
    assert json.loads((out / STORE_FILE).read_text())["identity"] == IDENTITY_VERSION
    # momentum 0.9 is SGD's default: under this version the fixture's second arm is the same trial as the base
    rows = pq.read_table(out / TRIALS).to_pylist()
    assert len(rows) == 2 and len({r["trial_id"] for r in rows}) == 2
    legacy_ids = {p.stem for p in (FIXTURE / TRIALS).glob("*.parquet")}
    assert not legacy_ids & {r["trial_id"] for r in rows}  # version 2 ids differ from version 1's
