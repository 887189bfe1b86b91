"""The trial cache (issue 30): wall time and trial-hours of a follow-up study with and without the cache.

Study A is an ablation of the learning rate (baseline + 3 arms × 2 seeds = 8 trials of ``bench.sweep_overhead``'s
small CNN, 2,000 synthetic images, 3 epochs or ``--epochs``); the follow-up B shares A's baseline and one arm and
adds two new arms (8 trials, 4 of them A's). Per repeat: A runs with ``--cache C`` (a fresh cache), then B with
``--cache C`` and B without a cache, alternating which of the two goes first. Every figure is the wall time of a whole
``rayclf sweep FILE --out DIR --quiet --wandb disabled --num-cpus 2`` command in a subprocess (Python and Ray
start-up included); trial-hours are the sum of the ``seconds`` of the trials a run trained itself (reused rows
carry the seconds A spent on them, and are not counted).

Usage: ``python -m bench.cache [--epochs E] [--repeat N] [--out FILE]``: prints one ``SUMMARY`` line and writes
``bench/results/cache-<E>ep-cpu-2core.json`` unless ``--out`` says otherwise.
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


def study(name: str, lrs: list[float], epochs: int) -> dict[str, Any]:
    base = {**SMALL, "train": {**SMALL["train"], "epochs": epochs}}
    return {"name": name, "base": base, "seeds": [0, 1], "resources": {"cpus": 1},
            "search": {"ablation": {"factors": {"optim.lr": lrs}}}}


def studies(epochs: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A, and the follow-up B: baseline and lr=0.1 are A's; lr=0.2 and lr=0.005 are new."""
    return study("first", [0.1, 0.02, 0.01], epochs), study("followup", [0.1, 0.2, 0.005], epochs)


def run_cli(sweep_file: Path, out: Path, cache: Path | None) -> dict[str, Any]:
    """Time one whole ``rayclf sweep`` command; what it trained and what it reused."""
    import pandas as pd

    cmd = [sys.executable, "-m", "rayclf.cli", "sweep", str(sweep_file), "--out", str(out), "--quiet",
           "--wandb", "disabled", "--num-cpus", str(SLOTS)] + (["--cache", str(cache)] if cache else ["--no-cache"])
    load = os.getloadavg()
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    trials = pd.read_parquet(out / "trials.parquet")
    reused = trials["reused_from"].notna() if "reused_from" in trials else pd.Series(False, index=trials.index)
    own = trials[~reused & (trials["status"] == "completed")]
    return {"file": sweep_file.name, "cache": bool(cache), "wall_s": wall, "trials": len(trials),
            "trained": len(own), "reused": int(reused.sum()), "trial_hours": float(own["seconds"].sum()) / 3600,
            "load_before": load, "values": dict(zip(trials["trial_id"], trials["metric_best"], strict=True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (3: small trials, start-up dominates)")
    parser.add_argument("--out", type=Path, help="default bench/results/cache-<epochs>ep-cpu-2core.json")
    args = parser.parse_args()
    args.out = args.out or ROOT / "bench" / "results" / f"cache-{args.epochs}ep-cpu-2core.json"
    A, B = studies(args.epochs)
    runs = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name, spec in (("A", A), ("B", B)):
            (tmp / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        for r in range(args.repeat):
            cache = tmp / f"cache{r}"
            first = run_cli(tmp / "A.yaml", tmp / f"a{r}", cache)
            order = [True, False] if r % 2 == 0 else [False, True]  # alternate: load changes fall on both
            b = {use: run_cli(tmp / "B.yaml", tmp / f"b{r}-{'cache' if use else 'plain'}", cache if use else None)
                 for use in order}
            runs.append({"A": first, "B_cache": b[True], "B_plain": b[False],
                         "same_values": b[True]["values"] == b[False]["values"]})
    w = [(x["B_cache"]["wall_s"], x["B_plain"]["wall_s"]) for x in runs]
    h = [(x["B_cache"]["trial_hours"], x["B_plain"]["trial_hours"]) for x in runs]
    summary = (f"SUMMARY cache: follow-up B (8 trials of {args.epochs} epochs, 4 shared with A) wall with / without "
               "cache "
               + "; ".join(f"{c:.1f} s / {p:.1f} s" for c, p in w) + "; trial-hours "
               + "; ".join(f"{c * 3600:.1f} s / {p * 3600:.1f} s" for c, p in h)
               + f"; trained {runs[0]['B_cache']['trained']} vs {runs[0]['B_plain']['trained']}"
               + f"; tables equal: {all(x['same_values'] for x in runs)}")
    record = {"bench": "cache", "device": device_name("cpu"), "slots": SLOTS, "python": sys.version.split()[0],
              "command": "python -m bench.cache " + " ".join(sys.argv[1:]), "runs": runs, "summary": summary}
    emit(record, args.out)
    print(summary)


if __name__ == "__main__":
    main()
