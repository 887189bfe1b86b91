"""Lookahead-style weight averaging (airbench94): an exponential average the live weights are reset to.

Every ``every`` steps from ``start_epoch``: avg ← lerp(avg, weights, 1 − ρ), weights ← avg, with
ρ = decay_base^every · (step / total_steps)^decay_pow — fast-moving early, averaging strongly at the end.
After each epoch the weights equal the average, so a checkpoint holds the whole state and a resumed run
rebuilds the average from the weights. Float buffers (BN statistics) are averaged too. No host sync.
"""

from __future__ import annotations

import torch
from torch import nn

from rayclf.config import LookaheadConfig


class Lookahead:
    def __init__(self, model: nn.Module, cfg: LookaheadConfig, total_steps: int):
        self.cfg, self.total = cfg, max(total_steps, 1)
        self.live = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.avg: list[torch.Tensor] | None = None

    def epoch_start(self, epoch: int) -> None:
        if self.avg is None and epoch >= self.cfg.start_epoch:
            self.avg = [t.detach().clone() for t in self.live]

    def step(self, global_step: int) -> None:
        """After optimizer step number ``global_step`` (1-based, counted over the whole run)."""
        if self.avg is None or global_step % self.cfg.every:
            return
        rho = self.cfg.decay_base ** self.cfg.every * min(global_step / self.total, 1.0) ** self.cfg.decay_pow
        self._pull(1.0 - rho)

    def epoch_end(self) -> None:
        if self.avg is not None:
            self._pull(0.0)

    @torch.no_grad()
    def _pull(self, weight: float) -> None:
        if weight:
            torch._foreach_lerp_(self.avg, self.live, weight)
        torch._foreach_copy_(self.live, self.avg)
