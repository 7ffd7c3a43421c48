"""The training sampler: the same global batches on any number of devices, resumable mid-epoch.

Lightning would wrap a plain sampler in a ``DistributedSampler`` that deals samples out
round-robin, so the samples of a global batch would depend on the world size. This sampler
fixes the order of the whole run first (a permutation seeded by ``seed + epoch``), cuts it into
global batches of ``batch_size x world_size`` samples, and gives rank r the r-th slice of each.
One device with batch 8 and four devices with batch 2 thus see the same samples at every step.

It subclasses ``DistributedSampler`` only so that Lightning leaves it in place and calls
``set_epoch`` on it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sized

import numpy as np
from torch.utils.data import DistributedSampler

from .magic_prime import window_index


class GlobalBatchSampler(DistributedSampler):
    def __init__(self, dataset: Sized, batch_size: int, world_size: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int = 0):
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        self.batch_size = batch_size
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = -(-len(dataset) // self.global_batch)
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches already done in it)

    def __len__(self) -> int:
        # The whole epoch, also when resuming inside it: Lightning counts on from the batch index
        # it restored, so the epoch still ends after `batches_per_epoch` batches.
        return self.batches_per_epoch * self.batch_size

    def resume(self, epoch: int, batches_done: int) -> None:
        """Start inside ``epoch``, after its first ``batches_done`` batches.

        Sets the epoch too: Lightning may draw the first iterator (and DataLoader workers prefetch
        from it at once) before it calls ``set_epoch`` on a resumed run.
        """
        if batches_done >= self.batches_per_epoch:  # the checkpoint closed that epoch
            epoch, batches_done = epoch + 1, 0
        self.set_epoch(epoch)
        self._resume_at = (epoch, batches_done)

    def global_order(self) -> np.ndarray:
        """Every sample index of this epoch, in order, padded with the epoch's first samples to whole global batches."""
        n = len(self.dataset)
        order = np.random.default_rng(self.seed + self.epoch).permutation(n) if self.shuffle else np.arange(n)
        padding = self.batches_per_epoch * self.global_batch - n
        return np.concatenate([order, np.resize(order, padding)]) if padding else order

    def _take_resume_skip(self) -> int:
        """Batches of this epoch to skip: those done before the checkpoint, once, on the resumed epoch."""
        skip = self._resume_at[1] if self._resume_at is not None and self._resume_at[0] == self.epoch else 0
        self._resume_at = None
        return skip

    def __iter__(self) -> Iterator[int]:
        skip = self._take_resume_skip()
        batches = self.global_order().reshape(self.batches_per_epoch, self.global_batch)
        mine = batches[skip:, self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return map(int, mine.reshape(-1))  # lazily: no Python object per sample of the epoch


class MagicPrimeSampler(GlobalBatchSampler):
    """BlinkDL's magic_prime order: sample n of the run is window ``window_index(n, p)``, p = len(dataset).

    Samples are counted over the whole run, epochs included, so the order continues across
    epochs and after a resume exactly as in one uninterrupted run. As in RWKV-LM, element j of a
    rank's micro-batch k is sample ``k * global_batch + j * world_size + rank``: each step takes
    the same consecutive samples on any number of devices (only which rank gets which differs).
    The indices are computed as they are drawn: nothing grows with the corpus. ``shuffle`` and
    ``seed`` are accepted for a common signature and ignored: the order is the formula's.
    """

    def __iter__(self) -> Iterator[int]:
        skip = self._take_resume_skip()
        p = len(self.dataset)
        for batch in range(self.epoch * self.batches_per_epoch + skip, (self.epoch + 1) * self.batches_per_epoch):
            first = batch * self.global_batch + self.rank
            for j in range(self.batch_size):
                yield window_index(first + j * self.num_replicas, p)


class ShardSampler(DistributedSampler):
    """Validation: rank r takes samples r, r + world_size, ... in order, each sample once.

    Every rank must run as many batches as the others (ZeRO-3 gathers parameters in each
    forward), so short shards are topped up, as Lightning's default does, but with the index
    ``len(dataset)``: ``TokenSamples`` answers it with a sample that has no trained token, so
    no sample counts twice in the validation loss.
    """

    def __init__(self, dataset: Sized, world_size: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=False)

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        mine = range(self.rank, n, self.num_replicas)
        return itertools.chain(mine, itertools.repeat(n, len(self) - len(mine)))
