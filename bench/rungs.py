"""Slot efficiency of an arm-level ASHA sweep (issue 28): seeds that wait for each other at rungs vs seeds that
run apart.

The sweep: 4 learning rates × 3 seeds of a small CNN (6,000 synthetic 32×32 images, 4 epochs), ``scheduler: asha``
(grace 1, reduction factor 2: rungs at epochs 1 and 2), 1 CPU per trial on a local Ray instance of 2 CPUs: 2 slots.
Each figure is one whole ``rayclf sweep FILE --out DIR --quiet --wandb disabled --num-cpus 2`` command in a
subprocess (Python, Ray and Tune start-up included), run once with this tree's rayclf ("after") and once with
another checkout's (``--before /path``, e.g. ``/work/main``: "before"), alternating, ``--repeat`` times.

Slot efficiency = Σ ``epoch_seconds`` of every epoch any trial trained (from ``epochs.parquet``: the work done,
stopped trials included) ÷ (2 slots × the command's wall time). Also reported: the trial-epochs trained, the
statuses per arm (an arm whose seeds ended with different statuses or stop epochs is counted as *mixed*).

Usage: ``python -m bench.rungs [--before /work/main] [--repeat N] [--out FILE]``; prints one ``SUMMARY`` line and
writes ``bench/results/rungs-asha-cpu-2core.json`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import device_name, emit
from bench.sweep_overhead import SMALL

ROOT = Path(__file__).resolve().parents[1]
SLOTS = 2
BASE = {**SMALL, "data": {"name": "synthetic", "synthetic": {**SMALL["data"]["synthetic"], "num_train": 6000}},
        "train": {**SMALL["train"], "epochs": 4}}  # epochs of a few seconds: training, not start-up, dominates
SWEEP = {"name": "asha4x3", "base": BASE,
         "search": {"grid": {"optim.lr": [0.1, 0.05, 0.01, 0.001]}}, "seeds": [0, 1, 2],
         "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2}, "resources": {"cpus": 1}}


def run_cli(tree: Path, sweep_file: Path, out: Path) -> dict[str, Any]:
    """Time one whole ``rayclf sweep`` command of ``tree``; read its trials and epochs back."""
    import pandas as pd

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "rayclf.cli", "sweep", str(sweep_file), "--out", str(out), "--quiet",
           "--wandb", "disabled", "--num-cpus", str(SLOTS)]
    load = os.getloadavg()
    start = time.time()
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    wall = time.time() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    trials = pd.read_parquet(out / "trials.parquet")
    epochs = pd.read_parquet(out / "epochs.parquet")
    work = float(epochs["epoch_seconds"].sum())
    mixed = [arm for arm, g in trials.groupby("arm")
             if g["status"].nunique() > 1 or g["stopped_at_epoch"].dropna().nunique() > 1]
    return {"tree": str(tree), "load_before": load, "wall_s": wall, "epoch_seconds_sum": work,
            "trial_epochs": len(epochs), "slot_efficiency": work / (SLOTS * wall),
            "statuses": trials["status"].value_counts().to_dict(), "mixed_arms": mixed,
            "per_arm": {arm: sorted(f"{s}@{e}" for s, e in zip(g["status"], g["epochs"], strict=True))
                        for arm, g in trials.groupby("arm")}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--before", type=Path, help="another checkout's rayclf (e.g. /work/main) for the before figure")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--out", type=Path, help="default bench/results/rungs-asha-cpu-2core.json")
    args = p.parse_args()
    import ray
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="rayclf-rungs-"))
    sweep_file = tmp / "asha4x3.yaml"
    sweep_file.write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    record: dict[str, Any] = {"commit": git.strip(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "device": device_name("cpu"), "ray": ray.__version__, "torch": torch.__version__,
                              "cpus": os.cpu_count(), "sweep": SWEEP, "runs": []}
    trees = ([("before", args.before)] if args.before else []) + [("after", ROOT)]
    for r in range(args.repeat):  # alternate, so a change in the machine's load falls on both
        for label, tree in trees:
            record["runs"].append({"label": label, **run_cli(tree, sweep_file, tmp / f"{label}{r}")})
    record["summary"] = "SUMMARY rungs (asha 4 arms x 3 seeds, 2 slots): " + "; ".join(
        f"{x['label']} efficiency {x['slot_efficiency']:.2f} (wall {x['wall_s']:.1f} s, "
        f"{x['epoch_seconds_sum']:.1f} epoch-s over {x['trial_epochs']} trial-epochs, "
        f"mixed arms {len(x['mixed_arms'])}, load {x['load_before'][0]:.2f})" for x in record["runs"])
    emit(record, args.out or ROOT / "bench" / "results" / "rungs-asha-cpu-2core.json")
    print(record["summary"])


if __name__ == "__main__":
    main()
