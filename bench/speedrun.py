"""Time to 94% CIFAR-10 test accuracy with the `fast` recipe (sweeps/cifar10_speedrun.yaml), in rayclf's engine.

Timed like airbench94 (published: 3.29 s on an A100 for its compiled variant, 94.01% mean): training epochs
plus the final test-time-augmented evaluation, after one warm-up run that fills the compile caches; loading
the data onto the device is not counted. Several seeds; each run and the mean are reported.

--data cifar10    full CIFAR-10 (50,000 / 10,000): time *and* accuracy, the real measurement;
--data mini       cifar10-mini (3,730 real images): a small accuracy check, not comparable with 94%;
--data synthetic  50,000 / 10,000 random images of CIFAR's shape: time only (accuracy is meaningless);
--data auto       the first of these that is available.
--airbench        also run the `airbench` package (pip install airbench) on the very same images and GPU:
                  its own timer (training + TTA), after its warm-up run. Needs a GPU.
Usage:
    python -m bench.speedrun [--data auto] [--runs 5] [--set KEY=VALUE ...] [--airbench] [--out x.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Any

import torch

from bench.common import device_name, emit
from rayclf.config import UserError
from rayclf.data.sources import load_dataset
from rayclf.sweep.spec import load_trial_config
from rayclf.train.engine import fit

RECIPE = Path(__file__).resolve().parents[1] / "sweeps" / "cifar10_speedrun.yaml"
MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"
AIRBENCH94_PUBLISHED = {"seconds": 3.29, "accuracy": 0.9401, "device": "NVIDIA A100-SXM4-80GB",
                        "source": "github.com/KellerJordan/cifar10-airbench README (airbench94_compiled.py)"}


DATA = {
    "cifar10": (),
    "mini": (f"data.root={MINI}", "data.download=false"),
    "synthetic": ("data.name=synthetic", "data.synthetic.num_train=50000", "data.synthetic.num_test=10000"),
}


def recipe(data: str, overrides: list[str]) -> tuple[Any, Any, str]:
    """The recipe's config and dataset for ``data`` (``auto``: full CIFAR-10, else mini, else synthetic)."""
    choices = [data] if data != "auto" else ["cifar10", "mini", "synthetic"]
    for name in choices:
        cfg = load_trial_config(RECIPE, (*DATA[name], *overrides))
        try:
            return cfg, load_dataset(cfg.data), name
        except UserError:
            if name == choices[-1]:
                raise
    raise AssertionError("unreachable: the last choice returns or raises")


def one_run(cfg: Any, ds: Any) -> dict[str, Any]:
    s = fit(cfg, data=ds).summary
    return {"seed": cfg.seed, "test_accuracy": s["test_accuracy"], "train_s": s["train_seconds"],
            "tta_eval_s": s["test_seconds"], "timed_s": s["train_seconds"] + s["test_seconds"],
            "fit_s": s["seconds"], "images_per_sec": s["images_per_sec"]}


def run_airbench(ds: Any, runs: int) -> dict[str, Any] | str:
    """airbench94 from its package on our images: it reads ./cifar10/{train,test}.pt, so write them there."""
    try:
        import airbench  # type: ignore[import-not-found]
    except ImportError:
        return "airbench package not installed (pip install airbench)"
    if not torch.cuda.is_available():
        return "airbench needs a CUDA GPU"
    import contextlib
    import io
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="rayclf-airbench-"))
    (folder / "cifar10").mkdir()
    for split, name in ((ds.train, "train.pt"), (ds.test, "test.pt")):
        torch.save({"images": torch.from_numpy(split.x).permute(0, 2, 3, 1).contiguous(),
                    "labels": torch.from_numpy(split.y).long(), "classes": list(ds.classes)}, folder / "cifar10" / name)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        airbench.warmup94(verbose=False)
        results = []
        for _ in range(runs):
            log = io.StringIO()
            with contextlib.redirect_stdout(log):
                model = airbench.train94(verbose=True)
            test = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
            results.append({"seconds": _last_time(log.getvalue()), "tta_accuracy": airbench.evaluate(model, test, 2)})
    finally:
        os.chdir(cwd)
    return {"runs": results, "mean_s": statistics.mean(r["seconds"] for r in results if r["seconds"] is not None)}


def _last_time(log: str) -> float | None:
    """airbench prints a table whose last column is total_time_seconds; take its final row's value."""
    rows = [line for line in log.splitlines() if line.startswith("|") and "eval" in line]
    try:
        return float(rows[-1].strip("|").split("|")[-1])
    except (IndexError, ValueError):
        return None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--target", type=float, default=0.94)
    p.add_argument("--data", choices=["auto", "cifar10", "mini", "synthetic"], default="auto",
                   help="cifar10 is read from $RAYCLF_DATA (or --set data.root=DIR)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--airbench", action="store_true", help="also time the airbench package, if installed")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    cfg, ds, data = recipe(args.data, args.overrides)
    if not args.no_warmup:  # compile caches and cuDNN autotuning, as airbench's own warm-up run
        fit(cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 1})}), data=ds)
    runs = [one_run(cfg.model_copy(update={"seed": seed}), ds) for seed in range(args.runs)]
    accs = [r["test_accuracy"] for r in runs]
    mean_acc = statistics.mean(accs)
    timed = statistics.mean(r["timed_s"] for r in runs)
    record: dict[str, Any] = {
        "device": device_name(), "torch": torch.__version__, "data": data, "train_images": len(ds.train),
        "recipe": str(RECIPE.name), "overrides": args.overrides, "runs": runs,
        "mean_test_accuracy": mean_acc, "std_test_accuracy": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "mean_timed_s": timed, "target": args.target,
        "reached_target": (data == "cifar10" and mean_acc >= args.target) if data != "synthetic" else None,
        "airbench94_published": AIRBENCH94_PUBLISHED,
    }
    if record["reached_target"]:
        record["time_to_target_s"] = timed
        record["vs_airbench_published"] = timed / AIRBENCH94_PUBLISHED["seconds"]
    if args.airbench:
        record["airbench_same_machine_and_data"] = run_airbench(ds, args.runs)
    emit(record, args.out)


if __name__ == "__main__":
    main()
