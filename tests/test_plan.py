"""``rayclf sweep --dry-run`` tells the truth: trials that cannot run here, and the real dataset size."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayclf.sweep import plan
from rayclf.sweep.spec import load_sweep, parse_sweep

from .conftest import tiny, write_cifar

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


@pytest.fixture
def cpu_only(monkeypatch):
    """This machine, as a laptop without a GPU sees it."""
    monkeypatch.setattr(plan, "cluster_resources", lambda address: ({"CPU": 2.0, "GPU": 0.0}, "this machine"))


def test_dry_run_says_gpu_trials_cannot_run_without_a_gpu_and_how_to_fix_it(cpu_only):
    text = plan.dry_run_text(load_sweep(SWEEPS / "regularization.yaml"))
    assert "trials at once" not in text  # no pretend concurrency
    line = next(ln for ln in text.splitlines() if ln.startswith("CANNOT RUN"))
    assert "needs 0.25 GPU" in line and "--set resources.gpus=0" in line
    fixed = plan.dry_run_text(load_sweep(SWEEPS / "regularization.yaml", ("resources.gpus=0",)))
    assert "CANNOT RUN" not in fixed and "2 CPU, 0 GPU): 1 trials at once" in fixed


def test_fixes_cover_cpus_and_workers():
    sweep = parse_sweep({"name": "big", "base": tiny(), "search": {"grid": {"optim.lr": [0.1]}},
                         "resources": {"cpus": 4, "gpus": 1, "num_workers": 2}})
    assert plan.fixing_overrides(sweep, {"CPU": 2.0, "GPU": 0.0}) == [
        "--set resources.gpus=0", "--set resources.cpus=1"]
    assert plan.fixing_overrides(sweep, {"CPU": 1.0, "GPU": 2.0}) == [
        "--set resources.num_workers=1", "--set resources.cpus=1"]


def _cifar_sweep(root: Path):
    return parse_sweep({"name": "sized", "base": tiny(data={"name": "cifar10", "root": str(root), "download": False}),
                        "search": {"grid": {"optim.lr": [0.1]}}, "seeds": [0],
                        "resources": {"cpus": 1, "gpus": 0}})


def test_estimate_counts_the_images_present_and_says_when_it_assumed_the_full_size(tmp_path, cpu_only):
    write_cifar(tmp_path / "data", n_train=250)  # 5 batches of 50
    sweep = _cifar_sweep(tmp_path / "data")
    trials = sweep.trials(sweep.arms())
    assert plan.train_images(trials[0].config) == (225, "counted")  # 250 less the 10% validation share
    hours, basis = plan.estimate_hours(trials, use_gpu=False)
    assert "225 training images per epoch, counted in" in basis
    full = plan.estimate_hours(_cifar_sweep(tmp_path / "empty").trials(sweep.arms()), use_gpu=False)
    assert "assumed the full-size cifar10 training set (45,000 images per epoch)" in full[1]
    assert full[0] == pytest.approx(hours * 45_000 / 225)
    assert "assumed the full-size" in plan.dry_run_text(_cifar_sweep(tmp_path / "empty"))
