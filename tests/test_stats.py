"""The statistics every table and racing use: matched effects, no p from constant differences, Holm, seeds for a
target precision, and NaN-safe best/final values. Pure Python, no Ray; each runs for an accuracy (max) and a
loss (min)."""

from __future__ import annotations

import math

import pytest

from rayclf.aggregate import arm_table, best_value, final_value, holm, paired_comparison, seeds_for_half_width
from rayclf.sweep.callbacks import trial_row
from rayclf.sweep.racing import one_sided_p

from .conftest import tiny

METRICS = [pytest.param(("val_accuracy", "max"), id="accuracy"), pytest.param(("val_loss", "min"), id="loss")]


def rows_for(values: dict[str, dict[int, float]], metric: str = "val_accuracy") -> list[dict]:
    """Completed trial rows carrying ``values[arm][seed]`` as their value."""
    return [{"arm": arm, "seed": seed, "status": "completed", "metric_best": v, "test_accuracy": 0.5,
             "metric": metric} for arm, seeds in values.items() for seed, v in seeds.items()]


@pytest.mark.parametrize("metric_mode", METRICS)
def test_delta_ci_and_p_come_from_the_same_pairs_when_a_seed_is_missing(metric_mode):
    _, mode = metric_mode
    base = {0: 0.70, 1: 0.72}  # seed 2 of the baseline is missing (failed, say)
    arm = {0: 0.74, 1: 0.77, 2: 0.60}
    row = {r.arm: r for r in arm_table(rows_for({"baseline": base, "a": arm}), mode)}["a"]
    # unmatched means would give (0.74 + 0.77 + 0.60)/3 − 0.71 = −0.0067; the matched Δ is (0.04 + 0.05)/2
    assert row.delta == pytest.approx(0.045) and row.pairs == 2 and row.unmatched
    assert row.delta_ci95 == pytest.approx(12.7062047 * 0.0070710678 / math.sqrt(2))  # t(0.975, 1) · sd / √2
    assert row.p_value == pytest.approx(1 - 2 * math.atan(9) / math.pi)  # t = 9 on 1 df (Cauchy), two-sided
    assert row.mean == pytest.approx((0.74 + 0.77 + 0.60) / 3) and row.n == 3  # the arm's own mean: all its seeds


@pytest.mark.parametrize("metric_mode", METRICS)
@pytest.mark.parametrize("test", ["ttest", "wilcoxon"])
def test_constant_differences_give_no_p_never_zero(metric_mode, test):
    _, mode = metric_mode
    worse = -0.02 if mode == "max" else 0.02  # the arm is worse by the same amount on every seed
    a, b = {s: 0.5 + 0.1 * s + worse for s in range(5)}, {s: 0.5 + 0.1 * s for s in range(5)}
    c = paired_comparison(a, b, mode, alternative="worse", test=test)
    assert (c.p, c.ci95, c.note, c.n_pairs) == (None, None, "no variance", 5) and c.delta == pytest.approx(worse)
    assert one_sided_p(a, b, mode, test) == (None, 5)  # racing keeps the arm: no p, so no elimination
    assert paired_comparison({0: 1.0}, {0: 0.5}).note == "1 pair"
    assert paired_comparison({0: 1.0}, {1: 0.5}).note == "no matched seeds"


@pytest.mark.parametrize("metric_mode", METRICS)
def test_racing_one_sided_test_points_the_way_of_the_mode(metric_mode):
    _, mode = metric_mode
    best = {0: 0.50, 1: 0.52, 2: 0.55, 3: 0.51}
    lower = {0: 0.40, 1: 0.45, 2: 0.44, 3: 0.43}  # lower values on every seed
    p_lower, n = one_sided_p(lower, best, mode, "ttest")
    p_higher, _ = one_sided_p(best, lower, mode, "ttest")
    worse_p, better_p = (p_lower, p_higher) if mode == "max" else (p_higher, p_lower)
    assert n == 4 and worse_p < 0.01 < 0.99 < better_p


def test_holm_matches_a_hand_computed_vector():
    # sorted: 0.005·4 = 0.02; 0.01·3 = 0.03; 0.03·2 = 0.06; 0.04·1 = 0.04 → max(0.06, 0.04) = 0.06
    assert holm([0.01, 0.04, None, 0.03, 0.005]) == pytest.approx([0.03, 0.06, None, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1, and monotone
    assert holm([None, None]) == [None, None] and holm([0.2]) == [0.2]


@pytest.mark.parametrize("metric_mode", METRICS)
def test_table_marks_significance_on_the_holm_adjusted_p(metric_mode):
    _, mode = metric_mode
    base = {0: 0.50, 1: 0.52, 2: 0.55, 3: 0.51}
    arms = {"baseline": base,
            "clear": {0: 0.40, 1: 0.44, 2: 0.44, 3: 0.42},  # paired p ≈ 0.0017
            "borderline": {0: 0.49, 1: 0.51, 2: 0.52, 3: 0.49},  # paired p ≈ 0.034: under 0.05 alone, not after Holm
            "none": {0: 0.52, 1: 0.50, 2: 0.56, 3: 0.50}}
    rows = {r.arm: r for r in arm_table(rows_for(arms), mode)}
    ps = {a: rows[a].p_value for a in ("clear", "borderline", "none")}
    assert ps["borderline"] < 0.05 and ps["clear"] < 0.01
    # hand Holm over 3 tests: smallest × 3, then × 2 (kept monotone), then × 1
    order = sorted(ps, key=ps.get)
    expected, running = {}, 0.0
    for k, a in enumerate(order):
        running = max(running, min(1.0, (3 - k) * ps[a]))
        expected[a] = running
    assert {a: rows[a].p_holm for a in ps} == pytest.approx(expected)
    assert rows["clear"].significant and not rows["borderline"].significant and not rows["none"].significant


def test_seeds_for_a_target_half_width_against_a_hand_computation():
    # sd 0.02, ±0.01: t(0.975, 16)·0.02/√17 = 2.1199·0.02/4.1231 = 0.01028 > 0.01;
    #                 t(0.975, 17)·0.02/√18 = 2.1098·0.02/4.2426 = 0.00995 ≤ 0.01  → 18 seeds
    assert seeds_for_half_width(0.02, 0.01) == 18
    # sd = width: n = 6 gives 2.5706/√6 = 1.049 > 1, n = 7 gives 2.4469/√7 = 0.925 ≤ 1  → 7 seeds
    assert seeds_for_half_width(0.01, 0.01) == 7
    assert seeds_for_half_width(0.001, 0.01) == 2  # never under 2: one seed has no interval
    assert seeds_for_half_width(None, 0.01) is None and seeds_for_half_width(0.0, 0.01) is None


def test_best_and_final_values_ignore_non_finite_epochs():
    nan, inf = float("nan"), float("inf")
    assert best_value([nan, 0.5, 0.7], "max") == 0.7
    assert best_value([nan, 0.5, 0.7], "min") == 0.5
    assert best_value([0.5, inf, None, 0.4], "max") == 0.5 and best_value([nan], "max") is None
    assert final_value([0.5, 0.6, nan]) == 0.6 and final_value([nan, None]) is None


def _epochs(values: list[float], metric: str) -> list[dict]:
    other = "val_loss" if metric == "val_accuracy" else "val_accuracy"
    return [{"epoch": i + 1, metric: v, other: 0.5, "train_loss": 1.0} for i, v in enumerate(values)]


@pytest.mark.parametrize("metric_mode", METRICS)
def test_a_leading_nan_epoch_keeps_the_seed_and_all_nan_is_diverged(metric_mode):
    metric, mode = metric_mode
    nan = float("nan")
    good = [0.5, 0.7] if mode == "max" else [0.7, 0.5]
    rows = []
    for seed, values in enumerate([[nan, *good], good, [nan, nan]]):
        info = {"trial_id": str(seed), "sweep": "s", "arm": "baseline", "seed": seed, "config": tiny(seed=seed)}
        rows.append(trial_row(info, "completed", "", {"test_accuracy": 0.6}, _epochs(values, metric), metric, mode))
    assert rows[0]["status"] == "completed" and rows[0]["metric_best"] == rows[1]["metric_best"] == good[1]
    assert rows[0]["metric_final"] == good[1]
    assert rows[2]["status"] == "diverged" and "no epoch has a finite" in rows[2]["reason"]
    table = arm_table(rows, mode)[0]
    assert table.n == 2 and table.mean == pytest.approx(good[1]) and table.statuses == {"completed": 2,
                                                                                        "diverged": 1}


def test_the_engine_summary_skips_a_nan_validation_epoch():
    from types import SimpleNamespace

    import torch

    from rayclf.config import build_config
    from rayclf.train.engine import summarize

    nan = float("nan")
    history = [{"val_accuracy": v, "images_per_sec": 1.0, "train_seconds": 1.0} for v in (nan, 0.5, 0.7, 0.6)]
    tr = SimpleNamespace(model=torch.nn.Linear(2, 2), device="cpu", evaluate=lambda *a, **k: {})
    stopper = SimpleNamespace(es=SimpleNamespace(patience=0), bad=0)
    s = summarize(build_config(tiny()), tr, SimpleNamespace(classes=["a", "b"]), history, "diverged", "", stopper,
                  0.0)
    assert s["best_val_accuracy"] == 0.7 and s["best_epoch"] == 3
