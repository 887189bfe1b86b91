"""Distributed for real: a two-node Ray cluster on this machine, a node lost mid-sweep, and DDP trials."""

from __future__ import annotations

import threading
import time

import pyarrow.parquet as pq
import pytest

from rayclf.sweep.plan import DRIVER_RESOURCE
from rayclf.sweep.runner import run_sweep
from rayclf.sweep.spec import parse_sweep

from .conftest import tiny

pytestmark = [pytest.mark.ray, pytest.mark.slow]
EPOCHS = 30


def _base(epochs: int) -> dict:
    return tiny(data={"synthetic": {"num_train": 3000, "num_test": 100, "num_classes": 4, "image_size": 16,
                                    "difficulty": 0.0}},
                train={"epochs": epochs, "batch_size": 40})


def _checkpointed_trials(out) -> set[str]:
    """Trials (their storage folders) that have at least one checkpoint in the sweep's storage."""
    return {p.parts[-3] for p in (out / "_ray").rglob("checkpoint_*/checkpoint.pt") if p.parts[-3].startswith("trial-")}


@pytest.mark.timeout(120)
def test_two_node_sweep_survives_losing_a_node(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # as on a real cluster: trial drivers on the head (custom resource), training on worker nodes
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "resources": {DRIVER_RESOURCE: 1000}, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(3)]  # one more than trials: the replacement
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    out = tmp_path / "mn"
    try:
        spec = {"name": "multinode", "base": _base(epochs=EPOCHS),
                "search": {"grid": {"optim.lr": [0.02, 0.05]}}, "max_failures": 2,
                "resources": {"cpus": 1, "max_concurrent": 2}}
        lost: dict = {}

        def lose_a_node() -> None:
            """Once both running trials have checkpointed, take away a node running one (a lost spot node)."""
            from ray.util.placement_group import placement_group_table

            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and len(_checkpointed_trials(out)) < 2:
                time.sleep(0.2)
            time.sleep(3)  # a few more epochs, so Ray Train has registered (not just uploaded) a checkpoint
            busy = {n for info in placement_group_table().values() if info["state"] == "CREATED"
                    for n in info.get("bundles_to_node_id", {}).values()}
            victim = next(w for w in workers if w.node_id in busy)
            lost["node"] = victim.node_id
            cluster.remove_node(victim, allow_graceful=False)

        killer = threading.Thread(target=lose_a_node, daemon=True)
        killer.start()
        outcome = run_sweep(parse_sweep(spec), out=str(out), live=False)
        killer.join(timeout=5)
        assert "node" in lost, "no node was removed mid-sweep"
        rows = outcome.rows
        assert [r["status"] for r in rows] == ["completed"] * 2, [(r["arm"], r["reason"]) for r in rows]
        epochs = pq.read_table(out / "epochs.parquet").to_pylist()
        by_trial = {r["trial_id"]: [e for e in epochs if e["trial_id"] == r["trial_id"]] for r in rows}
        for tid, es in by_trial.items():  # nothing lost: every trial has all its epochs
            assert sorted(e["epoch"] for e in es) == list(range(1, EPOCHS + 1)), tid
        first_nodes = {es[0]["node"] for es in by_trial.values()}
        assert len(first_nodes) == 2  # the two trials ran on two different nodes at once
        (moved,) = [es for es in by_trial.values() if es[0]["node"] == lost["node"]]
        later = [e for e in moved if e["node"] != lost["node"]]
        assert later, "the interrupted trial should have continued on another node"
        assert min(e["epoch"] for e in later) > 1  # resumed from its checkpoint elsewhere, not from scratch
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.timeout(90)
def test_data_parallel_trial_trains_and_reports(ray_local, tmp_path):
    spec = {"name": "ddp", "base": _base(epochs=2), "resources": {"cpus": 1, "num_workers": 2}}
    outcome = run_sweep(parse_sweep(spec), out=str(tmp_path / "ddp"), live=False)
    (row,) = outcome.rows
    assert row["status"] == "completed" and row["world_size"] == 2
    assert row["test_accuracy"] > 0.4  # 4 classes: chance is 0.25
    epochs = pq.read_table(tmp_path / "ddp" / "epochs.parquet").to_pylist()
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(e["train_loss"] > 0 for e in epochs)


@pytest.mark.timeout(90)
def test_data_parallel_workers_split_the_data_and_stay_in_sync(ray_local, tmp_path):
    """rayclf's own data-parallel worker function on a real two-worker Ray Train group: every epoch each rank
    draws its own half of the training set (disjoint halves that together cover it), trains n/2 images a
    step count says, and both ranks hold bit-identical parameters after their first step and at the end.
    Unsynchronised gradients (no DDP) or every rank reading the whole set would fail here; the training
    metrics of the test above would not tell."""
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from rayclf.config import build_config
    from rayclf.data.sources import load_dataset

    batch, epochs = 40, 2
    base = tiny(data={"synthetic": {"num_train": 800, "num_test": 80, "num_classes": 4, "image_size": 16,
                                    "difficulty": 0.5}},
                train={"epochs": epochs, "batch_size": batch}, augment={"flip": {"p": 0.5}})
    cfg = build_config(base)
    n = len(load_dataset(cfg.data).train.y)  # what stays for training once validation is held out
    assert n % (2 * batch) == 0
    from rayclf.sweep.trialspec import TrialSpec

    trial = {"trial": TrialSpec("ddp-proof", "ddp", "baseline", None, 0, None, 0, {}, cfg.to_dict(), epochs,
                                tracking={"mode": "disabled"})}
    records = tmp_path / "ranks"
    records.mkdir()

    def recording_worker(trial: dict) -> None:  # the loop config: {"trial": TrialSpec}
        """``train_worker`` with two spies: the training sample indices this rank drew each epoch, and its
        parameters after every optimizer step."""
        import ray.train

        from rayclf.data.loader import DeviceLoader
        from rayclf.sweep.worker import train_worker
        from rayclf.train import engine

        drawn, params = [], []
        order, create = DeviceLoader.order, engine.create_optimizer

        def spy_order(self):
            idx = order(self)
            if self.shuffle:  # the training loader (evaluation loaders do not shuffle)
                drawn.append(idx.cpu().clone())
            return idx

        def spy_create(*args, **kwargs):
            opt = create(*args, **kwargs)
            opt.register_step_post_hook(lambda o, *_: params.append(
                [p.detach().cpu().clone() for g in o.param_groups for p in g["params"]]))
            return opt

        DeviceLoader.order, engine.create_optimizer = spy_order, spy_create
        try:
            train_worker(trial)
        finally:
            DeviceLoader.order, engine.create_optimizer = order, create
        rank = ray.train.get_context().get_world_rank()
        torch.save({"drawn": drawn, "steps": len(params), "first": params[0], "last": params[-1]},
                   records / f"rank{rank}.pt")

    TorchTrainer(recording_worker, train_loop_config=trial,
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                 run_config=RunConfig(name="ddp-proof", storage_path=str(tmp_path / "ray"))).fit()
    r0, r1 = (torch.load(records / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(r0["drawn"]) == len(r1["drawn"]) == epochs
    for a, b in zip(r0["drawn"], r1["drawn"], strict=True):
        assert len(a) == len(b) == n // 2
        assert not set(a.tolist()) & set(b.tolist())  # disjoint halves ...
        assert set(a.tolist()) | set(b.tolist()) == set(range(n))  # ... that cover the whole set
    assert r0["drawn"][0].tolist() != r0["drawn"][1].tolist()  # reshuffled every epoch
    assert r0["steps"] == r1["steps"] == epochs * n // 2 // batch  # each rank trained its half only
    for when in ("first", "last"):
        assert all(torch.equal(a, b) for a, b in zip(r0[when], r1[when], strict=True)), when
    assert not all(torch.equal(a, b) for a, b in zip(r0["first"], r0["last"], strict=True))  # it did train


@pytest.mark.timeout(120)
def test_a_sweep_without_an_address_starts_its_own_instance_beside_a_cluster_on_this_machine(tmp_path):
    """A machine where a Ray cluster runs (``ray start``, or here ``cluster_utils.Cluster``: both leave its address
    where a plain ``ray.init()`` finds and joins it): ``rayclf sweep`` without ``--address`` or ``RAY_ADDRESS``
    still starts a local instance of its own, as documented, rather than joining the cluster (which refused the
    sweep's CPUs and resources with a traceback)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import ray
    import yaml
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        f = tmp_path / "beside.yaml"
        f.write_text(yaml.safe_dump({"name": "beside", "base": tiny(train={"epochs": 1}), "resources": {"cpus": 1}}))
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        res = subprocess.run([str(Path(sys.executable).with_name("rayclf")), "sweep", str(f), "--out",
                              str(tmp_path / "out"), "--quiet", "--wandb", "disabled", "--num-cpus", "1"],
                             env=env, capture_output=True, text=True, timeout=100)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert "1 trials recorded (completed 1)" in res.stdout, res.stdout[-2000:]
        assert cluster.head_node.gcs_address not in res.stdout + res.stderr
    finally:
        cluster.shutdown()
