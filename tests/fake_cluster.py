"""A real autoscaling Ray cluster on this machine: Ray's fake multi-node provider started with ``ray start``.

``ray.cluster_utils.AutoscalingCluster`` cannot be used from the wheel (it reads a fake_multi_node/example.yaml
the wheel does not ship, quotes custom head resources wrongly and runs ``ray stop --force``, which would stop
every Ray instance on the machine). This starts the head itself, with the launcher's full set of config keys,
on a free port and its own temp dir, and stops only that session's processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HEAD_TYPE = "ray.head.default"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def own_ports() -> list[str]:
    """Free ports for a ``ray start`` node's side servers: the defaults (the Ray Client server's 10001, the
    dashboard agent's 52365, …) may already belong to another Ray instance on this machine (another xdist
    worker's, the session's shared one); the node then fails to start, or a job server finds no agent."""
    return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]


def cluster_config(port: int, head_resources: dict[str, float], worker_types: dict[str, dict[str, Any]],
                   idle_timeout_minutes: float) -> dict[str, Any]:
    return {
        "cluster_name": f"rayclf-fake-{port}",
        "max_workers": sum(t.get("max_workers", 0) for t in worker_types.values()),
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}"},
        "available_node_types": {HEAD_TYPE: {"resources": head_resources, "node_config": {}, "max_workers": 0},
                                 **{name: {"node_config": {}, "min_workers": 0, **t}
                                    for name, t in worker_types.items()}},
        "head_node_type": HEAD_TYPE,
        "auth": {}, "docker": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": idle_timeout_minutes,
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


class FakeAutoscalingCluster:
    """``ray start --head --autoscaling-config`` with ``RAY_FAKE_CLUSTER=1``: worker nodes are started (and
    removed when idle) by the autoscaler inside the head's monitor process, as real nodes of one machine."""

    def __init__(self, root: Path, head_resources: dict[str, float], worker_types: dict[str, dict[str, Any]],
                 idle_timeout_minutes: float = 0.1, env: dict[str, str] | None = None):
        self.root = Path(root)
        self.port = free_port()
        self.config = cluster_config(self.port, head_resources, worker_types, idle_timeout_minutes)
        self.head_resources = head_resources
        self.env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "RAY_AUTH_MODE": "disabled",
                    "AUTOSCALER_UPDATE_INTERVAL_S": "1", "AUTOSCALER_HEARTBEAT_TIMEOUT_S": "5",
                    "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]),
                                                              os.environ.get("PYTHONPATH", "")) if p),
                    **(env or {})}
        self.env.pop("RAY_ADDRESS", None)
        self.session_dir: str | None = None
        self.temp: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeAutoscalingCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "autoscaler.yaml"
        config.write_text(yaml.safe_dump(self.config))
        # Short and under /tmp: Ray's socket paths must stay under 107 characters, which pytest's own temp dirs
        # (popen-gw0/… under xdist) do not leave room for.
        self.temp = temp = Path(tempfile.mkdtemp(prefix="rayclf-fake-", dir="/tmp"))
        head = dict(self.head_resources)
        cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={self.port}",
               f"--num-cpus={head.pop('CPU', 0):g}", f"--num-gpus={head.pop('GPU', 0):g}",
               f"--resources={json.dumps(head)}", f"--autoscaling-config={config}", f"--temp-dir={temp}",
               "--include-dashboard=false", "--disable-usage-stats",
               f"--ray-client-server-port={free_port()}", *own_ports()]
        res = subprocess.run(cmd, env=self.env, cwd=self.root, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        self.session_dir = str((temp / "session_latest").resolve())
        return self

    def shutdown(self) -> None:
        from rayclf.sweep.lock import stop_session

        if self.session_dir:
            stop_session(self.session_dir)
        if self.temp:
            shutil.rmtree(self.temp, ignore_errors=True)

    # ------------------------------------------------------------------ views (need ray.init to it)
    @staticmethod
    def worker_nodes() -> list[dict[str, Any]]:
        import ray

        return [n for n in ray.nodes() if n["Alive"] and not n["Resources"].get("node:__internal_head__")]

    def wait_for_scale_down(self, timeout: float = 90) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.worker_nodes():
                return True
            time.sleep(1)
        return False

    def kill_node(self, node_id: str) -> int:
        """A spot node taken away: SIGKILL its raylet and every process it started (trial workers, agents), as
        when the machine disappears. Returns the raylet's pid."""
        import psutil

        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = proc.info["cmdline"] or []
            if cmd and cmd[0].endswith("raylet") and any(node_id in part for part in cmd) \
                    and any(self.session_dir and os.path.basename(self.session_dir) in part for part in cmd):
                victims = [proc, *proc.children(recursive=True)]  # workers and agents: the whole machine
                for v in victims:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        v.kill()
                return proc.pid
        raise LookupError(f"no raylet of node {node_id} in {self.session_dir}")
