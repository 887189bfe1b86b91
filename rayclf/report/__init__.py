"""``rayclf report``: a sweep directory → tables (Markdown, CSV, LaTeX), figures (PNG, SVG) and one
self-contained ``index.html``. Reads only the sweep directory (local, ``s3://`` or ``gs://``), so it also
works while the sweep is still running."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayclf.aggregate import (
    ArmRow,
    cost_text,
    counts_text,
    delta_text,
    effects_legend,
    number,
    p_text,
    stage_winners,
    status_counts,
)
from rayclf.config import UserError
from rayclf.report import figures as F
from rayclf.results import TRIALS, exists, join
from rayclf.sweep.decisions import WINNER, read_decisions
from rayclf.sweepdir import read_sweep

STATUS_MARK = {"stopped_early": "†", "diverged": "‡", "failed": "✗", "eliminated": "⊘"}


@dataclass
class Report:
    out: Path
    rows: list[ArmRow]
    figures: list[str] = field(default_factory=list)


def _pct(v: float | None, metric: str = "accuracy", signed: bool = False) -> str:
    return number(v, metric.endswith("accuracy"), signed)


def _marks(r: ArmRow) -> str:
    return "".join(f"{STATUS_MARK[s]}{n}" for s, n in sorted(r.statuses.items()) if s in STATUS_MARK)


def target_half_width(metric: str, target_ci: float | None) -> tuple[float, str]:
    """The planning column's target: (half-width in metric units, as the table prints it). ``target_ci`` is in
    the table's units: percentage points for accuracies (default 1), metric units otherwise (default 0.01)."""
    pct = metric.endswith("accuracy")
    w = target_ci if target_ci is not None else (1.0 if pct else 0.01)
    return (w / 100 if pct else w), (f"{w:g} pp" if pct else f"{w:g}")


def table_cells(rows: Sequence[ArmRow], metric: str, target: str = "1 pp") -> tuple[list[str], list[list[str]]]:
    pct = metric.endswith("accuracy")
    unit = " (%)" if pct else ""
    head = ["arm", "n", f"{metric}{unit} mean ± std", "95% CI ±", f"Δ vs baseline{unit}", "Δ 95% CI ±", "paired p",
            "p (Holm)", f"seeds for Δ ±{target} (planning)", "test acc (%) mean ± std", "not completed", "rank",
            "early stop / racing", "params", "s/epoch", "trial-h"]
    body = []
    for r in rows:
        body.append([r.arm, str(r.n), f"{_pct(r.mean, metric)} ± {_pct(r.std, metric)}", _pct(r.ci95, metric),
                     delta_text(r, pct), _pct(r.delta_ci95, metric), p_text(r), p_text(r, adjusted=True),
                     "–" if r.seeds_needed is None else str(r.seeds_needed),
                     f"{_pct(r.test_mean)} ± {_pct(r.test_std)}", _marks(r),
                     "–" if r.rank is None else str(r.rank), r.note or "–", *cost_text(r)])
    return head, body


RANK_NOTE = ("Rank: arms that trained to the last epoch first, then arms racing eliminated, then arms stopped "
             "early (later epoch first); within each, by mean. A stopped arm's value is taken at the epoch it "
             "was stopped.")


def planning_note(target: str) -> str:
    return (f"Seeds for Δ ±{target}: a planning figure, not post-hoc power: the number of seeds (paired with the "
            f"baseline's) at which the 95% CI of Δ would be ±{target}, if the paired differences kept the spread "
            "seen here (Student t); – without a spread (under 2 pairs, or no variance). Set the width with "
            "rayclf report --target-ci W.")


def legend(rows: Sequence[ArmRow], target: str) -> str:
    """The note under every results table: marks, effects and their tests, the planning column, the rank."""
    return ("Best arm in bold. Not completed: † stopped early, ‡ diverged, ✗ failed, ⊘ eliminated by racing "
            "(never started) (counts). 95% CI: Student t over seeds. " + effects_legend(rows) + " "
            + planning_note(target) + " " + RANK_NOTE)


def to_markdown(rows: Sequence[ArmRow], metric: str, target: str = "1 pp") -> str:
    head, body = table_cells(rows, metric, target)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r, cells in zip(rows, body, strict=True):
        if r.best:
            cells = [f"**{c}**" if i == 2 else c for i, c in enumerate(cells)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(legend(rows, target))
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[ArmRow], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "stage", "n", "mean", "std", "ci95", "delta", "delta_ci95", "p_value", "p_holm", "p_note",
                    "pairs", "seeds_needed", "test_mean", "test_std", "statuses", "best", "rank", "stopped_at",
                    "eliminated", "params", "epoch_seconds", "trial_hours"])
        for r in rows:
            w.writerow([r.arm, r.stage, r.n, r.mean, r.std, r.ci95, r.delta, r.delta_ci95, r.p_value, r.p_holm,
                        r.effect.note if r.effect else "", r.pairs, r.seeds_needed, r.test_mean, r.test_std,
                        json.dumps(r.statuses), r.best, r.rank, r.stopped_at, r.eliminated, r.params,
                        r.epoch_seconds, r.trial_hours])


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("†", r"$\dagger$"), ("‡", r"$\ddagger$"), ("✗", r"$\times$"),
                 ("⊘", r"$\oslash$"), ("<", r"$<$")):
        s = s.replace(a, b)
    return s


def to_latex(rows: Sequence[ArmRow], metric: str, caption: str, target: str = "1 pp") -> str:
    head, body = table_cells(rows, metric, target)
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}", r"\toprule",
             " & ".join(_tex(h) for h in head) + r" \\", r"\midrule"]
    for r, cells in zip(rows, body, strict=True):
        cells = [_tex(c) for c in cells]
        if r.best:
            cells[2] = r"\textbf{" + cells[2] + "}"
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + _tex(caption) + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def stage_markdown(rows: Sequence[ArmRow], metric: str, mode: str, logged: dict[int, str] | None = None) -> str:
    """The staged study as the seed-000 report tabulates it: every setting tried per stage, the chosen one
    (★, carried into the next stage) and the running best after each stage. ``logged`` (stage → arm id, from the
    decision log) names the winners the sweep itself carried; a winner that is an earlier stage's config (same
    arm id, shown once under its first label) is marked in its own stage too."""
    winners = stage_winners(rows, mode)
    lines = ["| stage | arm | n | mean ± std | chosen | running best |", "|---|---|---|---|---|---|"]
    best: ArmRow | None = None
    for stage in sorted({r.stage for r in rows if r.stage is not None} | set(logged or {})):
        if logged and stage in logged:
            won = next((r for r in rows if r.arm_id == logged[stage]), None)
        else:
            won = next((r for r in rows if r.stage == stage and r.arm == winners.get(stage)), None)
        if won is not None and won.mean is not None and (
                best is None or (won.mean > best.mean if mode == "max" else won.mean < best.mean)):  # type: ignore[operator]
            best = won
        for r in rows:
            if r.stage != stage and not (r is won and won.stage != stage):
                continue
            chosen = "★" if r is won else ""
            running = f"{_pct(best.mean, metric)} ({best.arm})" if r is won and best is not None else ""
            lines.append(f"| {stage + 1} | {r.arm} | {r.n} | {_pct(r.mean, metric)} ± {_pct(r.std, metric)} | "
                         f"{chosen} | {running} |")
    return "\n".join(lines) + "\n"


def stopped_markdown(trials: Sequence[dict[str, Any]], metric: str) -> str | None:
    """Early-stopped trials and where each stopped (epoch reached of the configured epochs)."""
    stopped = [t for t in trials if t.get("status") == "stopped_early"]
    if not stopped:
        return None
    lines = ["| arm | seed | stopped at epoch | best metric so far | reason |", "|---|---|---|---|---|"]
    for t in stopped:
        planned = t.get("config.train.epochs")
        lines.append(f"| {t['arm']} | {t['seed']} | {t['epochs']}{f' of {planned}' if planned else ''} | "
                     f"{_pct(t.get('metric_best'), metric)} | {t.get('reason') or ''} |")
    return "\n".join(lines) + "\n"


def alias_notes(spec: dict[str, Any]) -> list[str]:
    """``lr=0.05 is baseline's config (one arm)`` for each arm the sweep file lists twice (grid, random, ablation:
    arms known before the sweep runs); nothing when the file cannot be read back."""
    from rayclf.sweep.spec import alias_note, parse_sweep
    from rayclf.sweep.strategies import infer_kind, search_class

    if not spec or not search_class(infer_kind(spec)).fixed_arms:
        return []
    try:
        arms = parse_sweep(spec).arms()
    except Exception:  # a file of another release: the tables stand without the note
        return []
    return [f"{alias_note(a)} (one arm, shown once)" for a in arms if a.aliases]


def removed_markdown(rows: Sequence[dict[str, Any]], metric: str) -> str | None:
    """Stored trials the sweep file no longer plans (an edit removed their arm or seed), listed apart."""
    if not rows:
        return None
    lines = ["| arm | seed | status | best metric |", "|---|---|---|---|"]
    lines += [f"| {r['arm']} | {r['seed']} | {r.get('status')} | {_pct(r.get('metric_best'), metric)} |" for r in rows]
    return "\n".join(lines) + "\n"


def search_kind(spec: dict[str, Any], trials: Sequence[dict[str, Any]]) -> str:
    """The search kind of the sweep file, else stages when rows carry a stage, else grid (whose figures say
    they pool): ``rayclf.sweep.strategies.infer_kind``."""
    from rayclf.sweep.strategies import infer_kind

    return infer_kind(spec, trials)


def search_space(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The parameter space a stored file searched (the proposal figures), as its search strategy reads it."""
    from rayclf.sweep.strategies import infer_kind, search_class

    return search_class(infer_kind(spec)).search_space(spec.get("search") or {})


Sink = Path | dict[str, Any]  # a figure folder (report), or a dict that keeps the Figure objects (notebooks)


def _save(fig, name: str, folder: Sink) -> str:
    """PNG + SVG on disk; returns the PNG as a data URI for the self-contained page. A dict sink keeps the
    figure itself instead (``rayclf.open_sweep(...).figure``), drawn by the very code the report uses."""
    import matplotlib.pyplot as plt

    if isinstance(folder, dict):
        folder[name] = fig
        return ""
    fig.savefig(folder / f"{name}.png", dpi=110)
    fig.savefig(folder / f"{name}.svg")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def make_figures(trials: list[dict[str, Any]], epochs: list[dict[str, Any]], metric: str, folder: Sink,
                 rows: Sequence[ArmRow] = (), kind: str = "grid", mode: str = "max",
                 bayes_params: dict[str, Any] | None = None) -> list[tuple[str, str, str]]:
    """(name, title, data URI) of every figure this sweep and its search kind support (the facts its search
    strategy states: effects against a baseline, proposals, stages, arms that form a grid)."""
    from rayclf.sweep.strategies import search_class

    search = search_class(kind)
    arms = list(dict.fromkeys(r["arm"] for r in trials))
    colors = F.arm_colors(arms)
    stopped = [t for t in trials if t.get("status") == "stopped_early" and t.get("epochs")]
    out = [("learning_curves", "Learning curves" + (" (× where a trial stopped early)" if stopped else ""),
            _save(F.learning_curves(epochs, colors, stopped), "learning_curves", folder))]
    if search.effects_against_baseline and any(r.delta is not None for r in rows):
        out.append(("effects", "Effect of each arm against the baseline (Δ, 95% CI over matched seeds)",
                    _save(F.effect_forest(rows, metric, colors, mode), "effects", folder)))
    if search.proposes:
        out += bayes_figures(trials, rows, metric, folder, mode, bayes_params)
    if search.staged and any(r.stage is not None for r in rows):
        out.append(("stages", "Stage-by-stage progression",
                    _save(F.stage_progression(rows, stage_winners(rows, mode), metric, mode), "stages", folder)))
    factors = F.swept_factors(F.completed(trials))
    if factors and search.factorial:  # an ablation's arms are not a grid: pooling or pivoting them misleads
        out += _grid_figures(trials, factors, metric, folder, pooled=not search.staged)
    if "optim.name" in factors and "optim.lr" in factors and search.factorial:
        out.append(("optimizer_lr", "Optimizer × learning rate",
                    _save(F.optimizer_lr(trials, metric), "optimizer_lr", folder)))
    if sum(r.mean is not None and r.trial_hours is not None for r in rows) >= 2:
        out.append(("pareto", "Cost beside accuracy: each arm's mean against trial-hours and parameters "
                              "(ringed: the Pareto front, no arm both cheaper and better)",
                    _save(F.pareto(rows, metric, mode), "pareto", folder)))
    done = [r for r in F.completed(trials) if r.get("confusion_matrix") not in (None, "[]")]
    if done:
        best = max(done, key=lambda r: r["test_accuracy"] or 0.0)
        out.append(("confusion", "Best trial: confusion matrix and per-class accuracy",
                    _save(F.confusion(best), "confusion", folder)))
    return out


def importances(trials: Sequence[dict[str, Any]], rows: Sequence[ArmRow], mode: str,
                params: dict[str, Any]) -> dict[str, float]:
    """Optuna's parameter importances over the proposals that trained to the end (empty when too few)."""
    import optuna
    from optuna.trial import create_trial

    from rayclf.sweep.bayes import distributions, encode

    dists = distributions(params)
    overrides = {t["arm"]: t.get("overrides") for t in trials}
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for r in rows:
        o = overrides.get(r.arm)
        o = json.loads(o) if isinstance(o, str) else o
        if r.mean is None or r.stopped_at is not None or not o or set(dists) - set(o):
            continue
        study.add_trial(create_trial(params=encode(o, dists), distributions=dists, value=r.mean))
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (ValueError, RuntimeError):  # fewer than two finished proposals, or no variation
        return {}


def bayes_figures(trials: list[dict[str, Any]], rows: Sequence[ArmRow], metric: str, folder: Sink, mode: str,
                  params: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    """The optimisation history and (when Optuna can compute it) the parameter importance."""
    out = [("history", "Optimisation history (each proposal's mean over seeds, best so far)",
            _save(F.optimisation_history(list(rows), metric, mode), "history", folder))]
    imp = importances(trials, rows, mode, params) if params else {}
    if imp:
        out.append(("importance", "Parameter importance (Optuna fANOVA over the proposals' means)",
                    _save(F.param_importance(imp), "importance", folder)))
    return out


def _grid_figures(trials: list[dict[str, Any]], factors: list[str], metric: str, folder: Sink,
                  pooled: bool = True) -> list[tuple[str, str, str]]:
    """Marginal (pooled) factor plots (``pooled``) and two-factor heatmaps of a grid, random or staged search."""
    out = []
    if pooled:
        out.append(("factor_effects", "Effect of each swept factor (pooled over the other factors' values)",
                    _save(F.factor_effects(trials, factors, metric), "factor_effects", folder)))
    grid_factors = [f for f in factors if f not in ("optim.name", "optim.lr")] or factors
    if len(factors) == 2 or len(grid_factors) == 2:
        f1, f2 = (grid_factors if len(grid_factors) == 2 else factors)[:2]
        out.append(("heatmap", f"{f1} × {f2}", _save(F.heatmap(trials, f1, f2, metric), "heatmap", folder)))
    elif len(factors) == 3:
        out.append(("heatmap_faceted", f"{factors[0]} × {factors[1]} by {factors[2]}",
                    _save(F.heatmap(trials, factors[0], factors[1], metric, facet=factors[2]), "heatmap_faceted",
                          folder)))
    return out


PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}}
table{{border-collapse:collapse;font-size:14px}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}tr.best td{{font-weight:bold;background:#eef6ee}}
img{{max-width:100%;border:1px solid #eee;margin:8px 0}}.note{{color:#555;font-size:13px}}</style></head>
<body><h1>{title}</h1><p class="note">{subtitle}</p>{body}
<script>window.addEventListener("load",()=>{{const bad=[...document.images].filter(i=>!(i.complete&&i.naturalWidth>0));
document.body.dataset.brokenImages=String(bad.length);document.body.dataset.images=String(document.images.length);}});
</script></body></html>"""


def md_table_html(md: str) -> str:
    """A pipe table (as stage_markdown / stopped_markdown write it) as an HTML table."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|") and not ln.startswith("|---")]
    cells = [[html.escape(c.strip()) for c in ln.strip("|").split("|")] for ln in lines]
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in cells[0]) + "</tr>"
    body = "".join(("<tr class='best'>" if "★" in row else "<tr>") + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                   for row in cells[1:])
    return f"<table>{head}{body}</table>"


def to_html(title: str, subtitle: str, rows: Sequence[ArmRow], metric: str, figs: list[tuple[str, str, str]],
            stage_md: str | None, stopped_md: str | None = None, target: str = "1 pp") -> str:
    head, body = table_cells(rows, metric, target)
    t = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r, cells in zip(rows, body, strict=True):
        t.append(f"<tr class='{'best' if r.best else ''}'>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                 + "</tr>")
    t.append(f"</table><p class='note'>{html.escape(legend(rows, target))}</p>")
    parts = ["<h2>Results per arm</h2>", "".join(t)]
    if stage_md:
        parts.append("<h2>Stages</h2>" + md_table_html(stage_md) + "<p class='note'>★ the stage's winner (best "
                     "mean over seeds), carried into the next stage; running best: the best winner so far.</p>")
    if stopped_md:
        parts.append("<h2>Trials stopped early</h2>" + md_table_html(stopped_md))
    for name, fig_title, uri in figs:
        parts.append(f"<h2 id='{name}'>{html.escape(fig_title)}</h2><img alt='{html.escape(fig_title)}' src='{uri}'>")
    return PAGE.format(title=html.escape(title), subtitle=html.escape(subtitle), body="\n".join(parts))


def reported_section(spec: dict[str, Any], trials: list[dict[str, Any]], out: Path, figdir: Path,
                     figs: list[tuple[str, str, str]]) -> str | None:
    """The sweep file's ``reported:`` numbers beside the reproduced ones: reported.md and a figure (appended to
    ``figs``); None when the file states none."""
    from rayclf.report import reported as R

    if not spec.get("reported"):
        return None
    rows = R.compare(spec["reported"], trials)
    md = R.to_markdown(rows)
    (out / "reported.md").write_text(md)
    figs.insert(0, ("reported", "Reported vs reproduced (× reported; ● mean ± 95% CI over seeds)",
                    _save(R.figure(rows), "reported", figdir)))
    return md


def build_report(sweep_dir: str, out: Path | None = None, target_ci: float | None = None) -> Report:
    """Read a sweep directory and write every table and figure into ``out`` (default SWEEP_DIR/report);
    ``target_ci``: the planning column's half-width of Δ's 95% CI, in the table's units (``target_half_width``)."""
    if not exists(join(sweep_dir, TRIALS)):
        raise UserError(f"{sweep_dir} has no {TRIALS} yet: is it a sweep directory (rayclf sweep --out)?")
    data = read_sweep(sweep_dir)
    trials, epochs, spec, metric, mode = data.trials, data.epochs, data.spec, data.metric, data.mode
    out = Path(out) if out else Path(sweep_dir if "://" not in sweep_dir else ".") / "report"
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    half_width, target = target_half_width(metric, target_ci)
    rows = data.arm_rows(half_width)
    name = data.name
    aliases = alias_notes(spec)
    notes = [*aliases, *([data.reused] if data.reused else [])]
    (out / "results.md").write_text(to_markdown(rows, metric, target) + "".join(f"\n{a}\n" for a in notes))
    to_csv(rows, out / "results.csv")
    (out / "results.tex").write_text(to_latex(rows, metric, f"{name}: best {metric} per arm, mean ± std over seeds.",
                                              target))
    logged = {d.stage: d.arm_id for d in read_decisions(sweep_dir) if d.kind == WINNER and d.stage is not None}
    stage_md = stage_markdown(rows, metric, mode, logged) if any(r.stage is not None for r in rows) else None
    if stage_md:
        (out / "stages.md").write_text(stage_md)
    stopped_md = stopped_markdown(trials, metric)
    if stopped_md:
        (out / "stopped.md").write_text(stopped_md)
    removed_md = removed_markdown(data.removed, metric)
    if removed_md:  # kept in the store, left out of every table and figure above
        (out / "removed.md").write_text(removed_md)
    figs = make_figures(trials, epochs, metric, figdir, rows, search_kind(spec, trials), mode, search_space(spec))
    reported_md = reported_section(spec, trials, out, figdir, figs)
    which = "final-epoch" if spec.get("rank_by") == "final" else "best"
    subtitle = (f"{len(trials)} trials ({counts_text(status_counts(trials))}); metric: {which} "
                f"{metric} per trial ({mode}); source: {sweep_dir}" + "".join(f"; {a}" for a in notes))
    page = to_html(f"rayclf report: {name}", subtitle, rows, metric, figs, stage_md, stopped_md, target)
    if reported_md:
        page = page.replace("<h2>Results per arm</h2>", "<h2>Reported vs reproduced</h2>" + md_table_html(reported_md)
                            + "<h2>Results per arm</h2>", 1)
    if removed_md:
        page = page.replace("</body>", "<h2>Stored trials no longer in the sweep file</h2><p>An edit removed their "
                            "arm or seed: kept in the store, left out of every table and figure above.</p>"
                            + md_table_html(removed_md) + "</body>", 1)
    (out / "index.html").write_text(page)
    return Report(out, rows, [n for n, _, _ in figs])
