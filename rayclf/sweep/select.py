"""Arms of a sweep picked by label or arm id: ``rayclf sweep FILE --arm A --arm B`` and ``rayclf train FILE --arm A``.

A picked arm is the very arm the whole sweep runs (same overrides, so the same trial ids), which is what lets a
headline number be reproduced alone and a later full run skip it as done. A staged sweep's arm of stage k > 1
sits on the earlier stages' winners: they come from a finished sweep directory's decision log (``--from``), or
are not needed where the file pins every value they would carry (``carry:`` of a stage, ``final:``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rayclf.config import ConfigError, closest
from rayclf.sweep.spec import Arm, Sweep, Trial
from rayclf.sweep.strategies.registry import arm_rule_class, create_search


@dataclass(frozen=True)
class Selection:
    """The picked arms, in sweep order, and every arm of their stages (which fixes their table positions)."""

    arms: list[Arm]
    listed: list[Arm]

    def groups(self) -> list[tuple[list[Arm], list[Arm]]]:
        """(picked arms, all arms) per stage: a trial's position in the results table counts within its stage."""
        stages = sorted({a.stage or 0 for a in self.arms})
        return [([a for a in self.arms if (a.stage or 0) == s], [a for a in self.listed if (a.stage or 0) == s])
                for s in stages]


def stage_winners(sweep_dir: str) -> dict[int, dict[str, Any]]:
    """Each finished stage's winner (its full overrides) from a sweep directory's decision log."""
    from rayclf.sweep.decisions import WINNER, read_decisions

    return {int(d.key): dict(d.detail.get("overrides") or {}) for d in read_decisions(sweep_dir)
            if d.kind == WINNER and d.key.isdigit()}


def sweep_arms(sweep: Sweep, winners: Mapping[int, Mapping[str, Any]] | None = None) -> tuple[list[Arm], list[str]]:
    """Every arm the sweep runs that can be told now, in sweep order, and the labels of those that need
    earlier stage winners (``winners``: stage index → the winner's full overrides). The search strategy says."""
    return create_search(sweep).selectable(winners or {})


def select_arms(sweep: Sweep, wanted: Iterable[str], from_dir: str | None = None) -> Selection:
    """The arms named by whole label or by (a unique prefix of) arm id; a bad name is a ``ConfigError``."""
    winners = stage_winners(from_dir) if from_dir else {}
    if from_dir and not winners and create_search(sweep).staged:
        raise ConfigError(f"--from {from_dir}: no stage winner is logged there (decisions.parquet); point it at "
                          f"a sweep directory of '{sweep.name}' whose stages have finished.")
    listed, pending = sweep_arms(sweep, winners)
    ids = [sweep.arm_id(a) for a in listed]
    picked = sorted({_find(sweep, name, listed, ids, pending, from_dir) for name in wanted})
    return Selection([listed[i] for i in picked], listed)


def _find(sweep: Sweep, name: str, listed: list[Arm], ids: list[str], pending: list[str],
          from_dir: str | None) -> int:
    """The index of one arm by whole label, else by arm-id prefix; otherwise an error saying what would make
    it known."""
    by_label = [i for i, a in enumerate(listed) if name == a.label or name in a.aliases]
    if by_label:
        return by_label[0]
    if name in pending:
        where = (f"{from_dir} has no logged winner for the stage before it" if from_dir else
                 "pass --from SWEEP_DIR, a directory of this sweep whose earlier stages have finished, to read "
                 "their winners from its decision log")
        raise ConfigError(f"arm {name!r} of sweep '{sweep.name}' is varied around earlier stages' winners: {where}.")
    by_id = [i for i, arm_id in enumerate(ids) if arm_id.startswith(name.lower())] if len(name) >= 4 else []
    if len({ids[i] for i in by_id}) == 1:  # two labels of one config are one arm
        return by_id[0]
    if by_id:
        raise ConfigError(f"arm id prefix {name!r} matches {len(by_id)} arms of sweep '{sweep.name}' "
                          f"({', '.join(listed[i].label for i in by_id[:4])}); give more of the id.")
    labels = [label for a in listed for label in (a.label, *a.aliases)] + pending
    hint = closest(name, labels)
    raise ConfigError(f"--arm {name!r} is neither an arm label nor an arm id of sweep '{sweep.name}'"
                      + (f"; did you mean '{hint}'?" if hint else f"; arms: {', '.join(labels[:8])}"
                                                                  + (" …" if len(labels) > 8 else ".")))


def check_subset(sweep: Sweep) -> None:
    """A subset of arms runs only under an arm rule that takes subsets (fifo): an adaptive one would decide on
    part of the arms."""
    name = sweep.file.scheduler.name
    if not arm_rule_class(name).takes_subsets:
        raise ConfigError(f"sweep '{sweep.name}' runs scheduler {name}, which decides on all its arms together; "
                          "a subset (--arm) would take those decisions on part of them. Run the whole sweep, or "
                          "train one arm to the end with: rayclf train FILE --arm LABEL.")


def pick(sweep: Sweep, wanted: tuple[str, ...], from_dir: str | None) -> Selection | None:
    """``rayclf sweep --arm``: the picked arms (checked against the scheduler), or None for the whole sweep."""
    if not wanted:
        if from_dir:
            raise ConfigError("--from reads earlier stage winners for --arm; it needs --arm LABEL.")
        return None
    check_subset(sweep)
    return select_arms(sweep, wanted, from_dir)


def arm_trial(path: Any, wanted: str, seed: int | None, from_dir: str | None, overrides: tuple[str, ...]) -> Trial:
    """``rayclf train SWEEP --arm``: the trial the sweep runs for that arm and seed (the sweep's first by default)."""
    from rayclf.sweep.spec import is_sweep_file, load_sweep, read_yaml

    if path is None or not is_sweep_file(read_yaml(path)):
        raise ConfigError(f"--arm picks an arm of a sweep file; {path or 'no file'} is not one.")
    sweep = load_sweep(path, overrides)
    arm = select_arms(sweep, [wanted], from_dir).arms[0]
    return sweep.trial(arm, sweep.file.seeds[0] if seed is None else seed)
