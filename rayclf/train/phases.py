"""Transfer-learning phases: which parameters train in each phase (head / last K stages / all).

Parameters are grouped in model order — timm's own ``group_matcher`` for timm models, top-level
children for ours — and the classifier head is always the last group.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from rayclf.config import TrialConfig
from rayclf.models.hooks import hooks


@dataclass(frozen=True)
class PhaseSpec:
    epochs: int
    trainable: str = "all"
    optim: str | None = None
    lr: float | None = None


def phase_plan(cfg: TrialConfig) -> list[PhaseSpec]:
    """The configured phases, or one phase of ``train.epochs`` training everything."""
    if not cfg.train.phases:
        return [PhaseSpec(cfg.train.epochs)]
    return [PhaseSpec(p.epochs, p.trainable, p.optim, p.lr) for p in cfg.train.phases]


def parameter_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names grouped stem → stages → head, in order."""
    own = hooks(model).param_groups_ordered()
    if own is not None:
        return own
    matcher = getattr(model, "group_matcher", None)
    if callable(matcher):
        from timm.models import group_parameters

        grouped = group_parameters(model, matcher(coarse=True))
        return [names for _, names in sorted(grouped.items())]
    groups: list[list[str]] = []
    for child_name, child in model.named_children():
        names = [f"{child_name}.{n}" for n, _ in child.named_parameters()]
        if names:
            groups.append(names)
    return groups or [[n for n, _ in model.named_parameters()]]


def set_trainable(model: nn.Module, scope: str) -> None:
    """Freeze everything outside ``scope`` (``all``, ``head``, ``last:K``)."""
    groups = parameter_groups(model)
    if scope == "all":
        keep = len(groups)
    elif scope == "head":
        keep = 1
    else:
        keep = int(scope.split(":")[1]) + 1
    trainable = {n for g in groups[-keep:] for n in g}
    trainable -= hooks(model).fixed_parameter_names()  # the model's own frozen weights stay frozen
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
