"""The training engine: learns, resumes to the same continuation, diverges cleanly, stops early."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from rayclf.config import DataConfig, build_config
from rayclf.data.sources import load_dataset
from rayclf.train.checkpoint import load_checkpoint
from rayclf.train.engine import Trainer, fit

from .conftest import MINI_CIFAR, tiny


class Collect:
    def __init__(self):
        self.epochs, self.finals, self.summary = [], [], None

    def epoch(self, metrics, checkpoint_dir, final=False):
        self.epochs.append(metrics)
        self.finals.append(final)

    def should_stop(self):
        return False

    def end(self, summary):
        self.summary = summary


def test_trains_beyond_chance_on_synthetic_and_reports_everything():
    cfg = build_config(tiny(train={"epochs": 4}))
    rep = Collect()
    result = fit(cfg, rep)
    s = result.summary
    assert s["status"] == "completed" and s["epochs"] == 4
    assert s["test_accuracy"] > 0.6  # 4 classes: chance is 0.25
    assert rep.finals == [False, False, False, True]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds", "images_per_sec"):
        assert all(key in e for e in rep.epochs), key
    cm = torch.tensor(s["confusion_matrix"])
    assert cm.shape == (4, 4) and int(cm.sum()) == 200
    assert s["per_class_accuracy"] == pytest.approx((cm.diag() / cm.sum(1)).tolist())
    assert s["params"] == sum(p.numel() for p in torch.nn.Conv2d(3, 8, 3).parameters()) + \
        sum(p.numel() for p in torch.nn.Conv2d(8, 16, 3).parameters()) + (16 * 4 * 4 * 4 + 4)
    assert rep.summary == s


def test_resume_continues_exactly(tmp_path):
    raw = tiny(train={"epochs": 4}, augment={"crop": {"padding": 2}, "flip": {"p": 0.5}},
               sched={"name": "cosine"}, model={"dropout": 0.2})
    full = fit(build_config(raw), checkpoint_dir=tmp_path / "full")

    # crash during epoch 3 (before its checkpoint), then resume from the epoch-2 checkpoint
    class CrashInEpoch3(Collect):
        def should_stop(self):
            if len(self.epochs) == 2:
                raise RuntimeError("node lost")
            return False

    with pytest.raises(RuntimeError, match="node lost"):
        fit(build_config(raw), CrashInEpoch3(), checkpoint_dir=tmp_path / "part")
    assert load_checkpoint(tmp_path / "part")["epoch"] == 2
    rep = Collect()
    resumed = fit(build_config(raw), rep, checkpoint_dir=tmp_path / "part", resume=tmp_path / "part")
    assert [e["epoch"] for e in rep.epochs] == [3, 4]  # a continuation, not a rerun from scratch
    for a, b in zip(full.history, resumed.history, strict=True):
        assert a["epoch"] == b["epoch"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"])
    assert resumed.summary["test_accuracy"] == pytest.approx(full.summary["test_accuracy"])


def test_divergence_is_a_status_not_a_crash():
    cfg = build_config(tiny(optim={"name": "sgd", "lr": 10.0}, train={"epochs": 3}, model={"widths": [8, 16]},
                            data={"synthetic": {"noise": 0.0}}))
    cfg.reg.kind = "l2"
    cfg.reg.l2 = 10.0
    rep = Collect()
    result = fit(cfg, rep)
    assert result.status == "diverged"
    assert "non-finite" in result.summary["reason"]
    assert rep.finals[-1] is True and len(result.history) >= 1
    assert not math.isfinite(result.history[-1]["train_loss"])


def test_early_stopping_restores_best_weights(tmp_path):
    """The kept checkpoint and the tested model are the best epoch's weights, not the last epoch's."""
    from rayclf.train.engine import build_trainer

    cfg = build_config(tiny(train={"epochs": 30, "early_stopping": {"patience": 2, "metric": "val_accuracy"}},
                            optim={"lr": 0.5}))

    class Snapshots(Collect):
        def epoch(self, metrics, checkpoint_dir, final=False):
            super().epoch(metrics, checkpoint_dir, final)
            self.weights = [*getattr(self, "weights", []), load_checkpoint(checkpoint_dir)["model"]]

    rep = Snapshots()
    result = fit(cfg, rep, checkpoint_dir=tmp_path)
    s = result.summary
    assert s["early_stopped"] and s["epochs"] < 30
    vals = [h["val_accuracy"] for h in result.history]
    best = vals.index(max(vals))
    assert best < len(vals) - 1  # the last epoch is not the best: restoring matters
    kept, best_weights = rep.weights[-1], rep.weights[best]
    assert all(torch.equal(kept[k], best_weights[k]) for k in best_weights)
    data = load_dataset(cfg.data)
    tr = build_trainer(cfg, data)
    tr.model.load_state_dict(best_weights)
    assert tr.evaluate("test")["test_accuracy"] == s["test_accuracy"]


def test_checkpoint_loads_with_weights_only(tmp_path):
    fit(build_config(tiny(train={"epochs": 1})), checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "config", "data", "rng", "history"} <= set(state)


@pytest.mark.skipif(not MINI_CIFAR.is_dir(), reason="cifar10-mini folder not present")
def test_cnn_on_real_cifar10_mini_clearly_beats_chance():
    data = DataConfig(name="cifar10", root=str(MINI_CIFAR), download=False, val_fraction=0.1)
    cfg = build_config({"data": data.model_dump(), "model": {"name": "cnn", "widths": [32, 64, 128], "norm": "before"},
                        "train": {"epochs": 4, "batch_size": 64}, "optim": {"name": "adam", "lr": 2e-3},
                        "sched": {"name": "cosine"}, "augment": {"flip": {"p": 0.5}}})
    result = fit(cfg, data=load_dataset(cfg.data))
    assert result.summary["test_accuracy"] > 0.30  # 10 classes: chance is 0.10


def test_train_epoch_can_stop_after_a_few_steps():
    """GPU memory calibration runs the trial's own step a few times through this limit."""
    from rayclf.train.engine import build_trainer
    from rayclf.train.optim import Schedule, create_optimizer

    cfg = build_config(tiny())
    tr = build_trainer(cfg, load_dataset(cfg.data))
    opt = create_optimizer(tr.model, cfg.optim)
    seen = []
    tr.augmenter.train_batch = lambda x, y, _orig=tr.augmenter.train_batch: (seen.append(len(y)), _orig(x, y))[1]
    out = tr.train_epoch(opt, Schedule(opt, cfg.sched, 1), 0, None, max_steps=2)
    assert len(tr.train_loader) > 2 and seen == [32, 32]  # exactly two steps of the real step ran
    assert out["train_loss"] > 0


class CrashAfterEpoch(Collect):
    """Dies right after epoch ``k``'s checkpoint was written and reported (a lost node)."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def epoch(self, metrics, checkpoint_dir, final=False):
        super().epoch(metrics, checkpoint_dir, final)
        if metrics["epoch"] == self.k:
            raise RuntimeError("node lost")


def spy_epoch_starts(monkeypatch) -> list[dict]:
    """Record what every training epoch starts from: its run-wide index, the LR, the schedule's state and a deep
    copy of the optimizer's state (momentum buffers, Adam's step counts and moments)."""
    seen: list[dict] = []
    train_epoch = Trainer.train_epoch

    def spy(self, opt, sched, epoch, scaler, max_steps=None, data_epoch=None):
        seen.append({"data_epoch": data_epoch, "lr": sched.lr, "sched": dict(sched.state_dict()),
                     "opt": copy.deepcopy(opt.state_dict())})
        return train_epoch(self, opt, sched, epoch, scaler, max_steps=max_steps, data_epoch=data_epoch)

    monkeypatch.setattr(Trainer, "train_epoch", spy)
    return seen


def assert_same_state(a, b, where=""):
    """Two (nested) optimizer/schedule states hold the same keys and bit-identical values."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, sorted(a), sorted(b))
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, (where, a, b)


@pytest.mark.parametrize("optim", [{"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
                                   {"name": "adam", "lr": 2e-3}], ids=["sgd-momentum", "adam"])
def test_resumed_fit_trains_only_the_remaining_epochs_from_the_checkpoints_state(tmp_path, monkeypatch, optim):
    """A run resumed after epoch 2 of 5 trains epochs 3-5 only (its reporter sees nothing else), starting from
    the checkpoint's optimizer state (momentum buffers / Adam's steps and moments) and schedule state (warmup +
    cosine with a plateau reduction that has fired), exactly where the uninterrupted twin stood.

    A rerun from scratch with the same seed reproduces the same numbers, so only these checks tell a resume
    from a restart: with ``fit``'s restore skipped, or the optimizer or schedule state dropped, they fail."""
    raw = tiny(train={"epochs": 5}, optim=optim, augment={"crop": {"padding": 2}, "flip": {"p": 0.5}},
               model={"dropout": 0.2},
               sched={"name": "cosine", "warmup_epochs": 1, "reduce_on_plateau": True, "patience": 1,
                      "factor": 0.5, "plateau_metric": "train_loss", "plateau_min_delta": 10.0})
    seen = spy_epoch_starts(monkeypatch)
    twin = Collect()
    full = fit(build_config(raw), twin, checkpoint_dir=tmp_path / "full")
    twin_starts = {s["data_epoch"]: s for s in seen}
    assert [e["epoch"] for e in twin.epochs] == [1, 2, 3, 4, 5]
    assert twin_starts[2]["sched"]["plateau_scale"] == 0.5  # the plateau rule fired after epoch 2

    crashed = CrashAfterEpoch(2)
    with pytest.raises(RuntimeError, match="node lost"):
        fit(build_config(raw), crashed, checkpoint_dir=tmp_path / "part")
    seen.clear()
    rep = Collect()
    resumed = fit(build_config(raw), rep, checkpoint_dir=tmp_path / "part", resume=tmp_path / "part")

    assert [e["epoch"] for e in rep.epochs] == [3, 4, 5] and rep.finals == [False, False, True]
    assert [s["data_epoch"] for s in seen] == [2, 3, 4]  # epochs 1-2 were not trained again
    first = seen[0]
    assert first["opt"]["state"], "the optimizer starts epoch 3 with its moments, not empty"
    assert_same_state(first["opt"], twin_starts[2]["opt"], "optimizer")
    assert_same_state(first["sched"], twin_starts[2]["sched"], "schedule")
    assert first["lr"] == twin_starts[2]["lr"] and rep.epochs[0]["lr"] == twin.epochs[2]["lr"]
    for a, b in zip(twin.epochs[2:], rep.epochs, strict=True):
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-9), a["epoch"]
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6), a["epoch"]
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-6), a["epoch"]
    # epochs 1-2 of the resumed history are the crashed run's records, read from its checkpoint
    assert resumed.history[:2] == crashed.epochs
    assert resumed.summary["test_loss"] == pytest.approx(full.summary["test_loss"], rel=1e-6)


def test_resume_after_every_epoch_of_a_phased_run_matches_the_uninterrupted_run(tmp_path, monkeypatch):
    """Head (adam) → all (sgd 1e-3) → all (sgd 1e-2): resuming at a phase boundary starts the next phase's own
    optimizer and LR; resuming inside a phase carries its optimizer and schedule on."""
    raw = tiny(train={"phases": [{"epochs": 1, "trainable": "head", "optim": "adam", "lr": 1e-3},
                                 {"epochs": 2, "trainable": "all", "optim": "sgd", "lr": 1e-3},
                                 {"epochs": 1, "trainable": "all", "optim": "sgd", "lr": 1e-2}]},
               sched={"name": "cosine"}, augment={"flip": {"p": 0.5}})
    seen = spy_epoch_starts(monkeypatch)
    full = fit(build_config(raw), checkpoint_dir=tmp_path / "full")
    assert [h["phase"] for h in full.history] == [0, 1, 1, 2]
    twin_starts = {s["data_epoch"]: s for s in seen}
    for k in (1, 2, 3):
        folder = tmp_path / f"crash{k}"
        with pytest.raises(RuntimeError, match="node lost"):
            fit(build_config(raw), CrashAfterEpoch(k), checkpoint_dir=folder)
        assert load_checkpoint(folder)["epoch"] == k
        seen.clear()
        rep = Collect()
        resumed = fit(build_config(raw), rep, checkpoint_dir=folder, resume=folder)
        assert [e["epoch"] for e in rep.epochs] == list(range(k + 1, 5))  # only the remaining epochs
        # the first epoch trained starts from the twin's optimizer and schedule state: a phase's fresh optimizer
        # at a boundary (k = 1, 3), the phase's momentum carried on inside it (k = 2)
        assert seen[0]["data_epoch"] == k
        assert bool(seen[0]["opt"]["state"]) == (k == 2), k
        assert_same_state(seen[0]["opt"], twin_starts[k]["opt"], f"optimizer at {k}")
        assert_same_state(seen[0]["sched"], twin_starts[k]["sched"], f"schedule at {k}")
        assert len(resumed.history) == 4
        for a, b in zip(full.history, resumed.history, strict=True):
            assert (a["epoch"], a["phase"]) == (b["epoch"], b["phase"])
            assert b["lr"] == pytest.approx(a["lr"], rel=1e-6), (k, a["epoch"])
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5), (k, a["epoch"])
            assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5), (k, a["epoch"])
        assert resumed.summary["test_loss"] == pytest.approx(full.summary["test_loss"], rel=1e-5)


def test_concurrent_checkpoint_writers_do_not_collide(tmp_path):
    """Two writers of one checkpoint folder (e.g. a retried trial racing its predecessor) each use their own
    temporary file; a fixed temporary name made one writer move the other's half-written file or fail."""
    import threading

    from rayclf.train.checkpoint import save_checkpoint

    errors = []

    def writer(tag):
        try:
            for i in range(40):
                save_checkpoint({"tag": tag, "i": i, "w": torch.full((20000,), float(i))}, tmp_path)
        except Exception as exc:  # any failure of a writer is the bug
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    state = load_checkpoint(tmp_path)
    assert state["i"] == 39 and torch.equal(state["w"], torch.full((20000,), 39.0))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def _ddp_twin_crash_resume(rank: int, port: int, raw: dict, root: str) -> None:
    """One rank of a two-process gloo group: an uninterrupted run, a run that dies after epoch 2, and its
    resume; each rank saves what its reporter saw and its final weights."""
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        out = {}
        for name, rep, resume in (("twin", Collect(), None), ("crash", CrashAfterEpoch(2), None),
                                  ("resumed", Collect(), Path(root) / "crash")):
            folder = Path(root) / (name if name != "resumed" else "crash")
            try:
                result = fit(build_config(raw), rep, checkpoint_dir=folder if rank == 0 else None, resume=resume)
                out[name] = {"epochs": rep.epochs, "test_loss": result.summary["test_loss"]}
            except RuntimeError:
                out[name] = {"epochs": rep.epochs}
            dist.barrier()
        torch.save(out, f"{root}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_data_parallel_resume_continues_each_ranks_own_augmentation(tmp_path):
    """Two data-parallel ranks draw their own augmentations (seeded by rank). A resumed run must give each rank
    back its own augmentation state, not rank 0's (the one writing the checkpoint): then the resumed epochs
    equal an uninterrupted twin's."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    raw = tiny(train={"epochs": 4}, augment={"crop": {"padding": 2}, "flip": {"p": 0.5}, "cutout": {"size": 4}},
               sched={"name": "cosine"}, data={"synthetic": {"num_train": 320, "num_test": 80, "num_classes": 4,
                                                            "image_size": 16, "difficulty": 0.5}})
    mp.spawn(_ddp_twin_crash_resume, args=(port, raw, str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        twin, resumed = out["twin"]["epochs"], out["resumed"]["epochs"]
        assert [e["epoch"] for e in resumed] == [3, 4], rank
        for a, b in zip(twin[2:], resumed, strict=True):
            for key in ("lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy"):
                assert b[key] == a[key], (rank, a["epoch"], key)
        assert out["resumed"]["test_loss"] == out["twin"]["test_loss"]


class StopsAt(Collect):
    """A sweep's reporter whose report at ``epoch`` raises what Tune raises there (a stop or pause, or a crash);
    it keeps a copy of every checkpoint it is handed, as Tune copies it to the trial's storage."""

    def __init__(self, epoch: int, exc: BaseException):
        super().__init__()
        self.at, self.exc, self.handed = epoch, exc, []

    def epoch(self, metrics, checkpoint_dir, final=False):
        super().epoch(metrics, checkpoint_dir, final)
        if checkpoint_dir is not None:
            self.handed.append(Path(checkpoint_dir))
            assert (Path(checkpoint_dir) / "checkpoint.pt").is_file()  # still there while it is being reported
        if metrics["epoch"] == self.at:
            raise self.exc


@pytest.mark.parametrize("exc", [SystemExit(0), RuntimeError("lost")], ids=["stopped", "failed"])
@pytest.mark.parametrize("at", [2, 3])
def test_a_trial_stopped_or_failed_at_a_report_leaves_no_temporary_checkpoint(tmp_path, monkeypatch, exc, at):
    """A sweep pauses a seed at each rung (Tune stops it at that report) and continues it later from the copy
    Tune took: the temporary folder the engine wrote must not outlive the trial, or a long sweep fills /tmp."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    cfg = build_config(tiny(train={"epochs": 3, "checkpoint_every": 1}))
    rep = StopsAt(at, exc)
    with pytest.raises(type(exc)):
        fit(cfg, rep, checkpoint_at=[2])
    assert len(rep.handed) == at  # every epoch up to the stop handed a checkpoint over
    assert not list(tmp_path.glob("rayclf-ckpt-*")), "a temporary checkpoint folder outlived its trial"
