"""The append-only results store and trial identity (no Ray): schema, O(1) recording, readers, resume rules."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

import rayclf.results as results
from rayclf.config import UserError, build_config
from rayclf.results import EPOCHS, STORE_FILE, TRIALS, ResultsStore
from rayclf.sweep.rows import trial_row
from rayclf.sweep.runner import prepare_out
from rayclf.sweep.spec import parse_sweep

from .conftest import tiny


def _info(tid: str, arm: str, seed: int, config: dict, position: int = 0) -> dict:
    return {"trial_id": tid, "sweep": "s", "arm": arm, "seed": seed, "stage": None, "position": position,
            "overrides": {"model.widths": config["model"]["widths"]}, "config": build_config(config).to_dict()}


def _epochs(n: int, acc: float) -> list[dict]:
    return [{"epoch": i + 1, "phase": 0, "lr": 0.1, "train_loss": 1.0, "train_accuracy": acc, "val_loss": 1.0,
             "val_accuracy": acc + 0.01 * i, "epoch_seconds": 0.5, "node": "n1"} for i in range(n)]


def _record(store: ResultsStore, info: dict, status: str = "completed", n: int = 2) -> dict:
    summary = {"test_accuracy": 0.5, "per_class_accuracy": [0.5, 0.5], "confusion_matrix": [[1, 1], [1, 1]],
               "classes": ["a", "b"], "early_stopped": False} if status == "completed" else None
    row = trial_row(info, status, "" if status == "completed" else "why", summary, _epochs(n, 0.4),
                    "val_accuracy", "max")
    store.add(row, [{**e, "arm": info["arm"], "seed": info["seed"]} for e in _epochs(n, 0.4)])
    return row


def _part_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / TRIALS).glob("*.parquet"))}


def test_resume_with_more_trials_keeps_every_earlier_part_byte_for_byte(tmp_path):
    root = tmp_path / "s"
    first = [_info(f"t{i}", "a" if i < 2 else "b", i % 2, tiny(model={"widths": [8, 16 * (1 + i // 2)]},
                                                                 optim={"nesterov": True}), i) for i in range(4)]
    store = ResultsStore(str(root))
    store.prepare([trial_row(i, "completed", "", None, [], "val_accuracy", "max") for i in first])
    for info in first[:3]:
        _record(store, info)
    _record(store, first[3], status="failed", n=1)
    before = _part_bytes(root)
    rows_before = pq.read_table(root / TRIALS).to_pylist()
    widths = {r["trial_id"]: r["config.model.widths"] for r in rows_before}
    assert widths["t0"] == "[8,16]" and isinstance(rows_before[0]["config.optim.nesterov"], bool)
    assert json.loads(next(r for r in rows_before if r["trial_id"] == "t0")["overrides"]) == {"model.widths": [8, 16]}

    # resume twice with one more seed (the earlier trials again plus new ones): earlier rows never move
    for extra in (4, 5):
        store = ResultsStore(str(root))
        new = _info(f"t{extra}", "a", extra, tiny(model={"widths": [8, 16]}, optim={"nesterov": True}), extra)
        store.prepare([trial_row(i, "completed", "", None, [], "val_accuracy", "max") for i in [*first, new]])
        _record(store, new)
    after = _part_bytes(root)
    assert {k: after[k] for k in before} == before
    rows = {r["trial_id"]: r for r in pd.read_parquet(root / TRIALS).to_dict("records")}
    assert len(rows) == 6 and rows["t0"]["config.model.widths"] == "[8,16]" == rows["t4"]["config.model.widths"]
    # a failed trial's missing values keep their column's type
    assert pq.read_table(root / TRIALS).schema.field("test_accuracy").type == "double"
    assert rows["t3"]["status"] == "failed" and pd.isna(rows["t3"]["test_accuracy"])
    assert ResultsStore(str(root)).finished_ids() == {"t0", "t1", "t2", "t4", "t5"}


def test_recording_a_trial_writes_only_its_own_parts(tmp_path, monkeypatch):
    store = ResultsStore(str(tmp_path / "s"))
    infos = [_info(f"t{i:03d}", "a", i, tiny(), i) for i in range(40)]
    store.prepare([trial_row(i, "completed", "", None, [], "val_accuracy", "max") for i in infos])
    written: list[str] = []
    real = results.write_atomically
    monkeypatch.setattr(results, "write_atomically", lambda uri, fn: (written.append(uri), real(uri, fn)))
    for info in infos:
        written.clear()
        _record(store, info)
        assert sorted(Path(u).parent.name + "/" + Path(u).name for u in written) == [
            f"{EPOCHS}/{info['trial_id']}.parquet", f"{TRIALS}/{info['trial_id']}.parquet"]
    assert len(pd.read_parquet(tmp_path / "s" / TRIALS)) == 40
    assert len(pd.read_parquet(tmp_path / "s" / EPOCHS)) == 80


def test_readers_load_whole_tables_while_a_write_is_half_done(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    root = tmp_path / "s"
    store = ResultsStore(str(root))
    infos = [_info(f"t{i}", "a", i, tiny(), i) for i in range(3)]
    store.prepare([trial_row(i, "completed", "", None, [], "val_accuracy", "max") for i in infos])
    for info in infos:
        _record(store, info)
    # a writer that crashed (or is still writing) leaves only a hidden temporary file: readers skip it
    (root / TRIALS / ".0123abcd.tmp").write_bytes(b"PAR1 half a file")
    assert len(pd.read_parquet(root / TRIALS)) == 3
    assert duckdb.sql(f"select count(*) from read_parquet('{root / TRIALS}/*.parquet')").fetchall()[0][0] == 3
    assert duckdb.sql(f"select count(*) from read_parquet('{root / EPOCHS}/*.parquet')").fetchall()[0][0] == 6


def test_a_column_that_gains_a_new_kind_on_resume_keeps_every_stored_value(tmp_path):
    root = tmp_path / "s"
    a = _info("t0", "a", 0, tiny(model={"widths": [8, 16], "dropout": 0.0}))
    store = ResultsStore(str(root))
    store.prepare([trial_row(a, "completed", "", None, [], "val_accuracy", "max")])
    _record(store, a)
    # the edited sweep adds an arm whose dropout is a per-layer list: the column becomes JSON text
    b = _info("t1", "b", 0, tiny(model={"widths": [8, 16], "dropout": [0.1, 0.2]}), 1)
    store = ResultsStore(str(root))
    store.prepare([trial_row(i, "completed", "", None, [], "val_accuracy", "max") for i in (a, b)])
    _record(store, b)
    rows = {r["trial_id"]: r for r in pq.read_table(root / TRIALS).to_pylist()}
    assert json.loads(rows["t0"]["config.model.dropout"]) == 0.0
    assert json.loads(rows["t1"]["config.model.dropout"]) == [0.1, 0.2]


def test_directories_of_another_semantics_version_are_refused(tmp_path):
    sweep = parse_sweep({"name": "s", "base": tiny()})
    out = tmp_path / "s"
    out.mkdir()
    (out / TRIALS).mkdir()
    (out / STORE_FILE).write_text(json.dumps({"semantics": 1, "trials": {}, "epochs": {}}))
    with pytest.raises(UserError, match="semantics version 1"):
        prepare_out(sweep, str(out), resume=True)
    # a rayclf 0.1 directory: one whole-file table and no store metadata
    old = tmp_path / "old"
    old.mkdir()
    results.write_table([{"trial_id": "x", "status": "completed"}], str(old / TRIALS))
    with pytest.raises(UserError, match="rayclf 0.1"):
        prepare_out(sweep, str(old), resume=True)


def test_stopped_early_trials_are_finished_unless_asked(tmp_path):
    store = ResultsStore(str(tmp_path / "s"))
    infos = [_info(f"t{i}", "a", i, tiny(), i) for i in range(4)]
    store.prepare([trial_row(i, "completed", "", None, [], "val_accuracy", "max") for i in infos])
    for info, status in zip(infos, ("completed", "diverged", "stopped_early", "failed"), strict=True):
        _record(store, info, status=status)
    assert store.finished_ids() == {"t0", "t1", "t2"}
    assert store.finished_ids(rerun_stopped=True) == {"t0", "t1"}


def test_trial_identity_hashes_only_what_differs_from_the_defaults():
    cfg = build_config(tiny(seed=3))
    assert cfg.identity() == {
        "seed": 3, "data.synthetic.num_train": 400, "data.synthetic.num_test": 200, "data.synthetic.num_classes": 4,
        "data.synthetic.image_size": 16, "data.synthetic.difficulty": 0.0, "model.widths": [8, 16],
        "train.epochs": 2, "train.batch_size": 32,
        "sched.name": "constant"}
    # golden value: this id must survive releases that add options (change it only with SEMANTICS_VERSION)
    assert cfg.fingerprint() == "cff40b966d6740f4"
    # spelling a default out changes nothing; changing a value does
    assert build_config(tiny(seed=3, optim={"name": "sgd"})).fingerprint() == cfg.fingerprint()
    assert build_config(tiny(seed=3, optim={"lr": 0.07})).fingerprint() != cfg.fingerprint()
