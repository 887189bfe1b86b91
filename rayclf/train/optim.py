"""Optimizers (timm's factory), learning-rate schedules and weight penalties from config.

SGD, Adam and AdamW are torch's own classes, which timm's factory (1.0) builds with our arguments unchanged:
they are built here the same way, so a trial process with one of them never imports timm (≈ 2 CPU-seconds on
the 2-core VM: timm imports torchvision and torch._dynamo), about a second of every sweep's start-up
(BENCHMARKS.md, issue 33); tests/test_optim.py checks they equal timm's, argument for argument.

Schedules are plain functions of fractional epochs so they step per iteration, compose with a
linear warm-up, and are trivially checkpointed; reduce-on-plateau keeps a small state of its own.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from rayclf.config import OptimConfig, RegConfig, SchedConfig
from rayclf.metrics import lower_is_better

FUSABLE = ("sgd", "adam", "adamw")
# timm's names for torch's own classes, with the defaults timm adds (its OptimInfo entries)
TORCH_NATIVE: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "nesterov": (torch.optim.SGD, {"nesterov": True}), "momentum": (torch.optim.SGD, {"nesterov": False}),
    "adam": (torch.optim.Adam, {}), "adamw": (torch.optim.AdamW, {})}


NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, cfg: OptimConfig, lr: float) -> list[dict[str, Any]]:
    """Trainable parameters in up to three groups: kernels (decayed), norm biases (lr × scale, decay / scale),
    other biases and norm weights (no decay unless ``decay_norm_and_bias``)."""
    norm_biases = {id(m.bias) for m in model.modules() if isinstance(m, NORMS) and m.bias is not None}
    kernels, scaled, rest = [], [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in norm_biases:
            scaled.append(p)
        elif p.ndim <= 1:
            rest.append(p)
        else:
            kernels.append(p)
    wd = cfg.weight_decay
    small_wd = wd if cfg.decay_norm_and_bias else 0.0
    s = cfg.norm_bias_lr_scale
    groups = [{"params": kernels, "weight_decay": wd},
              {"params": scaled, "weight_decay": small_wd / s, "lr": lr * s},
              {"params": rest, "weight_decay": small_wd}]
    return [g for g in groups if g["params"]]


def create_optimizer(model: nn.Module, cfg: OptimConfig, *, name: str | None = None,
                     lr: float | None = None, cuda: bool = False) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` with our names over ``param_groups``.

    On CUDA (``optim.fused: auto``) torch's single-kernel implementation is used where one exists."""
    name = name or cfg.name
    lr = lr or cfg.lr
    fused = cfg.fused == "on" or (cfg.fused == "auto" and cuda)
    kwargs: dict[str, Any] = {"fused": True} if fused and name in FUSABLE else {}
    if name == "sgd":
        opt = "nesterov" if cfg.nesterov else "momentum"
        kwargs["momentum"] = 0.9 if cfg.momentum is None else cfg.momentum
    elif name == "rmsprop":
        opt = "rmsprop"
        kwargs["momentum"] = 0.0 if cfg.momentum is None else cfg.momentum
    else:
        opt = name
        if name in ("adam", "adamw", "adamax", "nadam", "radam"):
            kwargs["betas"] = tuple(cfg.betas)
    kwargs.update(_own_options(cfg, name))
    groups = param_groups(model, cfg, lr)
    if opt in TORCH_NATIVE:
        cls, defaults = TORCH_NATIVE[opt]
        return cls(groups, **{"weight_decay": cfg.weight_decay, **kwargs, "lr": lr, **defaults})
    from timm.optim import create_optimizer_v2  # imports torchvision: only for timm's own optimizers

    return create_optimizer_v2(groups, opt=opt, lr=lr, weight_decay=cfg.weight_decay, **kwargs)


def _own_options(cfg: OptimConfig, name: str) -> dict[str, Any]:
    """eps, and the options of one optimizer only (adadelta's ρ, adagrad's initial accumulator) where set:
    unset, each is torch's own default. Adadelta's torch eps (1e-6) stays while ``optim.eps`` is at its default."""
    out: dict[str, Any] = {}
    if name != "sgd" and (name != "adadelta" or cfg.eps != OptimConfig.model_fields["eps"].default):
        out["eps"] = cfg.eps
    if name == "adadelta" and cfg.rho is not None:
        out["rho"] = cfg.rho
    if name == "adagrad" and cfg.initial_accumulator is not None:
        out["initial_accumulator_value"] = cfg.initial_accumulator
    return out


def lr_factor(cfg: SchedConfig, t: float, total: float, base_lr: float) -> float:
    """Multiplier of the base LR at fractional epoch ``t`` of ``total`` (plateau: 1, it scales itself)."""
    if cfg.name == "onecycle":
        return _onecycle(cfg, t / max(total, 1e-9))
    warm = cfg.warmup_epochs
    if t < warm:
        return cfg.warmup_start + (1 - cfg.warmup_start) * t / warm
    t, span = t - warm, max(total - warm, 1e-9)
    floor = cfg.min_lr / base_lr
    name = cfg.name
    if name in ("constant", "plateau"):
        return 1.0
    if name == "step":
        return cfg.gamma ** math.floor(t / cfg.step_size)
    if name == "multistep":
        marks = [m * total if all(x <= 1 for x in cfg.milestones) else m for m in cfg.milestones]
        factors = cfg.milestone_factors or [cfg.gamma] * len(marks)
        return math.prod(f for m, f in zip(marks, factors, strict=True) if t + warm >= m)
    if name == "exponential":
        return cfg.gamma**t
    if name == "linear":
        return floor + (1 - floor) * max(0.0, 1 - t / span)
    if name == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t / span, 1.0)))
    if name == "cosine_restarts":
        period, start = cfg.t0, 0.0
        while t >= start + period:
            start += period
            period *= cfg.t_mult
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (t - start) / period))
    raise ValueError(f"unknown schedule {name}")


def _onecycle(cfg: SchedConfig, frac: float) -> float:
    """Smith's one-cycle: cosine up from 1/div to 1 over pct_start, then down to 1/(div·final_div)."""
    lo, end = 1 / cfg.div_factor, 1 / (cfg.div_factor * cfg.final_div_factor)
    if frac < cfg.pct_start:
        p = frac / cfg.pct_start
        return lo + (1 - lo) * 0.5 * (1 - math.cos(math.pi * p))
    p = min((frac - cfg.pct_start) / (1 - cfg.pct_start), 1.0)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * p))


class Schedule:
    """Sets each param group's LR per step; reduce-on-plateau (alone or on top of any schedule) also reacts
    to epoch-end metrics, scaling whatever the schedule gives."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: SchedConfig, total_epochs: float):
        self.opt, self.cfg, self.total = optimizer, cfg, total_epochs
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.plateau_scale, self.best, self.bad_epochs = 1.0, math.inf, 0
        self.t = 0.0
        self.step(0.0)

    def step(self, epoch: float) -> None:
        """One factor for every group (``min_lr`` is relative to the optimizer's own LR, so groups with a
        scaled LR keep their ratio to the others all the way down)."""
        self.t = epoch
        factor = self.plateau_scale * lr_factor(self.cfg, epoch, self.total, self.opt.defaults["lr"])
        for group in self.opt.param_groups:
            group["lr"] = group["base_lr"] * factor

    def epoch_end(self, metrics: dict[str, float]) -> None:
        """Reduce-on-plateau bookkeeping, Keras's rule: once ``patience`` epochs in a row did not improve by
        more than ``plateau_min_delta``, scale by ``factor`` (not below ``plateau_min_lr``) and start counting
        again. The new LR is set at once, so the next epoch trains (and reports) with it."""
        cfg = self.cfg
        if not cfg.plateau_on():
            return
        value = metrics.get(cfg.plateau_metric)
        if value is None or not math.isfinite(value):
            return
        value = value if lower_is_better(cfg.plateau_metric) else -value
        if value < self.best - max(cfg.plateau_min_delta, 1e-12):
            self.best, self.bad_epochs = value, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= cfg.patience:
            floor = cfg.plateau_min_lr / self.opt.defaults["lr"]
            self.plateau_scale = max(self.plateau_scale * cfg.factor, min(floor, self.plateau_scale))
            self.bad_epochs = 0
            self.step(self.t)

    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, float]:
        return {"plateau_scale": self.plateau_scale, "best": self.best, "bad_epochs": self.bad_epochs, "t": self.t}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.plateau_scale, self.best = float(state["plateau_scale"]), float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self.t = float(state.get("t", 0.0))


def penalized_weights(model: nn.Module, scope: str) -> list[torch.Tensor]:
    """Conv/linear kernels (never biases or norm parameters); ``output``: the last linear layer only;
    ``conv``: conv kernels only (Keras's cifar10_resnet regularises every conv, not the dense output)."""
    if scope == "conv":
        return [m.weight for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.weight.requires_grad]
    kernels = [m.weight for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    if scope == "output":
        linears = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
        kernels = linears[-1:] or kernels[-1:]
    return [w for w in kernels if w.requires_grad]


def penalty_coefficients(cfg: RegConfig) -> tuple[float, float]:
    """(c1, c2) so that penalty = c1·Σ|w| + c2·Σw²; elastic net: λ·(α·Σ|w| + (1-α)·Σw²)."""
    if cfg.kind == "l1":
        return cfg.l1, 0.0
    if cfg.kind == "l2":
        return 0.0, cfg.l2
    if cfg.kind == "l1l2":
        return cfg.l1, cfg.l2
    if cfg.kind == "elastic":
        return cfg.lam * cfg.alpha, cfg.lam * (1 - cfg.alpha)
    return 0.0, 0.0


def weight_penalty(weights: list[torch.Tensor], c1: float, c2: float) -> torch.Tensor | None:
    if not weights or (c1 == 0 and c2 == 0):
        return None
    total = weights[0].new_zeros(())
    for w in weights:
        if c1:
            total = total + c1 * w.abs().sum()
        if c2:
            total = total + c2 * w.pow(2).sum()
    return total
