"""The training sampler: identical global batches on any number of devices, resumable mid-epoch."""

import numpy as np
import pytest

from rwkv_infctx.data.sampler import GlobalBatchSampler


def batches(sampler: GlobalBatchSampler) -> list[list[int]]:
    ids = list(sampler)
    return [ids[i:i + sampler.batch_size] for i in range(0, len(ids), sampler.batch_size)]


def global_batches(n: int, batch_size: int, world_size: int, epoch: int = 0, **kw) -> list[list[int]]:
    """Per step, the samples of all ranks together (rank 0's first)."""
    per_rank = []
    for rank in range(world_size):
        sampler = GlobalBatchSampler(range(n), batch_size, world_size, rank, **kw)
        sampler.set_epoch(epoch)
        per_rank.append(batches(sampler))
    return [sum(step, []) for step in zip(*per_rank)]


@pytest.mark.parametrize("n", [24, 23, 5])
def test_global_batches_do_not_depend_on_the_number_of_devices(n):
    one = global_batches(n, batch_size=8, world_size=1)
    assert global_batches(n, batch_size=4, world_size=2) == one
    assert global_batches(n, batch_size=2, world_size=4) == one
    assert len(one) == -(-n // 8)
    assert set(sum(one, [])) == set(range(n))  # every sample, the last batch topped up from the start


def test_epochs_reshuffle_with_the_seed_and_sort_by_length_keeps_order():
    first, second = global_batches(32, 4, 2, epoch=0, seed=3), global_batches(32, 4, 2, epoch=1, seed=3)
    assert first != second and sorted(sum(first, [])) == sorted(sum(second, []))
    assert global_batches(32, 4, 2, epoch=0, seed=3) == first
    assert sum(global_batches(10, 2, 1, shuffle=False), []) == list(range(10))


def test_resume_starts_inside_the_epoch_of_the_checkpoint():
    sampler = GlobalBatchSampler(range(20), batch_size=2, world_size=2, rank=1, seed=0)
    epoch0 = batches(sampler)
    sampler.resume(epoch=0, batches_done=3)
    assert len(sampler) == 5 * 2  # Lightning still sees the whole epoch
    assert batches(sampler) == epoch0[3:]
    assert batches(sampler) == epoch0  # one-shot: the next pass is whole again
    sampler.set_epoch(1)
    epoch1 = batches(sampler)
    assert epoch1 != epoch0

    fresh = GlobalBatchSampler(range(20), batch_size=2, world_size=2, rank=1, seed=0)
    fresh.resume(epoch=1, batches_done=2)  # sets the epoch: workers may draw before set_epoch
    assert batches(fresh) == epoch1[2:]
    fresh.resume(epoch=0, batches_done=5)  # a checkpoint at the end of epoch 0: epoch 1, whole
    assert fresh.epoch == 1 and batches(fresh) == epoch1
    assert np.array_equal(fresh.global_order()[:4], np.random.default_rng(1).permutation(20)[:4])


def test_validation_shards_cover_every_sample_once_in_equal_numbers():
    from rwkv_infctx.data.datamodule import TokenSamples
    from rwkv_infctx.data.sampler import ShardSampler

    shards = [list(ShardSampler(range(7), world_size=3, rank=r)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4, 7], [2, 5, 7]]  # 7: the filler index, len(dataset)
    assert [len(ShardSampler(range(7), 3, r)) for r in range(3)] == [3, 3, 3]
    from rwkv_infctx.data.store import SampleStore
    store = SampleStore(np.arange(8), np.ones(8, dtype=np.int8), np.array([[0, 5], [5, 8]]), ("test",))
    samples = TokenSamples(store, np.array([0, 1]))
    ids, train = samples[2]
    assert np.array_equal(ids, np.arange(5)) and not train.any()  # shaped like a sample, trains nothing
