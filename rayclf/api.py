"""The notebook API: ``sweep = rayclf.open_sweep(path)`` and a sweep directory's results as typed pandas
DataFrames, the per-arm table (the very values ``rayclf status`` and ``rayclf report`` print, computed by
the same call), the decision log, the report's figures as matplotlib Figures, and the report itself.

Reads only; a running sweep can be opened again (``open_sweep``) to see what finished since.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rayclf.config import UserError
from rayclf.results import TRIALS, exists, join

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from rayclf.report import Report
    from rayclf.sweepdir import SweepData


def _frame(table: str, root: str) -> pd.DataFrame:
    """A part-folder table as pandas reads it from Parquet (int, float, string, bool columns keep their
    types; an int column with missing values is pandas' nullable Int64), in sweep order."""
    import pandas as pd
    import pyarrow as pa

    from rayclf.results import filesystem, list_parts, read_part

    fs, path = filesystem(join(root, table))
    parts = [t for t in (read_part(fs, f.path) for f in list_parts(fs, path)) if t is not None]  # skips unreadable
    if not parts:
        return pd.DataFrame()
    types = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype(), pa.string(): pd.StringDtype()}
    df = pa.concat_tables(parts, promote_options="permissive").to_pandas(types_mapper=types.get)
    if "position" in df.columns:
        keys = ["position", "epoch"] if "epoch" in df.columns else ["position"]
        df = df.sort_values(keys, na_position="last", kind="stable")
    return df.reset_index(drop=True)


@dataclass
class SweepResults:
    """A sweep directory opened for analysis (see ``open_sweep``)."""

    root: str
    data: SweepData

    @property
    def name(self) -> str:
        return self.data.name

    @property
    def metric(self) -> str:
        return self.data.metric

    @property
    def reused(self) -> str | None:
        """How many trials were taken from a trial cache instead of trained, and from where (None: none was);
        the rows say which (``trials.reused_from``) and who trained them (``trials.provenance``)."""
        return self.data.reused

    @property
    def trials(self) -> pd.DataFrame:
        """One row per trial: identity, status, metrics, cost and the resolved config as ``config.*``."""
        return _frame(TRIALS, self.root)

    @property
    def epochs(self) -> pd.DataFrame:
        """One row per trained epoch of every trial."""
        from rayclf.results import EPOCHS

        return _frame(EPOCHS, self.root)

    def arms(self) -> pd.DataFrame:
        """The per-arm table, one row per arm in table order: n, mean, std, 95% CI, Δ vs baseline with its CI
        and p, test accuracy, statuses, rank, note, trainable parameters, seconds per epoch, trial-hours."""
        import pandas as pd

        from rayclf.sweep.status import arm_record

        rows = [arm_record(r) for r in self.data.arm_rows()]
        return pd.DataFrame(rows).set_index("arm") if rows else pd.DataFrame()

    @property
    def decisions(self) -> pd.DataFrame:
        """The decision log (stops, eliminations, stage winners, proposals) in the order taken."""
        import pandas as pd

        from rayclf.sweep.decisions import read_decisions
        from rayclf.sweep.status import decision_record

        return pd.DataFrame([decision_record(d) for d in read_decisions(self.root)],
                            columns=["seq", "kind", "key", "arm_id", "label", "stage", "n_seeds", "detail", "time"])

    def figures(self) -> dict[str, Figure]:
        """Every figure the report draws for this sweep, by name (drawn by the report's own code)."""
        from rayclf.report import make_figures, search_kind, search_space

        found: dict[str, Any] = {}
        d = self.data
        make_figures(d.trials, d.epochs, d.metric, found, d.arm_rows(), search_kind(d.spec, d.trials), d.mode,
                     search_space(d.spec))
        return found

    def figure(self, name: str) -> Figure:
        """One of the report's figures (``effects``, ``learning_curves``, ``pareto``, ``stages``…)."""
        found = self.figures()
        if name not in found:
            import difflib

            close = difflib.get_close_matches(name, list(found), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UserError(f"figure '{name}' is not drawn for sweep '{self.name}' (it has: "
                            f"{', '.join(found) or 'none'}){hint}")
        return found[name]

    def report(self, out: str | Path | None = None) -> Report:
        """Write the full report (tables, figures, index.html) into ``out`` (default SWEEP/report)."""
        from rayclf.report import build_report

        return build_report(self.root, Path(out) if out is not None else None)


def open_sweep(path: str | Path) -> SweepResults:
    """Open a sweep directory (local path, ``s3://`` or ``gs://``) for analysis in Python."""
    from rayclf.sweepdir import read_sweep

    root = str(path)
    if not exists(join(root, TRIALS)):
        raise UserError(f"{root} has no {TRIALS}: pass the --out of a rayclf sweep (it may not have finished a "
                        "trial yet).")
    return SweepResults(root, read_sweep(root))
