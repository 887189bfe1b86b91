"""Sweeps on a real local Ray instance (2 CPUs): Tune driver + Ray Train V2 workers end to end."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from rayclf.cli import main
from rayclf.config import UserError
from rayclf.report.publish import track_sweep
from rayclf.sweep.runner import run_sweep
from rayclf.sweep.spec import parse_sweep

from .conftest import FAKE_WANDB_KEY, files_containing, inspect_wandb_run, tiny

pytestmark = pytest.mark.ray


def quick_base(epochs: int = 2, **kw):
    return tiny(data={"synthetic": {"num_train": 300, "num_test": 100, "num_classes": 4, "image_size": 16,
                                    "difficulty": 0.0}},
                train={"epochs": epochs, "batch_size": 50}, **kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the failing arm asks for a GPU this machine must not have")
@pytest.mark.timeout(180)
def test_sweep_records_completed_failed_and_diverged_then_resumes(ray_local, tmp_path):
    spec = {"name": "mixed", "base": quick_base(),
            "search": {"ablation": {"factors": {
                "optim.lr": [10.0],                       # diverges: huge LR with a strong L2 pull
                "train.device": ["cuda"],                  # fails on a CPU-only machine, is retried, recorded
            }}},
            "max_failures": 1}
    spec["base"]["reg"] = {"kind": "l2", "l2": 10.0}
    spec["base"]["data"]["synthetic"]["noise"] = 0.0
    s = parse_sweep(spec)
    out = str(tmp_path / "sweep")
    outcome = run_sweep(s, out=out, live=False, wandb_mode="offline")
    track_sweep(outcome.out, outcome.tracking)  # what the CLI does after a finished sweep: the W&B summary
    rows = {r["arm"]: r for r in pq.read_table(f"{out}/trials.parquet").to_pylist()}
    assert set(rows) == {"baseline", "lr=10", "device=cuda"}
    assert rows["baseline"]["status"] == "completed" and rows["baseline"]["test_accuracy"] is not None
    assert rows["baseline"]["epochs"] == 2 and rows["baseline"]["config.optim.lr"] == 0.05
    assert rows["baseline"]["data_seconds"] >= 0  # what making the data ready cost the trial's node
    assert rows["lr=10"]["status"] == "diverged" and "non-finite" in rows["lr=10"]["reason"]
    assert rows["device=cuda"]["status"] == "failed"
    assert "cuda" in rows["device=cuda"]["reason"].lower() or "gpu" in rows["device=cuda"]["reason"].lower()
    epochs = pq.read_table(f"{out}/epochs.parquet").to_pylist()
    assert len([e for e in epochs if e["trial_id"] == rows["baseline"]["trial_id"]]) == 2
    assert "completed 1" in outcome.summary_text()
    assert (tmp_path / "sweep" / "sweep.yaml").is_file()

    check_wandb_runs_match_parquet(tmp_path / "sweep", rows, epochs)

    # an existing sweep directory is never silently overwritten
    with pytest.raises(UserError, match="--resume"):
        run_sweep(s, out=out, live=False)

    # resume with one more seed: finished trials are skipped, only the new ones (and the failed one) run
    before = {r["trial_id"]: r for r in pq.read_table(f"{out}/trials.parquet").to_pylist()}
    spec["seeds"] = [0, 1]
    spec["search"]["ablation"]["factors"] = {"optim.lr": [10.0]}
    again = run_sweep(parse_sweep(spec), out=out, resume=True, live=False)
    assert again.skipped == 2
    rows2 = pq.read_table(f"{out}/trials.parquet").to_pylist()
    assert len(rows2) == 5
    kept = {r["trial_id"]: r for r in rows2 if r["trial_id"] in before and r["status"] != "failed"}
    assert len(kept) == 2 and all(kept[t] == before[t] for t in kept)  # list/bool config values included
    assert kept[rows["baseline"]["trial_id"]]["config.model.widths"] == "[8,16]"
    assert sorted((r["arm"], r["seed"]) for r in rows2 if r["arm"] != "device=cuda") == [
        ("baseline", 0), ("baseline", 1), ("lr=10", 0), ("lr=10", 1)]


def check_wandb_runs_match_parquet(sweep_dir, rows, epochs):
    """One W&B run per trial whose config, history and summary match trials/epochs.parquet; no API key leaked."""
    runs: dict[str, dict] = {}
    for d in sorted((sweep_dir / "wandb").glob("offline-run-*")):  # a retried trial continues the same run id
        run = inspect_wandb_run(d)
        runs.setdefault(run["id"], run)
        if run["history"] or run["summary"].get("status"):
            runs[run["id"]] = run
    trial_runs = {r["config"]["rayclf"]["trial_id"]: r for r in runs.values() if "rayclf" in r["config"]}
    assert set(trial_runs) == {r["trial_id"] for r in rows.values()}
    (summary,) = [r for r in runs.values() if r["job_type"] == "sweep-summary"]
    logged = {k.split(".")[0] for h in summary["history"] for k in h}  # an image logs as report/NAME._type, …
    # the finished sweep's report figures reach the team's dashboard, rendered at the end of the sweep
    assert {"report/learning_curves", "report/confusion"} <= logged, logged
    for row in rows.values():
        run = trial_runs[row["trial_id"]]
        assert run["group"] == "mixed" and run["job_type"] == row["arm"] and run["name"] == f"{row['arm']} s0"
        assert run["config"]["optim"]["lr"] == row["config.optim.lr"]
        assert run["config"]["train"]["epochs"] == row["config.train.epochs"]
        assert run["summary"]["status"] == row["status"]
        mine = [e for e in epochs if e["trial_id"] == row["trial_id"]]
        assert len(run["history"]) == len(mine)
        assert all({"epoch", "train_loss", "train_accuracy", "lr", "images_per_sec"} <= set(h) for h in run["history"])
        if row["status"] == "completed":
            assert run["summary"]["test_accuracy"] == pytest.approx(row["test_accuracy"])
            assert run["summary"]["best_val_accuracy"] == pytest.approx(row["best_val_accuracy"])
            assert [h["val_accuracy"] for h in run["history"]] == pytest.approx([e["val_accuracy"] for e in mine])
    import ray

    session_logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    assert files_containing([sweep_dir, session_logs], FAKE_WANDB_KEY) == []


@pytest.mark.timeout(120)
def test_asha_with_more_trials_than_slots_finishes(ray_local, tmp_path, monkeypatch, caplog):
    """Regression for ray-project/ray#54305: early-stopped Train V2 trials must release their resources.

    W&B is forced to fail here (its run folder cannot be created): the sweep must not notice."""
    import rayclf.sweep.runner as runner
    from rayclf.tracking import TrackingSettings

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setattr(runner, "resolve_settings",
                        lambda *a, **k: TrackingSettings("offline", "rayclf", None, str(blocker / "sub")))
    spec = {"name": "asha", "base": quick_base(epochs=4),
            "search": {"grid": {"optim.lr": [0.3, 0.2, 0.1, 0.002, 0.001, 0.0005]}},  # good ones first
            "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2}}
    start = time.monotonic()
    outcome = run_sweep(parse_sweep(spec), out=str(tmp_path / "asha"), live=False)
    track_sweep(outcome.out, outcome.tracking)  # what the CLI does after a finished sweep: the W&B summary
    elapsed = time.monotonic() - start
    statuses = [r["status"] for r in outcome.rows]
    assert len(statuses) == 6
    assert "stopped_early" in statuses and "completed" in statuses
    assert elapsed < 420, f"sweep took {elapsed:.0f}s: trials waited on leaked resources"
    assert "W&B sweep summary failed" in caplog.text and "training continues" in caplog.text
    import ray

    leaked = [pg for pg, info in ray.util.placement_group_table().items() if info["state"] == "CREATED"]
    assert leaked == []
    # the scheduler's decisions stand: a resume re-runs none of the stopped trials
    again = run_sweep(parse_sweep(spec), out=str(tmp_path / "asha"), resume=True, live=False)
    assert again.skipped == 6 and again.rows == outcome.rows


@pytest.mark.timeout(60)
def test_sweep_cli_dry_run_trains_nothing(tmp_path):
    import yaml

    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"name": "d", "base": tiny(), "search": {"grid": {"optim.lr": [0.1, 0.01]}},
                                 "seeds": [0, 1, 2], "resources": {"cpus": 1}}))
    res = CliRunner().invoke(main, ["sweep", str(f), "--dry-run", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "2 arms × 3 seeds = 6 trials" in res.output and "concurrency" in res.output
    assert "estimate:" in res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.timeout(270)
def test_staged_sweep_carries_each_winner_and_reruns_the_final(ray_local, tmp_path, monkeypatch):
    # stage 2's "widths=8/16" with the carried lr is the stage-1 winner's own config: reused, not retrained
    from ray import tune

    fits = []
    fit = tune.Tuner.fit
    monkeypatch.setattr(tune.Tuner, "fit", lambda self: fits.append(1) or fit(self))
    spec = {"name": "staged", "base": quick_base(epochs=1),
            "search": {"stages": [{"name": "lr", "vary": {"optim.lr": [0.0001, 0.1]}},
                                  {"name": "width", "vary": {"model.widths": [[4, 8], [8, 16], [16, 32]]}}],
                       "final": {"train.epochs": 2}}}
    outcome = run_sweep(parse_sweep(spec), out=str(tmp_path / "st"), live=False)
    assert len(fits) == 1, "both stages and the final run in one Tune run"
    assert outcome.skipped == 1
    rows = {r["arm"]: r for r in outcome.rows}
    assert set(rows) == {"lr:lr=0.0001", "lr:lr=0.1", "width:widths=4/8", "width:widths=16/32", "final"}
    rows["width:widths=8/16"] = rows["lr:lr=0.1"]
    assert rows["lr:lr=0.1"]["metric_best"] > rows["lr:lr=0.0001"]["metric_best"]
    for arm in ("width:widths=4/8", "width:widths=8/16", "final"):  # stage 1's winner is carried forward
        assert rows[arm]["config.optim.lr"] == 0.1
    width_winner = max(("width:widths=4/8", "width:widths=8/16", "width:widths=16/32"),
                       key=lambda a: rows[a]["metric_best"])
    assert rows["final"]["config.model.widths"] == rows[width_winner]["config.model.widths"]
    assert rows["final"]["epochs"] == 2 and rows["final"]["stage"] == 2
    assert outcome.winner is not None and outcome.winner.label == width_winner
    if width_winner == "width:widths=8/16":  # the carried stage-1 winner: the summary says where its row is
        assert "(shown as lr:lr=0.1: the same config, trained once)" in outcome.summary_text()
