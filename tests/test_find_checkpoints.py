"""Checkpoint lookup on resume reads only the wanted trials' checkpoints (one GET each on object storage)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs

import rayclf.sweep.resume as resume
from rayclf.sweep.keys import CHECKPOINT_META
from rayclf.train.checkpoint import CHECKPOINT_FILE


class CountingFS:
    """A local filesystem that counts the files opened for reading."""

    def __init__(self) -> None:
        self.fs, self.opened = pafs.LocalFileSystem(), []

    def get_file_info(self, what):
        return self.fs.get_file_info(what)

    def open_input_stream(self, path):
        self.opened.append(path)
        return self.fs.open_input_stream(path)


def _checkpoint(folder: Path, tid: str, epoch: int, weights: bytes = b"w") -> None:
    folder.mkdir(parents=True)
    (folder / CHECKPOINT_FILE).write_bytes(weights)
    (folder / CHECKPOINT_META).write_text(json.dumps({"trial_id": tid, "epoch": epoch,
                                                      "history": [{"epoch": e} for e in range(1, epoch + 1)]}))


def test_only_the_wanted_trials_checkpoints_are_read(tmp_path, monkeypatch):
    storage = tmp_path / "_ray"
    # two runs of a 60-trial sweep (Tune's run folders) and a data-parallel trial's own Ray Train run folder
    for run, epoch in (("run-1", 2), ("run-2", 3)):
        for i in range(60):
            _checkpoint(storage / run / f"trial-t{i:02d}" / "checkpoint_000000", f"t{i:02d}", epoch)
    _checkpoint(storage / "trial-t01" / "checkpoint_000004", "t01", 5)
    _checkpoint(storage / "run-3" / "trial-t02" / "checkpoint_000009", "t02", 9, weights=b"")  # copy cut off
    counting = CountingFS()
    monkeypatch.setattr(resume, "filesystem", lambda uri: (counting, str(Path(uri))))

    found = resume.find_checkpoints(str(storage), {"t01", "t02", "t59"})

    assert {tid: f.epoch for tid, f in found.items()} == {"t01": 5, "t02": 3, "t59": 3}
    assert found["t01"].uri == str(storage / "trial-t01" / "checkpoint_000004")
    assert len(found["t59"].history) == 3
    # 2 stored checkpoints of t02 and t59 and 3 of t01 are read (the cut-off one is not): 7, not 123
    assert sorted(Path(p).parent.parent.name for p in counting.opened) == ["trial-t01"] * 3 + ["trial-t02"] * 2 + [
        "trial-t59"] * 2
