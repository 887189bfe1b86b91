"""Issue 33 part 2: where the quickstart's wall goes, and what each lever buys.

Pick the measurement with ``--part``:

* ``epoch``: seconds per training epoch of the quickstart's baseline in this process with one thread (a trial's CPU
  share), for the CNN widths before (32-64-128) and after (24-48-96), channels-first against channels_last.
* ``trial``: one trial process as Tune reuses it (three trials of the quickstart in a row, in this process, through
  the same ``run_trial`` a sweep calls), with W&B as the quickstart runs it (offline without a key) and disabled:
  per trial the data, the W&B run's start, the trial's own ``seconds`` (the engine's clock: training, evaluation,
  the test pass) and what comes after it (the W&B summary and finish).
* ``sweep``: the README's command, ``rayclf sweep sweeps/quickstart.yaml`` (no flags: W&B in its default mode),
  ``--repeat`` times in a subprocess: wall, Σ trial ``seconds``, wall − Σ ÷ 2 slots, start → first trial's
  training, last record → exit, with the load before each run (``--sweep-args '--wandb disabled'``: without W&B;
  ``--file``: another version of the file, e.g. the one before this change).

Usage: ``python -m bench.quickstart --part epoch|trial|sweep [--repeat N] [--file F] [--out FILE]``; prints one
``SUMMARY`` line and writes ``bench/results/quickstart-<part>-cpu-2core.json`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import device_name, emit

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "sweeps" / "quickstart.yaml"
SLOTS = 2  # 1 CPU per trial on a 2-core machine


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def baseline_config(path: Path) -> Any:
    from rayclf.sweep.spec import load_sweep

    sweep = load_sweep(path)
    return sweep, [t for t in sweep.trials(sweep.arms())]


# ----------------------------------------------------------------------------------- epoch
def epoch(path: Path) -> dict[str, Any]:
    import torch

    from rayclf.data.sources import load_dataset
    from rayclf.train.engine import fit

    torch.set_num_threads(1)
    _, trials = baseline_config(path)
    base = next(t for t in trials if t.arm.label == "baseline" and t.seed == 0).config
    ds = load_dataset(base.data)
    rows = []
    for widths in ([32, 64, 128], [24, 48, 96]):
        for layout in ("off", "on"):
            cfg = base.model_copy(deep=True)
            cfg.model.widths, cfg.train.channels_last, cfg.train.epochs, cfg.train.device = widths, layout, 2, "cpu"
            history = fit(cfg, data=ds).history  # epoch 1 warms the allocator; epoch 2 is the figure
            rows.append({"widths": widths, "channels_last": layout, "epoch_s": history[-1]["epoch_seconds"],
                         "train_s": history[-1]["train_seconds"]})
    summary = "SUMMARY epoch (1 thread): " + "; ".join(
        f"{'-'.join(map(str, r['widths']))} channels_last {r['channels_last']}: {r['epoch_s']:.2f} s" for r in rows)
    return {"rows": rows, "summary": summary}


# ----------------------------------------------------------------------------------- trial
def trial(path: Path, n: int = 3) -> dict[str, Any]:
    """``n`` trials in one process per W&B mode, each phase timed from outside the engine."""
    import torch

    from rayclf.sweep.keys import DATA_KEY, SUMMARY_KEY
    from rayclf.sweep.trialspec import TrialSpec
    from rayclf.sweep.worker import _DATA, run_trial
    from rayclf.tracking import TrackingSettings

    torch.set_num_threads(1)
    sweep, trials = baseline_config(path)
    imports = {}
    for module in ("rayclf.train.engine", "wandb"):  # what a trial process imports once (the engine: preloaded)
        t0 = time.perf_counter()
        __import__(module)
        imports[module] = time.perf_counter() - t0
    out: dict[str, Any] = {"imports_s": imports}
    for mode in ("offline", "disabled"):
        _DATA.clear()  # each mode starts as a fresh trial process does: no decoded dataset yet
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for i, t in enumerate(trials[:n]):
                spec = TrialSpec.of(sweep, t, i, tracking=TrackingSettings(mode, dir=tmp).to_dict())
                sent: list[tuple[float, dict[str, Any]]] = []
                start = time.perf_counter()
                run_trial(spec, lambda m, _c, sent=sent: sent.append((time.perf_counter(), m)), None, 0, None, {})
                end = time.perf_counter()
                summary = json.loads(sent[-1][1].get(SUMMARY_KEY, "{}"))
                seconds = float(summary.get("seconds", 0.0))
                first_epoch = sent[0][1].get("epoch_seconds", 0.0)
                rows.append({"trial": f"{t.arm.label} s{t.seed}", "total_s": end - start,
                             "data_s": sent[0][1].get(DATA_KEY, 0.0), "seconds": seconds,
                             # before the engine's clock: data, the W&B start, model build; after: W&B finish
                             "before_first_epoch_s": sent[0][0] - start - first_epoch,
                             "outside_seconds_s": end - start - seconds})
        out[mode] = rows
    summary = ("SUMMARY trial (1 thread; imports " + ", ".join(f"{m} {s:.2f} s" for m, s in imports.items())
               + "; per trial total / trial seconds / outside them): " + "; ".join(
        f"W&B {mode}: " + ", ".join(f"{r['total_s']:.2f}/{r['seconds']:.2f}/{r['outside_seconds_s']:.2f} s"
                                    for r in out[mode]) for mode in ("offline", "disabled")))
    return {"runs": out, "summary": summary}


# ----------------------------------------------------------------------------------- sweep
def run_sweep(path: Path, out: Path, extra: list[str]) -> dict[str, Any]:
    """The README's command, as a new user types it (``--out`` only, so runs do not collide)."""
    import pandas as pd

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "rayclf.cli", "sweep", str(path), "--out", str(out), *extra]
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [(time.time(), line) for line in proc.stdout]  # type: ignore[union-attr]
    proc.wait()
    wall = time.time() - start
    output = "".join(line for _, line in lines)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    done = pd.read_parquet(out / "trials.parquet")
    done = done[done["status"] == "completed"]
    seconds = float(done["seconds"].sum())
    parts = {p.stem: p.stat().st_mtime for p in (out / "trials.parquet").glob("*.parquet")}
    began = [parts[t] - s for t, s in zip(done["trial_id"], done["seconds"], strict=True) if t in parts]
    table = [ln for ln in output.splitlines() if ln.split(" ")[0] in set(done["arm"])]
    return {"wall_s": wall, "completed": len(done), "trial_seconds_sum": seconds,
            "beyond_trial_seconds_s": wall - seconds / SLOTS,
            "start_to_first_training_s": min(began) - start if began else None,
            "last_row_to_exit_s": wall - (max(parts.values()) - start) if parts else None,
            "wandb_runs": len(list((out / "wandb").glob("offline-run-*"))) if (out / "wandb").is_dir() else 0,
            "table": table}


def sweep(path: Path, repeat: int, extra: list[str], keep: Path | None) -> dict[str, Any]:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeat):
            before = load()
            runs.append({"load_before": before, **run_sweep(path, (keep or Path(tmp)) / f"quickstart-{r}", extra)})
    keys = ["wall_s", "trial_seconds_sum", "beyond_trial_seconds_s", "start_to_first_training_s",
            "last_row_to_exit_s"]
    median = {k: statistics.median(r[k] for r in runs) for k in keys}
    same = all(r["table"] == runs[0]["table"] for r in runs)
    summary = (f"SUMMARY sweep {path} {' '.join(extra)} (goal <= 60 s): wall " + ", ".join(
        f"{r['wall_s']:.1f} s (load {r['load_before']})" for r in runs)
        + f"; median {median['wall_s']:.1f} s, Σ trial s {median['trial_seconds_sum']:.1f}, beyond them "
        f"{median['beyond_trial_seconds_s']:.1f} s (start → first training {median['start_to_first_training_s']:.1f}"
        f" s, last record → exit {median['last_row_to_exit_s']:.1f} s); tables identical across runs: {same}")
    return {"args": extra, "runs": runs, "median": median, "tables_identical": same, "summary": summary}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--part", choices=["epoch", "trial", "sweep"], required=True)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--file", type=Path, default=QUICKSTART, help="the sweep file (default sweeps/quickstart.yaml)")
    p.add_argument("--out", type=Path, help="default bench/results/quickstart-<part>-cpu-2core.json")
    p.add_argument("--label", default="", help="kept in the record, e.g. before / after")
    p.add_argument("--keep", type=Path, help="keep each run's sweep directory under this folder (for `rayclf report`)")
    p.add_argument("--sweep-args", default="", help="more arguments for `rayclf sweep`, e.g. '--wandb disabled'")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as Ray sets it for a 1-CPU trial
    import ray
    import torch

    result = {"epoch": lambda: epoch(args.file), "trial": lambda: trial(args.file),
              "sweep": lambda: sweep(args.file, args.repeat, args.sweep_args.split(), args.keep)}[args.part]()
    record = {"bench": f"quickstart-{args.part}", "label": args.label, "file": str(args.file),
              "device": device_name("cpu"), "python": sys.version.split()[0], "torch": torch.__version__,
              "ray": ray.__version__, "load_at_end": load(), **result}
    emit(record, args.out or ROOT / "bench" / "results" / f"quickstart-{args.part}-cpu-2core.json")
    print(result["summary"])


if __name__ == "__main__":
    main()
