"""The cluster README's flow, with separate processes as on real machines: ``ray start --head`` and
``ray start --address`` (a worker node), ``ray job submit -- rayclf sweep FILE --out s3://…`` and, on the
"laptop", ``rayclf report s3://…``. The bucket is a local S3 server; credentials reach the nodes through their
environment only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from .conftest import tiny
from .fake_cluster import free_port, own_ports
from .test_s3 import bucket_objects

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.mark.timeout(150)
def test_ray_job_submit_runs_a_sweep_to_s3_and_the_report_reads_it(s3_server, tmp_path):
    pytest.importorskip("aiohttp", reason="ray job submit needs Ray's default extra")
    from rayclf.sweep.lock import stop_session

    bin_dir = Path(sys.executable).parent
    port, dash = free_port(), free_port()
    temp = Path(tempfile.mkdtemp(prefix="rayclf-job-", dir="/tmp"))  # Ray's socket paths stay short
    env = {**os.environ, **s3_server, "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]),
                                                     os.environ.get("PYTHONPATH", "")) if p)}
    env.pop("RAY_ADDRESS", None)
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump({"name": "job", "base": tiny(train={"epochs": 2, "batch_size": 50}),
                                 "search": {"grid": {"optim.lr": [0.05, 0.02]}}, "resources": {"cpus": 1}}))
    head = [str(bin_dir / "ray"), "start", "--head", f"--port={port}", f"--dashboard-port={dash}",
            "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=0",
            '--resources={"rayclf_driver": 1000}', f"--temp-dir={temp}", "--disable-usage-stats", *own_ports()]
    session = None
    try:
        started = subprocess.run(head, env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        session = str((temp / "session_latest").resolve())
        subprocess.run([str(bin_dir / "ray"), "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", *own_ports()],
                       env=env, check=True, capture_output=True, timeout=120)
        out = "s3://bkt/sweeps/job"
        for _ in range(20):  # the job server answers "no available agent, try again later" until its agent is up
            job = subprocess.run([str(bin_dir / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}",
                                  "--", str(bin_dir / "rayclf"), "sweep", str(f), "--out", out, "--quiet"],
                                 env={**env, **{k: "" for k in s3_server if k.startswith("AWS_SECRET")}},
                                 capture_output=True, text=True, timeout=300)
            if "No available agent" not in job.stdout + job.stderr:
                break
            time.sleep(3)
        assert job.returncode == 0 and "succeeded" in job.stdout, job.stdout[-3000:] + job.stderr[-2000:]
        assert "2 trials recorded (completed 2)" in job.stdout
        report = subprocess.run([str(bin_dir / "rayclf"), "report", out, "--out", str(tmp_path / "report")],
                                env={**os.environ, **s3_server}, capture_output=True, text=True, timeout=300)
        assert report.returncode == 0, report.stdout + report.stderr
        keys = bucket_objects(s3_server)
        assert any(k.startswith("sweeps/job/trials.parquet") for k in keys), sorted(keys)[:20]
        assert (tmp_path / "report" / "index.html").is_file()
    finally:
        if session:
            stop_session(session)
        shutil.rmtree(temp, ignore_errors=True)
