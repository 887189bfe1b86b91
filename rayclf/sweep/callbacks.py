"""Tune callbacks in the sweep driver: record results, release leaked resources, feed the live view."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from ray.tune import Callback, Stopper

from rayclf.results import ResultsStore
from rayclf.storage import to_uri
from rayclf.sweep.keys import DATA_KEY, EPOCH_KEYS, PG_KEY, RESUMED_KEY, SUMMARY_KEY, TRACKING_KEY
from rayclf.sweep.lock import DriverLock
from rayclf.sweep.rows import trial_row
from rayclf.sweep.trialspec import TrialSpec


def trial_info(trial: Any) -> TrialSpec:
    """Our trial's spec, carried in Tune's trial config."""
    return trial.config["trial"]


class Recorder(Callback):
    """Writes every finished trial — completed, stopped early, diverged or failed — to the store.

    ``prior`` holds, per trial id, the epochs an earlier (crashed) run trained before the checkpoint the
    trial continues from: the row then covers every epoch once."""

    def __init__(self, store: ResultsStore, metric: str, mode: str,
                 prior: dict[str, list[dict[str, Any]]] | None = None, storage: str = "",
                 board: Any = None, stop: Any = None, on_recorded: Any = None):
        # storage: the sweep directory (its URI's scheme and query make Ray's checkpoint paths whole URIs)
        self.store, self.metric, self.mode, self.storage = store, metric, mode, storage
        self.stop = stop  # interrupt.StopFlag: once set, a trial that did not finish by itself is not recorded
        self.board = board  # schedulers.ArmBoard when arms stop together: why and where a trial stopped
        self.on_recorded = on_recorded  # told each recorded trial id (the sweep's strategy waits for them)
        self.epochs: dict[str, dict[int, dict[str, Any]]] = {}
        self.add_prior(prior or {})
        self.summaries: dict[str, dict[str, Any]] = {}
        self.resumed: dict[str, int] = {}
        self.data_seconds: dict[str, float] = {}
        self.checkpoints: dict[str, str] = {}
        self.pgs: dict[str, set[str]] = {}
        self.rows: dict[str, dict[str, Any]] = {}

    def add_prior(self, prior: dict[str, list[dict[str, Any]]]) -> None:
        """Epochs an earlier run trained before the checkpoints these trials continue from."""
        for tid, history in prior.items():
            self.epochs[tid] = {int(e["epoch"]): {k: e[k] for k in EPOCH_KEYS if k in e} for e in history}

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the experiment state
        return {**self.__dict__, "on_recorded": None}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        tid = trial_info(trial).trial_id
        if result.get(PG_KEY):
            self.pgs.setdefault(tid, set()).add(result[PG_KEY])
        if SUMMARY_KEY in result:
            self.summaries[tid] = json.loads(result[SUMMARY_KEY])
        if result.get("checkpoint_path"):  # Ray Train (data-parallel) trials report their checkpoint here
            self.checkpoints[tid] = result["checkpoint_path"]
        self.resumed.setdefault(tid, int(result.get(RESUMED_KEY) or 0))
        if result.get(DATA_KEY) is not None:  # the latest attempt's: what its node cost to prepare
            self.data_seconds[tid] = float(result[DATA_KEY])
        row = {k: result[k] for k in EPOCH_KEYS if k in result}
        if "epoch" in row:  # a retried trial repeats epochs after its checkpoint: keep the latest
            self.epochs.setdefault(tid, {})[int(row["epoch"])] = row

    def _checkpoint(self, trial: Any, tid: str) -> str | None:
        ckpt = getattr(trial, "checkpoint", None)
        # a trial resumed from its final checkpoint reports no new one: its result is the one it resumed from
        path = getattr(ckpt, "path", None) or self.checkpoints.get(tid) or trial_info(trial).resume_from
        return to_uri(self.storage, path) if path else path

    def _record(self, trial: Any, status: str, reason: str, rung: int | None = None) -> None:
        info = trial_info(trial)
        tid = info.trial_id
        epochs = [e for _, e in sorted(self.epochs.get(tid, {}).items())]
        summary = self.summaries.get(tid)
        row = trial_row(info, status, reason, summary, epochs, self.metric, self.mode,
                        checkpoint=self._checkpoint(trial, tid), resumed_from=self.resumed.get(tid), rung=rung,
                        data_seconds=self.data_seconds.get(tid))
        self._add(row, epochs, info)

    def _add(self, row: dict[str, Any], epochs: list[dict[str, Any]], info: TrialSpec) -> None:
        self.store.add(row, [{**e, "arm": info.arm, "seed": info.seed} for e in epochs])
        self.rows[row["trial_id"]] = row
        if self.on_recorded is not None:
            self.on_recorded(row["trial_id"])

    def record_unstarted(self, info: TrialSpec, status: str, reason: str, rung: int | None = None) -> None:
        """A trial that does not train in this run (its arm was stopped or eliminated first): still exactly
        one row, with the epochs an earlier run trained before its checkpoint, if any."""
        tid = info.trial_id
        epochs = [e for _, e in sorted(self.epochs.get(tid, {}).items())]
        self._add(trial_row(info, status, reason, None, epochs, self.metric, self.mode, rung=rung), epochs, info)

    def _interrupted(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended(trial)

    def ended(self, trial: Any) -> None:
        """A trial ended by itself or was stopped by the scheduler: its one row. The session calls this from the
        scheduler's hook, before Tune's callbacks; the second call then finds the row and does nothing."""
        if trial_info(trial).trial_id in self.rows:
            return
        summary = self.summaries.get(trial_info(trial).trial_id)
        if summary is None and self._interrupted():  # stopped by Ctrl-C: continues from its checkpoint
            return
        if summary is not None:
            self._record(trial, summary["status"], summary.get("reason", ""))
        elif self.board is not None:
            rung, why = self.board.why_stopped(trial_info(trial).arm_id)
            self._record(trial, "stopped_early", why, rung)
        else:
            self._record(trial, "stopped_early", "stopped by the scheduler")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self._interrupted():  # its process went down with the stop: continues from its checkpoint
            return
        self._record(trial, "failed", failure_reason(trial))


class SweepStopper(Stopper):
    """Ends the Tune run when the sweep's stop flag is set (Ctrl-C / SIGTERM). ``stop_all`` stops every trial
    without ``on_trial_complete``, so nothing interrupted is recorded as finished."""

    def __init__(self, flag: Any):
        self.flag = flag

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.flag is not None and self.flag.is_set()

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its stopper with the experiment state; a copy
        return {}  # (Ray Client runs the Tuner remotely) never sees the driver's signals: it never stops all

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.flag = None


def failure_reason(trial: Any) -> str:
    """The last line of the trial's error (the exception), without Ray's traceback noise."""
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("File ", "Traceback", "^", "~"))]
    return (useful[-1] if useful else "trial failed")[:500]


class PlacementGroupJanitor(Callback):
    """Removes Train worker-group placement groups that no trial uses any more.

    Two ways they leak (ray-project/ray#54305 / #32725 and autoscaling):

    - when Tune stops a trial that runs a Train V2 ``TorchTrainer`` (ASHA), the worker group's placement group
      may keep its resources and every later trial waits forever. Workers report their group's id with each
      result (``rayclf_pg``); the trial's groups are removed when it ends;
    - while the autoscaler brings nodes up, the Train controller creates a placement group, gives up after its
      start timeout, removes it and creates another (a slow cloud node: many created and removed). Train V2
      registers a group's placement group with its cleaner only *after* the group started, so one still
      waiting for nodes when its controller ends is known to no one: it stays pending, becomes ``CREATED``
      when the autoscaler's node arrives, and holds that node's GPUs (and keeps it from scaling down) with no
      trial using it until the driver exits. No worker ever reports it. So whenever no data-parallel trial is
      running, and at the end of the sweep, every placement group of this driver's job with the worker-group
      shape (``num_workers`` bundles of the trial's CPUs/GPUs) that is still alive is removed.
    """

    def __init__(self, recorder: Recorder, worker_bundle: dict[str, float] | None = None, num_workers: int = 0):
        self.recorder = recorder
        self.removed: set[str] = set()
        self.bundle = {k: float(v) for k, v in (worker_bundle or {}).items() if v}
        self.num_workers = num_workers

    def release(self, pg_hex: str) -> bool:
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

        state = placement_group_table().get(pg_hex, {}).get("state")
        if state is None or state == "REMOVED" or pg_hex in self.removed:
            return False
        remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_hex))))
        self.removed.add(pg_hex)
        return True

    def _worker_group_shaped(self, info: dict[str, Any]) -> bool:
        bundles = list((info.get("bundles") or {}).values())
        return bool(self.num_workers) and len(bundles) == self.num_workers and all(
            {k: float(v) for k, v in b.items() if v and k in ("CPU", "GPU")} == self.bundle for b in bundles)

    def orphans(self) -> list[str]:
        """Alive worker-group-shaped placement groups created by this driver's job (none is in use when no
        data-parallel trial runs)."""
        import ray
        from ray.util.placement_group import placement_group_table

        job = ray.get_runtime_context().get_job_id()
        return [pg for pg, info in placement_group_table().items()
                if pg.endswith(job) and info.get("state") != "REMOVED" and pg not in self.removed
                and self._worker_group_shaped(info)]

    def _clean(self, trial: Any, trials: list) -> None:
        for pg in self.recorder.pgs.get(trial_info(trial).trial_id, ()):
            self.release(pg)
        if not any(t is not trial and t.status == "RUNNING" for t in trials):
            for pg in self.orphans():
                self.release(pg)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._clean(trial, trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._clean(trial, trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for pgs in self.recorder.pgs.values():
            for pg in pgs:
                self.release(pg)
        for pg in self.orphans():
            self.release(pg)


def node_names() -> dict[str, str]:
    """Ray node id → the node's host name (its IP when it has none), for every node the cluster knows."""
    import ray

    return {n["NodeID"]: n.get("NodeManagerHostname") or n.get("NodeManagerAddress") or ""
            for n in ray.nodes() if n.get("NodeID")}


class LiveCallback(Callback):
    """Feeds Tune's trial events to the live view (``rayclf.sweep.live``) and the running set to the driver
    lock (``rayclf.sweep.lock``: what ``rayclf status`` shows); statuses come from the recorder, so the view
    shows exactly what the results table holds. Must come after the ``Recorder``. Nodes are shown by host name
    (looked up once per node Ray reports), not by Ray's node id."""

    def __init__(self, view: Any, recorder: Recorder, driver: DriverLock | None = None):
        self.view, self.recorder, self.driver = view, recorder, driver
        self.running: dict[str, dict[str, Any]] = {}
        self.names: dict[str, str] = {}

    def node(self, node_id: str | None) -> str | None:
        from rayclf.sweep.live import node_label

        if node_id and node_id not in self.names:
            with contextlib.suppress(Exception):  # a display nicety: the short id stands in
                self.names.update(node_names())
            self.names.setdefault(node_id, "")  # asked once per node, not once per epoch
        return node_label(node_id, self.names)

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the experiment; a terminal
        # display and the driver lock (locks, threads) stay with the driver
        return {"view": None, "recorder": self.recorder, "driver": None, "running": {}, "names": {}}

    def _beat(self) -> None:
        if self.driver is not None:
            self.driver.beat(self.running)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        t = trial_info(trial)
        self.running[t.trial_id] = {"arm_id": t.arm_id, "label": t.arm, "seed": t.seed, "epoch": 0,
                                    "epochs": t.epochs}
        self._beat()
        if self.view is not None:
            self.view.started(t.trial_id, t.arm, t.seed, t.epochs)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "epoch" not in result:
            return
        tid = trial_info(trial).trial_id
        if tid in self.running:
            self.running[tid]["epoch"] = int(result["epoch"])
            self._beat()
        if self.view is not None and result.get(TRACKING_KEY):
            self.view.tracking_fell_back(tid, str(result[TRACKING_KEY]))
        if self.view is not None:
            self.view.result(tid, int(result["epoch"]), result.get(self.recorder.metric),
                             result.get("epoch_seconds"), self.node(result.get("node")))

    def _finished(self, trial: Any) -> None:
        tid = trial_info(trial).trial_id
        if self.running.pop(tid, None) is not None:
            self._beat()
        if self.view is None:
            return
        row = self.recorder.rows.get(tid, {})
        self.view.finished(tid, row.get("status", "failed"), row.get("metric_best"), row.get("reason") or "")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finished(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finished(trial)
