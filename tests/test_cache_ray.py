"""Issue 30 end to end on a real local Ray instance: ``rayclf sweep A --cache C`` then ``rayclf sweep B --cache C
--out other`` (B shares A's baseline and one arm) trains only B's new arm, says so in the dry run, the live view,
the closing table, ``rayclf status`` and the report, and B's table equals B run without a cache, value by value."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from rayclf.cli import main
from rayclf.sweep.runner import run_sweep
from rayclf.sweep.spec import parse_sweep

from .conftest import EPOCH_VALUES, RESULT_VALUES, tiny

pytestmark = pytest.mark.ray


def _file(tmp_path, name, lrs):
    base = tiny(data={"synthetic": {"num_train": 200, "num_test": 100, "num_classes": 4, "image_size": 16,
                                    "difficulty": 0.0}}, train={"epochs": 2, "batch_size": 50},
                augment={"flip": {"p": 0.5}}, model={"widths": [8], "dropout": 0.1})
    spec = {"name": name, "base": base, "seeds": [0], "search": {"ablation": {"factors": {"optim.lr": lrs}}}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, spec


def _measured(out):
    """Per trial id: what it measured (the row's result values, its epochs' values), not timings."""
    rows = pq.read_table(f"{out}/trials.parquet").to_pylist()
    epochs = pq.read_table(f"{out}/epochs.parquet").to_pylist()
    return {r["trial_id"]: ({k: r[k] for k in (*RESULT_VALUES, "arm", "position", "status", "metric_best")},
                            sorted(tuple(e[k] for k in EPOCH_VALUES) for e in epochs if e["trial_id"] == r["trial_id"]))
            for r in rows}


@pytest.mark.timeout(300)
def test_a_follow_up_sweep_trains_only_its_new_arm_and_equals_a_run_without_the_cache(ray_local, tmp_path):
    from rayclf.train.checkpoint import load_checkpoint

    cache = str(tmp_path / "cache")
    a_file, _ = _file(tmp_path, "first", [0.1])
    b_file, b_spec = _file(tmp_path, "followup", [0.1, 0.2])
    cli = CliRunner()
    a = cli.invoke(main, ["sweep", str(a_file), "--cache", cache, "--out", str(tmp_path / "a"), "--wandb", "disabled"])
    assert a.exit_code == 0, a.output

    dry = cli.invoke(main, ["sweep", str(b_file), "--cache", cache, "--dry-run"])
    assert dry.exit_code == 0 and "2 of the 3 planned trials are cached as completed (trained by sweep first)" in \
        dry.output, dry.output

    b = cli.invoke(main, ["sweep", str(b_file), "--cache", cache, "--out", str(tmp_path / "b"), "--wandb",
                          "disabled"])
    assert b.exit_code == 0, b.output
    assert f"cache: 2 trial(s) reused from {cache}, not trained" in b.output  # the live view (plain lines)
    assert f"2 of 3 trials reused from the trial cache {cache} (trained by sweep first)" in b.output  # closing table
    assert b.output.count("completed ") >= 1 and "0 already done and skipped" in b.output

    plain = run_sweep(parse_sweep(b_spec), out=str(tmp_path / "plain"), live=False, wandb_mode="disabled")
    assert not any(r["reused_from"] for r in plain.rows)
    assert _measured(tmp_path / "b") == _measured(tmp_path / "plain")  # value by value

    rows = pq.read_table(f"{tmp_path}/b/trials.parquet").to_pylist()
    reused = [r for r in rows if r["reused_from"]]
    assert sorted(r["arm"] for r in reused) == ["baseline", "lr=0.1"]
    assert all(r["checkpoint"].startswith(cache) for r in reused)  # the cache's own copy of the weights
    assert load_checkpoint(reused[0]["checkpoint"])["model"]  # loads (weights_only=True)
    trained = [r for r in rows if not r["reused_from"]]
    assert [r["arm"] for r in trained] == ["lr=0.2"] and trained[0]["checkpoint"].startswith(str(tmp_path / "b"))

    status = cli.invoke(main, ["status", str(tmp_path / "b")])
    assert "2 of 3 trials reused from the trial cache" in status.output, status.output
    report = cli.invoke(main, ["report", str(tmp_path / "b"), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    assert "2 of 3 trials reused" in (tmp_path / "report" / "results.md").read_text()
    assert "2 of 3 trials reused" in (tmp_path / "report" / "index.html").read_text()
