"""Sweep files → arms × seeds: grid, random, ablation, stages, extends, validation errors."""

from __future__ import annotations

import pytest
import yaml

from rayclf.aggregate import arm_table, best_arm, mean_std
from rayclf.config import ConfigError
from rayclf.sweep.spec import load_sweep, parse_sweep

from .conftest import tiny


def sweep(**kw):
    return parse_sweep({"name": "t", "base": tiny(), **kw})


def test_grid_is_cartesian_product_times_seeds():
    s = sweep(search={"grid": {"optim.lr": [0.1, 0.01, 0.001], "model.dropout": [0.0, 0.5]}}, seeds=[0, 1])
    arms = s.arms()
    assert len(arms) == 6 and len(s.trials(arms)) == 12
    assert arms[0].label == "lr=0.1,dropout=0"
    assert {(t.config.optim.lr, t.config.model.dropout) for t in s.trials(arms)} == {
        (lr, d) for lr in (0.1, 0.01, 0.001) for d in (0.0, 0.5)}
    assert len({t.trial_id for t in s.trials(arms)}) == 12


def test_ablation_is_baseline_plus_one_arm_per_alternative():
    s = sweep(search={"ablation": {"factors": {"model.dropout": [0.1, 0.05], "model.kernel_size": [2, 4],
                                               "optimizer": {"rmsprop": {"optim.name": "rmsprop",
                                                                         "optim.lr": 0.001}}}}})
    labels = [a.label for a in s.arms()]
    assert labels == ["baseline", "dropout=0.1", "dropout=0.05", "kernel_size=2", "kernel_size=4",
                      "optimizer=rmsprop"]
    trials = {t.arm.label: t.config for t in s.trials(s.arms())}
    assert trials["dropout=0.05"].model.kernel_size == 3  # everything else stays at baseline
    assert trials["optimizer=rmsprop"].optim.name == "rmsprop" and trials["optimizer=rmsprop"].optim.lr == 0.001


def test_random_search_is_seeded_and_in_range():
    spec = {"random": {"num_samples": 20, "seed": 4, "params": {
        "optim.lr": {"loguniform": [1e-4, 1e-1]}, "model.dropout": {"uniform": [0.0, 0.5]},
        "train.batch_size": {"choice": [16, 32]}, "model.kernel_size": {"randint": [2, 6]}}}}
    a, b = sweep(search=spec).arms(), sweep(search=spec).arms()
    assert [x.overrides for x in a] == [x.overrides for x in b] and len(a) == 20
    for arm in a:
        o = arm.overrides
        assert 1e-4 <= o["optim.lr"] <= 1e-1 and 0 <= o["model.dropout"] <= 0.5
        assert o["train.batch_size"] in (16, 32) and 2 <= o["model.kernel_size"] < 6
    other = sweep(search={"random": {**spec["random"], "seed": 5}}).arms()
    assert [x.overrides for x in other] != [x.overrides for x in a]


def test_stages_expand_around_the_carried_winner():
    s = sweep(search={"stages": [{"name": "dropout", "vary": {"model.dropout": [0.2, 0.1]}},
                                 {"name": "kernel", "vary": {"model.kernel_size": [2, 4]}}],
                      "final": {"train.epochs": 5}}, seeds=[0, 1, 2])
    assert s.stage_count() == 2
    stage2 = s.arms({"model.dropout": 0.1}, stage=1)
    assert [a.label for a in stage2] == ["kernel:kernel_size=2", "kernel:kernel_size=4"]
    assert all(t.config.model.dropout == 0.1 for t in s.trials(stage2))
    assert len(s.trials(stage2)) == 6


def test_base_extends_another_file(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny(train={"epochs": 7})))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"name": "x", "base": {"extends": "base.yaml",
                                                                             "optim": {"lr": 0.3}}}))
    s = load_sweep(tmp_path / "s.yaml")
    cfg = s.trials(s.arms())[0].config
    assert cfg.train.epochs == 7 and cfg.optim.lr == 0.3 and cfg.model.widths == [8, 16]


@pytest.mark.parametrize(("data", "expected"), [
    ({"search": {"grid": {"optim.lr": [0.1]}, "ablation": {"factors": {"optim.lr": [1]}}}}, "one of grid"),
    ({"search": {"grdi": {}}}, "Did you mean 'grid'?"),
    ({"scheduler": {"name": "ashaa"}}, "Did you mean 'asha'?"),
    ({"search": {"grid": {"optim.lrr": [0.1]}}}, "Did you mean 'lr'?"),
    ({"search": {"random": {"num_samples": 2, "params": {"optim.lr": {"logunif": [1, 2]}}}}},
     "did you mean 'loguniform'"),
    ({"resources": {"gpus": 0.5, "num_workers": 2}}, "fractional gpus"),
    ({"seeds": [0, 0]}, "distinct"),
])
def test_bad_sweep_files_give_clear_errors(data, expected):
    with pytest.raises(ConfigError, match=expected):
        sweep(**data)


def test_seed_aggregation_mean_and_std():
    rows = [{"arm": "a", "seed": s, "status": "completed", "metric_best": v, "test_accuracy": v, "stage": None}
            for s, v in enumerate((0.5, 0.6, 0.7))]
    rows += [{"arm": "b", "seed": 0, "status": "completed", "metric_best": 0.9, "test_accuracy": 0.8, "stage": None},
             {"arm": "b", "seed": 1, "status": "failed", "metric_best": None, "test_accuracy": None, "stage": None}]
    stats = {s.arm: s for s in arm_table(rows, "max")}
    assert stats["a"].mean == pytest.approx(0.6) and stats["a"].std == pytest.approx(0.1)
    assert stats["b"].n == 1 and stats["b"].statuses == {"completed": 1, "failed": 1}
    assert best_arm(list(stats.values()), "max").arm == "b"
    assert mean_std([]) == (None, None)


def test_rank_by_final_epoch_changes_the_winner_through_the_one_ranking_rule():
    """A file may rank arms on the final epoch instead of the best one; every table and winner follows."""
    from rayclf.aggregate import arm_table, best_arm, value_key

    rows = [{"arm": arm, "seed": s, "status": "completed", "metric_best": best, "metric_final": final,
             "test_accuracy": 0.5} for s in (0, 1)
            for arm, best, final in (("peaky", 0.90, 0.60), ("steady", 0.85, 0.84))]
    assert best_arm(arm_table(rows, "max", value_key("best")), "max").arm == "peaky"
    assert best_arm(arm_table(rows, "max", value_key("final")), "max").arm == "steady"
    assert parse_sweep({"name": "r", "base": tiny(), "rank_by": "final"}).file.rank_by == "final"
    with pytest.raises(ConfigError, match="rank_by"):
        parse_sweep({"name": "r", "base": tiny(), "rank_by": "last"})
