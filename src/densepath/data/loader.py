"""A resumable data order: the order is a pure function of (seed, epoch) and the position is saved in
the checkpoint (Lightning restores `_Stateful` loaders), so a run resumed mid-epoch sees exactly the
batches the uninterrupted run would have seen. Shards by rank under DDP (disjoint, equal shares).
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader, Sampler

log = logging.getLogger(__name__)


class ResumableSampler(Sampler[int]):
    """Epoch e is `randperm(n, seed + e)`; `skip` batches at the start of the first epoch on resume."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch = 0
        self.start = 0  # indices to skip in the current epoch (set on resume)

    @staticmethod
    def _rank_world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        return self.n // self._rank_world()[1]

    def __iter__(self):
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=gen).tolist()
        else:
            order = list(range(self.n))
        rank, world = self._rank_world()
        if world > 1:  # every rank gets a disjoint, equal-sized share of the same permutation
            order = order[: len(self) * world][rank::world]
        start, self.start = self.start, 0
        self.epoch += 1
        yield from order[start:]


class ResumableLoader(DataLoader):
    """A DataLoader with `state_dict` / `load_state_dict` (Lightning saves it in the checkpoint).

    The position is the number of batches the training loop has consumed, read from the trainer
    (`progress_fn`), not from the sampler, which runs one batch ahead because of prefetching.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        seed: int,
        collate_fn=None,
        shuffle: bool = True,
        drop_last: bool = True,
    ):
        self._rsampler = ResumableSampler(len(dataset), seed, shuffle)
        # a private generator: creating an iterator draws a base seed, which must not consume the
        # global RNG (that would shift the generation stream between a resumed and a straight run)
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=self._rsampler,
            collate_fn=collate_fn,
            drop_last=drop_last,
            num_workers=0,
            generator=torch.Generator().manual_seed(seed),
        )
        self.progress_fn = None

    def batches_per_epoch(self) -> int:
        return len(self)

    def state_dict(self) -> dict[str, int]:
        consumed = int(self.progress_fn()) if self.progress_fn is not None else 0
        return {"consumed_batches": consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        consumed = int(state.get("consumed_batches", 0))
        nb = max(1, self.batches_per_epoch())
        self._rsampler.epoch = consumed // nb
        self._rsampler.start = (consumed % nb) * self.batch_size
        log.info("resumed data order at epoch %d, batch %d", consumed // nb, consumed % nb)


def consumed_indices(n: int, seed: int, batch_size: int, steps: int, world: int = 1) -> list[int]:
    """The dataset indices that the first `steps` batches of a `ResumableLoader` (drop_last, `world`
    ranks) consumed: a pure function of the order, so a finished run's data can be recovered exactly."""
    per_rank = n // world
    nb = per_rank // batch_size  # batches per epoch and rank
    out, epoch = [], 0
    while nb and epoch * nb < steps:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        take = min(nb, steps - epoch * nb) * batch_size
        for rank in range(world):
            out += (order[: per_rank * world][rank::world] if world > 1 else order)[:take]
        epoch += 1
    return out
