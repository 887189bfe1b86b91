"""What each of ``ray.init``'s optional processes costs a local sweep: start-up, a first task, shutdown.

Each variant runs in a fresh Python process (as ``rayclf sweep`` does) and times ``import ray``, ``ray.init`` (as
rayclf calls it, 2 CPUs), the first remote task's round trip (a worker has to be up) and ``ray.shutdown``; the
variants alternate, so a change in the machine's load falls on all of them. The optional processes:

* ``monitor``: the autoscaler's monitor (``ray start --no-monitor``); a local instance never scales.
* ``log_monitor``: streams workers' stdout/stderr to the driver; rayclf's driver does not print them (only
  ``--verbose`` does).
* ``prestart``: Ray starts one idle worker per CPU when the driver connects (rayclf's warm start preloads torch
  and the engine in them).
* the dashboard is already off (``include_dashboard=False``; its minimal head process still runs, job submission
  on a ``ray start`` cluster needs it); the runtime-env agent and the dashboard agent are started by the raylet
  and cannot be left out of ``ray.init``.

Usage: ``python -m bench.ray_start [--repeat 3] [--out bench/results/ray_start-cpu-2core.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import emit

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import ray
from rayclf.sweep import localray
t1 = time.perf_counter()
v = json.loads(sys.argv[1])
opts = {"_system_config": {"enable_worker_prestart": False}} if not v["prestart"] else {}
with localray.lean(monitor=v["monitor"], log_monitor=v["log_monitor"]):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, **opts)
t2 = time.perf_counter()
ray.get(ray.remote(lambda: 1).remote())
t3 = time.perf_counter()
import psutil
procs = len(psutil.Process().children(recursive=True))
ray.shutdown()
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "init_s": t2 - t1, "first_task_s": t3 - t2, "shutdown_s": t4 - t3,
                  "processes": procs}))
"""

VARIANTS = {
    "all (Ray's default)": {"monitor": True, "log_monitor": True, "prestart": True},
    "no autoscaler monitor": {"monitor": False, "log_monitor": True, "prestart": True},
    "no log monitor": {"monitor": True, "log_monitor": False, "prestart": True},
    "no prestart": {"monitor": True, "log_monitor": True, "prestart": False},
    "rayclf (no monitor, no log monitor)": {"monitor": False, "log_monitor": False, "prestart": True},
}


def once(variant: dict[str, bool]) -> dict[str, Any]:
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(variant)], capture_output=True, text=True,
                         check=True, env=env).stdout
    record = json.loads(out.strip().splitlines()[-1])
    record["process_s"] = time.perf_counter() - start
    return record


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("bench/results/ray_start-cpu-2core.json"))
    args = p.parse_args()
    import ray

    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in VARIANTS}
    for _ in range(args.repeat):
        for name, variant in VARIANTS.items():
            runs[name].append({"load": os.getloadavg()[0], **once(variant)})
    keys = ["init_s", "first_task_s", "shutdown_s", "process_s"]
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in keys} | {"processes": rs[0]["processes"]}
               for name, rs in runs.items()}
    record = {"ray": ray.__version__, "cpus": os.cpu_count(), "repeat": args.repeat, "runs": runs,
              "medians": medians, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    emit(record, args.out)
    for name, m in medians.items():
        print(f"{name:40s} init {m['init_s']:.2f} s, first task {m['first_task_s']:.2f} s, shutdown "
              f"{m['shutdown_s']:.2f} s, whole process {m['process_s']:.2f} s, {m['processes']} processes")


if __name__ == "__main__":
    main()
