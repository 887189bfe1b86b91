"""Report figures (matplotlib, Agg): titled, axes labelled with units, each arm one colour everywhere."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rayclf.aggregate import scored_trials

BOOKKEEPING = {"seed"}


def arm_colors(arms: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab20" if len(arms) > 10 else "tab10")
    return {a: cmap(i % cmap.N) for i, a in enumerate(arms)}


def _label(metric: str) -> str:
    return f"{metric.replace('_', ' ')} (%)" if metric.endswith("accuracy") else f"{metric.replace('_', ' ')}"


def _scale(metric: str, v: float) -> float:
    return 100 * v if metric.endswith("accuracy") else v


def _value(v: Any) -> Any:
    """Config cell → hashable, readable value (lists are stored as JSON text)."""
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.dumps(json.loads(v))
        except ValueError:
            return v
    return v


def swept_factors(trials: Sequence[Mapping[str, Any]]) -> list[str]:
    """Config keys (without ``config.``) whose value differs between trials, seed excluded."""
    keys = [k for k in trials[0] if k.startswith("config.")] if trials else []
    out = []
    for k in keys:
        name = k[len("config."):]
        if name in BOOKKEEPING:
            continue
        if len({json.dumps(_value(r.get(k)), default=str) for r in trials}) > 1:
            out.append(name)
    return out


def completed(trials: Sequence[Mapping[str, Any]], key: str = "metric_best") -> list[Mapping[str, Any]]:
    """The trials that carry their arm's value under aggregate's ranking rule: completed seeds, or an arm's
    early-stopped seeds at the rung it reached (so stopped arms keep their place in every figure)."""
    return scored_trials(trials, key)


def learning_curves(epochs: Sequence[Mapping[str, Any]], colors: Mapping[str, Any],
                    stopped: Sequence[Mapping[str, Any]] = ()) -> Figure:
    """Train/validation accuracy and loss per epoch: per arm the mean over seeds and a min–max band;
    ``stopped`` (early-stopped trial rows) are marked × where each one stopped."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    panels = [("train_accuracy", axes[0, 0]), ("val_accuracy", axes[0, 1]), ("train_loss", axes[1, 0]),
              ("val_loss", axes[1, 1])]
    for key, ax in panels:
        for arm, color in colors.items():
            by_epoch: dict[int, list[float]] = {}
            for e in epochs:
                v = e.get(key)
                if e.get("arm") == arm and v is not None and math.isfinite(v):
                    by_epoch.setdefault(int(e["epoch"]), []).append(_scale(key, v))
            if not by_epoch:
                continue
            xs = sorted(by_epoch)
            mean = [np.mean(by_epoch[x]) for x in xs]
            ax.plot(xs, mean, color=color, label=arm, lw=1.6)
            ax.fill_between(xs, [min(by_epoch[x]) for x in xs], [max(by_epoch[x]) for x in xs], color=color, alpha=0.18)
        _mark_stopped(ax, key, epochs, stopped, colors)
        ax.set_title(key.replace("_", " ").capitalize())
        ax.set_ylabel(_label(key) if key.endswith("accuracy") else "cross-entropy loss")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes[0, 1].get_legend_handles_labels() or axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, title="arm (band: min–max over seeds)")
    fig.suptitle("Learning curves per arm (mean over seeds)")
    fig.tight_layout(rect=(0, 0, 0.8, 0.96))
    return fig


def _mark_stopped(ax: Any, key: str, epochs: Sequence[Mapping[str, Any]], stopped: Sequence[Mapping[str, Any]],
                  colors: Mapping[str, Any]) -> None:
    """An × at the last epoch of each early-stopped trial (its own value, not the arm's mean)."""
    for t in stopped:
        last = [e for e in epochs if e.get("arm") == t["arm"] and e.get("seed") == t["seed"]
                and int(e["epoch"]) == int(t["epochs"]) and e.get(key) is not None]
        if last:
            ax.scatter([int(t["epochs"])], [_scale(key, last[0][key])], marker="x", s=60, lw=2,
                       color=colors.get(t["arm"], "k"), zorder=4,
                       label="stopped early" if t is stopped[0] else None)


def effect_forest(rows: Sequence[Any], metric: str, colors: Mapping[str, Any], mode: str = "max") -> Figure:
    """Ablation: each arm's Δ against the baseline with the 95% CI of the matched-seed differences, sorted
    (best on top under ``mode``). ``rows`` are aggregate.ArmRow; the baseline and arms without a Δ are left out."""
    base = next((r for r in rows if r.baseline and r.mean is not None), None)
    arms = sorted([r for r in rows if r.delta is not None], key=lambda r: r.delta if mode == "max" else -r.delta)
    fig, ax = plt.subplots(figsize=(9.5, 1.4 + 0.55 * max(len(arms), 1)))
    ys = np.arange(len(arms))
    deltas = [_scale(metric, r.delta) for r in arms]
    cis = [_scale(metric, r.delta_ci95) if r.delta_ci95 is not None else 0.0 for r in arms]
    ax.errorbar(deltas, ys, xerr=cis, fmt="none", ecolor="0.35", capsize=4, lw=1.4)
    ax.scatter(deltas, ys, c=[colors.get(r.arm, "tab:blue") for r in arms], s=60, zorder=3, edgecolors="k")
    ax.axvline(0, color="k", lw=1, ls="--")
    ax.set_yticks(ys, [r.arm for r in arms])
    for y, r, d, c in zip(ys, arms, deltas, cis, strict=True):
        p = f"p (Holm) = {r.p_holm:.2g}" if r.p_holm is not None else (r.effect.note or "no p")
        ci = f"± {c:.2f}" if r.delta_ci95 is not None else "(no CI)"
        ax.annotate(f"{d:+.2f} {ci}, {p}, {r.pairs} pairs", (1.01, y), xycoords=("axes fraction", "data"),
                    va="center", fontsize=8)
    unit = "percentage points" if metric.endswith("accuracy") else "metric units"
    ax.set_xlabel(f"Δ best {metric.replace('_', ' ')} vs baseline ({unit}); bar: 95% CI over matched seeds")
    where = f" (baseline {_scale(metric, base.mean):.2f})" if base is not None else ""
    ax.set_title(f"Effect of each arm against the baseline{where}")
    ax.grid(alpha=0.3, axis="x")
    ax.set_ylim(-0.7, len(arms) - 0.3)
    fig.tight_layout(rect=(0, 0, 0.78, 1))
    return fig


def stage_progression(rows: Sequence[Any], winners: Mapping[int, str], metric: str, mode: str) -> Figure:
    """Staged sweep: every arm's mean ± std per stage, each stage's winner (★, carried forward) and the
    running best over stages."""
    stages = sorted({r.stage for r in rows if r.stage is not None})
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(stages) + 3), 5))
    running, best = [], None
    for k in stages:
        group = [r for r in rows if r.stage == k and r.mean is not None]
        xs = k + 1 + np.linspace(-0.15, 0.15, len(group)) if len(group) > 1 else np.full(len(group), k + 1.0)
        for x, r in zip(xs, group, strict=True):
            won = winners.get(k) == r.arm
            ax.errorbar(x, _scale(metric, r.mean), yerr=_scale(metric, r.std or 0.0), fmt="*" if won else "o",
                        ms=14 if won else 6, color="tab:red" if won else "0.55", capsize=3, zorder=3 if won else 2)
            if won:
                ax.annotate(r.arm.split(":", 1)[-1], (x, _scale(metric, r.mean)), textcoords="offset points",
                            xytext=(8, 6), fontsize=8, color="tab:red")
                best = r.mean if best is None or (r.mean > best if mode == "max" else r.mean < best) else best
        running.append(_scale(metric, best) if best is not None else np.nan)
    ax.step([k + 1 for k in stages], running, where="post", color="tab:green", lw=2, label="running best")
    ax.plot([], [], "*", color="tab:red", ms=12, ls="none", label="stage winner (carried forward)")
    ax.plot([], [], "o", color="0.55", ls="none", label="other arms (mean ± std over seeds)")
    ax.set_xticks([k + 1 for k in stages], [f"stage {k + 1}" for k in stages])
    ax.set_xlabel("stage (each varies one group of settings around the previous winner)")
    ax.set_ylabel(f"best {_label(metric)}")
    ax.set_title("Stage-by-stage progression")
    ax.grid(alpha=0.3, axis="y")
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def factor_effects(trials: Sequence[Mapping[str, Any]], factors: Sequence[str], metric: str) -> Figure:
    """Distribution of the metric per value of each swept factor, pooled over every other factor's values
    (a grid's marginal view; box = interquartile range). Ablations use ``effect_forest`` instead."""
    done = completed(trials)
    n = max(len(factors), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 4.2), squeeze=False)
    for ax, f in zip(axes[0], factors, strict=False):
        values = sorted({_value(r.get(f"config.{f}")) for r in done}, key=lambda v: (str(type(v)), v))
        data = [[_scale(metric, r["metric_best"]) for r in done if _value(r.get(f"config.{f}")) == v] for v in values]
        ax.boxplot(data, tick_labels=[str(v) for v in values], whis=(0, 100))
        for i, d in enumerate(data, start=1):
            ax.scatter(np.full(len(d), i) + np.linspace(-0.08, 0.08, len(d)), d, s=12, alpha=0.6, color="tab:blue")
        ax.set_title(f"Effect of {f}")
        ax.set_xlabel(f)
        ax.set_ylabel(f"best {_label(metric)}")
        ax.tick_params(axis="x", rotation=30)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Best {metric.replace('_', ' ')} per factor value, pooled over all other factors' values "
                 "(box: interquartile range, whiskers: range)")
    fig.tight_layout()
    return fig


def _pivot(trials: Sequence[Mapping[str, Any]], f1: str, f2: str, metric: str):
    """Rows, columns, the mean value of each cell and, per cell, the epoch its trials were stopped at (or
    None when they trained to the end)."""
    done = completed(trials)
    rows = sorted({_value(r.get(f"config.{f1}")) for r in done}, key=str)
    cols = sorted({_value(r.get(f"config.{f2}")) for r in done}, key=str)
    grid = np.full((len(rows), len(cols)), np.nan)
    stopped: dict[tuple[int, int], int] = {}
    for i, a in enumerate(rows):
        for j, b in enumerate(cols):
            cell = [r for r in done if _value(r.get(f"config.{f1}")) == a and _value(r.get(f"config.{f2}")) == b]
            if cell:
                grid[i, j] = float(np.mean([_scale(metric, r["metric_best"]) for r in cell]))
            halted = [int(r.get("stopped_at_epoch") or r.get("epochs") or 0) for r in cell
                      if r.get("status") == "stopped_early"]
            if halted:
                stopped[(i, j)] = max(halted)
    return rows, cols, grid, stopped


def heatmap(trials: Sequence[Mapping[str, Any]], f1: str, f2: str, metric: str, facet: str | None = None) -> Figure:
    """Mean metric over seeds for each (f1, f2) pair; one panel per value of ``facet`` for three factors."""
    facets = sorted({_value(r.get(f"config.{facet}")) for r in completed(trials)}, key=str) if facet else [None]
    fig, axes = plt.subplots(1, len(facets), figsize=(5.5 * len(facets), 4.8), squeeze=False)
    for ax, fv in zip(axes[0], facets, strict=True):
        subset = [r for r in trials if facet is None or _value(r.get(f"config.{facet}")) == fv]
        rows, cols, grid, stopped = _pivot(subset, f1, f2, metric)
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(cols)), [str(c) for c in cols], rotation=30)
        ax.set_yticks(range(len(rows)), [str(r) for r in rows])
        ax.set_xlabel(f2)
        ax.set_ylabel(f1)
        for i in range(len(rows)):
            for j in range(len(cols)):
                if not np.isnan(grid[i, j]):
                    mark = f"\n†{stopped[(i, j)]}" if (i, j) in stopped else ""
                    ax.text(j, i, f"{grid[i, j]:.1f}{mark}", ha="center", va="center", color="white", fontsize=8)
        ax.set_title(f"{facet} = {fv}" if facet else f"{f1} × {f2}")
        fig.colorbar(im, ax=ax, label=f"mean best {_label(metric)}")
    note = "; †k: stopped early at epoch k (value there)" if any(
        r.get("status") == "stopped_early" for r in completed(trials)) else ""
    fig.suptitle(f"Mean best {metric.replace('_', ' ')} over seeds" + (f", faceted by {facet}" if facet else "")
                 + note)
    fig.tight_layout()
    return fig


def optimizer_lr(trials: Sequence[Mapping[str, Any]], metric: str) -> Figure:
    """Metric against initial learning rate (log axis), one line per optimizer, mean ± std over seeds."""
    done = completed(trials)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for opt in sorted({r["config.optim.name"] for r in done}):
        lrs = sorted({float(r["config.optim.lr"]) for r in done if r["config.optim.name"] == opt})
        means, stds = [], []
        for lr in lrs:
            vals = [_scale(metric, r["metric_best"]) for r in done
                    if r["config.optim.name"] == opt and float(r["config.optim.lr"]) == lr]
            means.append(np.mean(vals))
            stds.append(np.std(vals))
        ax.errorbar(lrs, means, yerr=stds, marker="o", capsize=3, label=opt)
    ax.set_xscale("log")
    ax.set_xlabel("initial learning rate (log scale)")
    ax.set_ylabel(f"best {_label(metric)}")
    ax.set_title("Optimizer × initial learning rate")
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="optimizer")
    fig.tight_layout()
    return fig


def confusion(trial: Mapping[str, Any]) -> Figure:
    """The best trial's test confusion matrix (row-normalised) and per-class accuracy."""
    cm = np.asarray(json.loads(trial["confusion_matrix"]), dtype=float)
    per_class = np.asarray(json.loads(trial["per_class_accuracy"]), dtype=float) * 100
    classes = json.loads(trial["classes"]) if trial.get("classes") else [str(i) for i in range(len(cm))]
    k = len(classes)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(12, 0.5 * k + 6), max(5, 0.3 * k + 3)))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1) * 100
    im = a1.imshow(norm, cmap="Blues", vmin=0, vmax=100)
    ticks = range(k)
    a1.set_xticks(ticks, classes if k <= 20 else [""] * k, rotation=60, fontsize=7)
    a1.set_yticks(ticks, classes if k <= 20 else [""] * k, fontsize=7)
    a1.set_xlabel("predicted class")
    a1.set_ylabel("true class")
    a1.set_title(f"Confusion matrix, test set (% of true class)\narm {trial['arm']}, seed {trial['seed']}")
    fig.colorbar(im, ax=a1, label="% of the true class")
    a2.barh(range(k), per_class, color="tab:blue")
    a2.set_yticks(ticks, classes if k <= 40 else [""] * k, fontsize=7)
    a2.invert_yaxis()
    a2.set_xlim(0, 100)
    a2.set_xlabel("test accuracy (%)")
    a2.set_title("Per-class accuracy")
    a2.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def optimisation_history(rows: Sequence[Any], metric: str, mode: str) -> Figure:
    """Bayesian search: each proposal's mean over seeds in the order it was asked, marked when it was stopped
    early (value at the epoch reached) or had no value, and the running best (ranking rule's top tier)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = np.arange(len(rows))
    full = [(x, _scale(metric, r.mean)) for x, r in zip(xs, rows, strict=True) if r.mean is not None
            and r.stopped_at is None]
    halted = [(x, _scale(metric, r.mean)) for x, r in zip(xs, rows, strict=True) if r.stopped_at is not None
              and r.mean is not None]
    if full:
        ax.scatter(*zip(*full, strict=True), color="tab:blue", zorder=3, label="proposal (mean over seeds)")
    if halted:
        ax.scatter(*zip(*halted, strict=True), color="0.6", marker="x", zorder=3,
                   label="stopped early (value at the epoch reached)")
    running, best = [], None
    for r in rows:
        if r.mean is not None and r.stopped_at is None:
            best = r.mean if best is None or (r.mean > best if mode == "max" else r.mean < best) else best
        running.append(_scale(metric, best) if best is not None else np.nan)
    ax.step(xs, running, where="post", color="tab:red", lw=2, label="best so far")
    ax.set_xlabel("proposal (order asked)")
    ax.set_ylabel(f"best {_label(metric)}, mean over seeds")
    ax.set_title("Optimisation history")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def param_importance(importances: Mapping[str, float]) -> Figure:
    """Bayesian search: each parameter's importance (Optuna's fANOVA, share of the value's variance)."""
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * max(len(items), 1)))
    ax.barh([k for k, _ in items], [100 * v for _, v in items], color="tab:blue")
    for y, (_, v) in enumerate(items):
        ax.annotate(f"{100 * v:.0f}%", (100 * v, y), xytext=(4, 0), textcoords="offset points", va="center",
                    fontsize=8)
    ax.set_xlabel("importance (% of the variance of the mean value explained, fANOVA)")
    ax.set_xlim(0, 110)
    ax.set_title("Parameter importance")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def pareto(rows: Sequence[Any], metric: str, mode: str) -> Figure:
    """Each arm's mean against its cost: trial-hours (left) and trainable parameters (right), the Pareto
    front (no arm both cheaper and better) joined and ringed. ``rows`` are aggregate.ArmRow with costs."""
    from rayclf.aggregate import pareto_front

    axes_spec = [("trial_hours", "trial-hours per arm (all seeds)"), ("params", "trainable parameters")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = arm_colors([r.arm for r in rows])
    for ax, (key, label) in zip(axes, axes_spec, strict=True):
        shown = [r for r in rows if r.mean is not None and getattr(r, key) is not None]
        points = [(float(getattr(r, key)), float(r.mean)) for r in shown]
        front = pareto_front(points, mode)
        for r, (x, y) in zip(shown, points, strict=True):
            ax.scatter([x], [_scale(metric, y)], color=colors[r.arm], s=50, edgecolors="k", zorder=3, label=r.arm)
        if front:
            fx, fy = [points[i][0] for i in front], [_scale(metric, points[i][1]) for i in front]
            ax.step(fx, fy, where="post", color="k", lw=1, ls="--", zorder=2)
            ax.scatter(fx, fy, s=180, facecolors="none", edgecolors="tab:red", lw=1.8, zorder=4,
                       label="Pareto front")
            for i in front:
                ax.annotate(shown[i].arm, (points[i][0], _scale(metric, points[i][1])), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
        if key == "params" and points and max(p[0] for p in points) / max(min(p[0] for p in points), 1) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"mean {_label(metric)} over seeds")
        ax.set_title(f"{metric.replace('_', ' ')} vs {label.split(' (')[0]}")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if len(labels) <= 16:
        fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    return fig
