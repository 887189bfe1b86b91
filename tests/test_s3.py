"""A sweep directory on object storage, end to end, against a real S3 API (moto's server on 127.0.0.1):
results, Ray's checkpoints, resume and ``rayclf report`` all work, and the credentials appear nowhere."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import SENTINEL_SECRET, files_containing, tiny

pytestmark = pytest.mark.ray


def bucket_objects(env: dict[str, str]) -> dict[str, bytes]:
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                          aws_access_key_id="rayclf-test", aws_secret_access_key=SENTINEL_SECRET)
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket="bkt")
            for o in page.get("Contents", [])]
    return {k: client.get_object(Bucket="bkt", Key=k)["Body"].read() for k in keys}


@pytest.mark.timeout(300)
def test_sweep_resume_and_report_on_s3(s3_server, tmp_path):
    f = tmp_path / "s3.yaml"
    base = tiny(data={"synthetic": {"num_train": 300, "num_test": 100, "num_classes": 4, "image_size": 16,
                                    "difficulty": 0.0}}, train={"epochs": 2, "batch_size": 50})
    f.write_text(yaml.safe_dump({"name": "s3sweep", "base": base, "search": {"grid": {"optim.lr": [0.05, 0.01]}}}))
    env = {**os.environ, **s3_server, "RAY_ADDRESS": ""}
    rayclf = str(Path(sys.executable).with_name("rayclf"))
    out = "s3://bkt/sweeps/s3sweep"
    started = time.time()
    run = subprocess.run([rayclf, "sweep", str(f), "--out", out, "--num-cpus", "2", "--wandb", "disabled"],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "completed 2" in run.stdout

    objects = bucket_objects(s3_server)
    trials = [k for k in objects if k.startswith("sweeps/s3sweep/trials.parquet/") and k.endswith(".parquet")]
    assert len(trials) == 2 and any(k.startswith("sweeps/s3sweep/epochs.parquet/") for k in objects)
    assert [k for k in objects if k.endswith("/checkpoint.pt")], "Ray's checkpoints should be on S3 too"

    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs = pafs.S3FileSystem(endpoint_override=s3_server["AWS_ENDPOINT_URL_S3"], access_key="rayclf-test",
                           secret_key=SENTINEL_SECRET, region="us-east-1")
    rows = pq.read_table("bkt/sweeps/s3sweep/trials.parquet", filesystem=fs).to_pylist()
    assert {r["status"] for r in rows} == {"completed"}
    assert all(r["checkpoint"].startswith("s3://bkt/sweeps/s3sweep/_ray/") for r in rows)

    again = subprocess.run([rayclf, "sweep", str(f), "--out", out, "--resume", "--num-cpus", "2", "--quiet",
                            "--wandb", "disabled"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "2 already done and skipped" in again.stdout, again.stderr[-2000:]

    report = subprocess.run([rayclf, "report", out, "--out", str(tmp_path / "report")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "lr=0.05" in (tmp_path / "report" / "results.md").read_text()

    # the secret key travelled only in the environment: not in results, checkpoints, logs or the report
    assert [k for k, body in bucket_objects(s3_server).items() if SENTINEL_SECRET.encode() in body] == []
    sessions = [p for p in Path("/tmp/ray").glob("session_2*") if p.stat().st_mtime >= started - 1]
    assert files_containing([tmp_path, *sessions], SENTINEL_SECRET) == []


def checkpointed_epoch(env: dict[str, str], prefix: str) -> int:
    """The latest epoch any trial has checkpointed under ``prefix`` in the bucket (its ``rayclf.json``)."""
    import json

    import boto3

    from rayclf.sweep.keys import CHECKPOINT_META

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                          aws_access_key_id="rayclf-test", aws_secret_access_key=SENTINEL_SECRET)
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket="bkt", Prefix=prefix)
            for o in page.get("Contents", []) if o["Key"].endswith("/" + CHECKPOINT_META)]
    epochs = [json.loads(client.get_object(Bucket="bkt", Key=k)["Body"].read())["epoch"] for k in keys]
    return max(epochs, default=0)


@pytest.mark.timeout(180)
def test_killed_trial_resumed_on_s3_matches_its_uninterrupted_twin(s3_server, ray_local, tmp_path):
    """A trial whose process is SIGKILLed mid-run, with its checkpoints on S3, continues from the last one on
    ``--resume`` and records exactly the epochs and result of an uninterrupted twin (same config and seed)."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from rayclf.results import EPOCHS, TRIALS
    from rayclf.sweep.runner import run_sweep
    from rayclf.sweep.spec import parse_sweep

    from .conftest import assert_continued, assert_same_run, exact_base, kill_trial_processes

    spec = {"name": "s3crash", "base": exact_base(epochs=10), "max_failures": 0}  # room to be killed mid-run
    f = tmp_path / "crash.yaml"
    f.write_text(yaml.safe_dump(spec))
    env = {**os.environ, **s3_server, "RAY_ADDRESS": ""}
    rayclf = str(Path(sys.executable).with_name("rayclf"))
    cmd = [rayclf, "sweep", str(f), "--out", "s3://bkt/sweeps/s3crash", "--num-cpus", "2", "--quiet",
           "--wandb", "disabled"]
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, killed = time.monotonic() + 180, 0
    while time.monotonic() < deadline and driver.poll() is None and not killed:
        if checkpointed_epoch(s3_server, "sweeps/s3crash/_ray/") >= 2:
            killed = kill_trial_processes(driver.pid)  # the trial's process, an OOM killer's way
        time.sleep(0.2)
    output = driver.communicate(timeout=180)[0]
    assert killed, output[-3000:]
    fs = pafs.S3FileSystem(endpoint_override=s3_server["AWS_ENDPOINT_URL_S3"], access_key="rayclf-test",
                           secret_key=SENTINEL_SECRET, region="us-east-1")
    (first,) = pq.read_table("bkt/sweeps/s3crash/" + TRIALS, filesystem=fs).to_pylist()
    assert first["status"] == "failed" and 2 <= first["epochs"] < 10, first
    before = pq.read_table("bkt/sweeps/s3crash/" + EPOCHS, filesystem=fs).to_pandas()

    again = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    (row,) = pq.read_table("bkt/sweeps/s3crash/" + TRIALS, filesystem=fs).to_pylist()
    assert row["status"] == "completed" and 2 <= row["resumed_from_epoch"] <= first["epochs"], row
    epochs = pq.read_table("bkt/sweeps/s3crash/" + EPOCHS, filesystem=fs).to_pandas()
    assert sorted(epochs["epoch"]) == list(range(1, 11))
    assert_continued(before, epochs, row["resumed_from_epoch"])

    twin = run_sweep(parse_sweep(spec), out=str(tmp_path / "twin"), live=False, wandb_mode="disabled")
    assert_same_run((epochs, row), (pq.read_table(tmp_path / "twin" / EPOCHS).to_pandas(), twin.rows[0]))


def test_a_missing_or_unreachable_bucket_is_one_message_before_anything_starts(s3_server, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import rayclf.sweep.runner as runner
    from rayclf.cli import main

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(runner, "_start_ray", lambda *a, **k: pytest.fail("Ray started"))
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"name": "s", "base": tiny()}))
    unreachable = "s3://bkt/out?endpoint_override=http://127.0.0.1:1&region=us-east-1"
    for out, cause in (("s3://no-such-bucket/out", "the bucket 'no-such-bucket' does not exist"),
                       (unreachable, "Could not connect")):
        res = CliRunner().invoke(main, ["sweep", str(f), "--out", out, "--quiet", "--wandb", "disabled"])
        assert res.exit_code == 2, res.output
        assert res.output.count("Error:") == 1 and f"cannot use {out}: " in res.output and cause in res.output
        assert "Traceback" not in res.output
    assert not [k for k in bucket_objects(s3_server) if k.startswith("out/")]


def test_query_parameters_stay_on_the_filesystem_and_travel_with_every_uri(s3_server, tmp_path):
    """The endpoint is only in the --out URI's query (not in the environment): results, the lock, Ray's
    checkpoints, the checkpoint column and the resume_from handed to a trial all reach it, under distinct keys."""
    f = tmp_path / "q.yaml"
    base = tiny(data={"synthetic": {"num_train": 300, "num_test": 100, "num_classes": 4, "image_size": 16,
                                    "difficulty": 0.0}}, train={"epochs": 2, "batch_size": 50})
    f.write_text(yaml.safe_dump({"name": "q", "base": base, "search": {"grid": {"optim.lr": [0.05, 0.01]}}}))
    endpoint = s3_server["AWS_ENDPOINT_URL_S3"]
    query = f"region=us-east-1&endpoint_override={endpoint.removeprefix('http://')}&scheme=http"
    out = f"s3://bkt/q/out?{query}"
    env = {**os.environ, **s3_server, "RAY_ADDRESS": ""}
    del env["AWS_ENDPOINT_URL_S3"]
    rayclf = str(Path(sys.executable).with_name("rayclf"))
    cmd = [rayclf, "sweep", str(f), "--out", out, "--num-cpus", "2", "--quiet", "--wandb", "disabled"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]

    keys = [k for k in bucket_objects(s3_server) if k.startswith("q/")]
    assert not [k for k in keys if "?" in k or "region=" in k or "endpoint_override" in k]
    assert {"q/out/_store.json", "q/out/sweep.yaml"} <= set(keys)
    parts = [k for k in keys if k.endswith(".parquet")]
    assert len([k for k in parts if k.startswith("q/out/trials.parquet/")]) == 2
    assert len([k for k in parts if k.startswith("q/out/epochs.parquet/")]) == 2
    assert [k for k in keys if k.startswith("q/out/_ray/") and k.endswith("/checkpoint.pt")]

    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs = pafs.S3FileSystem(endpoint_override=endpoint, access_key="rayclf-test", secret_key=SENTINEL_SECRET,
                           region="us-east-1")
    rows = {r["trial_id"]: r for r in pq.read_table("bkt/q/out/trials.parquet", filesystem=fs).to_pylist()}
    for r in rows.values():
        assert r["checkpoint"].startswith("s3://bkt/q/out/_ray/") and r["checkpoint"].endswith(f"?{query}")

    # the driver died after a trial's last checkpoint, before recording it: --resume hands the trial that
    # checkpoint's URI, which it opens through the query alone
    lost = sorted(rows)[0]
    fs.delete_file(f"bkt/q/out/trials.parquet/{lost}.parquet")
    again = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 0 and "1 already done and skipped" in again.stdout, again.stderr[-2000:]
    row = next(r for r in pq.read_table("bkt/q/out/trials.parquet", filesystem=fs).to_pylist() if r["trial_id"] == lost)
    assert row["status"] == "completed" and row["resumed_from_epoch"] == 2 and row["epochs"] == 2
    assert row["checkpoint"] == rows[lost]["checkpoint"]
