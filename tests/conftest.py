"""Shared fixtures: tiny synthetic configs, miniature archives in the official layouts, a Ray instance."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

MINI_CIFAR = Path(os.environ.get("RAYCLF_TEST_CIFAR_MINI",
                                 Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"))

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("WANDB_MODE", "disabled")
# A fake API key in the environment of every Ray instance the tests start: W&B tests check it is never
# written anywhere (results, logs, configs, W&B run files).
FAKE_WANDB_KEY = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
os.environ["WANDB_API_KEY"] = FAKE_WANDB_KEY


def tiny(**sections: Any) -> dict[str, Any]:
    """A raw trial config that trains in about a second on CPU; keyword sections override. Its synthetic data
    is the easy kind (difficulty 0): these tests check that training works, not what a study finds."""
    cfg: dict[str, Any] = {
        "data": {"name": "synthetic", "synthetic": {"num_train": 400, "num_test": 200, "num_classes": 4,
                                                     "image_size": 16, "difficulty": 0.0}},
        "model": {"name": "cnn", "widths": [8, 16]},
        "train": {"epochs": 2, "batch_size": 32},
        "optim": {"name": "sgd", "lr": 0.05},
        "sched": {"name": "constant"},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def write_cifar(root: Path, n_train: int = 50, n_test: int = 20, classes: int = 10, hundred: bool = False) -> Path:
    """A miniature CIFAR-10/100 python-version folder (pickled dicts, official keys)."""
    rng = np.random.default_rng(0)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    label_key = "fine_labels" if hundred else "labels"

    def dump(name: str, n: int) -> None:
        d = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), label_key: list(rng.integers(0, classes, n))}
        with (folder / name).open("wb") as f:
            pickle.dump(d, f)

    if hundred:
        dump("train", n_train)
        dump("test", n_test)
        with (folder / "meta").open("wb") as f:
            pickle.dump({"fine_label_names": [f"c{i}" for i in range(classes)]}, f)
    else:
        for i in range(1, 6):
            dump(f"data_batch_{i}", n_train // 5)
        dump("test_batch", n_test)
        with (folder / "batches.meta").open("wb") as f:
            pickle.dump({"label_names": [f"c{i}" for i in range(classes)]}, f)
    return folder


def write_png_tree(folder: Path, classes: list[str], per_class: int, size: int = 32) -> None:
    """A class-per-folder tree of random PNGs."""
    import torch
    from torchvision.io import write_png

    rng = np.random.default_rng(1)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = torch.from_numpy(rng.integers(0, 256, (3, size, size), dtype=np.uint8))
            write_png(img, str(folder / c / f"{i}.png"))


# Tests that start Ray clusters of their own (``ray start`` heads, ``cluster_utils.Cluster``): they shut the
# shared instance down, and heads on one machine contend for ports. Under pytest-xdist they form one unit of
# work, run by one worker one after the other, and they come first, before that worker starts the shared instance.
OWN_CLUSTER_FILES = ("test_autoscaling.py", "test_job_submit.py", "test_distributed.py")


# Files whose module-scoped fixture is a whole sweep: one worker runs the file, so the fixture runs once.
WHOLE_FILES = ("test_crash.py",)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist two workers share the 2 cores: torch gets one thread in each (for the tests that train
    in the test process), not one per core in each, which oversubscribed the cores (a 6-s test took 40 s beside
    a Ray test). Trial processes size their own pool from their CPUs (``rayclf.sweep.warm.fit_threads``)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items[:] = sorted(items, key=lambda i: i.path.name not in OWN_CLUSTER_FILES)  # stable: the rest keep order


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` (the default in pyproject.toml) with the groups above, read from the test's file.
    Not ``xdist_group`` marks: pytest-xdist 3.8 writes them into ``item._nodeid``, which pytest 9.2 no longer
    reads, so the marks silently group nothing and two clusters start at once."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            name = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
            return "own_cluster" if name in OWN_CLUSTER_FILES else name if name in WHOLE_FILES else nodeid

    return FileGroups(config, log)


@pytest.fixture(scope="session")
def _shared_ray():
    """Stops the shared instance at the end of the session (of this xdist worker)."""
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def ray_local(_shared_ray):
    """One local Ray instance (2 CPUs) shared by the sweep tests of a session (of an xdist worker): started by
    the first test that asks, again only if a test with a cluster of its own shut it down. ``address="local"``:
    never another worker's ``ray start`` cluster, which Ray's default would join."""
    import ray

    from rayclf.sweep.plan import DRIVER_RESOURCE

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, resources={DRIVER_RESOURCE: 1000}, include_dashboard=False,
                 log_to_driver=False)
    return ray


def inspect_wandb_run(run_dir: Path) -> dict[str, Any]:
    """A run's config, group, history rows and summary, read back with W&B's own reader (wandb leet inspect)."""
    import json
    import subprocess
    import sys

    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(run_dir)], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    run = next(r["run"] for r in records if r["type"] == "run")
    config: dict[str, Any] = {}
    for key, value in run["config"]["update"].items():
        config[key] = value
    summary: dict[str, Any] = {}
    for r in records:
        if r["type"] == "summary":
            summary.update(r["summary"].get("update", {}))
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    return {"id": run["run_id"], "group": run.get("run_group"), "job_type": run.get("job_type"),
            "name": run.get("display_name"), "config": config, "history": history, "summary": summary}


def files_containing(roots: list[Path], needle: str) -> list[Path]:
    hits = []
    for root in roots:
        for p in root.rglob("*") if root.is_dir() else []:
            try:
                if p.is_file() and needle.encode() in p.read_bytes():
                    hits.append(p)
            except OSError:
                continue
    return hits


def run_in_pty(args: list[str], timeout: float = 120) -> tuple[int, str]:
    """Run a command on a real pseudo-terminal (as a person's shell would); its exit code and raw output."""
    import os
    import subprocess
    import time

    main, sub = os.openpty()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "COLUMNS": "100",
           "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(args, stdout=sub, stderr=sub, stdin=sub, env=env, close_fds=True)
    os.close(sub)
    chunks: list[bytes] = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            data = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=30)
    os.close(main)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace")


# ------------------------------------------------------------------ killed trials and their uninterrupted twins
def slow_base(epochs: int) -> dict:
    """Epochs of about half a second on CPU: long enough to interrupt a trial between two of them."""
    return tiny(data={"synthetic": {"num_train": 1500, "num_test": 100, "num_classes": 4, "image_size": 16,
                                    "difficulty": 0.0}},
                model={"widths": [16, 32]}, train={"epochs": epochs, "batch_size": 50})


# what a trial's epochs and result hold that must not depend on whether the trial was interrupted (not timings)
EPOCH_VALUES = ["epoch", "phase", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]
RESULT_VALUES = ["epochs", "best_val_accuracy", "final_val_accuracy", "final_train_loss", "test_accuracy",
                 "test_loss", "params", "world_size"]


def exact_base(epochs: int) -> dict:
    """``slow_base`` with everything a resume must carry on: augmentation draws (crop, flip), dropout (the
    global torch RNG), SGD momentum and a cosine schedule."""
    base = slow_base(epochs)
    base.update(augment={"crop": {"padding": 2}, "flip": {"p": 0.5}}, sched={"name": "cosine"},
                model={**base["model"], "dropout": 0.2})
    return base


def assert_same_run(resumed: tuple[Any, dict], twin: tuple[Any, dict]) -> None:
    """A killed-and-resumed trial and its uninterrupted twin (same config and seed) recorded the same run:
    every epoch's values and the trial's result, bit for bit."""
    import pandas as pd

    (epochs_a, row_a), (epochs_b, row_b) = resumed, twin
    a = epochs_a.sort_values("epoch")[EPOCH_VALUES].reset_index(drop=True)
    b = epochs_b.sort_values("epoch")[EPOCH_VALUES].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert {k: row_a[k] for k in RESULT_VALUES} == {k: row_b[k] for k in RESULT_VALUES}


def assert_continued(first: Any, resumed: Any, resumed_from: int) -> None:
    """The epochs up to the checkpoint a trial resumed from are the first run's records, timings and all: the
    resumed run trained and reported only the epochs after it (a rerun from scratch with the same seed gives
    the same values, but never the same timings)."""
    import pandas as pd

    cols = [*EPOCH_VALUES, "epoch_seconds", "train_seconds"]
    a, b = ([df[df["epoch"] <= resumed_from].sort_values("epoch")[cols].reset_index(drop=True)]
            for df in (first, resumed))
    assert list(a[0]["epoch"]) == list(range(1, resumed_from + 1))
    pd.testing.assert_frame_equal(a[0], b[0], check_exact=True)


def kill_trial_processes(root: int | None = None) -> int:
    """SIGKILL every Ray trial process (Tune's function-trainable actors) started under process ``root``
    (default: this one, whose Ray instance runs the in-process sweeps), as an OOM killer would; never those of
    another Ray instance on the machine."""
    import psutil

    victims = 0
    for p in psutil.Process(root or os.getpid()).children(recursive=True):
        try:
            if (p.cmdline() or [""])[0].startswith("ray::Implicit"):
                p.kill()
                victims += 1
        except psutil.NoSuchProcess:
            continue
    return victims


SENTINEL_SECRET = "sentinel-secret-7f3a9c1e5b2d"


@pytest.fixture(scope="module")
def s3_server():
    """An S3-compatible server on a free loopback port, with one bucket; the endpoint and credentials travel
    only in the environment (the standard AWS variables), as on a real cluster."""
    pytest.importorskip("moto.server")
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "rayclf-test",
           "AWS_SECRET_ACCESS_KEY": SENTINEL_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                 aws_access_key_id="rayclf-test", aws_secret_access_key=SENTINEL_SECRET).create_bucket(Bucket="bkt")
    yield env
    server.stop()
