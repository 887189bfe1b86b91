"""``rayclf train`` / ``rayclf predict`` / ``rayclf validate`` end to end through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from rayclf.cli import main

from .conftest import MINI_CIFAR, tiny, write_cifar


def test_train_writes_summary_epochs_and_checkpoint_then_predicts(tmp_path):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny(data={"name": "cifar10", "root": str(tmp_path / "data"),
                                                  "download": False, "val_fraction": 0.2})))
    write_cifar(tmp_path / "data", n_train=100, n_test=40)
    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(main, ["train", str(cfg_file), "--set", "train.epochs=2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "epoch   2/2" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert {"status", "params", "epochs", "test_accuracy", "best_val_accuracy"} <= set(summary)
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert pq.read_table(out / "epochs.parquet").num_rows == 2
    assert (out / "checkpoint" / "checkpoint.pt").is_file()

    preds = tmp_path / "preds.npy"
    res = runner.invoke(main, ["predict", str(out / "checkpoint"), "--data-root", str(tmp_path / "data"),
                               "--out", str(preds)])
    assert res.exit_code == 0, res.output
    p = np.load(preds)
    assert p.shape == (40,) and p.dtype.kind == "i"
    assert f"accuracy: {100 * summary['test_accuracy']:.2f}%" in res.output  # same model, same test split

    res = runner.invoke(main, ["train", str(cfg_file), "--out", str(out)])
    assert res.exit_code == 2 and "already holds a finished run" in res.output


def test_predict_on_unlabelled_images(tmp_path):
    from .conftest import write_png_tree

    out = tmp_path / "run"
    runner = CliRunner()
    assert runner.invoke(main, ["train", "--set", "train.epochs=1", "--set", "data.synthetic.num_train=200",
                                "--set", "data.synthetic.image_size=16", "--out", str(out)]).exit_code == 0
    write_png_tree(tmp_path / "imgs", ["x"], 5, size=20)
    res = runner.invoke(main, ["predict", str(out / "checkpoint"), "--data-root", str(tmp_path / "imgs" / "x"),
                               "--out", str(tmp_path / "p.npy")])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "p.npy").shape == (5,) and "accuracy" not in res.output


def test_validate_reports_counts_and_errors(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"name": "g", "base": tiny(), "search": {"grid": {"optim.lr": [0.1, 0.01]}},
                                    "seeds": [0, 1, 2]}))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "b", "base": tiny(), "search": {"grid": {"optim.lr": [0.1, -1]}}}))
    res = CliRunner().invoke(main, ["validate", str(good), str(bad)])
    assert res.exit_code == 2
    assert "2 arms × 3 seeds = 6 trials" in res.output
    assert "arm 'lr=-1'" in res.output and "'optim.lr' = -1" in res.output


@pytest.mark.skipif(not MINI_CIFAR.is_dir(), reason="cifar10-mini folder not present")
def test_train_cli_on_real_cifar10_mini(tmp_path):
    res = CliRunner().invoke(main, ["train", "--set", "data.name=cifar10", "--set", f"data.root={MINI_CIFAR}",
                                    "--set", "train.epochs=1", "--set", "model.widths=[16,32]",
                                    "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["test_accuracy"] > 0.15


def _resnet18_weights(path):
    """A stand-in for downloaded ImageNet weights: a seeded resnet18's state_dict in a local file."""
    import timm
    import torch

    torch.manual_seed(123)
    torch.save(timm.create_model("resnet18").state_dict(), path)
    return path


@pytest.mark.parametrize("kind", ["tta", "early_stopped", "timm_pretrained"])
def test_predict_on_the_test_split_reproduces_the_trials_test_accuracy(tmp_path, kind):
    """The kept checkpoint holds the tested weights, and predict evaluates them exactly as the trial did."""
    from rayclf.config import build_config
    from rayclf.local import predict, train_local

    sections = {"train": {"precision": "fp32", "epochs": 2}}
    if kind == "tta":
        sections["train"]["tta"] = "flip_translate"
    elif kind == "early_stopped":
        sections["train"] = {"precision": "fp32", "epochs": 30,
                             "early_stopping": {"patience": 1, "metric": "val_accuracy"}}
        sections["optim"] = {"lr": 0.3}
    else:
        weights = _resnet18_weights(tmp_path / "resnet18.pth")
        sections["train"] = {"precision": "fp32", "epochs": 1, "tta": "flip"}
    raw = tiny(**sections)
    if kind == "timm_pretrained":
        raw["model"] = {"name": "resnet18", "pretrained": True, "checkpoint": str(weights)}
    cfg = build_config(raw)
    result = train_local(cfg, tmp_path / "run")
    if kind == "early_stopped":
        assert result.summary["early_stopped"] and result.summary["epochs"] < 30
    if kind == "timm_pretrained":
        weights.unlink()  # predict must not need the pretrained weights again (nor a download)
    (tmp_path / "empty").mkdir()
    _, _, acc = predict(tmp_path / "run" / "checkpoint", tmp_path / "empty", "test", device="cpu")
    assert acc == result.summary["test_accuracy"]


def test_unreachable_or_refusing_address_is_one_clear_message(tmp_path, monkeypatch):
    """A wrong --address answers at once with the fix (exit 2), never a ConnectionError traceback."""
    import socket

    import ray
    import yaml

    # the CLI runs in a fresh process: the suite's shared local instance (tests/conftest.py ray_local, started
    # by whichever Ray test ran earlier in this process) must not stand in for the unreachable address
    monkeypatch.setattr(ray, "is_initialized", lambda: False)

    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"name": "a", "base": tiny()}))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = CliRunner().invoke(main, ["sweep", str(f), "--address", f"127.0.0.1:{port}", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert f"cannot reach a Ray cluster at --address 127.0.0.1:{port}" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["sweep", str(f), "--address", "127.0.0.1:http", "--dry-run"])
    assert res.exit_code == 2 and "not a port number" in res.output

    # something listens but Ray refuses us (token authentication): the message says how to authenticate
    from rayclf.sweep import connect as conn

    def refuse(**kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:6379")

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(ray, "init", refuse)
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
        addr = f"127.0.0.1:{server.getsockname()[1]}"
        res = CliRunner().invoke(main, ["sweep", str(f), "--address", addr, "--dry-run"])
    assert res.exit_code == 2 and "RAY_AUTH_MODE=token" in res.output and "refused" in res.output, res.output
    assert conn.host_port("ray://head:10001") == ("head", 10001) and conn.host_port("auto") is None


def test_train_shows_a_progress_bar_inside_each_epoch_on_a_terminal_only(tmp_path):
    import re
    import sys
    from pathlib import Path

    from .conftest import run_in_pty

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny(data={"synthetic": {"num_train": 1000, "num_test": 100, "num_classes": 4,
                                                           "image_size": 16, "difficulty": 0.0}},
                                       train={"epochs": 2, "batch_size": 20})))
    rayclf = str(Path(sys.executable).with_name("rayclf"))
    code, raw = run_in_pty([rayclf, "train", str(cfg), "--out", str(tmp_path / "tty")])
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    assert code == 0, text
    assert "━" in text and "img/s" in text and re.search(r"epoch 1/2 .*\d+/45", text), text[-2000:]
    assert "epoch   2/2 | train loss" in text  # the per-epoch line stays
    piped = CliRunner().invoke(main, ["train", str(cfg), "--out", str(tmp_path / "pipe")])
    assert piped.exit_code == 0 and "━" not in piped.output and "epoch   1/2 | train loss" in piped.output


def test_a_sweep_over_ray_client_is_refused_with_the_ways_that_work(tmp_path, monkeypatch):
    """Tune's loop must run beside the sweep's strategy, store and decision log: ray:// would move it away."""
    from click.testing import CliRunner

    from rayclf.cli import main

    f = tmp_path / "s.yaml"
    f.write_text("name: s\nsearch: {grid: {optim.lr: [0.1, 0.01]}}\n")
    res = CliRunner().invoke(main, ["sweep", str(f), "--out", str(tmp_path / "o"), "--address", "ray://head:10001"])
    assert res.exit_code == 2 and "ray job submit --address http://head:8265" in res.output, res.output
    assert "--address head:6379" in res.output and not (tmp_path / "o").exists()
    monkeypatch.setenv("RAY_ADDRESS", "ray://10.0.0.5:10001")
    res = CliRunner().invoke(main, ["sweep", str(f), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "Ray Client (ray://)" in res.output and not (tmp_path / "o").exists()
