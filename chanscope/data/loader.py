"""Batches from in-memory uint8 tensors, with a resumable iteration state.

Why not torch DataLoader: CIFAR-sized images fit in memory, per-sample Python transforms dominate CPU
time, and an exact resume needs the shuffle order and augmentation RNG saved mid-epoch. Here the
permutation, the position inside it and the generator state are the whole state.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["BatchLoader", "augment_crop_flip"]


def augment_crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding `pad` and random horizontal flip, vectorised over the batch."""
    n, c, h, w = x.shape
    offs = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen, device=gen.device).to(x.device)
    flip = (torch.rand(n, generator=gen, device=gen.device) < 0.5).to(x.device)
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = offs[:, 0:1] + torch.arange(h, device=x.device)  # (n, h)
    cols = offs[:, 1:2] + torch.arange(w, device=x.device)  # (n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    b = torch.arange(n, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


class BatchLoader:
    """Iterate (images in [0,1] float, labels) over uint8 tensors.

    Args:
        x, y: uint8 images (N, C, H, W) and int64 labels; moved to `device` once.
        batch_size: images per batch; the last partial batch is kept unless drop_last.
        shuffle, augment: reshuffle every epoch; random crop 4 + flip.
        seed: seeds the loader's own generator (independent of the global RNG).
        rank, world_size: each rank takes a strided share of every global batch (DistributedSampler-like).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False,
                 augment: bool = False, seed: int = 0, device: torch.device | str = "cpu",
                 drop_last: bool = False, rank: int = 0, world_size: int = 1) -> None:
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        self.batch_size = batch_size
        self.shuffle, self.augment, self.drop_last = shuffle, augment, drop_last
        self.rank, self.world_size = rank, world_size
        self.gen = torch.Generator().manual_seed(seed)  # CPU generator: same stream on every device
        self._perm: torch.Tensor | None = None
        self._pos = 0

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self._perm, "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self._perm, self._pos = state["perm"], int(state["pos"])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        if self._perm is None:  # a fresh epoch; otherwise continue a resumed one
            self._perm = torch.randperm(n, generator=self.gen) if self.shuffle else torch.arange(n)
            self._pos = 0
        while self._pos < n:
            idx = self._perm[self._pos:self._pos + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            self._pos += len(idx)
            idx = idx[self.rank::self.world_size].to(self.device)
            xb = self.x[idx]
            if self.augment:
                xb = augment_crop_flip(xb, self.gen)
            yield xb.float().div_(255), self.y[idx]
        self._perm, self._pos = None, 0
