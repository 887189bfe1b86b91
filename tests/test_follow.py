"""Following and questioning a sweep from anywhere: ``rayclf status`` (finished, running, on S3), the notebook API
of the README executed as written, cost beside accuracy and its Pareto front."""

from __future__ import annotations

import io
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rayclf.aggregate import ArmRow, add_costs, arm_table, format_table, pareto_front
from rayclf.cli import main
from rayclf.results import ResultsStore, write_text
from rayclf.sweep.callbacks import trial_row
from rayclf.sweep.decisions import Decision, DecisionLog
from rayclf.sweep.spec import parse_sweep
from rayclf.sweep.status import judge_driver, read_status, status_json, watch
from rayclf.sweep.trialspec import TrialSpec

from .conftest import tiny
from .test_report import make_sweep_dir

ROOT = Path(__file__).resolve().parents[1]
GRID = {"name": "g", "base": tiny(train={"epochs": 3}), "seeds": [0, 1],
        "search": {"grid": {"optim.lr": [0.05, 0.01]}}}


def add_trial(store: ResultsStore, trial, status: str, value: float, seconds: float = 2.0, params: int = 500):
    """Store one finished trial with three epochs of ``seconds`` each."""
    epochs = [{"epoch": e, "val_accuracy": value, "train_accuracy": value, "val_loss": 1.0, "train_loss": 1.0,
               "epoch_seconds": seconds} for e in (1, 2, 3)]
    info = {"trial_id": trial.trial_id, "sweep": "g", "arm": trial.arm.label, "seed": trial.seed, "stage": None,
            "config": trial.config.to_dict(), "overrides": {}}
    summary = {"test_accuracy": value, "params": params, "seconds": 3 * seconds} if status == "completed" else None
    store.add(trial_row(info, status, "", summary, epochs, "val_accuracy", "max"),
              [{**e, "arm": trial.arm.label, "seed": trial.seed} for e in epochs])


def half_run(root: Path, heartbeat_age: float = 1.0, host: str = "elsewhere") -> list:
    """A 2 arms × 2 seeds sweep directory mid-run: one trial completed, one failed, one running (its epoch 1 of
    3, per the driver's heartbeat from another host), one waiting."""
    sweep = parse_sweep(GRID)
    trials = sweep.trials(sweep.arms())
    write_text(str(root / "sweep.yaml"), yaml.safe_dump(GRID))
    store = ResultsStore(str(root))
    add_trial(store, trials[0], "completed", 0.8)
    add_trial(store, trials[1], "failed", 0.5)
    now = time.time()
    lock = {"host": host, "pid": 999999, "start_time": now - 60, "session_dir": None, "started": now - 60,
            "heartbeat": now - heartbeat_age,
            "running": {trials[2].trial_id: {"arm_id": trials[2].arm_id, "label": trials[2].arm.label,
                                             "seed": trials[2].seed, "epoch": 1, "epochs": 3}}}
    write_text(str(root / "_driver.json"), json.dumps(lock))
    return trials


def test_status_mid_run_counts_time_left_and_driver(tmp_path):
    trials = half_run(tmp_path)
    st = read_status(str(tmp_path))
    assert st.counts == {"done": 1, "running": 1, "failed": 1, "waiting": 1, "total": 4}
    assert st.driver.state == "alive"
    # 2 s per epoch measured; the running trial has 2 epochs left, the waiting one 3; one trial at a time
    assert st.eta_seconds() == pytest.approx(2.0 * (2 + 3))
    res = CliRunner().invoke(main, ["status", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "1 done, 1 running, 1 failed, 1 waiting of 4 trials; about 10s left" in res.output
    assert re.search(rf"{re.escape(trials[2].arm.label)}\s+{trials[2].seed}\s+1/  3", res.output)
    # the arm table is the CLI's own (aggregate.format_table of aggregate.arm_table)
    assert format_table(add_costs(arm_table(ResultsStore(str(tmp_path)).trials, "max"),
                                  ResultsStore(str(tmp_path)).trials), "val_accuracy") in res.output


def test_driver_judged_by_heartbeat_and_pid(tmp_path):
    me = socket.gethostname()
    assert judge_driver(None, 100.0, me).state == "none"
    fresh = {"host": "node-7", "pid": 1, "heartbeat": 95.0}
    assert judge_driver(fresh, 100.0, me).state == "alive"
    assert judge_driver({**fresh, "heartbeat": 50.0}, 100.0, me).state == "gone"  # 5 intervals missed
    assert judge_driver({**fresh, "host": me, "pid": 999999}, 100.0, me).state == "gone"  # pid not running here
    assert judge_driver({**fresh, "host": me, "pid": os.getpid()}, 100.0, me).state == "alive"
    assert judge_driver({"host": "node-7", "pid": 1}, 100.0, me).state == "unknown"
    half_run(tmp_path, heartbeat_age=120.0)
    st = read_status(str(tmp_path))
    assert st.driver.state == "gone" and st.running == [] and st.counts["waiting"] == 2
    res = CliRunner().invoke(main, ["status", str(tmp_path)])
    assert "2 waiting of 4 trials; no driver running" in res.output and "--resume continues" in res.output


def test_status_finished_sweep_json_schema_and_decisions(tmp_path):
    src = make_sweep_dir(tmp_path / "s")
    log = DecisionLog(str(src))
    log.record(Decision("stop", "arm-1", "arm-1", "lr=0.001,opt=sgd,dropout=0.5", n_seeds=3,
                        detail={"rule": "asha", "rung": 1}))
    log.record(Decision("winner", "0", "arm-2", "baseline", stage=0, n_seeds=3))
    res = CliRunner().invoke(main, ["status", str(src), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert set(out) == {"sweep", "root", "metric", "mode", "trials", "statuses", "eta_seconds", "driver", "running",
                        "arms", "decisions", "reused", "reused_from"}
    assert (out["reused"], out["reused_from"]) == (0, [])  # no trial cache: nothing reused
    assert out["trials"] == {"done": 36, "running": 0, "failed": 0, "waiting": 0, "total": 36}
    assert out["driver"]["state"] == "none" and out["running"] == []
    assert [d["kind"] for d in out["decisions"]] == ["stop", "winner"]
    assert out["decisions"][0]["detail"] == {"rule": "asha", "rung": 1}
    rows = {r.arm: r for r in arm_table(ResultsStore(str(src)).trials, "max")}
    assert len(out["arms"]) == 12
    for a in out["arms"]:
        r = rows[a["arm"]]
        assert (a["n"], a["mean"], a["std"], a["delta"], a["p_value"], a["rank"]) == (
            r.n, r.mean, r.std, r.delta, r.p_value, r.rank)
        assert (a["params"], a["epoch_seconds"], a["trial_hours"]) == (1000, 1.0, pytest.approx(9 / 3600))
    text = CliRunner().invoke(main, ["status", str(src)]).output
    assert "36 done, 0 running, 0 failed, 0 waiting of 36 trials; nothing left to run" in text
    assert "stop      lr=0.001,opt=sgd,dropout=0.5 after 3 seed(s) (rule asha, rung 1)" in text
    assert "winner    stage 1: baseline" in text
    bad = CliRunner().invoke(main, ["status", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and "not a sweep directory" in bad.output


def test_watch_refreshes_until_the_driver_is_gone(tmp_path):
    trials = half_run(tmp_path, host="elsewhere")
    shown: list[str] = []

    def finish() -> None:
        time.sleep(0.6)
        add_trial(ResultsStore(str(tmp_path)), trials[2], "completed", 0.7)
        time.sleep(0.4)
        (tmp_path / "_driver.json").unlink()

    t = threading.Thread(target=finish)
    t.start()
    last = watch(str(tmp_path), 0.1, shown.append, terminal=False, json_out=True)
    t.join()
    states = [json.loads(s)["trials"] for s in shown]
    assert states[0]["running"] == 1 and states[-1] == {"done": 2, "running": 0, "failed": 1, "waiting": 1,
                                                        "total": 4}
    # one line per change (the heartbeat ageing is no change), none repeated: start, trial 3 done, driver gone
    assert len(shown) == 3, shown
    assert last.driver.state == "none"


def test_pareto_front_on_a_constructed_table():
    # (trial-hours, accuracy): c is cheaper and better than b; e ties a's cost but is worse; d is the best
    pts = {"a": (1.0, 0.70), "b": (3.0, 0.72), "c": (2.0, 0.75), "d": (5.0, 0.80), "e": (1.0, 0.60),
           "f": (6.0, 0.80)}
    names = list(pts)
    assert [names[i] for i in pareto_front(list(pts.values()), "max")] == ["a", "c", "d"]
    assert [names[i] for i in pareto_front(list(pts.values()), "min")] == ["e"]

    from rayclf.report import figures as F

    rows = [ArmRow(n, None, 3, v, 0.01, None, None, None, params=int(1000 * c), trial_hours=c)
            for n, (c, v) in pts.items()]
    fig = F.pareto(rows, "val_accuracy", "max")
    for ax in fig.axes:
        ringed = [c for c in ax.collections if c.get_label() == "Pareto front"]
        assert len(ringed) == 1
        xs = sorted(float(x) for x, _ in ringed[0].get_offsets())
        scale = 1.0 if ax.get_xlabel().startswith("trial-hours") else 1000.0
        assert xs == pytest.approx([scale * c for c in (1.0, 2.0, 5.0)])


def test_costs_per_arm_count_every_trial_that_trained(tmp_path):
    sweep = parse_sweep(GRID)
    trials = sweep.trials(sweep.arms())
    store = ResultsStore(str(tmp_path))
    add_trial(store, trials[0], "completed", 0.8, seconds=2.0, params=500)
    add_trial(store, trials[1], "failed", 0.5, seconds=4.0)  # failed, but it ran 3 epochs of 4 s
    rows = add_costs(arm_table(store.trials, "max"), store.trials)
    first = next(r for r in rows if r.arm == trials[0].arm.label)
    assert first.params == 500
    assert first.epoch_seconds == pytest.approx((6.0 + 12.0) / 6)
    assert first.trial_hours == pytest.approx(18.0 / 3600)


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- notebook-example", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    return block


def test_readme_notebook_example_runs_and_equals_the_cli_table(tmp_path, monkeypatch):
    src = make_sweep_dir(tmp_path / "runs" / "quickstart")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), ns)  # the example exactly as a reader runs it
    arms, sweep = ns["arms"], ns["sweep"]
    assert (tmp_path / "runs" / "quickstart" / "report" / "index.html").is_file()
    assert ns["fig"].axes and str(sweep.trials["seed"].dtype) == "Int64" and str(sweep.trials["arm"].dtype) == "string"
    assert sweep.epochs["epoch_seconds"].dtype == "float64"
    cli = json.loads(CliRunner().invoke(main, ["status", str(src), "--json"]).output)["arms"]
    assert list(arms.index) == [a["arm"] for a in cli]
    for a in cli:
        row = arms.loc[a["arm"]]
        for key in ("n", "mean", "std", "ci95", "delta", "delta_ci95", "p_value", "test_mean", "rank", "params",
                    "epoch_seconds", "trial_hours"):
            want, got = a[key], row[key]
            assert (want is None and (got is None or (isinstance(got, float) and math.isnan(got)))) or got == want
    with pytest.raises(Exception, match="did you mean 'pareto'"):
        sweep.figure("paretto")


# ----------------------------------------------------------------------------------- object storage
def test_status_on_s3_reads_only_new_parts(s3_server, monkeypatch, tmp_path):
    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    from rayclf.sweepdir import PartReader

    uri = "s3://bkt/sweeps/g"
    sweep = parse_sweep(GRID)
    trials = sweep.trials(sweep.arms())
    write_text(f"{uri}/sweep.yaml", yaml.safe_dump(GRID))
    store = ResultsStore(uri)
    add_trial(store, trials[0], "completed", 0.8)
    add_trial(store, trials[1], "completed", 0.7)
    reader = PartReader(uri)
    assert read_status(uri, reader).counts["done"] == 2 and reader.reads == 4  # 2 trial + 2 epoch parts
    read_status(uri, reader)
    assert reader.reads == 4  # nothing new: nothing downloaded
    add_trial(store, trials[2], "completed", 0.6)
    assert read_status(uri, reader).counts == {"done": 3, "running": 0, "failed": 0, "waiting": 1, "total": 4}
    assert reader.reads == 6  # only the new trial's two parts
    run = subprocess.run([str(Path(sys.executable).with_name("rayclf")), "status", uri, "--json"],
                         env={**os.environ, **s3_server, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["trials"]["done"] == 3


# ----------------------------------------------------------------------------------- a real running sweep
@pytest.mark.ray
@pytest.mark.timeout(90)
def test_status_while_a_sweep_runs(tmp_path):
    f = tmp_path / "live.yaml"
    base = tiny(train={"epochs": 4, "batch_size": 16},
                data={"synthetic": {"num_train": 1200, "num_test": 100, "num_classes": 4, "image_size": 16}})
    f.write_text(yaml.safe_dump({"name": "live", "base": base, "seeds": [0, 1],
                                 "search": {"grid": {"optim.lr": [0.05, 0.01]}},
                                 "resources": {"cpus": 1, "max_concurrent": 1}}))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ""}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("rayclf")), "sweep", str(f), "--out", str(out),
                             "--num-cpus", "1", "--quiet", "--wandb", "disabled"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            if (out / "sweep.yaml").exists():
                st = read_status(str(out))
                seen.append((st.driver.state, st.counts["done"], st.counts["total"]))
            time.sleep(0.5)
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    mid = [s for s in seen if s[0] == "alive" and 0 < s[1] < 4]
    assert mid and all(s[2] == 4 for s in seen), seen  # seen partly done, with its driver alive
    final = status_json(read_status(str(out)))
    assert final["driver"]["state"] == "none" and final["trials"]["done"] == 4 and final["eta_seconds"] == 0.0
    assert len(final["arms"]) == 2 and all(a["n"] == 2 and a["params"] for a in final["arms"])


# ----------------------------------------------------------------------------------- measured estimates
class FakeClock:
    """Each call is ``dt`` seconds after the previous one: a timed block always takes exactly ``dt``."""

    def __init__(self, dt: float):
        self.t, self.dt = 0.0, dt

    def __call__(self) -> float:
        self.t += self.dt
        return self.t


def test_calibrated_estimate_arithmetic_with_a_fake_clock():
    from rayclf.sweep import calibrate as C
    from rayclf.sweep.plan import dry_run_text

    spec = {**GRID, "resources": {"cpus": 1, "max_concurrent": 3}}
    sweep = parse_sweep(spec)
    trials = sweep.trials(sweep.arms())
    cfg = trials[0].config
    t = C.measure_shape(cfg.to_dict(), FakeClock(30.0))
    n_eval = min(2 * cfg.train.eval_batch_size, 1024)
    assert t.seconds_per_step == pytest.approx(30.0 / C.TIMED_STEPS)  # 3 timed steps took one tick
    assert t.eval_seconds_per_image == pytest.approx(30.0 / n_eval)
    # tiny(): 400 synthetic images, 10% held out → 360 train (11 steps of 32), 40 val; 200 test; 3 epochs
    per_epoch = 11 * t.seconds_per_step + 40 * t.eval_seconds_per_image
    trial = 3 * per_epoch + 200 * t.eval_seconds_per_image
    assert C.trial_seconds(cfg, t) == pytest.approx(trial)
    est = C.estimate(trials, {C.timing_key(cfg): t}, slots=3)
    assert est.trial_hours == pytest.approx(4 * trial / 3600)
    assert est.wall_hours == pytest.approx(2 * trial / 3600)  # 4 equal trials on 3 slots: two rounds
    assert C.wall_seconds([3, 1, 1, 1], 2) == 3 and C.wall_seconds([1, 1, 1], 2) == 2
    text = dry_run_text(sweep, calibrate=True, price=2.5, clock=FakeClock(30.0))
    assert f"estimate: {4 * trial / 3600:.2f} CPU trial-hours (measured)" in text
    assert f"cost: {4 * trial / 3600 * 2.5:,.2f} at 2.5 per trial-hour" in text
    assert f"{per_epoch:.1f} s/epoch" in text and "a guess" not in text
    guess = dry_run_text(sweep, price=2.5)
    assert "a guess from FLOPs, not a measurement" in guess and "cost (guessed)" in guess
    bad = CliRunner().invoke(main, ["sweep", "x.yaml", "--calibrate"])
    assert bad.exit_code == 2 and "go with --dry-run" in bad.output


def test_calibrated_epoch_time_is_near_a_real_training_of_the_same_shape():
    from rayclf.config import build_config
    from rayclf.sweep import calibrate as C
    from rayclf.train.engine import fit

    cfg = build_config(tiny(data={"synthetic": {"num_train": 2000, "num_test": 200, "num_classes": 4,
                                                "image_size": 16}}, train={"epochs": 3, "batch_size": 32}))
    predicted = C.trial_seconds(cfg, C.measure_shape(cfg.to_dict())) / 3
    history = fit(cfg).history
    measured = min(h["epoch_seconds"] for h in history[1:])  # past the first epoch's warm-up
    # a loose sanity bound (a shared 2-core machine's timings vary several-fold): the right order of magnitude
    assert measured / 10 < predicted < measured * 10, (predicted, measured)


# ----------------------------------------------------------------------------------- nodes by name
def test_live_view_names_nodes_by_host_not_by_ray_node_id(monkeypatch):
    from types import SimpleNamespace

    from rayclf.sweep import callbacks
    from rayclf.sweep.live import LiveView

    known, unknown = "a" * 56, "f00dcafe" + "0" * 48
    asked = []

    def names():
        asked.append(1)
        return {known: "gpu-worker-3"}

    monkeypatch.setattr(callbacks, "node_names", names)
    view = LiveView(total=2, metric="val_accuracy", terminal=False, stream=io.StringIO())
    cb = callbacks.LiveCallback(view, SimpleNamespace(metric="val_accuracy", rows={}))
    for tid, node in (("t1", known), ("t2", unknown)):
        trial = SimpleNamespace(config={"trial": TrialSpec(tid, "s", "a", None, 0, None, 0, {}, {}, 3)})
        cb.on_trial_start(0, [], trial)
        for epoch in (1, 2):
            cb.on_trial_result(0, [], trial, {"epoch": epoch, "val_accuracy": 0.5, "node": node})
    assert view.running["t1"].node == "gpu-worker-3"
    assert view.running["t2"].node == "f00dcafe"  # not in Ray's node table: the short id
    assert len(asked) == 2  # one lookup per new node, none per epoch
    table = view._running_table()
    assert "gpu-worker-3" in str([c._cells for c in table.columns])
