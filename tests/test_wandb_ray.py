"""W&B faults on a real sweep, from the CLI as a user runs it: a server that cannot be reached before training, and
one that fails every trial's start after the check passed. The sweep must finish with every trial's run on disk
and the `wandb sync` command; its wall time is printed (measured, not asserted: speed figures live in
BENCHMARKS.md and the README's W&B section, against the same sweep with W&B disabled)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import FAKE_WANDB_KEY, files_containing, inspect_wandb_run, tiny
from .fake_wandb import FakeWandb

pytestmark = pytest.mark.ray


def _sweep(tmp_path: Path, name: str) -> tuple[Path, Path]:
    f = tmp_path / f"{name}.yaml"
    base = tiny(train={"epochs": 2, "batch_size": 50})
    f.write_text(yaml.safe_dump({"name": name, "base": base, "search": {"ablation": {"factors": {"optim.lr": [0.2]}}}}))
    return f, tmp_path / name


def _run(f: Path, out: Path, wandb: str, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    rayclf = str(Path(sys.executable).with_name("rayclf"))
    started = time.perf_counter()
    res = subprocess.run([rayclf, "sweep", str(f), "--out", str(out), "--num-cpus", "2", "--wandb", wandb],
                         env=env, capture_output=True, text=True, timeout=300)
    return time.perf_counter() - started, res


@pytest.mark.timeout(600)
@pytest.mark.parametrize("fault", ["closed", "flaky"])
def test_a_sweep_with_w_and_b_down_costs_seconds_and_keeps_every_run(fault, tmp_path):
    server = FakeWandb(fault)
    env = {**os.environ, "WANDB_API_KEY": FAKE_WANDB_KEY, "WANDB_BASE_URL": server.url,
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("WANDB_MODE", None)
    try:
        f, out = _sweep(tmp_path, "wb")
        wall, res = _run(f, out, "online", env)
    finally:
        server.close()
    print(f"\n{fault}: sweep wall {wall:.1f} s with W&B online and down (load {os.getloadavg()[0]:.2f})")
    text = res.stdout + res.stderr
    assert res.returncode == 0, text[-3000:]
    if fault == "closed":  # the driver's check: one warning, the whole sweep offline
        assert text.count(f"warning: the W&B server {server.url} is not reachable") == 1, text[-3000:]
        assert "W&B was not reachable before training" in text
    else:  # the check passed, every trial's start failed: said once in the live view
        assert text.count("W&B: tracking fell back to offline") == 1, text[-3000:]
        assert "fell back to offline during the sweep" in text
    assert f"upload them with: wandb sync {out.resolve()}/wandb/offline-run-*" in text
    runs = [inspect_wandb_run(d) for d in (out / "wandb").glob("offline-run-*")]
    trials = {r["config"]["rayclf"]["trial_id"]: r for r in runs if "rayclf" in r["config"]}
    assert len(trials) == 2 and all(len(r["history"]) == 2 and r["summary"]["status"] == "completed"
                                    for r in trials.values())
    assert [r["job_type"] for r in runs].count("sweep-summary") == 1
    assert files_containing([out], FAKE_WANDB_KEY) == []
