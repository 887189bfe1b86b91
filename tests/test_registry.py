"""Issue 24: sweep strategies in two registries. A search kind and an arm rule registered here, in the test file,
validate, describe themselves for ``--dry-run`` and run end to end through the kernel (fake runner, no Ray)
without touching any other module; and nothing outside the registry branches on a kind's or a rule's name."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from rayclf.cli import main
from rayclf.config import ConfigError
from rayclf.sweep.kernel import SweepRun, execute, record_unstarted, run_arms
from rayclf.sweep.racing import seed_values
from rayclf.sweep.spec import Arm, Trial, grid_arms, parse_sweep
from rayclf.sweep.strategies import (
    ArmRule,
    SearchStrategy,
    arm_rule_names,
    create_arm_rule,
    create_search,
    register_arm_rule,
    register_search,
    search_names,
)
from rayclf.sweep.strategies import registry as reg

from .fake_runner import FakeTrials, fake_run
from .test_structure import all_imports

ROOT = Path(__file__).resolve().parents[1] / "rayclf"
BASE = {"data": {"name": "synthetic", "synthetic": {"num_train": 64, "num_test": 32, "num_classes": 4,
                                                    "image_size": 8}},
        "model": {"name": "cnn", "widths": [4], "dropout": 0.1}, "train": {"epochs": 2, "batch_size": 32},
        "optim": {"name": "sgd", "lr": 0.05}}


# ----------------------------------------------------------------------------- strategies of this file
class FirstArmWins(SearchStrategy):
    """``search: {first-arm: {key: [levels]}}``: the file's grid, and its first arm is declared the winner."""

    options = dict[str, list[Any]]

    def arms(self, base_overrides: Mapping[str, Any] | None = None, stage: int | None = None) -> list[Arm]:
        return grid_arms(self.section)

    def describe(self) -> str:
        return f"sweep '{self.sweep.name}': first-arm over {len(self.sweep.arms())} arms"

    def execute(self, run: SweepRun) -> tuple[int, Arm | None]:
        arms = self.sweep.arms()
        return run_arms(run, arms), arms[0]


class Screen(ArmRule):
    """Every arm on the first seed; only the better half of the arms (by that seed) gets the other seeds, the
    rest are recorded eliminated."""

    takes_subsets = False
    every_seed = False

    def describe(self, n_arms: int) -> str:
        return f"scheduler: screen — {n_arms} arms on seed {self.sweep.file.seeds[0]}, the better half on the rest"

    def run_arms(self, run: SweepRun, arms: list[Arm], order: list[Trial]) -> int:
        first = self.sweep.file.seeds[0]
        skipped = run.run([t for t in self.sweep.trials(arms) if t.seed == first], order)
        sign = 1 if run.mode == "max" else -1
        ranked = sorted(arms, key=lambda a: -sign * seed_values(self.sweep, a, run.store.trials).get(first, 0.0))
        kept, cut = ranked[:(len(ranked) + 1) // 2], ranked[(len(ranked) + 1) // 2:]
        rest = [t for t in self.sweep.trials(cut) if t.seed != first]
        record_unstarted(run, rest, order, "eliminated", f"screened out on seed {first}")
        return skipped + run.run([t for t in self.sweep.trials(kept) if t.seed != first], order)


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This file's strategies registered for one test (the registries are restored afterwards)."""
    reg.search_names()  # the built-ins first
    monkeypatch.setattr(reg, "_SEARCHES", dict(reg._SEARCHES))
    monkeypatch.setattr(reg, "_ARM_RULES", dict(reg._ARM_RULES))
    register_search("first-arm")(FirstArmWins)
    register_arm_rule("screen")(Screen)
    yield


def first_arm_file(**kw: Any) -> dict[str, Any]:
    return {"name": "fa", "base": BASE, "seeds": [0, 1],
            "search": {"first-arm": {"optim.lr": [0.01, 0.05, 0.2]}}, **kw}


# ----------------------------------------------------------------------------- a search kind of this file
def test_a_search_kind_registered_here_validates_and_runs_through_the_kernel(registered, tmp_path):
    sweep = parse_sweep(first_arm_file())
    assert sweep.file.search.kind == "first-arm" and isinstance(create_search(sweep), FirstArmWins)
    assert [a.label for a in sweep.arms()] == ["lr=0.01", "lr=0.05", "lr=0.2"]
    outcome = execute(fake_run(sweep, str(tmp_path / "o")))
    assert outcome.winner is not None and outcome.winner.label == "lr=0.01"  # declared, not measured
    assert sorted((r["arm"], r["seed"]) for r in outcome.rows) == sorted(
        (a, s) for a in ("lr=0.01", "lr=0.05", "lr=0.2") for s in (0, 1))
    assert "staged winner: lr=0.01" in outcome.summary_text()
    # a resume skips what ran; the section round-trips through the stored sweep.yaml under its own key
    again = execute(fake_run(parse_sweep(yaml.safe_load(_dumped(sweep))), str(tmp_path / "o")))
    assert again.skipped == 6


def _dumped(sweep: Any) -> str:
    from rayclf.sweep.spec import dump_sweep

    text = dump_sweep(sweep)
    assert "first-arm:" in text
    return text


def test_a_search_kind_registered_here_is_checked_like_a_built_in(registered):
    with pytest.raises(ConfigError, match=r"unknown key 'search.first-arms'.*Did you mean 'first-arm'\?"):
        parse_sweep({**first_arm_file(), "search": {"first-arms": {"optim.lr": [0.1]}}})
    with pytest.raises(ConfigError, match=r"search takes one of grid, random, bayes, ablation, stages or first-arm, "
                                          r"not grid and first-arm"):
        parse_sweep({**first_arm_file(), "search": {"grid": {}, "first-arm": {"optim.lr": [0.1]}}})
    with pytest.raises(ConfigError, match=r"search.first-arm.optim.lr: Input should be a valid list"):
        parse_sweep({**first_arm_file(), "search": {"first-arm": {"optim.lr": 0.1}}})
    with pytest.raises(ConfigError, match=r"search.final only applies to stages"):
        parse_sweep({**first_arm_file(), "search": {"first-arm": {"optim.lr": [0.1]}, "final": {}}})
    # the arms `reported` may name are the strategy's labels
    with pytest.raises(ConfigError, match=r"'reported.0.arm' = 'lr=0.3' is not an arm.*Did you mean 'lr=0.2'\?"):
        parse_sweep(first_arm_file(reported=[{"arm": "lr=0.3", "value": 0.5, "source": "Table 1"}]))


def test_the_cli_validates_and_dry_runs_a_file_naming_a_kind_registered_here(registered, tmp_path):
    f = tmp_path / "fa.yaml"
    f.write_text(yaml.safe_dump(first_arm_file()))
    res = CliRunner().invoke(main, ["validate", str(f)])
    assert res.exit_code == 0 and "first-arm over 3 arms" in res.output, res.output
    res = CliRunner().invoke(main, ["sweep", str(f), "--dry-run", "--set", "scheduler.name=screen"])
    assert res.exit_code == 0, res.output
    assert "sweep 'fa' (first-arm): 3 arms × 2 seeds = 6 trials" in res.output
    assert "scheduler: screen — 3 arms on seed 0, the better half on the rest" in res.output
    f.write_text(yaml.safe_dump({**first_arm_file(), "search": {"frist-arm": {"optim.lr": [0.1]}}}))
    res = CliRunner().invoke(main, ["sweep", str(f), "--dry-run"])
    assert res.exit_code == 2 and "'search.frist-arm'" in res.output and "Did you mean 'first-arm'?" in res.output


def test_without_registering_the_kind_is_an_unknown_key():
    assert "first-arm" not in search_names() and "screen" not in arm_rule_names()
    with pytest.raises(ConfigError, match=r"unknown key 'search.first-arm'. Allowed keys here: ablation, bayes, "
                                          r"final, greedy, grid, random, stages\."):
        parse_sweep(first_arm_file())


# ----------------------------------------------------------------------------- an arm rule of this file
def test_an_arm_rule_registered_here_runs_through_the_kernel(registered, tmp_path):
    spec = {"name": "sc", "base": BASE, "seeds": [0, 1, 2], "scheduler": {"name": "screen"},
            "search": {"grid": {"optim.lr": [0.01, 0.05, 0.2, 0.5]}}}
    sweep = parse_sweep(spec)
    assert isinstance(create_arm_rule(sweep), Screen)
    runner = FakeTrials()
    outcome = execute(fake_run(sweep, str(tmp_path / "o"), runner))
    assert [len(c) for c in runner.calls] == [4, 4]  # every arm on seed 0, then 2 arms × 2 seeds
    status = {(r["arm"], r["seed"]): r["status"] for r in outcome.rows}
    assert len(status) == 12 and list(status.values()).count("eliminated") == 4
    kept = {a for (a, s), st in status.items() if s == 2 and st == "completed"}
    assert kept == {"lr=0.05", "lr=0.01"}  # the fake's values peak at lr 0.05
    # the rule says it decides across arms: a subset (--arm) is refused, as for asha
    from rayclf.sweep.select import pick

    with pytest.raises(ConfigError, match="runs scheduler screen, which decides on all its arms together"):
        pick(sweep, ("lr=0.05",), None)


def test_an_arm_rule_registered_here_is_checked_like_a_built_in(registered):
    grid = {"name": "sc", "base": BASE, "search": {"grid": {"optim.lr": [0.1]}}}
    with pytest.raises(ConfigError, match=r"'scheduler.name' = 'scren' is not allowed; choose one of: fifo, asha, "
                                          r"median, racing, screen. Did you mean 'screen'\?"):
        parse_sweep({**grid, "scheduler": {"name": "scren"}})
    with pytest.raises(ConfigError, match=r"scheduler.level only applies to scheduler name: racing"):
        parse_sweep({**grid, "scheduler": {"name": "screen", "level": 0.1}})
    with pytest.raises(ConfigError, match=r"scheduler.grace_period only applies to asha and median, not screen"):
        parse_sweep({**grid, "scheduler": {"name": "screen", "grace_period": 2}})
    bayes = {"num_samples": 2, "params": {"optim.lr": {"uniform": [0.01, 0.1]}}}
    with pytest.raises(ConfigError, match=r"search.bayes scores every proposal on all seeds; use scheduler asha or "
                                          r"median with it, not screen"):
        parse_sweep({**grid, "scheduler": {"name": "screen"}, "search": {"bayes": bayes}})


# ----------------------------------------------------------------------------- built-in facts
def test_the_rungs_come_from_the_rule():
    """asha and median bring their rungs and cutoffs; fifo and racing stop nothing inside a Tune run."""
    spec = {"name": "b", "base": BASE, "seeds": [0, 1, 2], "search": {"grid": {"optim.lr": [0.01, 0.1]}}}
    rungs = {}
    for name in ("fifo", "racing", "asha", "median"):
        sched = {"name": name, **({"grace_period": 1} if name in ("asha", "median") else {})}
        rule = create_arm_rule(parse_sweep({**spec, "scheduler": sched})).rung_rule(8)
        rungs[name] = (rule.name, rule.rungs, rule.cutoff([0.2, 0.4, 0.6]))
    assert rungs["fifo"] == ("fifo", [], None) and rungs["racing"] == ("racing", [], None)
    assert rungs["asha"][:2] == ("asha", [1, 2, 4]) and rungs["asha"][2] == pytest.approx(0.4)
    assert rungs["median"] == ("median", [1, 2, 3, 4, 5, 6, 7], pytest.approx(0.4))


def test_builtin_strategies_state_the_facts_other_modules_ask():
    from rayclf.sweep.decisions import CONTINUE, ELIMINATE, STOP, SURVIVE
    from rayclf.sweep.strategies import arm_rule_class, search_class

    assert search_names() == ["grid", "random", "bayes", "ablation", "stages"]
    assert arm_rule_names() == ["fifo", "asha", "median", "racing"]
    assert [n for n in search_names() if search_class(n).effects_against_baseline] == ["ablation"]
    assert [n for n in search_names() if search_class(n).staged] == ["stages"]
    assert [n for n in search_names() if not search_class(n).fixed_arms] == ["bayes", "stages"]
    assert [n for n in arm_rule_names() if arm_rule_class(n).takes_subsets] == ["fifo"]
    assert {n: set(arm_rule_class(n).decisions) for n in arm_rule_names()} == {
        "fifo": set(), "asha": {STOP, CONTINUE}, "median": {STOP, CONTINUE}, "racing": {ELIMINATE, SURVIVE}}


# ----------------------------------------------------------------------------- structure
NAMES = {"grid", "random", "bayes", "ablation", "stages", "fifo", "asha", "median", "racing"}
STRATEGIES = ROOT / "sweep" / "strategies"
# The Tune side (session, schedulers, callbacks) asks the arm rule too: its rungs come from ``ArmRule.rung_rule``.
TUNE_SIDE: set[str] = set()
# Same words, other vocabularies: a flip augmentation's mode.
OTHER_VOCABULARY = {("data/augment.py", "random")}


def _names_in(node: ast.AST) -> set[str]:
    """The registered names a comparison operand or a key spells: a string, or a tuple / list / set of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value} & NAMES
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return set().union(*(_names_in(e) for e in node.elts)) if node.elts else set()
    return set()


def name_dispatch(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every ``==`` / ``!=`` / ``in`` / ``not in`` against a registered name, every dict keyed
    by one, and every lookup (``d["asha"]``, ``d.get("asha")``) with one."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn)
                                                 for op in node.ops):
            found += [(node.lineno, n) for operand in (node.left, *node.comparators) for n in _names_in(operand)]
        elif isinstance(node, ast.Dict):
            found += [(node.lineno, n) for k in node.keys if k is not None for n in _names_in(k)]
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            found += [(node.lineno, n) for n in _names_in(node.slice)]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            found += [(node.lineno, n) for n in _names_in(node.args[0])] if node.args else []
    return found


def test_nothing_outside_the_registry_branches_on_a_kind_or_rule_name():
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if path.is_relative_to(STRATEGIES) or rel in TUNE_SIDE:
            continue
        offenders += [f"{rel}:{line} {name!r}" for line, name in name_dispatch(ast.parse(path.read_text()))
                      if (rel, name) not in OTHER_VOCABULARY]
    assert offenders == [], "ask the strategy (rayclf.sweep.strategies) instead of comparing its name"


def test_the_name_check_sees_each_way_of_branching():
    code = """
if kind == "ablation": pass
if s.name in ("asha", "median"): pass
if "racing" != name: pass
x = {"bayes": run_bayes}
y = table["stages"]
z = spec.get("grid")
ok = kind == "l1" or {"lr": 1} or Literal["random", "alternate"]
"""
    assert sorted(name_dispatch(ast.parse(code))) == [
        (2, "ablation"), (3, "asha"), (3, "median"), (4, "racing"), (5, "bayes"), (6, "stages"), (7, "grid")]


def test_the_sweep_layer_does_not_import_the_report():
    """Data flows one way: the sweep writes results, the report reads them (the CLI runs one, then the other),
    even through lazy imports."""
    for path in (ROOT / "sweep").rglob("*.py"):
        assert not [m for m in all_imports(path) if m.startswith("rayclf.report")], path.name


def test_importing_and_using_the_sweep_layer_loads_no_report_module():
    modules = sorted("rayclf." + p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
                     for p in (ROOT / "sweep").rglob("*.py") if p.name != "__init__.py")
    code = (f"import {', '.join(modules)}\n"
            "from rayclf.sweep.spec import parse_sweep\n"
            "from rayclf.sweep.plan import planned_count, scheduler_text\n"
            "from rayclf.sweep.strategies import create_search\n"
            f"base = {BASE!r}\n"
            "for search in ({'grid': {'optim.lr': [0.1, 0.2]}}, {'ablation': {'factors': {'optim.lr': [0.1]}}},\n"
            "               {'stages': [{'vary': {'optim.lr': [0.1, 0.2]}}]}):\n"
            "    s = parse_sweep({'name': 'x', 'base': base, 'seeds': [0, 1, 2], 'search': search,\n"
            "                     'scheduler': {'name': 'racing'}})\n"
            "    planned_count(s), scheduler_text(s, 2), create_search(s).describe()\n"
            "import sys\n"
            "bad = sorted(m for m in sys.modules if m.startswith('rayclf.report'))\n"
            "assert not bad, bad\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=ROOT.parent)
    assert res.returncode == 0, res.stderr[-3000:]


# ----------------------------------------------------------------------------- the CLI publishes, not the sweep
@pytest.fixture
def fake_sweeps(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """``rayclf sweep`` with ``run_sweep`` on the fake runner (no Ray), W&B offline under tmp_path/wb; set
    ``interrupt`` to make the sweep stop as Ctrl-C would. ``published`` lists the directories published."""
    import rayclf.report.publish as publish
    import rayclf.sweep.runner as runner
    from rayclf.tracking import TrackingSettings

    state: dict[str, Any] = {"interrupt": False, "published": []}

    def run_sweep(sweep: Any, out: str, on_done: Any = None, **_: Any) -> Any:
        _, _, lock = runner.prepare_out(sweep, out, False)
        lock.release()
        # interrupted: two trials recorded, then the stop flag (as Ctrl-C) raises SweepInterrupted
        outcome = execute(fake_run(sweep, out, FakeTrials(interrupt_after=2) if state["interrupt"] else None))
        outcome.tracking = TrackingSettings("offline", "rayclf", None, str(tmp_path / "wb"))
        if on_done is not None:  # as the real one: before Ray's shutdown
            on_done(outcome)
        return outcome

    real = publish.publish
    monkeypatch.setattr(runner, "run_sweep", run_sweep)
    monkeypatch.setattr(publish, "publish", lambda out, *a, **k: state["published"].append(out) or real(out, *a, **k))
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"name": "pub", "base": BASE, "seeds": [0, 1],
                                 "search": {"ablation": {"factors": {"optim.lr": [0.2]}}}}))
    state["file"] = f
    return state


def test_the_cli_publishes_a_finished_sweeps_summary_to_wandb(fake_sweeps, tmp_path):
    from .conftest import inspect_wandb_run

    out = str(tmp_path / "o")
    res = CliRunner().invoke(main, ["sweep", str(fake_sweeps["file"]), "--out", out])
    assert res.exit_code == 0, res.output
    assert fake_sweeps["published"] == [out]
    assert f"W&B runs were written offline under {tmp_path / 'wb'}/wandb; upload them with: wandb sync" in res.output
    runs = [inspect_wandb_run(d) for d in (tmp_path / "wb" / "wandb").glob("offline-run-*")]
    (summary,) = [r for r in runs if r["job_type"] == "sweep-summary"]
    assert "report/learning_curves" in {k.split(".")[0] for h in summary["history"] for k in h}
    # the closing table first (as soon as the last row is written), then W&B's rendering and upload
    assert res.output.index("4 trials recorded") < res.output.index("W&B runs were written offline")


def test_a_report_that_cannot_render_costs_the_finished_sweep_nothing(fake_sweeps, tmp_path, monkeypatch):
    import rayclf.report.publish as publish

    def broken(out: str) -> Any:
        raise RuntimeError("no figures today")

    monkeypatch.setattr(publish, "render_for_tracking", broken)
    out = str(tmp_path / "o")
    res = CliRunner().invoke(main, ["sweep", str(fake_sweeps["file"]), "--out", out])
    assert res.exit_code == 0, res.output
    assert ("warning: the report for W&B could not be rendered (RuntimeError: no figures today); run "
            f"`rayclf report {out} --wandb offline` later.") in res.output
    assert fake_sweeps["published"] == [] and "4 trials recorded" in res.output


def stored_rows(out: Path) -> list[dict[str, Any]]:
    from rayclf.results import ResultsStore

    return ResultsStore(str(out)).trials


def test_an_interrupted_sweep_publishes_nothing(fake_sweeps, tmp_path):
    fake_sweeps["interrupt"] = True
    res = CliRunner().invoke(main, ["sweep", str(fake_sweeps["file"]), "--out", str(tmp_path / "o")])
    assert res.exit_code == 130 and "sweep interrupted" in res.output, res.output
    assert fake_sweeps["published"] == [] and not (tmp_path / "wb").exists()
    assert len(stored_rows(tmp_path / "o")) == 2  # there was something to publish


# ----------------------------------------------------------------------------- end to end, on Ray
@pytest.mark.ray
@pytest.mark.timeout(180)
def test_a_search_kind_and_an_arm_rule_registered_here_run_from_the_cli_on_ray(registered, ray_local, tmp_path):
    """``rayclf sweep`` with this file's kind and rule: real training in one Tune run, rows, winner, report."""
    f, out = tmp_path / "fa.yaml", tmp_path / "out"
    f.write_text(yaml.safe_dump({**first_arm_file(), "scheduler": {"name": "screen"}}))
    res = CliRunner().invoke(main, ["sweep", str(f), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "staged winner: lr=0.01" in res.output
    from rayclf.results import ResultsStore

    status = {(r["arm"], r["seed"]): r["status"] for r in ResultsStore(str(out)).trials}
    assert len(status) == 6 and list(status.values()).count("eliminated") == 1
    assert all(status[(a, 0)] == "completed" for a in ("lr=0.01", "lr=0.05", "lr=0.2"))
    assert len(list((out / "_ray").glob("run-*"))) == 1  # seed 0, then the kept arms' seed 1: one Tune run
    res = CliRunner().invoke(main, ["report", str(out)])
    assert res.exit_code == 0, res.output
