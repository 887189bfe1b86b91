"""The kernel's two doors to the trial cache (``rayclf.cache``): before a batch trains, planned trials the
cache holds as completed are recorded from it (row marked ``reused_from``, no slot used); after it, the
batch's trials this sweep trained to completion are published.

A reused trial is recorded into the sweep's own store before the batch is handed to Tune, exactly as a trial
an earlier run of this sweep finished: the strategy, the arm rules' boards (their per-epoch values at every
rung, ``schedulers.replay``), racing, stage winners and bayes read it from the store like any other row. Its
row is rebuilt with this sweep's identity columns (label, stage, position), metric and rank rule from the
cached epochs and end-of-training values, so it equals the row training would have written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rayclf.cache import TrialCache, provenance
from rayclf.config import UserError
from rayclf.schema import closest

if TYPE_CHECKING:
    from rayclf.sweep.kernel import SweepRun
    from rayclf.sweep.spec import Sweep, Trial


@dataclass
class Reuse:
    """One sweep's use of a trial cache: ``refresh`` arms (labels or arm ids) train again on purpose, and their
    new result replaces the cached one."""

    cache: TrialCache
    refresh: frozenset[str] = frozenset()
    reused: dict[str, str] = field(default_factory=dict)  # trial id -> the cache it came from (this run)
    published: set[str] = field(default_factory=set)

    @property
    def where(self) -> str:
        return self.cache.where

    def refreshed(self, t: Trial) -> bool:
        """Whether ``--refresh`` names the trial's arm (a label of it, or a prefix of its arm id)."""
        return bool({t.arm.label, *t.arm.aliases} & self.refresh) or any(t.arm_id.startswith(v) for v in self.refresh)

    def take(self, run: SweepRun, trials: list[Trial], order: list[Trial]) -> set[str]:
        """Record the planned trials the cache holds as completed (not finished in this sweep's store, not
        refreshed); the ids recorded."""
        from rayclf.sweep.rows import trial_row
        from rayclf.sweep.trialspec import TrialSpec

        done = run.store.finished_ids(run.rerun_stopped)
        wanted = [t for t in trials if t.trial_id not in done and not self.refreshed(t)]
        found = self.cache.lookup(t.trial_id for t in wanted)
        if not found:
            return set()
        pos = {t.trial_id: i for i, t in enumerate(order)}
        metric = run.sweep.file.metric
        recorded = []
        for t in wanted:
            entry = found.get(t.trial_id)
            if entry is None:
                continue
            epochs = [{**e, "arm": t.arm.label, "seed": t.seed} for e in entry.epochs]
            row = trial_row(TrialSpec.of(run.sweep, t, pos[t.trial_id]), "completed", entry.row.get("reason") or "",
                            entry.summary(), epochs, metric, run.mode, checkpoint=entry.checkpoint,
                            data_seconds=entry.row.get("data_seconds"), reused_from=self.where,
                            provenance=entry.provenance)
            recorded.append((row, epochs))
        run.store.prepare([row for row, _ in recorded])
        for row, epochs in recorded:
            run.store.add(row, epochs)
            self.reused[row["trial_id"]] = self.where
        return {row["trial_id"] for row, _ in recorded}

    def give(self, run: SweepRun, trials: Iterable[Trial]) -> int:
        """Publish the trials of a finished batch this sweep trained to completion (once per run); how many."""
        rows = {r["trial_id"]: r for r in run.store.trials}
        epochs: dict[str, list[dict[str, Any]]] = {}
        for e in run.store.epochs:
            epochs.setdefault(e["trial_id"], []).append(e)
        prov = provenance(run.sweep.name, run.out, self.cache.version)
        n = 0
        for t in trials:
            row = rows.get(t.trial_id)
            if row is None or t.trial_id in self.published or t.trial_id in self.reused:
                continue
            try:
                if self.cache.publish(row, epochs.get(t.trial_id, []), prov, replace=self.refreshed(t)):
                    n += 1
            except OSError as exc:  # the sweep's own results are recorded: a cache that refuses costs nothing
                self.cache.warn(f"warning: trial {t.trial_id} was not added to the trial cache {self.where}: {exc}")
            self.published.add(t.trial_id)
        return n


def check_refresh(sweep: Sweep, refresh: Iterable[str]) -> frozenset[str]:
    """``--refresh ARM`` values that name an arm of the file (a label, or a prefix of an arm id); else exit 2 with
    the closest label. Arms a search proposes as it goes (bayes) are known only then: anything is taken."""
    refresh = tuple(refresh)
    if not refresh:
        return frozenset()
    from rayclf.sweep.strategies.registry import create_search

    search = create_search(sweep)
    labels = search.labels()
    if labels is None:
        return frozenset(refresh)
    ids = {t.arm_id for t in sweep.trials(sweep.arms())} if search.fixed_arms else set()
    for value in refresh:
        if value in labels or any(i.startswith(value) for i in ids):
            continue
        hint = closest(value, labels)
        raise UserError(f"--refresh {value!r} is not an arm of sweep '{sweep.name}'"
                        + (f"; did you mean {hint!r}?" if hint else f"; its arms: {', '.join(sorted(labels))}"))
    return frozenset(refresh)


def open_reuse(uri: str | None, refresh: Iterable[str], sweep: Sweep,
               warn: Callable[[str], None] = print) -> Reuse | None:
    """The sweep's ``Reuse`` for the cache at ``uri`` (None: no cache; ``--refresh`` then has nothing to do),
    keyed by the identity rule of the sweep's ids (its directory's, once ``runner.prepare_out`` read it)."""
    refresh = tuple(refresh)
    if uri is None:
        if refresh:
            raise UserError("--refresh ARM re-trains an arm the trial cache holds: it needs a cache (--cache DIR, "
                            "the sweep file's cache:, or RAYCLF_CACHE), and not --no-cache.")
        return None
    from rayclf.storage import check_bucket

    check_bucket(uri)
    return Reuse(TrialCache(uri, warn, sweep.identity_version), check_refresh(sweep, refresh))
