"""Reported vs reproduced: each number a study's report states (the sweep file's ``reported:`` block) beside
what rayclf measured for that arm — mean ± std over seeds, the difference, and whether the reported value lies
inside the 95% confidence interval — as a Markdown table and a figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rayclf.aggregate import ci95, mean_std


@dataclass
class Comparison:
    arm: str
    metric: str
    reported: float
    source: str
    n: int
    mean: float | None
    std: float | None
    ci95: float | None

    @property
    def diff(self) -> float | None:
        return None if self.mean is None else self.mean - self.reported

    @property
    def inside(self) -> bool | None:
        """Reported value within mean ± CI half-width (None under two seeds: no interval)."""
        if self.mean is None or self.ci95 is None:
            return None
        return abs(self.mean - self.reported) <= self.ci95


def compare(reported: Sequence[Mapping[str, Any]], trials: Sequence[Mapping[str, Any]]) -> list[Comparison]:
    """One comparison per reported entry, over that arm's completed trials."""
    out = []
    for rep in reported:
        metric = rep.get("metric", "test_accuracy")
        values = [float(t[metric]) for t in trials if t["arm"] == rep["arm"] and t.get("status") == "completed"
                  and t.get(metric) is not None and t[metric] == t[metric]]
        m, sd = mean_std(values)
        out.append(Comparison(rep["arm"], metric, float(rep["value"]), rep.get("source", ""), len(values), m, sd,
                              ci95(values)))
    return out


def _p(v: float | None, signed: bool = False) -> str:
    return "-" if v is None else f"{100 * v:{'+' if signed else ''}.2f}"


def to_markdown(rows: Sequence[Comparison]) -> str:
    lines = ["| arm | metric | reported % | source | n | reproduced % (mean ± std) | 95% CI ± | diff (pp) | "
             "reported inside CI |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        inside = {True: "yes", False: "no", None: "- (n < 2)" if r.mean is not None else "- (not run)"}[r.inside]
        lines.append(f"| {r.arm} | {r.metric} | {_p(r.reported)} | {r.source} | {r.n} | {_p(r.mean)} ± {_p(r.std)} "
                     f"| {_p(r.ci95)} | {_p(r.diff, True)} | {inside} |")
    return "\n".join(lines) + "\n"


def figure(rows: Sequence[Comparison]) -> Any:
    """Per reported number: the reproduced mean with its 95% CI (dot, bar) and the reported value (×)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    for i, r in enumerate(rows):
        if r.mean is not None:
            color = {True: "tab:green", False: "tab:red", None: "tab:gray"}[r.inside]
            ax.errorbar(100 * r.mean, i, xerr=100 * (r.ci95 or 0.0), fmt="o", color=color, capsize=3)
        ax.plot(100 * r.reported, i, "kx", markersize=8)
    ax.set_yticks(range(len(rows)), [f"{r.arm} ({r.source})" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy % — × reported, ● reproduced mean ± 95% CI (green: reported inside)")
    fig.tight_layout()
    return fig
