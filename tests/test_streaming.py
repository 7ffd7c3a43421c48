"""data.streaming: the streamed samples are the cache's, a resumed fit goes on where it stopped."""

import json

import lightning as L
import numpy as np
import pytest

from .helpers import tiny_fit
from rwkv_infctx.data.datamodule import RWKVDataModule
from rwkv_infctx.data.formats import FormatConfig
from rwkv_infctx.data.pipeline import DataSpec, build_samples
from rwkv_infctx.data.streaming import stream_samples
from rwkv_infctx.errors import ConfigError, DataError

WORDS = "the river ran past a mill where seven old stones turned slowly under grey autumn skies".split()


def write_jsonl(path, n_docs: int = 40, seed: int = 0):
    """Documents of 1 to 60 words, prompt/completion columns too, so lengths and masks vary."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n_docs):
            text = " ".join(rng.choice(WORDS, rng.integers(1, 60)))
            f.write(json.dumps({"text": text, "prompt": text[:20], "completion": text[20:] or "."}) + "\n")
    return str(path)


@pytest.mark.parametrize("settings", [
    dict(sample_len=16),
    dict(sample_len=None),
    dict(sample_len=24, fmt=FormatConfig(format="prompt_completion")),
    dict(sample_len=None, min_token_size=8, max_token_size=20, split_long=True),
    dict(sample_len=16, max_token_size=30),
])
def test_streamed_samples_equal_the_cache(tmp_path, settings):
    spec = DataSpec(source=write_jsonl(tmp_path / "docs.jsonl"), **settings)
    cached = list(build_samples(spec))
    streamed = list(stream_samples(spec))
    assert len(streamed) == len(cached) > 3
    for (ids, train), (want_ids, want_train) in zip(streamed, cached):
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(train, want_train)
    if settings.get("fmt"):  # the prompt mask came through: some tokens are not targets
        assert any(not train.all() for _, train in streamed)


class RecordBatches(L.Callback):
    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch["input_ids"].clone())


def test_resumed_stream_goes_on_from_the_checkpoint(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", n_docs=60)
    data_args = dict(streaming=True, test_split=2, sample_len=32)
    whole = RecordBatches()
    tiny_fit(tmp_path / "whole", source, max_steps=6, callbacks=[whole], data_args=data_args)
    first = RecordBatches()
    tiny_fit(tmp_path / "cut", source, max_steps=3, callbacks=[first], checkpoint_every=3, data_args=data_args)
    rest = RecordBatches()
    tiny_fit(tmp_path / "cut", source, max_steps=6, callbacks=[rest], data_args=data_args,
             ckpt_path=str(tmp_path / "cut" / "ckpt" / "last.ckpt"))
    assert len(whole.batches) == 6 and len(first.batches) == 3 and len(rest.batches) == 3
    for seen, want in zip(first.batches + rest.batches, whole.batches):
        assert seen.equal(want)
    # the held-out samples are not trained on: training starts at the stream's third sample
    third = next(s for i, s in enumerate(stream_samples(DataSpec(source=source, sample_len=32))) if i == 2)
    assert whole.batches[0][0, :32].tolist() == third[0][:32].tolist()


@pytest.mark.parametrize("settings, message", [
    (dict(magic_prime="auto"), "data.magic_prime"),
    (dict(sources=[{"source": "a.jsonl", "weight": 1}]), "data.sources"),
    (dict(packing_len=64), "data.packing_len"),
    (dict(sort_by_length=True), "data.sort_by_length"),
    (dict(data_path="cache"), "data.data_path"),
    (dict(test_split=0.1), "a count of samples"),
])
def test_streaming_refuses_what_needs_the_whole_corpus(tmp_path, settings, message):
    args = dict(source=write_jsonl(tmp_path / "docs.jsonl"), streaming=True, sample_len=16, test_split=0)
    with pytest.raises(ConfigError, match=message) as error:
        RWKVDataModule(**{**args, **settings})
    assert "\n" not in str(error.value)


def test_streaming_needs_max_steps(tmp_path):
    with pytest.raises(ConfigError, match="set trainer.max_steps"):
        tiny_fit(tmp_path, write_jsonl(tmp_path / "docs.jsonl"), max_steps=-1, max_epochs=1,
                 data_args=dict(streaming=True))


def test_global_batches_are_the_same_on_any_device_count_and_worker_count(tmp_path):
    from torch.utils.data import DataLoader

    from rwkv_infctx.data.datamodule import collate_samples
    from rwkv_infctx.data.streaming import StreamedSamples

    spec = DataSpec(source=write_jsonl(tmp_path / "docs.jsonl"), sample_len=16)
    everything = [ids.tolist() for ids, _ in stream_samples(spec)]
    one = [ids.tolist() for ids, _ in StreamedSamples(spec, held_out=3, batch_size=4)]
    assert one == everything[3:]
    two = [[ids.tolist() for ids, _ in StreamedSamples(spec, 3, batch_size=2, world_size=2, rank=r)] for r in (0, 1)]
    whole_batches = (len(everything) - 3) // 4
    merged = [sample for b in range(whole_batches) for rank in two for sample in rank[2 * b:2 * b + 2]]
    assert len(two[0]) == len(two[1]) == 2 * whole_batches and merged == everything[3:3 + 4 * whole_batches]
    batches = [DataLoader(StreamedSamples(spec, 3, batch_size=4), batch_size=4, collate_fn=collate_samples,
                          num_workers=workers) for workers in (0, 2)]
    for plain, by_workers in zip(*batches, strict=True):
        assert plain["input_ids"].equal(by_workers["input_ids"])


def test_a_bad_line_in_a_stream_is_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 2 is not valid JSON"):
        list(stream_samples(DataSpec(source=str(bad))))
