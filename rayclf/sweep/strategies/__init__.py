"""Sweep strategies in two registries: search strategies (which arms a sweep has and how they unfold) and arm
rules (how a set of arms runs, which stop early). See ``registry`` for the interface; importing this package
registers the built-in ones (grid, random, bayes, ablation, stages; fifo, asha, median, racing)."""

from __future__ import annotations

from rayclf.sweep.strategies import arm_rules, searches, staged  # noqa: F401  (registers the built-ins)
from rayclf.sweep.strategies.registry import (
    ArmRule,
    Planned,
    SearchStrategy,
    arm_rule_class,
    arm_rule_names,
    create_arm_rule,
    create_search,
    infer_kind,
    register_arm_rule,
    register_search,
    search_class,
    search_names,
)

__all__ = ["ArmRule", "Planned", "SearchStrategy", "arm_rule_class", "arm_rule_names", "create_arm_rule",
           "create_search", "infer_kind", "register_arm_rule", "register_search", "search_class", "search_names"]
