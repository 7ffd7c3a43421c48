"""BlinkDL's magic_prime sampling: the formula, one visit per window, device-count invariance, resume."""

import json

import numpy as np
import pytest

from rwkv_infctx.data.binidx import write_binidx
from rwkv_infctx.data.datamodule import RWKVDataModule
from rwkv_infctx.data.magic_prime import TokenWindows, auto_magic_prime, resolve_magic_prime
from rwkv_infctx.data.sampler import MagicPrimeSampler
from rwkv_infctx.errors import ConfigError


def blinkdl_start(n: int, p: int, sample_len: int) -> int:
    """RWKV-LM's MyDataset.__getitem__, written out independently with plain Python ints."""
    ii = n + 1
    factor = int(p * ((5 ** 0.5 - 1) / 2))
    return ((factor * ii * ii * ii) % p) * sample_len


class PositionStream:
    """A token stream as long as wanted whose token at position t is t: a window shows where it starts."""

    def __init__(self, length: int):
        self.length = length

    def __len__(self):
        return self.length

    def __getitem__(self, s: slice):
        return np.arange(s.start, min(s.stop, self.length), dtype=np.int64)


def sampler_for(p: int, batch_size: int, world_size: int = 1, rank: int = 0, sample_len: int = 1):
    return MagicPrimeSampler(TokenWindows(PositionStream(p * sample_len + 1), None, sample_len, p),
                             batch_size, world_size, rank)


def steps(p: int, batch_size: int, world_size: int, epochs=(0,)) -> list[set[int]]:
    """Per micro-batch step, the windows of all ranks together."""
    per_rank = []
    for rank in range(world_size):
        sampler, drawn = sampler_for(p, batch_size, world_size, rank), []
        for epoch in epochs:
            sampler.set_epoch(epoch)
            drawn += list(sampler)
        per_rank.append([drawn[i:i + batch_size] for i in range(0, len(drawn), batch_size)])
    return [set(sum(step, [])) for step in zip(*per_rank)]


def test_minipile_prime_of_the_rwkv_lm_recipe():
    # RWKV-v7/train_temp/demo-training-run.sh: 1498226207 tokens, ctx_len 512 -> --magic_prime 2926181
    assert auto_magic_prime(1498226207, 512) == 2926181
    assert resolve_magic_prime(2926181, 1498226207, 512) == 2926181


def test_windows_start_where_blinkdl_formula_says_also_far_into_the_run():
    p, sample_len = 2926181, 512
    dataset = TokenWindows(PositionStream(p * sample_len + 1), None, sample_len, p)
    sampler = MagicPrimeSampler(dataset, batch_size=4, world_size=1, rank=0)
    first = [dataset[w][0][0] for _, w in zip(range(12), sampler)]
    assert first == [blinkdl_start(n, p, sample_len) for n in range(12)]
    ids, train = dataset[next(iter(sampler))]
    assert len(ids) == sample_len + 1 and train.all()  # binidx-like stream: every token trained
    sampler.set_epoch(7)  # n ~ 5e6: (n+1)^3 overflows int64, the formula must not
    n0 = 7 * sampler.batches_per_epoch * 4
    assert [dataset[w][0][0] for _, w in zip(range(8), sampler)] == [blinkdl_start(n0 + n, p, sample_len) for n in range(8)]


@pytest.mark.parametrize("p", [29, 101])
def test_every_window_once_per_p_samples(p):
    sampler, drawn = sampler_for(p, batch_size=3), []
    for epoch in (0, 1, 2):  # the count goes on across epochs; p is not a multiple of the batch
        sampler.set_epoch(epoch)
        drawn += list(sampler)
    assert drawn == [blinkdl_start(n, p, 1) for n in range(len(drawn))]
    for start in (0, 5, p - 1, p + 7):
        assert sorted(drawn[start:start + p]) == list(range(p))


def test_same_samples_per_step_on_any_number_of_devices():
    p = 47
    one = steps(p, batch_size=4, world_size=1)
    assert steps(p, batch_size=2, world_size=2) == one
    assert steps(p, batch_size=1, world_size=4) == one
    assert one[1] == {blinkdl_start(n, p, 1) for n in range(4, 8)}
    # as RWKV-LM's MyDataset: element j of rank r in micro-batch k is sample k * global_batch + j * world_size + r
    rank1 = list(sampler_for(p, batch_size=2, world_size=2, rank=1))
    assert rank1[:4] == [blinkdl_start(n, p, 1) for n in (1, 3, 5, 7)]


def test_resume_continues_the_uninterrupted_run():
    p = 53
    runs = {}
    for rank in range(2):
        sampler = sampler_for(p, batch_size=2, world_size=2, rank=rank)
        whole = []
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            whole += list(sampler)
        resumed = sampler_for(p, batch_size=2, world_size=2, rank=rank)
        resumed.resume(epoch=1, batches_done=3)  # as the datamodule does from the checkpoint
        runs[rank] = (whole, list(resumed))
        bpe = resumed.batches_per_epoch
        assert runs[rank][1] == whole[(bpe + 3) * 2:]
    assert runs[0][1] != runs[1][1]


def test_bad_primes_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="prime = 2"):
        resolve_magic_prime(31, 10_000, 8)  # prime, but 31 = 1 (mod 3)
    with pytest.raises(ConfigError, match="prime = 2"):
        resolve_magic_prime(35, 10_000, 8)
    with pytest.raises(ConfigError, match="past the"):
        resolve_magic_prime(1259, 10_000, 8)  # 1259 * 8 + 1 > 10000
    with pytest.raises(ConfigError, match="fewer than 3 windows"):
        auto_magic_prime(20, 8)
    with pytest.raises(ConfigError, match="needs data.sample_len"):
        RWKVDataModule(magic_prime="auto")
    with pytest.raises(ConfigError, match="magic_prime must be"):
        RWKVDataModule(magic_prime=-5, sample_len=8)


def test_binidx_stream_windows_in_place(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 1000, size=int(k)).tolist() + [0] for k in rng.integers(5, 60, size=40)]
    write_binidx(tmp_path / "corpus", docs)
    stream = np.array(sum(docs, []))
    data = RWKVDataModule(source=str(tmp_path / "corpus"), sample_len=16, magic_prime="auto", test_split=0,
                          batch_size=2, data_path=str(tmp_path / "cache"))
    data.prepare_data()
    assert not (tmp_path / "cache").exists()  # read in place, no cache built
    data.setup("fit")
    p = len(data.train_set)
    assert p == auto_magic_prime(len(stream), 16) and data.val_set is None
    assert data.train_set.tokens.dtype == np.uint16 and not data.train_set.tokens.flags.owndata  # the .bin itself
    batch = next(iter(data.train_dataloader()))
    for n in range(2):
        s = blinkdl_start(n, p, 16)
        assert batch["input_ids"][n].tolist() == stream[s:s + 16].tolist()
        assert batch["targets"][n].tolist() == stream[s + 1:s + 17].tolist()
    assert batch["mask"].all()
    small = RWKVDataModule(source=str(tmp_path / "corpus"), sample_len=16, magic_prime=5, test_split=0)
    with pytest.warns(UserWarning, match="unused; auto would use"):
        small.setup("fit")  # a prime far below the data: RWKV-LM refuses it, we warn
    assert len(small.train_set) == 5


def test_cache_stream_keeps_the_stored_mask_and_holds_out_the_end(tmp_path):
    rows = [{"prompt": f"Question {i}? ", "completion": f"Answer number {i}. " * 3} for i in range(30)]
    src = tmp_path / "qa.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = RWKVDataModule(source=str(src), format="prompt_completion", sample_len=8, magic_prime="auto",
                          test_split=4, batch_size=2, data_path=str(tmp_path / "cache"))
    data.prepare_data()
    data.setup("fit")
    folder = next((tmp_path / "cache").glob("samples-*"))
    tokens, train = np.load(folder / "tokens.npy"), np.load(folder / "train.npy")
    p = len(data.train_set)
    assert p == auto_magic_prime(len(tokens) - 4 * 8, 8) and len(data.val_set) == 4
    w = next(iter(data.train_dataloader().sampler))
    ids, mask = data.train_set[w]
    assert ids.tolist() == tokens[w * 8:w * 8 + 9].tolist() and mask.tolist() == train[w * 8:w * 8 + 9].tolist()
    assert 0 < train.mean() < 1  # the prompts are masked: the window's mask is the stored one, not all ones
    val_ids, _ = data.val_set[3]
    assert val_ids.tolist() == tokens[-9:].tolist()  # the validation windows end the stream
    assert (p - 1) * 8 + 9 <= len(tokens) - 4 * 8  # and no training window reaches them
