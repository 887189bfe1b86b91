"""Device-resident splits: the whole split is one uint8 tensor on the training device.

Each epoch draws a permutation on the device and slices batches from it; no DataLoader workers,
no per-sample Python. ``rank``/``world_size`` shard every epoch's permutation for DDP so each
rank sees a disjoint, equally sized part.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from rayclf.data.sources import Split


class DeviceLoader:
    def __init__(self, split: Split | tuple[torch.Tensor, torch.Tensor], batch_size: int, device: torch.device,
                 *, shuffle: bool, drop_last: bool = False, generator: torch.Generator | None = None,
                 rank: int = 0, world_size: int = 1):
        x, y = (split.x, split.y) if isinstance(split, Split) else split
        self.x = torch.as_tensor(x).to(device)
        self.y = torch.as_tensor(y).to(device)
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = generator
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        n = self._per_rank()
        if self.drop_last and n >= self.batch_size:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def _per_rank(self) -> int:
        n = len(self.y)
        if self.shuffle:  # training: equal shards so DDP ranks step in lockstep
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def order(self) -> torch.Tensor:
        """This epoch's sample indices for this rank."""
        n = len(self.y)
        if self.shuffle:
            perm = torch.randperm(n, generator=self.generator, device=self.device)
            return perm[self.rank::self.world_size][: self._per_rank()]
        return torch.arange(self.rank, n, self.world_size, device=self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.order()
        bs = self.batch_size
        for b in range(len(self)):
            sel = idx[b * bs:(b + 1) * bs]
            yield self.x[sel], self.y[sel]
