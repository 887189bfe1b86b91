"""Shipped files: every sweep validates and cites its study; cluster configs pass Ray's schema offline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import rayclf
from rayclf.sweep.spec import load_sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
STUDIES = ROOT.parent / "shared" / "studies"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_file_validates_and_cites_its_study(path):
    sweep = load_sweep(path)
    assert sweep.name == path.stem
    text = path.read_text()
    if path.stem == "cifar10_speedrun":  # reproduces a speed record, not a study: cites where its facts are from
        assert "github.com/KellerJordan/cifar10-airbench" in text and "published" in text
    elif path.stem != "quickstart":
        cited = re.findall(r"studies/(\d{3}_[0-9a-f]{16}\.txt)", text)
        assert cited, f"{path.name} does not cite the study it reproduces"
        assert sweep.file.reported or "Reported" in text  # numbers as data, or what the report says without them
        assert all(k in text for k in ("Report ran:", "File runs:", "Differs:")), "header: ran / runs / differs"
        if STUDIES.is_dir():
            assert all((STUDIES / c).is_file() for c in cited)


def test_expected_study_files_exist():
    names = {p.stem for p in SWEEPS}
    assert {"cifar10_cnn_tuning", "regularization", "cinic10_resnet_grid", "cinic10_augmentation",
            "cinic10_vgg19_transfer", "cifar10_baselines", "cifar10_resnet20", "cifar100_cnn",
            "cifar100_resnet18_finetune", "quickstart"} <= names


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_config_passes_rays_schema(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster" / name).read_text())
    validate_config(prepare_config(config))
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"]["rayclf_driver"] > 0
    gpu_types = [t for n, t in types.items() if n != config["head_node_type"]]
    assert len(gpu_types) >= 2 and all(t["min_workers"] == 0 and t["max_workers"] > 0 for t in gpu_types)
    spot = [t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
            or t["node_config"].get("scheduling", {}).get("provisioningModel") == "SPOT" for t in gpu_types]
    assert all(spot)
    assert config["docker"]["image"].startswith("rayproject/ray:") and "gpu" in config["docker"]["image"]


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml", "Dockerfile", "kuberay.yaml"])
def test_cluster_installs_this_rayclf_version(name):
    text = (ROOT / "cluster" / name).read_text()
    versions = set(re.findall(r"__version__ == '([^']+)'", text)) | set(re.findall(r"rayclf:(\d[\w.]*)", text))
    assert versions == {rayclf.__version__}


def test_kuberay_manifest_structure():
    m = yaml.safe_load((ROOT / "cluster" / "kuberay.yaml").read_text())
    assert m["apiVersion"] == "ray.io/v1" and m["kind"] == "RayCluster"
    spec = m["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and "rayclf_driver" in head["rayStartParams"]["resources"]
    assert head["template"]["spec"]["containers"][0]["image"]
    workers = spec["workerGroupSpecs"]
    assert workers and all(w["minReplicas"] == 0 and w["maxReplicas"] > 0 for w in workers)
    for w in workers:
        limits = w["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1


def test_pyproject_version_matches_package():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', text, re.M).group(1) == rayclf.__version__


def _every_config(sweep):
    if sweep.file.search.kind != "stages":
        return [c.config for c in sweep.trials(sweep.arms())]
    return [sweep.config_for(a, 0) for i in range(sweep.stage_count()) for a in sweep.arms({}, stage=i)]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_study_files_say_which_sgd_momentum_they_use(path):
    """PyTorch-style code uses 0.9, Keras's SGD 0: a file that runs SGD must state it (or compat: keras does)."""
    for cfg in _every_config(load_sweep(path)):
        optimizers = {p.optim or cfg.optim.name for p in cfg.train.phases} | {cfg.optim.name}
        if "sgd" in optimizers:
            assert "momentum" in cfg.optim.model_fields_set, f"{path.name}: an SGD arm leaves optim.momentum implicit"


@pytest.mark.parametrize(("name", "count"), [("cifar100_cnn", "4,647,524"), ("cifar100_cnn", "29,778,020"),
                                             ("cifar10_resnet20", "273,066"), ("cifar10_cnn_tuning", "375,946")])
def test_dry_run_states_the_parameter_counts_the_reports_imply(name, count):
    from rayclf.sweep.plan import model_sizes

    sweep = load_sweep(ROOT / "sweeps" / f"{name}.yaml")
    trials = (sweep.trials(sweep.arms()) if sweep.file.search.kind != "stages" else
              [t for i in range(sweep.stage_count()) for t in sweep.trials(sweep.arms({}, stage=i))])
    assert any(count in line for line in model_sizes(trials))


CLASSES = {"cifar100": 100}


def _stand_ins(path: Path) -> list:
    """Each study file's distinct trial configs (every stage's first arm, the final run), with the dataset
    replaced by synthetic images of its shape, one short epoch per phase and no weight download (fewer images for
    a model that upsizes them to 224 px: the costliest test of the suite on 2 cores)."""
    from rayclf.config import build_config
    from rayclf.sweep.spec import Arm

    sweep = load_sweep(path)
    s = sweep.file.search
    if s.kind == "stages":
        arms = [sweep.arms({}, stage=i)[0] for i in range(sweep.stage_count()) if s.stages[i].vary is not None]
        arms += [Arm("final", dict(s.final))] if s.final else []
    elif s.kind == "bayes":
        arms = [Arm("baseline", {})]
    else:
        arms = sweep.arms()[:3]
    out, seen = [], set()
    for arm in arms:
        raw = sweep.config_for(arm, sweep.file.seeds[0]).to_dict()
        raw["data"] = {**raw["data"], "name": "synthetic", "root": None, "train_subset": None, "image_size": None,
                       "validate_on": "holdout", "synthetic": {"num_train": 40 if raw["model"].get("resize") else 80,
                                                               "num_test": 16, "image_size": 32,
                                                               "num_classes": CLASSES.get(raw["data"]["name"], 10)}}
        raw["train"] = {**raw["train"], "epochs": 1, "batch_size": 16, "eval_batch_size": 64,
                        "phases": [{**p, "epochs": 1} for p in raw["train"]["phases"]]}
        for key in ("pretrained", "checkpoint"):
            if key in raw["model"]:
                raw["model"][key] = False if key == "pretrained" else None
        key = repr(sorted((k, repr(v)) for k, v in raw.items() if k != "seed"))
        if key not in seen:
            seen.add(key)
            out.append(build_config(raw))
    return out


@pytest.mark.parametrize("path", [p for p in SWEEPS if p.stem != "cifar10_speedrun"], ids=lambda p: p.name)
def test_each_study_file_trains_a_short_run_without_error(path):
    """The Evidence a study file owes: its configs (architecture, recipe, compat, schedule, augmentation) train
    end to end on data of the study's shape (cifar10_speedrun has its own training test)."""
    from rayclf.train.engine import fit

    for cfg in _stand_ins(path):
        result = fit(cfg)
        assert result.status in ("completed", "diverged"), (path.name, result.summary.get("reason"))
        assert len(result.history) == cfg.total_epochs()


def _header_command(text: str) -> list[str]:
    """The headline command a study header names: the comment lines from ``#   rayclf`` on, joined at ``\\``."""
    import shlex

    lines = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("#")]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("rayclf "))
    cmd = lines[start]
    while cmd.endswith("\\"):
        start += 1
        cmd = cmd[:-1] + " " + lines[start]
    return shlex.split(cmd)[1:]


STUDY_FILES = [p for p in SWEEPS if p.stem not in ("quickstart", "cifar10_speedrun")]


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.name)
def test_study_header_names_a_runnable_headline_command_in_fp32(path):
    """Every header names the command for its headline number; it pins fp32 (the reports trained in fp32,
    rayclf's default is bf16 autocast on a GPU, which the header says) and its arms exist (a dry run passes)."""
    from click.testing import CliRunner

    from rayclf.cli import main

    text = path.read_text()
    args = _header_command(text)
    assert args[:2] == ["sweep", f"sweeps/{path.name}"] and "train.precision=fp32" in args
    assert "bf16" in text and "fp32" in text
    res = CliRunner().invoke(main, [*args, "--dry-run"])
    assert res.exit_code == 0, res.output
    if "validate_on=test" in text:  # a report that validated on the test set: its protocol is one --set away
        load_sweep(path, ("data.validate_on=test",))


@pytest.mark.parametrize("path", [p for p in STUDY_FILES if load_sweep(p).file.reported], ids=lambda p: p.name)
def test_reported_numbers_name_an_arm_that_runs_those_epochs(path):
    """Each ``reported`` entry names an arm the sweep runs, and that arm trains the epochs the report measured
    its number after (exactly, or at most where early stopping may end it there)."""
    from rayclf.sweep.select import sweep_arms

    sweep = load_sweep(path)
    known, pending = sweep_arms(sweep)
    s = sweep.file.search
    around_base = ([a for i in range(sweep.stage_count()) for a in sweep.arms({}, stage=i)]
                   if s.kind == "stages" else [])  # an arm needing earlier winners: its epochs do not depend on them
    for rep in sweep.file.reported:
        arm = next((a for a in known if a.label == rep.arm), None)
        if arm is None:
            assert rep.arm in pending, f"{path.name}: reported arm {rep.arm!r} is not an arm of the sweep"
            arm = next(a for a in around_base if a.label == rep.arm)
        cfg = sweep.config_for(arm, sweep.file.seeds[0])
        if rep.epochs is None:
            continue
        if cfg.train.early_stopping.patience:
            assert rep.epochs <= cfg.total_epochs(), (path.name, rep.arm)
        else:
            assert rep.epochs == cfg.total_epochs(), (path.name, rep.arm)
