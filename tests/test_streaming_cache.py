"""The streaming cache builder must give exactly the samples of the original in-memory pipeline.

The reference below is the original list-of-documents implementation (filter, pack, cut), kept
here only as the spec; the documents are formatted record by record, independently of the
pipeline's batching, workers and files.
"""

import json

import numpy as np
import pytest

from rwkv_infctx.data import pipeline
from rwkv_infctx.data.formats import FormatConfig, format_record
from rwkv_infctx.data.tokenizer import load_tokenizer


def reference_filter(docs, min_tokens, max_tokens, split_long):
    out = []
    for ids, train in docs:
        if min_tokens and len(ids) < min_tokens:
            continue
        if max_tokens and len(ids) > max_tokens:
            if split_long:
                out += [(ids[s:s + max_tokens], train[s:s + max_tokens]) for s in range(0, len(ids), max_tokens)]
            continue
        out.append((ids, train))
    return [d for d in out if len(d[0]) > 1]


def reference_pack(docs, packing_len, sort_by_length):
    order = sorted(range(len(docs)), key=lambda i: -len(docs[i][0])) if sort_by_length else range(len(docs))
    packs, current, used = [], [], 0
    for i in order:
        if current and used + len(docs[i][0]) > packing_len:
            packs.append(current)
            current, used = [], 0
        current.append(docs[i])
        used += len(docs[i][0])
    packs.append(current)
    out = []
    for pack in packs:
        trains = [t.copy() for _, t in pack]
        for t in trains[1:]:
            t[0] = 0
        out.append((np.concatenate([d[0] for d in pack]), np.concatenate(trains)))
    return out


def reference_cut(docs, sample_len):
    ids = np.concatenate([d[0] for d in docs])
    train = np.concatenate([d[1] for d in docs])
    return [(ids[s:s + sample_len + 1], train[s:s + sample_len + 1]) for s in range(0, len(ids) - 1, sample_len)]


def reference_samples(records, spec):
    tokenizer = load_tokenizer(spec.tokenizer)
    docs = [tuple(np.asarray(a) for a in format_record(r, spec.fmt, tokenizer)) for r in records]
    docs = reference_filter(docs, spec.min_token_size, spec.max_token_size, spec.split_long)
    if spec.sample_len:
        return reference_cut(docs, spec.sample_len)
    if spec.packing_len:
        return reference_pack(docs, spec.packing_len, spec.sort_by_length)
    return sorted(docs, key=lambda d: -len(d[0])) if spec.sort_by_length else docs


def corpus_records(n=150, seed=0):
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "the", "of", "river", "stone", "é", "日本", "\n"]
    return [{"prompt": f"Q{i}:", "text": " ".join(rng.choice(words, size=int(rng.integers(0, 60))))}
            for i in range(n)]


SETTINGS = {
    "documents": {},
    "sample_len": {"sample_len": 7},
    "sample_len_filtered": {"sample_len": 16, "min_token_size": 4, "max_token_size": 40},
    "packing": {"packing_len": 50},
    "packing_sorted": {"packing_len": 50, "sort_by_length": True},
    "sorted": {"sort_by_length": True},
    "filters": {"min_token_size": 5, "max_token_size": 30},
    "split_long_packing": {"max_token_size": 12, "split_long": True, "packing_len": 30},
    "prompt_completion": {"fmt": FormatConfig(format="prompt_completion", completion_column="text"),
                          "packing_len": 40},
}


@pytest.mark.parametrize("name", SETTINGS)
def test_streaming_cache_equals_the_in_memory_pipeline(tmp_path, name):
    records = corpus_records()
    src = tmp_path / "d.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    spec = pipeline.DataSpec(source=str(src), **SETTINGS[name])
    expected = reference_samples(records, spec)
    samples, meta, built = pipeline.load_or_build(spec, str(tmp_path / "cache"))
    assert built and meta["samples"] == len(expected) == len(samples)
    assert meta["tokens"] == sum(len(e[0]) for e in expected)
    for (ids, train), (want_ids, want_train) in zip(samples, expected):
        assert ids.tolist() == want_ids.tolist() and train.tolist() == want_train.tolist()
    reread, _, built = pipeline.load_or_build(spec, str(tmp_path / "cache"))
    assert not built and [s[0].tolist() for s in reread] == [e[0].tolist() for e in expected]


def _samples(store):
    return [(ids.tolist(), train.tolist()) for ids, train in store]


def test_compressed_sharded_and_parquet_sources_give_the_same_samples(tmp_path):
    import gzip

    import datasets
    import zstandard

    records = corpus_records(60)
    lines = "".join(json.dumps(r) + "\n" for r in records).encode()
    (tmp_path / "plain.jsonl").write_bytes(lines)
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(lines))
    (tmp_path / "d.json.gz").write_bytes(gzip.compress(lines))
    (tmp_path / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    shards, parquet = tmp_path / "shards", tmp_path / "parquet"
    shards.mkdir(), parquet.mkdir()
    for n, part in enumerate((records[:25], records[25:])):  # shard names sort in corpus order
        (shards / f"part-{n}.jsonl.zst").write_bytes(
            zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in part).encode()))
        datasets.Dataset.from_list(part).to_parquet(str(parquet / f"part-{n}.parquet"))
    spec = dict(sample_len=9)
    want = _samples(pipeline.build_samples(pipeline.DataSpec(source=str(tmp_path / "plain.jsonl"), **spec)))
    assert want == [(i.tolist(), t.tolist()) for i, t in reference_samples(records, pipeline.DataSpec(source="", **spec))]
    for source in ("d.jsonl.gz", "d.json.gz", "d.jsonl.zst", "shards", "shards/*.jsonl.zst", "parquet"):
        got = _samples(pipeline.build_samples(pipeline.DataSpec(source=str(tmp_path / source), **spec)))
        assert got == want, source


def test_workers_and_batches_do_not_change_the_samples(tmp_path, monkeypatch):
    records = corpus_records(300, seed=1)
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = pipeline.DataSpec(source=str(src), packing_len=64)
    monkeypatch.setattr(pipeline, "_RECORD_BATCH", 7)  # documents and packs cross batch boundaries
    got = _samples(pipeline.build_samples(spec, num_proc=2))
    assert got == [(i.tolist(), t.tolist()) for i, t in reference_samples(records, spec)]


def test_fit_opens_the_cache_by_memory_map_with_index_arrays(tmp_path):
    import pickle

    from rwkv_infctx.data.datamodule import RWKVDataModule

    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in corpus_records(80)))
    data = RWKVDataModule(source=str(src), data_path=str(tmp_path / "cache"), sample_len=5, test_split=0.1)
    data.prepare_data()
    data.setup("fit")
    train = data.train_set
    assert isinstance(train.store.tokens, np.memmap) and isinstance(train.index, np.ndarray)
    assert len(train) + len(data.val_set) == len(train.store)
    clone = pickle.loads(pickle.dumps(train))  # DataLoader workers reopen the files, no copy
    assert len(pickle.dumps(train.store)) < 1000
    assert [s[0].tolist() for s in clone] == [s[0].tolist() for s in train]
