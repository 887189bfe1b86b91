"""Smarter search (issue 13): what arm-level ASHA and racing save over a full grid, and bayes vs random.

1. ``--part budget``: a learning-rate grid on cifar10-mini (some rates clearly bad) × 3 seeds, run with
   fifo (the full grid), ASHA by arm and racing; trial-epochs spent (sum of epochs trained over all trials)
   and the winner each picks.
2. ``--part search``: a 2-parameter space (lr, weight decay) with random and bayes search at equal budgets;
   the best arm value found, mean ± std over 3 search seeds.

Usage: ``python -m bench.search --part budget --out bench/results/search-budget-cpu-2core.json``
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import device_name, emit
from rayclf.aggregate import arm_table, best_arm
from rayclf.sweep.runner import run_sweep
from rayclf.sweep.spec import parse_sweep

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"


def base(epochs: int) -> dict[str, Any]:
    return {"data": {"name": "cifar10", "root": str(MINI), "download": False},
            "model": {"name": "cnn", "widths": [16, 32]}, "train": {"epochs": epochs, "batch_size": 64},
            "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "sched": {"name": "constant"}}


def run(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    start = time.monotonic()
    outcome = run_sweep(parse_sweep(spec), out=str(out), live=False, wandb_mode="disabled", num_cpus=2)
    stats = arm_table(outcome.rows, "max")
    best = best_arm(stats, "max")
    return {"trial_epochs": sum(r["epochs"] or 0 for r in outcome.rows), "trials": len(outcome.rows),
            "statuses": {s: sum(r["status"] == s for r in outcome.rows) for s in {r["status"] for r in outcome.rows}},
            "winner": best.arm if best else None, "winner_mean": best.mean if best else None,
            "wall_s": round(time.monotonic() - start, 1)}


def budget(work: Path, epochs: int) -> dict[str, Any]:
    grid = {"optim.lr": [0.1, 0.03, 0.01, 0.001, 0.0001, 0.00001]}
    common = {"base": base(epochs), "search": {"grid": grid}, "seeds": [0, 1, 2]}
    schedulers = {"fifo": {"name": "fifo"},
                  "asha_by_arm": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
                  "racing": {"name": "racing", "level": 0.1}}
    return {name: run({"name": f"budget_{name}", **common, "scheduler": s}, work / name)
            for name, s in schedulers.items()}


def search(work: Path, epochs: int, budget_arms: int) -> dict[str, Any]:
    params = {"optim.lr": {"loguniform": [1e-4, 0.3]}, "optim.weight_decay": {"loguniform": [1e-6, 1e-2]}}
    found: dict[str, list[float]] = {"random": [], "bayes": []}
    for seed in (0, 1, 2):
        for kind in found:
            s = {"num_samples": budget_arms, "seed": seed, "params": params}
            if kind == "bayes":
                s.update(batch=2, startup=4)
            res = run({"name": f"{kind}{seed}", "base": base(epochs), "search": {kind: s}, "seeds": [0]},
                      work / f"{kind}{seed}")
            found[kind].append(res["winner_mean"])
    return {k: {"best": v, "mean": statistics.mean(v), "std": statistics.stdev(v)} for k, v in found.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["budget", "search"], required=True)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--arms", type=int, default=10, help="search: proposals per search (the equal budget)")
    p.add_argument("--work", type=Path, default=Path("/tmp/rayclf-bench-search"))
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    result = budget(a.work / "budget", a.epochs) if a.part == "budget" else search(a.work / "search", a.epochs,
                                                                                   a.arms)
    emit({"bench": f"search-{a.part}", "device": device_name("cpu"), "epochs": a.epochs, "result": result}, a.out)


if __name__ == "__main__":
    main()
