"""Config loading, overrides and the friendly errors (key path, value, allowed, closest spelling)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from rayclf.cli import main
from rayclf.config import ConfigError, build_config, load_config, parse_override

from .conftest import tiny


def test_defaults_are_complete_and_public_keys_exist():
    cfg = build_config({})
    for key in ("data.name", "data.root", "model.name", "train.epochs", "train.batch_size", "optim.name",
                "optim.lr", "seed"):
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
    assert cfg.data.name == "synthetic"


def test_yaml_and_set_overrides_keep_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {epochs: 3}\nmodel: {name: cnn, widths: [8, 16]}\n")
    cfg = load_config(path, ["optim.lr=0.01", "model.widths=[4, 8, 16]", "train.compile=true", "data.root=/x"])
    assert cfg.train.epochs == 3
    assert cfg.optim.lr == pytest.approx(0.01)
    assert cfg.model.widths == [4, 8, 16]
    assert cfg.train.compile is True
    assert cfg.data.root == "/x"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"optim": {"name": "adamm"}}, ["'optim.name'", "'adamm'", "sgd, adam", "Did you mean 'adam'?"]),
        ({"trian": {}}, ["unknown key 'trian'", "Did you mean 'train'?"]),
        ({"train": {"epocs": 3}}, ["unknown key 'train.epocs'", "Did you mean 'epochs'?"]),
        ({"train": {"epochs": 0}}, ["'train.epochs' = 0", "greater than or equal to 1"]),
        ({"train": {"batch_size": "big"}}, ["'train.batch_size' = 'big'", "integer"]),
        ({"data": {"name": "cifar1O"}}, ["'data.name' = 'cifar1O'", "Did you mean 'cifar10'?"]),
        ({"model": {"name": "cnnn"}}, ["'model.name' = 'cnnn'", "timm model", "Did you mean 'cnn'?"]),
        ({"model": {"name": "cnn", "widht": [8]}}, ["unknown key 'model.widht'", "Did you mean 'widths'?"]),
    ],
)
def test_bad_values_name_path_value_allowed_and_closest(raw, expected):
    with pytest.raises(ConfigError) as err:
        build_config(raw)
    message = str(err.value)
    for part in expected:
        assert part in message, message
    assert "\n" not in message  # one paragraph


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("train.epochs")


def test_cli_bad_input_exits_2_without_traceback(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["train", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2
    assert "does not exist" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["train", "--set", "optim.name=adamm"])
    assert res.exit_code == 2
    assert "Did you mean 'adam'?" in res.output and "Traceback" not in res.output


def test_trial_id_is_content_address():
    from rayclf.identity import trial_id

    a, b = build_config(tiny()), build_config(tiny())
    assert trial_id(a) == trial_id(b)
    assert trial_id(build_config(tiny(seed=1))) != trial_id(a)
    assert trial_id(build_config(tiny(optim={"lr": 0.1}))) != trial_id(a)


def test_misspelt_phase_optimizer_is_caught_when_the_config_loads(tmp_path):
    raw = tiny(train={"phases": [{"epochs": 1, "trainable": "head", "optim": "adamm"}]})
    with pytest.raises(ConfigError, match=r"'train.phases.0.optim' = 'adamm'.*Did you mean 'adam'"):
        build_config(raw)
    import yaml

    f = tmp_path / "cfg.yaml"
    f.write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(main, ["validate", str(f)])
    assert res.exit_code == 2 and "adamm" in res.output


@pytest.mark.parametrize("command", ["validate", "train"])
def test_unreadable_config_file_is_one_paragraph_and_exit_2(tmp_path, command):
    f = tmp_path / "weights.yaml"
    f.write_bytes(bytes(range(128, 256)) * 4)  # not text at all
    res = CliRunner().invoke(main, [command, str(f), *(["--out", str(tmp_path / "o")] if command == "train" else [])])
    assert res.exit_code == 2, res.output
    assert "is not a text (UTF-8) file" in res.output and "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    res = CliRunner().invoke(main, [command, str(tmp_path)])  # a folder, not a file
    assert res.exit_code == 2 and "Traceback" not in res.output


@pytest.mark.parametrize(("sections", "key"), [
    ({"data": {"image_size": 24}}, "data.image_size"),
    ({"optim": {"name": "adam", "rho": 0.95}}, "optim.rho"),
    ({"train": {"phases": [{"epochs": 1, "optim": "adam"}]}, "optim": {"name": "adadelta", "rho": 0.95}},
     "optim.rho"),
    ({"optim": {"name": "adadelta", "lr": 1.0, "initial_accumulator": 0.1}}, "optim.initial_accumulator"),
    ({"sched": {"name": "onecycle", "warmup_epochs": 1}}, "sched.warmup_epochs"),
    ({"data": {"val_fraction": 0.0}, "train": {"early_stopping": {"patience": 2, "metric": "val_loss"}}},
     "train.early_stopping.metric"),
    ({"data": {"val_fraction": 0.0}, "sched": {"name": "plateau", "plateau_metric": "val_accuracy"}},
     "sched.plateau_metric"),
    ({"sched": {"name": "cosine", "min_lr": 0.01}, "train": {"phases": [{"epochs": 1, "lr": 0.001}]}},
     "sched.min_lr"),
])
def test_options_that_would_be_silently_ignored_are_rejected(sections, key):
    with pytest.raises(ConfigError, match=rf"'{key}' = "):
        build_config(tiny(**sections))


def test_the_same_options_where_they_do_take_effect_are_accepted():
    build_config(tiny(optim={"name": "adam", "eps": 1e-4}, sched={"name": "cosine", "warmup_epochs": 1,
                                                                  "min_lr": 0.001}))
    build_config(tiny(optim={"name": "adadelta", "lr": 1.0, "eps": 1e-4, "rho": 0.95}))
    build_config(tiny(train={"phases": [{"epochs": 1, "optim": "adagrad"}]}, optim={"initial_accumulator": 0.1}))
    build_config(tiny(data={"val_fraction": 0.0}, train={"early_stopping": {"patience": 2, "metric": "train_loss"}}))
    build_config(tiny(data={"name": "imagefolder", "root": "/nowhere", "image_size": 24}))


def test_val_metric_without_a_validation_split_fails_before_training():
    """Datasets whose validation split is only known at load time (imagefolder) are checked by fit."""
    from rayclf.config import UserError
    from rayclf.data.sources import load_dataset
    from rayclf.train.engine import fit

    cfg = build_config(tiny(train={"early_stopping": {"patience": 2, "metric": "val_accuracy"}}))
    data = load_dataset(cfg.data)
    data.val = None
    with pytest.raises(UserError, match="needs a validation split"):
        fit(cfg, data=data)


def test_resnet_custom_stem_uses_the_configured_activation():
    from torch import nn

    from rayclf.models import create_model

    model = create_model(build_config({"model": {"name": "resnet_custom", "activation": "gelu"}}).model, 10)
    assert any(isinstance(m, nn.GELU) for m in model.stem.modules())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


def test_a_bare_yaml_on_or_off_is_the_switch_the_user_wrote():
    """YAML 1.1 reads ``channels_last: on`` as true: it is the ``on`` the user meant, not an error."""
    import yaml

    cfg = build_config(yaml.safe_load("{data: {name: synthetic}, train: {channels_last: on}, optim: {fused: off}}"))
    assert (cfg.train.channels_last, cfg.optim.fused) == ("on", "off")
    assert build_config(yaml.safe_load("{train: {channels_last: off}}")).train.channels_last == "off"
    with pytest.raises(ConfigError, match="train.channels_last"):
        build_config({"train": {"channels_last": "yes"}})
