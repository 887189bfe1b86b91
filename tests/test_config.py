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


def test_fingerprint_is_content_address():
    a, b = build_config(tiny()), build_config(tiny())
    assert a.fingerprint() == b.fingerprint()
    assert build_config(tiny(seed=1)).fingerprint() != a.fingerprint()
    assert build_config(tiny(optim={"lr": 0.1})).fingerprint() != a.fingerprint()
