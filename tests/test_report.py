"""``rayclf report`` on a generated sweep directory with known values."""

from __future__ import annotations

import csv
import itertools
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy import stats

from rayclf.aggregate import arm_table, paired_comparison
from rayclf.cli import main
from rayclf.results import ResultsStore, read_rows, write_text
from rayclf.sweep.rows import trial_row

from .conftest import tiny

LRS, OPTS, DROPS = [0.001, 0.01, 0.1], ["adam", "sgd"], [0.0, 0.5]


def value(lr: float, opt: str, drop: float, seed: int) -> float:
    """A known, seed-dependent metric for every trial."""
    wobble = 0.002 * ((seed + LRS.index(lr) + OPTS.index(opt)) % 3)  # arm-specific seed noise
    return 0.5 + 0.1 * math.log10(lr * 1000) + (0.05 if opt == "adam" else 0.0) - 0.03 * drop + 0.01 * seed + wobble


# every aggregation / report test runs with an accuracy (higher is better) and a loss (lower is better)
METRICS = [pytest.param(("val_accuracy", "max"), id="accuracy"), pytest.param(("val_loss", "min"), id="loss")]


def as_metric(metric: str, v: float) -> float:
    """An accuracy-like value ``v`` as the sweep's metric: itself, or a loss that falls as ``v`` rises."""
    return v if metric.endswith("accuracy") else 1.5 - v


def make_sweep_dir(root: Path, stages: bool = False, metric: str = "val_accuracy", mode: str = "max") -> Path:
    store = ResultsStore(str(root))
    classes = [f"c{i}" for i in range(4)]
    for (lr, opt, drop), seed in itertools.product(itertools.product(LRS, OPTS, DROPS), range(3)):
        arm = "baseline" if (lr, opt, drop) == (0.01, "adam", 0.0) else f"lr={lr:g},opt={opt},dropout={drop:g}"
        cfg = tiny(optim={"name": opt, "lr": lr}, model={"dropout": drop}, seed=seed)
        v = value(lr, opt, drop, seed)
        epochs = [{"epoch": e, "train_loss": 2.0 / e, "train_accuracy": v * e / 3, "val_loss": 1.5 - v * e / 3,
                   "val_accuracy": v * e / 3, "lr": lr, "images_per_sec": 1000.0, "epoch_seconds": 1.0}
                  for e in (1, 2, 3)]
        cm = [[10, 0, 0, 0], [1, 9, 0, 0], [0, 2, 8, 0], [0, 0, 3, 7]]
        summary = {"status": "completed", "test_accuracy": v - 0.02, "params": 1000, "confusion_matrix": cm,
                   "per_class_accuracy": [1.0, 0.9, 0.8, 0.7], "classes": classes, "seconds": 3.0}
        info = {"trial_id": f"{arm}-{seed}", "sweep": "known", "arm": arm, "seed": seed,
                "stage": (0 if lr < 0.1 else 1) if stages else None, "config": cfg, "overrides": {}}
        store.add(trial_row(info, "completed", "", summary, epochs, metric, mode),
                  [{**e, "arm": arm, "seed": seed} for e in epochs])
    write_text(str(root / "sweep.yaml"), f"name: known\nmetric: {metric}\nmode: {mode}\n")
    return root


def test_paired_test_returns_the_known_p_value():
    a = {0: 0.80, 1: 0.82, 2: 0.84}
    b = {0: 0.78, 1: 0.79, 2: 0.83}  # differences 0.02, 0.03, 0.01: t = 2*sqrt(3), df = 2
    c = paired_comparison(a, b)
    assert c.n_pairs == 3 and c.p == pytest.approx(0.07418, abs=1e-4) and c.delta == pytest.approx(0.02)
    one = paired_comparison({0: 1.0}, {0: 0.5})
    assert (one.p, one.n_pairs, one.delta, one.ci95) == (None, 1, 0.5, None)


@pytest.mark.parametrize("metric_mode", METRICS)
def test_tables_equal_independent_aggregates(tmp_path, metric_mode):
    metric, mode = metric_mode
    src = make_sweep_dir(tmp_path / "sweep", metric=metric, mode=mode)
    res = CliRunner().invoke(main, ["report", str(src), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    rep = tmp_path / "rep"
    rows = {r["arm"]: r for r in __import__("csv").DictReader((rep / "results.csv").open())}
    base = np.array([as_metric(metric, value(0.01, "adam", 0.0, s)) for s in range(3)])
    raw = {}
    for lr, opt, drop in itertools.product(LRS, OPTS, DROPS):
        arm = "baseline" if (lr, opt, drop) == (0.01, "adam", 0.0) else f"lr={lr:g},opt={opt},dropout={drop:g}"
        vals = np.array([as_metric(metric, value(lr, opt, drop, s)) for s in range(3)])
        r = rows[arm]
        assert float(r["mean"]) == pytest.approx(vals.mean())
        assert float(r["std"]) == pytest.approx(vals.std(ddof=1))
        assert float(r["ci95"]) == pytest.approx(stats.t.ppf(0.975, 2) * vals.std(ddof=1) / math.sqrt(3))
        assert float(r["test_mean"]) == pytest.approx(np.mean([value(lr, opt, drop, s) for s in range(3)]) - 0.02)
        if arm != "baseline":
            assert float(r["delta"]) == pytest.approx((vals - base).mean())
            expected_p = stats.ttest_rel(vals, base).pvalue if np.ptp(vals - base) > 1e-12 else None
            if expected_p is None:
                assert r["p_value"] == "" and r["p_note"] == "no variance"
            else:
                assert float(r["p_value"]) == pytest.approx(expected_p)
                raw[arm] = expected_p
    # Holm over the family of arms tested against the baseline, computed here independently
    m, running = len(raw), 0.0
    for k, (arm, p) in enumerate(sorted(raw.items(), key=lambda kv: kv[1])):
        running = max(running, min(1.0, (m - k) * p))
        assert float(rows[arm]["p_holm"]) == pytest.approx(running)
    best = (max if mode == "max" else min)(rows.values(), key=lambda r: float(r["mean"]))
    assert best["arm"] == "lr=0.1,opt=adam,dropout=0" and best["best"] == "True"
    md = (rep / "results.md").read_text()
    best_vals = [as_metric(metric, value(0.1, "adam", 0.0, s)) for s in range(3)]
    shown = f"{100 * np.mean(best_vals):.2f}" if metric.endswith("accuracy") else f"{np.mean(best_vals):.4f}"
    assert f"**{shown}" in md
    assert f"Holm-adjusted over the {m} arms tested against the baseline" in md and "no variance" in md
    tex = (rep / "results.tex").read_text()
    assert r"\textbf{" in tex and r"\begin{tabular}" in tex
    assert set(json.loads(json.dumps(sorted(p.name for p in (rep / "figures").iterdir())))) >= {
        "learning_curves.png", "learning_curves.svg", "factor_effects.png", "heatmap_faceted.png",
        "optimizer_lr.png", "confusion.png"}


@pytest.mark.parametrize("metric_mode", METRICS)
def test_two_factor_heatmap_and_stage_table(tmp_path, metric_mode):
    metric, mode = metric_mode  # no sweep.yaml: the report takes the mode from the stored metric's name
    store = ResultsStore(str(tmp_path / "s"))
    for blocks, kernel, seed in itertools.product([1, 3, 5], [2, 3, 4, 5], range(2)):
        cfg = tiny(model={"name": "cnn", "widths": [8] * blocks, "kernel_size": kernel}, seed=seed)
        v = 0.6 + 0.01 * kernel - 0.02 * blocks
        ep = [{"epoch": 1, "val_accuracy": v, "train_accuracy": v, "val_loss": 1.5 - v, "train_loss": 1.0}]
        info = {"trial_id": f"{blocks}-{kernel}-{seed}", "sweep": "g", "arm": f"b{blocks}k{kernel}", "seed": seed,
                "stage": 0 if blocks == 1 else 1, "config": cfg}
        store.add(trial_row(info, "completed", "", {"test_accuracy": v}, ep, metric, mode), ep)
    from rayclf.report import build_report

    rep = build_report(str(tmp_path / "s"), tmp_path / "r")
    assert "heatmap" in rep.figures
    stages_md = (tmp_path / "r" / "stages.md").read_text()
    assert "| 1 | b1k5 |" in stages_md and "★" in stages_md.split("| 1 | b1k5 |")[1].split("\n")[0]


@pytest.mark.parametrize("metric_mode", METRICS)
def test_status_marks_and_running_sweep(tmp_path, metric_mode):
    metric, mode = metric_mode
    store = ResultsStore(str(tmp_path / "s"))
    for i, status in enumerate(["completed", "stopped_early", "diverged", "failed"]):
        cfg = tiny(seed=i)
        ep = [{"epoch": 1, "val_accuracy": 0.5, "train_accuracy": 0.5, "val_loss": 1.0, "train_loss": 1.0}]
        info = {"trial_id": str(i), "sweep": "m", "arm": "baseline", "seed": i, "config": cfg}
        store.add(trial_row(info, status, "why", {"test_accuracy": 0.5} if status == "completed" else None, ep,
                            metric, mode), ep)
    rows = arm_table(store.trials, mode)
    assert rows[0].n == 1 and rows[0].statuses == {"completed": 1, "stopped_early": 1, "diverged": 1, "failed": 1}
    res = CliRunner().invoke(main, ["report", str(tmp_path / "s"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "†1" in (tmp_path / "r" / "results.md").read_text() and "✗1" in (tmp_path / "r" / "results.md").read_text()
    res = CliRunner().invoke(main, ["report", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no trials.parquet" in res.output


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=5000"]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (.ci/run installs it)")
def test_html_renders_in_headless_chromium(tmp_path):
    src = make_sweep_dir(tmp_path / "sweep")
    from rayclf.report import build_report

    rep = build_report(str(src), tmp_path / "rep")
    page = (rep.out / "index.html").resolve().as_uri()
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run([CHROMIUM, *FLAGS, *profile, "--dump-dom", page], capture_output=True, text=True,
                         timeout=120).stdout
    assert 'data-broken-images="0"' in dom, dom[-500:]
    n_images = int(dom.split('data-images="')[1].split('"')[0])
    assert n_images == len(rep.figures) >= 5
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, *profile, "--window-size=1300,2600", f"--screenshot={shot}", page],
                   capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.std() > 20  # not blank: text, tables and plots
    figure_band = img[700:2600]
    assert (figure_band < 200).mean() > 0.02  # plot lines and labels are drawn, not an empty page


def _ablation_dir(root: Path, metric: str = "val_accuracy", mode: str = "max") -> Path:
    """Four arms × 3 seeds; dropout=0.3's paired differences are constant (no variance), lr=0.05's third seed
    stopped early (2 pairs with the baseline's 3 seeds)."""
    store = ResultsStore(str(root))
    shifts = {"baseline": 0.0, "dropout=0.3": -0.10, "lr=0.05": -0.5, "augmentation=crop+flip": -0.14}
    for (arm, shift), seed in itertools.product(shifts.items(), range(3)):
        v = 0.7 + shift + 0.01 * seed + 0.004 * ((seed * len(arm)) % 3)
        status = "stopped_early" if (arm, seed) == ("lr=0.05", 2) else "completed"
        ep = [{"epoch": e, "val_accuracy": v * e / 3, "train_accuracy": v, "val_loss": 1.5 - v * e / 3,
               "train_loss": 1.0} for e in range(1, (2 if status != "completed" else 3) + 1)]
        info = {"trial_id": f"{arm}-{seed}", "sweep": "a", "arm": arm, "arm_id": arm, "seed": seed,
                "config": tiny(seed=seed)}
        store.add(trial_row(info, status, "asha" if status != "completed" else "", {"test_accuracy": v}, ep,
                            metric, mode), [{**e, "arm": arm, "seed": seed} for e in ep])
    write_text(str(root / "sweep.yaml"), f"name: a\nmetric: {metric}\nmode: {mode}\n"
                                         "search:\n  ablation:\n    factors: {}\n")
    return root


@pytest.mark.parametrize("metric_mode", METRICS)
def test_ablation_effect_figure_has_one_row_per_arm_with_the_tables_ci(tmp_path, metric_mode):
    from rayclf.report import build_report
    from rayclf.report import figures as F

    metric, mode = metric_mode
    scale = 100 if metric.endswith("accuracy") else 1
    rep = build_report(str(_ablation_dir(tmp_path / "s", metric, mode)), tmp_path / "r")
    assert "effects" in rep.figures and "factor_effects" not in rep.figures  # no pooled box plots
    assert "stopped at epoch" in (tmp_path / "r" / "stopped.md").read_text()
    assert "| lr=0.05 | 2 | 2 of 2 |" in (tmp_path / "r" / "stopped.md").read_text()
    table = {r["arm"]: r for r in csv.DictReader((tmp_path / "r" / "results.csv").open())}
    fig = F.effect_forest(rep.rows, metric, {}, mode)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert sorted(labels) == sorted(a for a in table if a != "baseline")  # one row per non-baseline arm
    segments = ax.containers[0].lines[2][0].get_segments()  # the CI bars, in row order
    for label, seg in zip(labels, segments, strict=True):
        row = table[label]
        (lo, y0), (hi, y1) = seg
        assert y0 == y1 == labels.index(label)
        assert (lo + hi) / 2 == pytest.approx(scale * float(row["delta"]))
        assert (hi - lo) / 2 == pytest.approx(scale * float(row["delta_ci95"] or 0.0))
    notes = [t.get_text() for t in ax.texts]
    assert any("no variance" in t for t in notes) and not any("p (Holm) = 0," in t for t in notes)
    # Δ, its CI and p all come from the matched seeds: lr=0.05 has seeds 0 and 1, the baseline 0, 1 and 2
    rows = read_rows(str(tmp_path / "s" / "trials.parquet"))
    by = {(r["arm"], int(r["seed"])): r["metric_best"] for r in rows if r["status"] == "completed"}
    d = np.array([by["lr=0.05", s] - by["baseline", s] for s in (0, 1)])
    lr = table["lr=0.05"]
    assert lr["pairs"] == "2" and float(lr["delta"]) == pytest.approx(d.mean())
    assert float(lr["delta_ci95"]) == pytest.approx(stats.t.ppf(0.975, 1) * d.std(ddof=1) / math.sqrt(2))
    assert float(lr["p_value"]) == pytest.approx(stats.ttest_rel(d, np.zeros(2)).pvalue)
    md = (tmp_path / "r" / "results.md").read_text()
    assert f"| {_signed(scale * d.mean(), metric)} (2 pairs) |" in md
    # the CI is the Student-t interval of the matched-seed differences; constant differences give no CI, no p
    d = np.array([by["augmentation=crop+flip", s] - by["baseline", s] for s in range(3)])
    expected = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert float(table["augmentation=crop+flip"]["delta_ci95"]) == pytest.approx(expected)
    drop = table["dropout=0.3"]
    assert (drop["delta_ci95"], drop["p_value"], drop["p_holm"], drop["p_note"]) == ("", "", "", "no variance")
    assert labels[-1] == "dropout=0.3" and labels[0] == "lr=0.05"  # sorted by Δ, best on top under the mode


def _signed(v: float, metric: str) -> str:
    return f"{v:+.2f}" if metric.endswith("accuracy") else f"{v:+.4f}"


@pytest.mark.parametrize("metric_mode", METRICS)
def test_staged_report_has_the_stage_figure_and_running_best(tmp_path, metric_mode):
    from rayclf.report import build_report

    metric, mode = metric_mode
    src = make_sweep_dir(tmp_path / "s", stages=True, metric=metric, mode=mode)
    write_text(str(src / "sweep.yaml"), f"name: st\nmetric: {metric}\nsearch:\n  stages:\n  - vary: {{}}\n")
    rep = build_report(str(src), tmp_path / "r")
    assert "stages" in rep.figures and (tmp_path / "r" / "figures" / "stages.png").stat().st_size > 10_000
    assert "factor_effects" not in rep.figures
    md = (tmp_path / "r" / "stages.md").read_text()
    chosen = [ln for ln in md.splitlines() if "★" in ln]
    assert len(chosen) == 2 and all(ln.split("|")[6].strip() for ln in chosen)  # winner rows carry the running best
    assert "<h2 id='stages'>" in (tmp_path / "r" / "index.html").read_text()
    assert "(baseline)" in chosen[0] and "(lr=0.1,opt=adam,dropout=0)" in chosen[1]  # best under the mode


@pytest.mark.parametrize("metric_mode", METRICS)
def test_sweep_summary_shows_the_reports_effects_for_an_ablation(tmp_path, metric_mode):
    from rayclf.sweep.runner import SweepOutcome
    from rayclf.sweep.spec import parse_sweep

    metric, mode = metric_mode
    rows = read_rows(str(_ablation_dir(tmp_path / "s", metric, mode) / "trials.parquet"))
    table = {r.arm: r for r in arm_table(rows, mode)}
    sweep = parse_sweep({"name": "a", "base": tiny(), "seeds": [0, 1, 2], "metric": metric,
                         "search": {"ablation": {"factors": {"model.dropout": [0.3]}}}})
    text = SweepOutcome(sweep, str(tmp_path / "s"), rows, 0).summary_text()
    head = text.splitlines()[0]
    assert "Δ vs baseline" in head and "Δ 95% CI ±" in head and "p (Holm)" in head
    aug = next(ln for ln in text.splitlines() if ln.startswith("augmentation=crop+flip"))
    r = table["augmentation=crop+flip"]
    pct = metric.endswith("accuracy")
    scale = 100 if pct else 1
    assert f"{_signed(scale * r.delta, metric)}" in aug and f"{r.p_holm:.3g}" in aug
    assert (f"{scale * r.delta_ci95:.2f}" if pct else f"{r.delta_ci95:.4f}") in aug
    assert "(2 pairs)" in next(ln for ln in text.splitlines() if ln.startswith("lr=0.05"))
    assert "no variance" in next(ln for ln in text.splitlines() if ln.startswith("dropout=0.3"))
    assert "Holm-adjusted over the 2 arms tested against the baseline" in text
    grid = parse_sweep({"name": "g", "base": tiny(), "metric": metric,
                        "search": {"grid": {"model.dropout": [0.1, 0.3]}}})
    assert "p (Holm)" not in SweepOutcome(grid, str(tmp_path / "s"), rows, 0).summary_text()


@pytest.mark.parametrize("metric_mode", METRICS)
def test_report_plans_seeds_for_a_target_ci_width(tmp_path, metric_mode):
    metric, mode = metric_mode
    src = _ablation_dir(tmp_path / "s", metric, mode)
    width = "0.5" if metric.endswith("accuracy") else "0.005"  # ±0.5 percentage points, or ±0.005 loss
    res = CliRunner().invoke(main, ["report", str(src), "--out", str(tmp_path / "r"), "--target-ci", width])
    assert res.exit_code == 0, res.output
    table = {r["arm"]: r for r in csv.DictReader((tmp_path / "r" / "results.csv").open())}
    # augmentation's paired differences are 0, −0.004, +0.004: sd 0.004, and the target half-width is 0.005:
    # n = 4: t(0.975, 3)·0.004/2 = 3.1824·0.002 = 0.00636 > 0.005; n = 5: 2.7764·0.004/√5 = 0.00497 ≤ 0.005
    assert table["augmentation=crop+flip"]["seeds_needed"] == "5"
    assert table["dropout=0.3"]["seeds_needed"] == "" and table["baseline"]["seeds_needed"] == ""  # no spread
    md = (tmp_path / "r" / "results.md").read_text()
    assert f"seeds for Δ ±{width}{' pp' if metric.endswith('accuracy') else ''} (planning)" in md
    assert "a planning figure, not post-hoc power" in md
    res = CliRunner().invoke(main, ["report", str(src), "--target-ci", "0"])
    assert res.exit_code == 2 and "--target-ci" in res.output
