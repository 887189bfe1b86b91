"""The append-only results store and trial identity (no Ray): schema, O(1) recording, readers, resume rules."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

import rayclf.results as results
from rayclf.config import UserError, build_config
from rayclf.results import EPOCHS, MIGRATION, STORE_FILE, TRIALS, ResultsStore
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


def test_legacy_trial_identity_hashes_only_what_differs_from_the_defaults():
    """Identity version 1 (every directory written before versions were recorded) computes ids as it always did."""
    from rayclf.identity import LEGACY_VERSION, identity_values, trial_id

    cfg = build_config(tiny(seed=3))
    assert identity_values(cfg, version=LEGACY_VERSION) == {
        "seed": 3, "data.synthetic.num_train": 400, "data.synthetic.num_test": 200, "data.synthetic.num_classes": 4,
        "data.synthetic.image_size": 16, "data.synthetic.difficulty": 0.0, "model.widths": [8, 16],
        "train.epochs": 2, "train.batch_size": 32,
        "sched.name": "constant"}
    # golden value: this id must survive releases that add options (change it only with SEMANTICS_VERSION)
    assert trial_id(cfg, version=LEGACY_VERSION) == "cff40b966d6740f4"
    # spelling a default out changes nothing; changing a value does
    v1 = {"version": LEGACY_VERSION}
    assert trial_id(build_config(tiny(seed=3, optim={"name": "sgd"})), **v1) == trial_id(cfg, **v1)
    assert trial_id(build_config(tiny(seed=3, optim={"lr": 0.07})), **v1) != trial_id(cfg, **v1)


# ------------------------------------------------------------------------------ crash-safe schema migrations
class Killed(Exception):
    """Stands in for the process dying between two writes."""


def _plain_row(i: int, **values) -> dict:
    return {"trial_id": f"t{i}", "sweep": "s", "arm": "a", "seed": i, "position": i, "status": "completed", **values}


STORED = [_plain_row(i, **{"x.float": 0.25 * (i + 1), "x.int": i, "x.text": "1" if i % 2 else "a",
                           "x.flag": bool(i % 2), "x.none": None}) for i in range(4)]
# the edited sweep's new trial widens every custom column (float, int, text, bool → JSON / float; all-empty gains
# values) and adds one
WIDER = _plain_row(4, **{"x.float": [0.1, 0.2], "x.int": 2.5, "x.text": ["a"], "x.flag": 3, "x.none": 0.5,
                         "x.added": "new"})


def _expected(row: dict) -> dict:
    """A stored row's values after the widening: the same meaning, in the wider kinds."""
    return {"x.float": json.dumps(row["x.float"]), "x.int": float(row["x.int"]), "x.text": json.dumps(row["x.text"]),
            "x.flag": json.dumps(row["x.flag"]), "x.none": None, "x.added": None}


def _values(rows: list[dict]) -> dict[str, dict]:
    return {r["trial_id"]: {k: r[k] for k in ("x.float", "x.int", "x.text", "x.flag", "x.none", "x.added")}
            for r in rows if r["trial_id"] != "t4"}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_migration_killed_after_any_part_is_finished_by_the_next_writer_and_never_by_a_reader(tmp_path,
                                                                                                 monkeypatch):
    import shutil

    import rayclf.storage as storage

    template = tmp_path / "template"
    store = ResultsStore(str(template))
    store.prepare(STORED)
    for row in STORED:
        store.add(row, [])
    expected = {r["trial_id"]: _expected(r) for r in STORED}
    writes = len(STORED) + 2  # _store.json ahead, each part, _store.json done
    for k in range(1, writes):
        root = tmp_path / f"killed-after-{k}"
        shutil.copytree(template, root)
        count = [0]
        real = storage.write_atomically

        def dying(uri, fn, k=k, count=count, real=real):
            real(uri, fn)
            count[0] += 1
            if count[0] == k:
                raise Killed

        monkeypatch.setattr(results, "write_atomically", dying)
        monkeypatch.setattr(storage, "write_atomically", dying)
        with pytest.raises(Killed):
            ResultsStore(str(root)).prepare([*STORED, WIDER])  # a resume bringing the wider trial
        monkeypatch.undo()
        assert MIGRATION in json.loads((root / STORE_FILE).read_text()), k

        # a reader sees every value at the new kinds and writes nothing
        before = _snapshot(root)
        assert _values(ResultsStore(str(root), read_only=True).trials) == expected, k
        assert _snapshot(root) == before, k

        # the next writer finishes the migration before anything else; every part then reads back alike
        store = ResultsStore(str(root))
        assert MIGRATION not in json.loads((root / STORE_FILE).read_text())
        assert _values(store.trials) == expected == _values(pq.read_table(root / TRIALS).to_pylist()), k
        store.prepare([*STORED, WIDER])
        store.add(WIDER, [])
        # a second widening (int column → JSON) encodes nothing twice
        store = ResultsStore(str(root))
        store.prepare([*STORED, WIDER, _plain_row(5, **{"x.int": [1]})])
        rows = {r["trial_id"]: r for r in pd.read_parquet(root / TRIALS).to_dict("records")}
        assert rows["t0"]["x.float"] == "0.25" and rows["t1"]["x.text"] == '"1"' and rows["t3"]["x.int"] == "3.0"
        assert rows["t4"]["x.float"] == "[0.1,0.2]" and rows["t4"]["x.int"] == "2.5", k


def test_recoding_is_idempotent_for_values_a_killed_rewrite_already_encoded():
    assert results.recode("0.25", "float", "json") == "0.25"  # a part rewritten before _store.json was
    assert results.recode(0.25, "float", "json") == "0.25"
    assert results.recode("1", "string", "json") == '"1"'  # text is always text, however it looks
    assert results.recode('"1"', "json", "json") == '"1"'


def test_a_uri_query_configures_the_filesystem_and_never_enters_a_key():
    from rayclf.storage import filesystem, join, to_uri

    out = "s3://bkt/out?region=eu-west-1&endpoint_override=127.0.0.1:9000&scheme=http"
    part = join(join(out, TRIALS), "t1.parquet")
    assert part == "s3://bkt/out/trials.parquet/t1.parquet?region=eu-west-1&endpoint_override=127.0.0.1:9000&scheme=http"
    fs, path = filesystem(part)
    assert path == "bkt/out/trials.parquet/t1.parquet" and fs.region == "eu-west-1"
    assert to_uri(join(out, "_ray"), "bkt/out/_ray/run/trial-t1/checkpoint_000001") == (
        "s3://bkt/out/_ray/run/trial-t1/checkpoint_000001?region=eu-west-1&endpoint_override=127.0.0.1:9000&scheme=http")
    assert join("runs/x", STORE_FILE) == "runs/x/_store.json" and to_uri("/abs/_ray", "/abs/_ray/c") == "/abs/_ray/c"
