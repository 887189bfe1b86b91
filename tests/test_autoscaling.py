"""Sweeps on a real autoscaling cluster (Ray's fake multi-node provider, started with ``ray start``): the head has
no trial resources, worker nodes (1 CPU, 1 logical GPU) come from the autoscaler while trials wait and go when
idle. One cluster serves the whole module; ``rayclf sweep --address`` runs against it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from rayclf.config import UserError
from rayclf.sweep.plan import DRIVER_RESOURCE
from rayclf.sweep.runner import run_sweep
from rayclf.sweep.spec import parse_sweep

from .conftest import tiny
from .fake_cluster import FakeAutoscalingCluster

pytestmark = [pytest.mark.ray, pytest.mark.slow]
MAX_WORKERS = 2


def _base(epochs: int, **train) -> dict:
    # logical GPUs: trials hold a GPU of the node but train on its CPU (there is no CUDA here)
    return tiny(data={"synthetic": {"num_train": 400, "num_test": 100, "num_classes": 4, "image_size": 16,
                                    "difficulty": 0.0}},
                train={"epochs": epochs, "batch_size": 40, "device": "cpu", **train})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    c = FakeAutoscalingCluster(
        tmp_path_factory.mktemp("fake"), {"CPU": 0, DRIVER_RESOURCE: 1000},
        {"ray.worker.gpu": {"resources": {"CPU": 1, "GPU": 1, "object_store_memory": 100_000_000},
                            "max_workers": MAX_WORKERS}}, idle_timeout_minutes=0.1)
    c.start()
    try:
        ray.init(address=c.address, log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _head_id() -> str:
    import ray

    return next(n["NodeID"] for n in ray.nodes() if n["Resources"].get("node:__internal_head__"))


@pytest.mark.timeout(60)
def test_local_out_on_a_multi_node_cluster_fails_the_preflight(cluster, tmp_path):
    """A sweep directory only the driver sees: exit 2 with the fix, before any trial. (On one machine every
    path is shared, so the test uses /proc/self/cwd: the driver's working directory, another folder for the
    processes of the worker node.)"""
    f = tmp_path / "local.yaml"
    f.write_text(yaml.safe_dump({"name": "localout", "base": _base(1), "resources": {"cpus": 1, "gpus": 1}}))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
    rayclf = str(Path(sys.executable).with_name("rayclf"))
    proc = subprocess.run([rayclf, "sweep", str(f), "--address", cluster.address, "--out",
                           "/proc/self/cwd/runs/localout", "--quiet"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr
    assert "pre-flight" in err and "not reachable from worker node" in err and "s3://" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "runs" / "localout" / "trials.parquet").exists()  # no trial ran


@pytest.mark.timeout(60)
def test_preflight_runs_one_step_per_shape_on_a_worker_and_reports_failures(cluster, tmp_path, monkeypatch):
    from rayclf.sweep import preflight
    from rayclf.sweep.preflight import Preflight, check_node

    spec = parse_sweep({"name": "shapes", "base": _base(1), "resources": {"cpus": 1, "gpus": 1},
                        "search": {"grid": {"model.widths": [[8, 16], [4, 8]]}}, "seeds": [0, 1]})
    trials = spec.trials(spec.arms())
    check = Preflight(spec, str(tmp_path / "_ray"), timeout_s=120)
    report = check.check(trials)
    assert report is not None and not report.problems
    assert report.node != _head_id()  # on a node the autoscaler added, not the head
    assert sorted(report.steps) == sorted({t.arm.label for t in trials})  # one step per shape, not per seed
    assert check.check(trials) is None  # shapes already checked are not checked again
    assert not list((tmp_path / "_ray").glob(".rayclf-preflight-*"))  # the marker is gone

    # trials that train on their GPU, on a node whose torch sees none: one clear failure
    gpu = parse_sweep({"name": "gpu", "base": _base(1, device="auto"), "resources": {"cpus": 1, "gpus": 1}})
    with pytest.raises(UserError, match=r"(?s)pre-flight check failed.*sees no GPU.*CUDA build of torch"):
        Preflight(gpu, str(tmp_path / "_ray"), timeout_s=120).check(gpu.trials(gpu.arms()))

    # a failing step is reported with its reason (the check itself, run here)
    def boom(config, device):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (40x64 and 32x4)")

    monkeypatch.setattr(preflight, "_one_step", boom)
    (tmp_path / "_ray" / "m").write_text("tok")
    r = check_node(str(tmp_path / "_ray" / "m"), "tok", preflight.distinct_shapes(trials[:1]), 1.0)
    assert r.problems == [f"one training step of arm '{trials[0].arm.label}' failed on worker node {r.ip} "
                          f"(node {r.node[-8:]}): RuntimeError: mat1 and mat2 shapes cannot be multiplied "
                          "(40x64 and 32x4)"]


def _wait_for_no_pending_demand(timeout: float = 30) -> None:
    from ray.util.placement_group import placement_group_table

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [v for v in placement_group_table().values() if v["state"] != "REMOVED"]
        if not live:
            return
        time.sleep(1)
    raise AssertionError(f"placement groups left behind: {live}")


@pytest.mark.timeout(180)
def test_sweep_from_zero_workers_scales_up_reuses_nodes_and_scales_down(cluster, tmp_path):
    import ray

    assert cluster.wait_for_scale_down(60)  # starts from zero worker nodes
    head = _head_id()
    base = _base(3)
    base["data"]["synthetic"]["num_train"] = 3200  # trials outlast a node's start: the second added node is used
    spec = {"name": "autoscale", "base": base, "resources": {"cpus": 1, "gpus": 1},
            "search": {"grid": {"optim.lr": [0.05, 0.02, 0.01]}}}  # 3 trials, at most 2 nodes
    out = tmp_path / "as"
    outcome = run_sweep(parse_sweep(spec), out=str(out), address=cluster.address, live=False)
    assert [r["status"] for r in outcome.rows] == ["completed"] * 3, [r["reason"] for r in outcome.rows]
    epochs = pq.read_table(out / "epochs.parquet").to_pylist()
    nodes = {e["node"] for e in epochs}
    assert head not in nodes and len(nodes) == MAX_WORKERS  # on added nodes, two at once, one reused
    for r in outcome.rows:
        assert sorted(e["epoch"] for e in epochs if e["trial_id"] == r["trial_id"]) == [1, 2, 3]

    # a data-parallel trial: a Train worker group across two added nodes; nothing left reserved after it
    ddp = {"name": "autoscale-ddp", "base": _base(2), "resources": {"cpus": 1, "num_workers": 2}}
    outcome = run_sweep(parse_sweep(ddp), out=str(tmp_path / "ddp"), address=cluster.address, live=False)
    (row,) = outcome.rows
    assert row["status"] == "completed" and row["world_size"] == 2, row["reason"]
    _wait_for_no_pending_demand()
    assert cluster.wait_for_scale_down(90), [n["NodeID"] for n in cluster.worker_nodes()]
    assert ray.cluster_resources().get("GPU", 0) == 0


@pytest.mark.timeout(60)
def test_janitor_removes_a_worker_group_placement_group_nobody_owns(cluster):
    """A Train worker group's placement group still waiting for nodes when its controller ended: it becomes
    CREATED when the autoscaler's nodes arrive and holds them with no trial. The janitor removes it (and only
    placement groups of the worker-group shape)."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table

    from rayclf.sweep.callbacks import PlacementGroupJanitor, Recorder

    leaked = placement_group([{"CPU": 1.0}] * 2)  # as Train V2 creates it for num_workers: 2, cpus: 1
    other = placement_group([{DRIVER_RESOURCE: 0.001}])  # not the worker-group shape (a Tune trial's, say)
    ray.get(leaked.ready(), timeout=120)  # the autoscaler brought two nodes up for it
    janitor = PlacementGroupJanitor(Recorder.__new__(Recorder), {"CPU": 1, "GPU": 0}, num_workers=2)
    janitor.recorder.pgs = {}
    assert janitor.orphans() == [leaked.id.hex()]
    janitor.on_experiment_end([])
    table = placement_group_table()
    assert table[leaked.id.hex()]["state"] == "REMOVED" and table[other.id.hex()]["state"] != "REMOVED"
    ray.util.remove_placement_group(other)
    assert cluster.wait_for_scale_down(90)


def _checkpointed(out: Path) -> set[str]:
    return {p.parts[-3] for p in (out / "_ray").rglob("checkpoint_*/checkpoint.pt") if p.parts[-3].startswith("trial-")}


@pytest.mark.timeout(180)
def test_node_lost_mid_trial_continues_from_checkpoint_on_another_node(cluster, tmp_path):
    from ray.util.placement_group import placement_group_table

    epochs_n = 30
    out = tmp_path / "spot"
    base = _base(epochs_n)
    base["data"]["synthetic"]["num_train"] = 4000  # epochs long enough to lose a node mid-trial
    spec = {"name": "spot", "base": base, "resources": {"cpus": 1, "gpus": 1}, "max_failures": 2,
            "search": {"grid": {"optim.lr": [0.05, 0.02]}}}
    lost: dict = {}

    def preempt() -> None:
        """Once both trials have checkpointed, the node of one goes away (a reclaimed spot instance)."""
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(_checkpointed(out)) < 2:
            time.sleep(0.2)
        time.sleep(1)  # a few more epochs, so Tune has registered (not just written) a checkpoint
        busy = sorted({n for info in placement_group_table().values() if info["state"] == "CREATED"
                       for n in info.get("bundles_to_node_id", {}).values()} - {_head_id()})
        lost["node"] = busy[0]
        cluster.kill_node(busy[0])

    killer = threading.Thread(target=preempt, daemon=True)
    killer.start()
    outcome = run_sweep(parse_sweep(spec), out=str(out), address=cluster.address, live=False)
    killer.join(timeout=5)
    assert "node" in lost, "no node was lost mid-sweep"
    rows = outcome.rows
    assert [r["status"] for r in rows] == ["completed"] * 2, [r["reason"] for r in rows]
    epochs = pq.read_table(out / "epochs.parquet").to_pylist()
    by_trial = {r["trial_id"]: [e for e in epochs if e["trial_id"] == r["trial_id"]] for r in rows}
    for tid, es in by_trial.items():  # each epoch recorded once
        assert sorted(e["epoch"] for e in es) == list(range(1, epochs_n + 1)), tid
    (moved,) = [es for es in by_trial.values() if es[0]["node"] == lost["node"]]
    later = [e for e in moved if e["node"] != lost["node"]]
    assert later, "the interrupted trial should have continued on another node"
    assert min(e["epoch"] for e in later) > 1  # from its checkpoint, not from scratch
    assert rows[[r["trial_id"] for r in rows].index(moved[0]["trial_id"])]["status"] == "completed"
