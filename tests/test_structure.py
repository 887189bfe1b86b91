"""The house rules that can be checked by reading the code: no import cycles between rayclf's modules, the
engine imports neither Ray nor W&B, and a trial config round-trips through its own dict."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from rayclf.config import TrialConfig, build_config

ROOT = Path(__file__).resolve().parents[1] / "rayclf"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """rayclf modules this file imports when it is imported (module level; function-level imports are lazy)."""
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rayclf"):
            for alias in node.names:  # `from rayclf.models import cnn` imports the submodule
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("rayclf")}
    return out & modules


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {m: top_level_imports(p, set(files)) for m, p in files.items()}


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1 and not m.startswith(n + "."):  # a package importing its own parts is fine
                cycles.append([*stack[stack.index(n):], n] if n in stack else [m, n])
            elif n not in state:
                visit(n, [*stack, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_engine_imports_no_ray_or_wandb():
    tree = ast.parse((ROOT / "train" / "engine.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not [n for n in names if n.split(".")[0] in ("ray", "wandb")]


@pytest.mark.parametrize("name", ["cnn", "resnet_cifar", "resnet_custom", "vgg_baseline", "mlp", "airbench",
                                  "resnet18"])
def test_trial_config_round_trips_through_its_own_dict(name):
    cfg = build_config({"model": {"name": name}, "seed": 3})
    again = TrialConfig.model_validate(cfg.to_dict())
    assert again == cfg and type(again.model) is type(cfg.model)


def all_imports(path: Path) -> set[str]:
    """Every rayclf module a file imports, lazy (function-level) imports included."""
    tree = ast.parse(path.read_text())
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return {n for n in names if n.startswith("rayclf")}


def test_config_and_model_families_do_not_import_each_other():
    """config → model_options ← models: the trial config never reaches into the model zoo, nor the zoo
    into the trial config (they meet in the options registry), even through lazy imports."""
    assert not [m for m in all_imports(ROOT / "config.py") if m.startswith("rayclf.models")]
    for family in (ROOT / "models").glob("*.py"):
        assert "rayclf.config" not in all_imports(family), family.name


def test_data_and_engine_build_on_storage_not_on_the_results_store():
    """rayclf.storage is a leaf that data/, train/ and the results store build on: the store sits above the
    engine, so nothing in data/ or train/ imports it, even lazily; storage imports nothing of them."""
    for folder in ("data", "train"):
        for path in (ROOT / folder).glob("*.py"):
            assert "rayclf.results" not in all_imports(path), f"{folder}/{path.name}"
    assert all_imports(ROOT / "storage.py") <= {"rayclf.config"}
    assert "rayclf.storage" in all_imports(ROOT / "results.py")


def test_strategies_and_the_kernel_meet_only_in_the_run_interface():
    """Issue 28: what a strategy may ask of a run lives in ``runport``; no strategy (nor racing, nor bayes)
    imports the kernel, even lazily, and racing and bayes import no strategy (no racing ↔ arm-rules circle)."""
    sweep = ROOT / "sweep"
    users = [*sorted((sweep / "strategies").glob("*.py")), sweep / "racing.py", sweep / "bayes.py"]
    assert {p.name: "rayclf.sweep.kernel" in all_imports(p) for p in users} == {p.name: False for p in users}
    for p in (sweep / "racing.py", sweep / "bayes.py"):
        assert not {m for m in all_imports(p) if m.startswith("rayclf.sweep.strategies")}, p.name


NO_TORCH_VALIDATION = r"""
import sys
from click.testing import CliRunner
from rayclf.cli import main
res = CliRunner().invoke(main, ["validate", *sys.argv[1:]])
print(res.output)
assert res.exit_code == 0, res.output
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "torchvision"))
models = sorted(m for m in sys.modules if m.startswith("rayclf.models") and m != "rayclf.models.options")
print("LOADED", loaded[:5], models)
assert not loaded and models in ([], ["rayclf.models"]), (loaded[:5], models)
# the sweep driver's own modules, the trainable it hands Tune included (Tune pickles it by reference)
from rayclf.sweep import callbacks, runner, schedulers, session, worker
assert not [m for m in sys.modules if m.split(".")[0] == "torch"], "the driver imported torch"
"""


def test_validating_sweep_files_imports_no_torch_and_no_model_code(tmp_path):
    """A sweep's driver validates its file before Ray starts: with the families' options torch-free, that costs
    no torch import (2.7 s of a 2-core machine) and loads no builder; nor does the rest of the driver (only the
    trial processes import torch, which the warm start preloads while Tune sets up). Every family of ours, each
    options class's own checks run (a bad value is still refused: the second file)."""
    import subprocess
    import sys

    import yaml

    ours = {"cnn": {"widths": [8]}, "vgg_baseline": {"blocks": 2}, "mlp": {"hidden": [16]},
            "resnet_custom": {"blocks": 4}, "resnet_cifar": {"depth": 8}, "airbench": {"whiten_kernel": 3}}
    arms = {name: {"model.name": name, **{f"model.{k}": v for k, v in opts.items()}} for name, opts in ours.items()}
    good = tmp_path / "families.yaml"
    good.write_text(yaml.safe_dump({"name": "families", "base": {"data": {"name": "synthetic"}},
                                    "search": {"grid": {"family": arms}}}))
    quickstart = ROOT.parent / "sweeps" / "quickstart.yaml"
    res = subprocess.run([sys.executable, "-c", NO_TORCH_VALIDATION, str(good), str(quickstart)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "6 arms" in res.stdout and "quickstart" in res.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "base": {"model": {"name": "resnet_cifar", "depth": 21}}}))
    res = subprocess.run([sys.executable, "-c", NO_TORCH_VALIDATION, str(bad)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert res.returncode != 0 and "6n+2" in res.stdout, res.stdout[-2000:]
