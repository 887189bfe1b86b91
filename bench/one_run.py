"""One Tune run per sweep (issue 24): what a sweep's fixed costs are, and what running it in pieces costs.

Every figure is the wall time of a whole ``rayclf sweep FILE --out DIR --quiet --wandb disabled`` command run in a
subprocess (Python start-up, Ray start-up and shutdown included), on a local Ray instance, 1 CPU per trial.
Pick the measurement with ``--part``:

* ``staged``: a staged sweep (3 stages × 4 arms × 1 seed of a small CNN, each stage varying the learning rate
  around the last winner) against a grid of 12 trials of identical cost (the same model, epochs and data, 12
  learning rates); the ratio staged wall ÷ grid wall (goal ≤ 1.15×).
* ``overhead``: fixed overhead = wall − Σ trial ``seconds`` ÷ slots, on the 8-trial yardstick of
  ``bench.sweep_overhead --part efficiency`` (small CNN, 3 epochs, 2,000 synthetic images) and on
  ``sweeps/quickstart.yaml`` (goal ≤ 10 s).
* ``yardstick``: the 8-trial yardstick alone, with the fixed overhead's breakdown (start-up to the first trial's
  training, last record to the closing table, table to exit) and the median over ``--repeat`` runs.
* ``bayes``: a bayes search of 24 proposals in batches of 4 against a grid of the same 24 configs (read back from
  the bayes run's trials, so every trial of the grid is a trial of the search).

Each run also reports how many Tune runs (``Tuner.fit`` calls) it took, counted from outside as the experiment
folders (``run-*``) under ``OUT/_ray``, and the time from the command's start to the first trial's record (the
first Parquet part of ``trials.parquet``) minus that trial's own seconds: the command's start-up before the
first trial trains.

Usage: ``python -m bench.one_run --part staged|overhead|yardstick|bayes [--repeat N] [--out FILE]``; each part
prints one ``SUMMARY`` line and writes ``bench/results/one_run-<part>-cpu-2core.json`` unless ``--out`` says otherwise.
``RAYCLF_BENCH_TREE=/path/to/checkout`` runs that checkout's rayclf instead of this one's (a "before" figure);
``RAYCLF_WARM_START=0`` turns the warm start off.
"""

from __future__ import annotations

import argparse
import copy
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
SLOTS = 2  # every file here asks for 1 CPU per trial; the local instance is started with --num-cpus 2
LRS = [0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.15, 0.07, 0.03, 0.015]


def bench_tree() -> str:
    """The checkout whose rayclf is measured: ``RAYCLF_BENCH_TREE`` (e.g. main, for "before"), else this one."""
    return os.environ.get("RAYCLF_BENCH_TREE", str(ROOT))


def run_cli(sweep_file: Path, out: Path) -> dict[str, Any]:
    """Time one whole ``rayclf sweep`` command of this tree; read its trials back."""
    import pandas as pd

    tree = bench_tree()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tree, *filter(None, [os.environ.get("PYTHONPATH")])]),
           "PYTHONUNBUFFERED": "1"}  # each line timestamped when it is printed (the closing table's time)
    cmd = [sys.executable, "-m", "rayclf.cli", "sweep", str(sweep_file), "--out", str(out), "--quiet",
           "--wandb", "disabled", "--num-cpus", str(SLOTS)]
    start = time.time()
    # run in the tree: ``python -m`` puts the working directory first on sys.path, before PYTHONPATH
    proc = subprocess.Popen(cmd, env=env, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [(time.time(), line) for line in proc.stdout]  # type: ignore[union-attr]
    proc.wait()
    wall = time.time() - start
    output = "".join(line for _, line in lines)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    trials = pd.read_parquet(out / "trials.parquet")
    done = trials[trials["status"] == "completed"]
    seconds = float(done["seconds"].sum())
    # a trial's part (named by its id) is written when it finishes; it trained for its own seconds before that
    parts = {p.stem: p.stat().st_mtime for p in (out / "trials.parquet").glob("*.parquet")}
    began = [parts[t] - s for t, s in zip(done["trial_id"], done["seconds"], strict=True) if t in parts]
    first = min(began) - start if began else None
    runs = sorted(p.name for p in (out / "_ray").glob("run-*") if p.is_dir()) if (out / "_ray").is_dir() else []
    # the tail: the last trial's record, the closing table's last line, the process's exit
    last_row = max(parts.values()) - start if parts else None
    table = lines[-1][0] - start if lines else None
    tail = {"last_row_s": last_row, "table_s": table, "row_to_table_s": table - last_row if parts and lines else None,
            "table_to_exit_s": wall - table if lines else None}
    return {"file": sweep_file.name, "trials": len(trials), "completed": len(done), "wall_s": wall, **tail,
            "trial_seconds_sum": seconds, "slots": SLOTS, "fixed_overhead_s": wall - seconds / SLOTS,
            "slot_efficiency": seconds / (SLOTS * wall), "tune_runs": len(runs),
            "start_to_first_training_s": first, "trial_seconds": [float(s) for s in done["seconds"]]}


def write(tmp: Path, name: str, spec: dict[str, Any]) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def load() -> str:
    return os.getloadavg().__repr__()


# ----------------------------------------------------------------------------------- staged
def staged(tmp: Path, repeat: int) -> dict[str, Any]:
    stages = [{"name": f"s{i + 1}", "vary": {"optim.lr": LRS[4 * i:4 * i + 4]}} for i in range(3)]
    staged_file = write(tmp, "staged", {"name": "staged3x4", "base": SMALL, "search": {"stages": stages},
                                        "seeds": [0], "resources": {"cpus": 1}})
    grid_file = write(tmp, "grid12", {"name": "grid12", "base": SMALL, "search": {"grid": {"optim.lr": LRS}},
                                      "seeds": [0], "resources": {"cpus": 1}})
    pairs = []
    for r in range(repeat):  # alternate, so a change in the machine's load falls on both
        before = load()
        s = run_cli(staged_file, tmp / f"staged{r}")
        g = run_cli(grid_file, tmp / f"grid{r}")
        pairs.append({"load_before": before, "staged": s, "grid": g, "ratio": s["wall_s"] / g["wall_s"]})
    ratios = [p["ratio"] for p in pairs]
    summary = (f"SUMMARY staged: staged 3x4 / grid 12 wall ratio {', '.join(f'{r:.2f}' for r in ratios)} "
               f"(goal <= 1.15); walls " + "; ".join(f"{p['staged']['wall_s']:.1f} s / {p['grid']['wall_s']:.1f} s"
                                                     for p in pairs)
               + f"; Tune runs {pairs[0]['staged']['tune_runs']} vs {pairs[0]['grid']['tune_runs']}")
    return {"runs": pairs, "ratios": ratios, "summary": summary}


# ----------------------------------------------------------------------------------- overhead
def yardstick(tmp: Path) -> Path:
    """The 8-trial grid of ``bench.sweep_overhead --part efficiency``: small CNN, 3 epochs, 2,000 images."""
    grid = {"name": "grid8", "base": SMALL, "search": {"grid": {"optim.lr": [0.1, 0.05, 0.02, 0.01],
                                                                "model.widths": [[16, 32], [8, 16]]}},
            "resources": {"cpus": 1}}
    return write(tmp, "grid8", grid)


def overhead(tmp: Path, repeat: int) -> dict[str, Any]:
    runs = []
    for r in range(repeat):
        before = load()
        y = run_cli(yardstick(tmp), tmp / f"grid8-{r}")
        before_q = load()
        q = run_cli(ROOT / "sweeps" / "quickstart.yaml", tmp / f"quickstart-{r}")
        runs.append({"load_before": before, "yardstick": y, "load_before_quickstart": before_q, "quickstart": q})
    summary = "SUMMARY overhead (goal <= 10 s): " + "; ".join(
        f"yardstick {r['yardstick']['fixed_overhead_s']:.1f} s (wall {r['yardstick']['wall_s']:.1f} s, "
        f"{r['yardstick']['trial_seconds_sum']:.1f} trial-s), quickstart {r['quickstart']['fixed_overhead_s']:.1f} s "
        f"(wall {r['quickstart']['wall_s']:.1f} s, {r['quickstart']['trial_seconds_sum']:.1f} trial-s)" for r in runs)
    return {"runs": runs, "summary": summary}


def yardstick_only(tmp: Path, repeat: int) -> dict[str, Any]:
    """The 8-trial yardstick alone, ``repeat`` times: its fixed overhead and where it goes (start-up to the first
    trial's training, the last trial's record to the closing table, the table to the process's exit)."""
    import statistics

    runs = []
    for r in range(repeat):
        before = load()
        runs.append({"load_before": before, **run_cli(yardstick(tmp), tmp / f"grid8-{r}")})
    keys = ["wall_s", "trial_seconds_sum", "fixed_overhead_s", "start_to_first_training_s", "row_to_table_s",
            "table_to_exit_s"]
    median = {k: statistics.median(r[k] for r in runs) for k in keys}
    summary = ("SUMMARY yardstick (goal <= 10 s): fixed overhead "
               + ", ".join(f"{r['fixed_overhead_s']:.1f}" for r in runs)
               + f" s (median {median['fixed_overhead_s']:.1f} s); median wall {median['wall_s']:.1f} s, "
               f"Σ trial s {median['trial_seconds_sum']:.1f}, start → first training "
               f"{median['start_to_first_training_s']:.1f} s, last row → table {median['row_to_table_s']:.1f} s, "
               f"table → exit {median['table_to_exit_s']:.1f} s")
    return {"runs": runs, "median": median, "summary": summary}


# ----------------------------------------------------------------------------------- bayes
def bayes(tmp: Path, repeat: int) -> dict[str, Any]:
    params = {"optim.lr": {"loguniform": [0.001, 0.3]}, "optim.momentum": {"uniform": [0.0, 0.95]}}
    bayes_file = write(tmp, "bayes", {"name": "bayes24", "base": SMALL,
                                      "search": {"bayes": {"num_samples": 24, "batch": 4, "seed": 0,
                                                           "params": params}},
                                      "seeds": [0], "resources": {"cpus": 1}})
    import pandas as pd

    runs = []
    for r in range(repeat):
        before = load()
        b = run_cli(bayes_file, tmp / f"bayes{r}")
        rows = pd.read_parquet(tmp / f"bayes{r}" / "trials.parquet").sort_values("position")
        levels = {}
        for i in range(len(rows)):
            levels[f"p{i:02d}"] = {k: float(rows.iloc[i][f"config.{k}"]) for k in params}
        grid_file = write(tmp, f"grid24-{r}", {"name": "grid24", "base": copy.deepcopy(SMALL),
                                               "search": {"grid": {"proposal": levels}}, "seeds": [0],
                                               "resources": {"cpus": 1}})
        g = run_cli(grid_file, tmp / f"grid24-{r}")
        runs.append({"load_before": before, "bayes": b, "grid": g, "ratio": b["wall_s"] / g["wall_s"]})
    summary = "SUMMARY bayes: 24 proposals in batches of 4 / grid of the same 24 configs, wall " + "; ".join(
        f"{r['bayes']['wall_s']:.1f} s / {r['grid']['wall_s']:.1f} s = {r['ratio']:.2f}x "
        f"(Tune runs {r['bayes']['tune_runs']} vs {r['grid']['tune_runs']})" for r in runs)
    return {"runs": runs, "summary": summary}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--part", choices=["staged", "overhead", "yardstick", "bayes"], required=True)
    p.add_argument("--repeat", type=int, default=1, help="run the part's pair of sweeps this many times")
    p.add_argument("--out", type=Path, help="default bench/results/one_run-<part>-cpu-2core.json")
    p.add_argument("--label", default="", help="kept in the record, e.g. before / after")
    args = p.parse_args()
    import ray
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="rayclf-one-run-"))
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=bench_tree(), capture_output=True,
                         text=True).stdout
    record: dict[str, Any] = {"part": args.part, "label": args.label, "commit": git.strip(),
                              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "device": device_name("cpu"), "ray": ray.__version__, "torch": torch.__version__,
                              "cpus": os.cpu_count(), "load_at_start": load(),
                              "RAYCLF_WARM_START": os.environ.get("RAYCLF_WARM_START"),
                              "RAYCLF_BENCH_TREE": os.environ.get("RAYCLF_BENCH_TREE")}
    parts = {"staged": staged, "overhead": overhead, "yardstick": yardstick_only, "bayes": bayes}
    record.update(parts[args.part](tmp, args.repeat))
    out = args.out or ROOT / "bench" / "results" / f"one_run-{args.part}-cpu-2core.json"
    emit(record, out)
    print(record["summary"])


if __name__ == "__main__":
    main()
