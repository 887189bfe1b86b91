"""The identity rule (rayclf.identity): ids hash what can change the result, and only that."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from rayclf.cli import main
from rayclf.config import build_config, flatten
from rayclf.identity import (
    IN,
    LEGACY_VERSION,
    OUT,
    RULES,
    arm_id,
    identity_values,
    rule,
    trial_id,
)
from rayclf.models.registry import list_models
from rayclf.sweep.spec import parse_sweep
from tests.conftest import tiny


def _every_option() -> set[str]:
    """Every dotted option of a trial config, over every registered model family."""
    keys: set[str] = set()
    for family in list_models():
        keys |= set(flatten(build_config({"model": {"name": family}}).to_dict()))
    return keys


def test_every_config_option_has_an_identity_decision():
    """A new option must be decided (in, out, or data) in rayclf.identity.RULES before it ships."""
    undecided = sorted(k for k in _every_option() if rule(k) is None)
    assert not undecided, f"options without an identity decision in rayclf.identity.RULES: {undecided}"
    stale = sorted(k for k in RULES if not k.endswith(".") and k not in _every_option())
    assert not stale, f"RULES decides options the config no longer has: {stale}"


def test_an_option_without_a_decision_is_refused_not_skipped(monkeypatch):
    monkeypatch.delitem(RULES, "train.tta")
    with pytest.raises(KeyError, match="train.tta"):
        identity_values(build_config(tiny(train={"tta": "flip"})))


@pytest.mark.parametrize("where", [
    {"data": {"root": "/somewhere/else", "download": False}},
    {"train": {"checkpoint_every": 5}},
    {"train": {"eval_batch_size": 17}},
    {"train": {"device": "cpu"}},
    {"train": {"channels_last": "off", "compile": True, "compile_mode": "max-autotune"}},
    {"optim": {"fused": "off"}},
])
def test_where_and_how_often_never_change_an_id(where):
    base, moved = build_config(tiny()), build_config(tiny(**where))
    assert trial_id(moved) == trial_id(base) and arm_id(moved) == arm_id(base)
    assert trial_id(moved, version=LEGACY_VERSION) != trial_id(base, version=LEGACY_VERSION)  # what v1 did


@pytest.mark.parametrize("what", [
    {"train": {"batch_size": 64}}, {"train": {"precision": "fp32"}}, {"train": {"tta": "flip"}},
    {"optim": {"lr": 0.07}}, {"optim": {"momentum": 0.5}}, {"augment": {"flip": {"p": 0.5}}},
    {"data": {"train_subset": 100}}, {"sched": {"name": "cosine"}}, {"reg": {"kind": "l2", "l2": 1e-4}},
    {"model": {"widths": [8, 32]}}, {"seed": 1},
])
def test_what_can_change_the_result_changes_the_id(what):
    assert trial_id(build_config(tiny(**what))) != trial_id(build_config(tiny()))


def test_world_size_is_identity_since_the_batch_is_per_rank():
    cfg = build_config(tiny())
    assert trial_id(cfg, world_size=2) != trial_id(cfg, world_size=1)
    assert arm_id(cfg, world_size=2) != arm_id(cfg, world_size=1)
    assert trial_id(cfg, world_size=2, version=LEGACY_VERSION) == trial_id(cfg, version=LEGACY_VERSION)


def test_resolved_defaults_hash_as_their_value():
    sgd = build_config(tiny())
    assert trial_id(build_config(tiny(optim={"momentum": 0.9}))) == trial_id(sgd)
    rms = build_config(tiny(optim={"name": "rmsprop"}))
    assert trial_id(build_config(tiny(optim={"name": "rmsprop", "momentum": 0.0}))) == trial_id(rms)
    assert trial_id(build_config(tiny(optim={"name": "rmsprop", "momentum": 0.9}))) != trial_id(rms)
    adam = build_config(tiny(optim={"name": "adam"}))  # adam takes no momentum: a value there changes nothing
    assert trial_id(build_config(tiny(optim={"name": "adam", "momentum": 0.5}))) == trial_id(adam)
    phase = {"epochs": 1, "trainable": "all"}
    assert (trial_id(build_config(tiny(train={"phases": [{**phase, "optim": "sgd", "lr": 0.05}]})))
            == trial_id(build_config(tiny(train={"phases": [phase]}))))


def test_golden_ids_of_this_identity_version():
    """Changing these means every directory's ids move: bump IDENTITY_VERSION and keep the old rule for them."""
    cfg = build_config(tiny(seed=3))
    assert identity_values(cfg) == {
        "seed": 3, "data.synthetic.num_train": 400, "data.synthetic.num_test": 200, "data.synthetic.num_classes": 4,
        "data.synthetic.image_size": 16, "data.synthetic.difficulty": 0.0, "model.widths": [8, 16],
        "train.epochs": 2, "train.batch_size": 32, "sched.name": "constant", "model.name": "cnn",
        "compat": "torch"}
    assert trial_id(cfg) == "6ef223a238e3a436"


def test_a_pinned_gpu_enters_through_the_precision_it_resolves():
    """precision auto is bf16 autocast on a GPU: a pinned GPU changes the recipe, so it changes the id; the same
    recipe spelled out is the same trial."""
    cuda = build_config(tiny(train={"device": "cuda"}))
    assert trial_id(cuda) != trial_id(build_config(tiny()))
    assert trial_id(cuda) == trial_id(build_config(tiny(train={"device": "cuda", "precision": "bf16"})))
    assert trial_id(cuda) == trial_id(build_config(tiny(train={"precision": "bf16"})))


def test_the_model_family_and_compat_are_identity_even_at_their_defaults():
    """Values are compared with the defaults of the config's own family under its own compat: the family and
    the compat must enter themselves, or two families (or frameworks) that keep their defaults hash alike."""
    ids = {trial_id(build_config({"model": {"name": name}, "compat": compat}))
           for name in ("cnn", "mlp", "vgg_baseline") for compat in ("torch", "keras")}
    assert len(ids) == 6


def _folder(root, sizes):
    for rel, size in sizes.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)


def test_an_image_folder_is_its_content_not_its_path(tmp_path):
    files = {"cat/1.png": 10, "cat/2.png": 11, "dog/1.png": 12}
    _folder(tmp_path / "a", files)
    _folder(tmp_path / "b", files)
    _folder(tmp_path / "a" / ".rayclf-cache", {"x.npz": 99})  # the decoded cache is not content
    a = build_config(tiny(data={"name": "imagefolder", "root": str(tmp_path / "a")}))
    b = build_config(tiny(data={"name": "imagefolder", "root": str(tmp_path / "b")}))
    assert trial_id(a) == trial_id(b)
    _folder(tmp_path / "c", {**files, "dog/1.png": 13})  # one file edited
    c = build_config(tiny(data={"name": "imagefolder", "root": str(tmp_path / "c")}))
    assert trial_id(c) != trial_id(a)
    _folder(tmp_path / "d", {**files, "dog/2.png": 12})  # one file added
    d = build_config(tiny(data={"name": "imagefolder", "root": str(tmp_path / "d")}))
    assert trial_id(d) != trial_id(a)


def test_a_named_dataset_is_its_name_and_version_wherever_it_lives():
    a = build_config(tiny(data={"name": "cifar10", "root": "/data/one"}))
    b = build_config(tiny(data={"name": "cifar10", "root": "/mnt/two", "download": False}))
    assert trial_id(a) == trial_id(b)
    assert identity_values(a)["data.version"] == 1
    assert trial_id(build_config(tiny(data={"name": "cifar100", "root": "/data/one"}))) != trial_id(a)


def test_decisions_cover_each_kind():
    assert rule("train.checkpoint_every")[0] == OUT and rule("optim.momentum")[0] == IN
    assert rule("model.some_future_family_option")[0] == IN  # a family's options are the network


ABLATION = {"name": "ab", "base": tiny(), "search": {"ablation": {"factors": {"optim.momentum": [0.9, 0.5]}}}}


def test_momentum_spelled_out_is_the_baselines_alias():
    sweep = parse_sweep(ABLATION)
    arms = sweep.arms()
    assert [a.label for a in arms] == ["baseline", "momentum=0.5"]
    assert arms[0].aliases == ("momentum=0.9",)
    # a directory of identity version 1 keeps its own arms: there the spelled-out value was an arm of its own
    sweep.identity_version = LEGACY_VERSION
    assert len(sweep.arms()) == 3


def test_dry_run_names_the_alias(tmp_path):
    import yaml

    path = tmp_path / "ab.yaml"
    path.write_text(yaml.safe_dump(ABLATION))
    res = CliRunner().invoke(main, ["sweep", str(path), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "momentum=0.9 is baseline's config" in res.output
