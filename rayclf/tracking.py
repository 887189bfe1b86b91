"""Weights & Biases tracking: one run per trial (rank 0 only) plus one sweep-level run.

W&B never costs a trial its time or its history. Before training the driver checks once, in seconds, that the
key is there and the server answers (``check_online``); a run's online start is bounded (``START_TIMEOUT_S``)
and so is its upload at the end (``FINISH_TIMEOUT_S``). When W&B fails (at the start, in the middle, at the
end) the run is re-opened offline with the same id and everything it logged is written again there, for
``wandb sync`` to upload later; only when even the local run cannot be written does tracking go quiet (warned
once) while training and the local Parquet results carry on. Run ids are derived from the trial id, so a
retried or resumed trial continues its run. The API key only ever travels in the environment
(``WANDB_API_KEY``) or the user's ~/.netrc; nothing here writes it anywhere.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import netrc
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rayclf.schema import UserError
from rayclf.sweep.trialspec import TrialSpec

log = logging.getLogger("rayclf.tracking")

CHECK_TIMEOUT_S = 3.0  # the driver's (and a worker node's) one request to the server before training
START_TIMEOUT_S = 5.0  # a run's online start (wandb's init_timeout); slower means offline for that run
# An offline run's start waits only on wandb's local service, which a loaded machine can take seconds to start
# (with 5 s, a fallback run under load 3.4 on 2 cores timed out and its trial's W&B data was lost): wait longer.
LOCAL_START_TIMEOUT_S = 60.0
FINISH_TIMEOUT_S = 10.0  # a run's upload at its end (wandb's finish_timeout); slower means offline for that run


@dataclass
class TrackingSettings:
    """What a worker needs to open its trial's run (never the key)."""

    mode: str = "disabled"  # online | offline | disabled (already resolved from "auto")
    project: str = "rayclf"
    entity: str | None = None
    dir: str | None = None
    tags: list[str] = field(default_factory=list)
    fallback: str = ""  # why the driver's check turned an online sweep offline ("" when it did not)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "project": self.project, "entity": self.entity, "dir": self.dir, "tags": self.tags,
                "fallback": self.fallback}


def base_url() -> str:
    """The server wandb would talk to: ``WANDB_BASE_URL``, else the installed wandb's default."""
    if os.environ.get("WANDB_BASE_URL"):
        return os.environ["WANDB_BASE_URL"].rstrip("/")
    from wandb.sdk.lib.urls import DEFAULT_BASE_URL  # api.wandb.ai before wandb 0.26, CoreWeave's host since

    return DEFAULT_BASE_URL.rstrip("/")


def api_key() -> str | None:
    """The key this process would use: ``WANDB_API_KEY``, else ~/.netrc (``NETRC``) for the server's host."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    host = urlparse(base_url()).hostname or ""
    try:
        auth = netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc"))).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return auth[2] if auth and auth[2] else None


def logged_in() -> bool:
    return api_key() is not None


def server_problem(timeout: float = CHECK_TIMEOUT_S) -> str | None:
    """One request to the W&B server with this process's key: None when it answers and takes the key, else what
    went wrong (refused, no answer within ``timeout``, an HTTP error, the key rejected)."""
    url, key = base_url(), api_key() or ""
    token = base64.b64encode(f"api:{key}".encode()).decode()
    req = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": "query { viewer { id } }"}).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read(1 << 16)
        return None
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return f"the W&B server {url} rejected the API key (HTTP {exc.code})"
        return f"the W&B server {url} answered HTTP {exc.code}"
    except TimeoutError:
        return f"the W&B server {url} did not answer within {timeout:g} s"
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", exc)
        if isinstance(why, TimeoutError):
            return f"the W&B server {url} did not answer within {timeout:g} s"
        return f"the W&B server {url} is not reachable ({type(why).__name__}: {str(why)[:120]})"


NO_KEY = ("W&B is set to online ({how}) but no W&B API key is set, so no run would reach a dashboard. Run "
          "`wandb login` or set WANDB_API_KEY, or pass --wandb offline (runs are kept under the sweep directory "
          "and `wandb sync` uploads them later). Nothing was trained.")


def check_online(settings: TrackingSettings, how: str | None, strict: bool,
                 timeout: float = CHECK_TIMEOUT_S) -> tuple[TrackingSettings, str | None]:
    """The driver's one check before training: (the settings to run with, a warning to print or None).

    ``how``: where an explicit ``online`` came from (None when ``auto`` chose it). Explicit online with no key
    refuses; a server that does not answer turns the sweep offline with one warning, or refuses when
    ``strict``."""
    if settings.mode != "online":
        return settings, None
    if api_key() is None:
        if how is not None:
            raise UserError(NO_KEY.format(how=how))
        return replace(settings, mode="offline"), None
    problem = server_problem(timeout)
    if problem is None:
        return settings, None
    if strict:
        raise UserError(f"{problem}; W&B is strict (--wandb-strict / wandb.strict), so the sweep stops before any "
                        "trial trains. Fix the connection (WANDB_BASE_URL, a proxy, egress), or drop --wandb-strict "
                        "to log offline and sync later.")
    where = f"{settings.dir}/wandb" if settings.dir else "the W&B folder"
    return replace(settings, mode="offline", fallback=problem), (
        f"warning: {problem}; this sweep logs to W&B offline under {where} and its last lines give the "
        "`wandb sync` command that uploads the runs (pass --wandb-strict to stop instead).")


def resolve_settings(mode: str, project: str | None, entity: str | None, tags: Sequence[str], sweep_name: str,
                     out: str) -> TrackingSettings:
    """``auto`` → online when logged in, else offline; run files under the sweep directory when it is local."""
    if mode == "auto":  # an explicit mode (sweep file or --wandb) wins over the environment
        env = os.environ.get("WANDB_MODE")
        mode = env if env in ("online", "offline", "disabled") else ("online" if logged_in() else "offline")
    local = "://" not in out
    run_dir = str(Path(out).resolve()) if local else str(Path.home() / ".cache" / "rayclf" / "wandb" / sweep_name)
    return TrackingSettings(mode, project or os.environ.get("WANDB_PROJECT") or "rayclf",
                            entity or os.environ.get("WANDB_ENTITY"), run_dir, list(tags))


def run_id(sweep: str, trial_id: str) -> str:
    """Deterministic W&B run id: the same trial always continues the same run."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{sweep}-{trial_id}")[:64]


def sync_command(run_dir: str | None) -> str:
    """The command that uploads every offline run written under ``run_dir`` (a tracking ``dir``)."""
    return f"wandb sync {run_dir or '.'}/wandb/offline-run-*"


def _open_run(settings: TrackingSettings, rid: str, mode: str, **identity: Any):
    """Every rayclf W&B run opens here: same folder, resume policy, quiet and bounded settings. ``silent`` also
    keeps wandb from asking the server who is logged in before the run starts (two more 5-s waits)."""
    import wandb

    os.makedirs(settings.dir or ".", exist_ok=True)  # wandb would silently fall back to a temp folder
    if mode != "online":  # wandb's own usage analytics post to the server at exit, offline runs too (10-s waits)
        with contextlib.suppress(Exception):
            from wandb.analytics.opentelemetry import opentelemetry_proxy

            opentelemetry_proxy.disable()
    start = START_TIMEOUT_S if mode == "online" else LOCAL_START_TIMEOUT_S
    bounds = wandb.Settings(init_timeout=start, finish_timeout=FINISH_TIMEOUT_S, finish_timeout_raises=True,
                            silent=True, console="off", x_disable_stats=True)
    return wandb.init(project=settings.project, entity=settings.entity, dir=settings.dir, mode=mode, id=rid,
                      resume="allow", reinit="create_new", settings=bounds, **identity)


def _release() -> None:
    """A failed ``wandb.init`` leaves its run id taken in wandb's service process (the offline run of the same
    id then fails with "run ID ... is in use", and telling the service the run finished hangs it): stop that
    service; the next run starts a fresh one (about a second). rayclf has one run open per process at a time."""
    import wandb

    with contextlib.suppress(Exception):
        wandb.teardown()


Value = Any  # a plain value, or a zero-argument callable that builds a fresh wandb object (Table, Image)


def _built(values: Mapping[str, Value]) -> dict[str, Any]:
    return {k: (v() if callable(v) else v) for k, v in values.items()}


class TrackedRun:
    """One W&B run that outlives W&B trouble: a bounded online start, and on any failure the same run re-opened
    offline with everything logged so far written again (rows, then summary), once. A failure of the offline
    run turns tracking off for this run (warned once); nothing here ever raises."""

    def __init__(self, settings: TrackingSettings, rid: str, identity: dict[str, Any], step_metric: str | None = None,
                 on_fallback: Callable[[str], None] | None = None, label: str = ""):
        self.settings, self.rid, self.identity, self.step_metric = settings, rid, identity, step_metric
        self.label = label  # names the run in warnings ("sweep summary"); a trial's run needs no name
        self.on_fallback = on_fallback
        self.rows: list[dict[str, Value]] = []
        self.summary: dict[str, Value] = {}
        self.mode = settings.mode
        self.fallback = ""  # why this run went offline
        self.broken = False
        self.run: Any = None
        self.dir: str | None = None  # the open run's files folder
        self.finished, self._exit_code = False, 0
        if self.mode == "online" and api_key() is None:
            self._fall_back("start", "no W&B API key in this process's environment (WANDB_API_KEY or ~/.netrc)")
        elif self.mode == "online" and (problem := server_problem()):  # refused or 5xx: no 5-s wait in wandb
            self._fall_back("start", problem)
        elif self.mode != "disabled":
            self._do("init", self._start)

    def _start(self) -> None:
        run = _open_run(self.settings, self.rid, self.mode, **self.identity)
        self.run, self.dir = run, run.dir
        if self.step_metric:
            run.define_metric(self.step_metric)
            run.define_metric("*", step_metric=self.step_metric)

    def _replay(self) -> None:
        self._start()
        for row in self.rows:
            self.run.log(_built(row))
        if self.summary:
            self.run.summary.update(_built(self.summary))

    def _do(self, what: str, fn: Callable[[], Any]) -> None:
        if self.broken:
            return
        try:
            fn()
        except Exception as exc:  # network, 5xx, timeouts, bad key, disk: tracking is never fatal
            self._failed(what, exc)

    def _failed(self, what: str, exc: Exception) -> None:
        why = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
        if self.mode == "online":
            self._fall_back(what, why)
            return
        self.broken, self.run = True, None
        log.warning("%s; training continues, local results are kept, W&B logging is off for this run.",
                    self._failure(what, why))

    def _failure(self, what: str, why: str) -> str:
        return f"W&B {self.label} failed ({what}: {why})" if self.label else f"W&B {what} failed ({why})"

    def _fall_back(self, what: str, why: str) -> None:
        """Online failed: close what is left of the online run (bounded), re-open it offline, write it again."""
        old, self.run, self.mode = self.run, None, "offline"
        self.fallback = self._failure(what, why)
        if old is not None and not self.finished:
            with contextlib.suppress(Exception):  # it failed already; the offline run takes over
                old.finish(exit_code=1)
        _release()
        log.warning("%s; this run continues offline, `%s` uploads it later.", self.fallback,
                    sync_command(self.settings.dir))
        if self.on_fallback is not None:
            self.on_fallback(self.fallback)
        self._do("offline start", self._replay)
        if self.finished and not self.broken:
            self._do("finish", lambda: self.run.finish(exit_code=self._exit_code))

    def log(self, row: dict[str, Value]) -> None:
        self.rows.append(row)
        self._do("log", lambda: self.run.log(_built(row)))

    def update_summary(self, values: dict[str, Value]) -> None:
        self.summary.update(values)
        self._do("summary", lambda: self.run.summary.update(_built(values)))

    def finish(self, exit_code: int = 0) -> None:
        """Close the run; an upload that does not finish in ``FINISH_TIMEOUT_S`` re-opens it offline."""
        self._exit_code = exit_code
        if self.run is None or self.finished:
            return
        self.finished = True
        self._do("finish", lambda: self.run.finish(exit_code=exit_code))


class WandbReporter:
    """Engine reporter that streams one trial to W&B (``on_fallback``: told once why the run went offline)."""

    def __init__(self, settings: TrackingSettings, trial: TrialSpec, test_images: Any = None,
                 classes: Sequence[str] = (), on_fallback: Callable[[str], None] | None = None):
        self.settings, self.trial = settings, trial
        self.test_images, self.classes = test_images, list(classes)
        t = trial
        identity = dict(group=t.sweep, job_type=t.arm[:64], name=f"{t.arm} s{t.seed}", tags=[*settings.tags, t.sweep],
                        config={**t.config, "rayclf": {"trial_id": t.trial_id, "arm": t.arm, "arm_id": t.arm_id,
                                                       "seed": t.seed, "sweep": t.sweep, "overrides": t.overrides}})
        self.tracked = TrackedRun(settings, run_id(t.sweep, t.trial_id), identity, "epoch", on_fallback)

    @property
    def run(self) -> Any:
        return self.tracked.run

    @property
    def broken(self) -> bool:
        return self.tracked.broken

    def epoch(self, metrics: dict[str, Any], checkpoint_dir: Any = None, final: bool = False) -> None:
        self.tracked.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))})

    def should_stop(self) -> bool:
        return False

    def end(self, summary: dict[str, Any]) -> None:
        self.tracked.update_summary(self._summary(summary))
        self.tracked.finish(exit_code=0 if summary.get("status") != "failed" else 1)

    def fail(self, exc: BaseException) -> None:
        """The trial raised: mark its run failed (with the reason) and close it."""
        self.tracked.update_summary({"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]})
        self.tracked.finish(exit_code=1)

    def _summary(self, s: dict[str, Any]) -> dict[str, Value]:
        """The trial's summary values; tables as builders (a fallback writes them again into the offline run)."""
        import wandb

        out: dict[str, Value] = {k: s[k] for k in ("status", "test_accuracy", "test_loss", "best_val_accuracy",
                                                   "best_epoch", "epochs", "params", "seconds", "images_per_sec",
                                                   "reason") if s.get(k) is not None}
        classes = s.get("classes") or self.classes
        cm = s.get("confusion_matrix") or []
        if cm:
            rows = [[classes[i], classes[j], n] for i, r in enumerate(cm) for j, n in enumerate(r)]
            acc = [[c, a] for c, a in zip(classes, s.get("per_class_accuracy", []), strict=False)]
            # end-of-trial tables go to the summary, so the history holds exactly one row per epoch
            out["confusion_matrix"] = lambda: wandb.Table(columns=["true", "predicted", "count"], data=rows)
            out["per_class_accuracy"] = lambda: wandb.Table(columns=["class", "accuracy"], data=acc)
        wrong = s.get("misclassified") or []
        if wrong and self.test_images is not None:
            images = self.test_images

            def table() -> Any:
                t = wandb.Table(columns=["image", "true", "predicted"])
                for m in wrong:
                    t.add_data(wandb.Image(images[m["index"]].transpose(1, 2, 0)), classes[m["true"]],
                               classes[m["pred"]])
                return t

            out["misclassified"] = table
        return out


def log_sweep_summary(settings: TrackingSettings, sweep: str, table_rows: Sequence[Mapping[str, Any]],
                      figures: Sequence[Path] = ()) -> str | None:
    """One sweep-level run: the arm × metric table (mean ± std over seeds) and any report figures; the same
    bounded start and offline fallback as a trial's run. Returns the run's folder, or None."""
    if settings.mode == "disabled":
        return None
    import wandb

    identity = dict(group=sweep, job_type="sweep-summary", name=f"{sweep} (summary)", tags=[*settings.tags, sweep])
    tracked = TrackedRun(settings, run_id(sweep, "summary"), identity, label="sweep summary")
    cols = list(table_rows[0]) if table_rows else ["arm"]
    data = [[r.get(c) for c in cols] for r in table_rows]
    tracked.log({"arms": lambda: wandb.Table(columns=cols, data=data)})
    for fig in figures:
        tracked.log({f"report/{fig.stem}": lambda fig=fig: wandb.Image(str(fig))})
    tracked.finish()
    return None if tracked.broken else tracked.dir
