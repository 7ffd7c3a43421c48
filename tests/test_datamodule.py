"""The minimal data module: files -> documents -> tokens -> samples -> padded batches."""

import json

import numpy as np
import pytest
import torch

from rwkv_infctx.data import datamodule as dm
from rwkv_infctx.errors import DataError


def test_resolve_files_file_folder_glob(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text(json.dumps({"text": "beta"}) + "\n")
    (tmp_path / "sub" / "c.bin").write_bytes(b"\0")
    assert dm.resolve_files(str(tmp_path / "a.txt")) == [tmp_path / "a.txt"]
    assert dm.resolve_files(str(tmp_path)) == [tmp_path / "a.txt", tmp_path / "sub" / "b.jsonl"]
    assert dm.resolve_files(str(tmp_path / "**" / "*.jsonl")) == [tmp_path / "sub" / "b.jsonl"]
    with pytest.raises(DataError, match="no file matches"):
        dm.resolve_files(str(tmp_path / "*.parquet"))


def test_read_documents_and_missing_column(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"body": t}) for t in ["one", "two"]) + "\n")
    assert dm.read_documents(path, "body") == ["one", "two"]
    with pytest.raises(DataError, match="record 0 has no column 'text'"):
        dm.read_documents(path, "text")
    array = tmp_path / "d.json"
    array.write_text(json.dumps([{"text": "x"}, {"text": "y"}]))
    assert dm.read_documents(array, "text") == ["x", "y"]


def test_samples_keep_every_token_and_end_documents_with_eos():
    docs = [np.arange(1, 8), np.arange(10, 13)]  # already tokenised; world eos is 0
    class Tok:
        eos_id = 0
        def encode(self, text):
            return [int(t) for t in text.split()]
    tokens = dm.tokenize_documents(["1 2 3", "", "4"], Tok())
    assert [t.tolist() for t in tokens] == [[1, 2, 3, 0], [4, 0]]
    windows = dm.cut_samples(docs, sample_len=4, max_token_size=None)
    stream = np.concatenate(docs)
    # consecutive windows overlap by one token: every target of the stream is predicted once
    targets = np.concatenate([w[1:] for w in windows])
    assert targets.tolist() == stream[1:].tolist()
    assert all(len(w) == 5 for w in windows[:-1])
    whole = dm.cut_samples(docs, sample_len=None, max_token_size=4)
    assert [w.tolist() for w in whole] == [[10, 11, 12]]  # the 7-token document is over the limit


def test_collate_pads_to_multiple_of_16_with_mask():
    batch = dm.collate_samples([np.arange(20), np.arange(5)])
    assert batch["input_ids"].shape == (2, 32)
    assert batch["mask"][0].sum() == 19 and batch["mask"][1].sum() == 4
    assert torch.equal(batch["input_ids"][1, :4], torch.arange(4))
    assert torch.equal(batch["targets"][1, :4], torch.arange(1, 5))
    assert batch["mask"][1, 4:].sum() == 0


def test_token_cache_is_reused_and_keyed_by_tokenizer(tmp_path, monkeypatch):
    src = tmp_path / "t.txt"
    src.write_text("Hello world. " * 50)
    first = dm.load_or_tokenize([src], "world", "text", str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").glob("tokens-*.npz"))) == 1

    def no_tokenizer(name):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(dm, "load_tokenizer", no_tokenizer)
    again = dm.load_or_tokenize([src], "world", "text", str(tmp_path / "cache"))
    assert [a.tolist() for a in again] == [f.tolist() for f in first]
    assert dm.cache_key([src], "world", "text") != dm.cache_key([src], "other.json", "text")
    key_before = dm.cache_key([src], "world", "text")
    src.write_text("changed text, another size")
    assert dm.cache_key([src], "world", "text") != key_before


def test_validate_stage_uses_the_whole_source(tmp_path):
    src = tmp_path / "v.jsonl"
    src.write_text("\n".join(json.dumps({"text": f"document number {i} " * 5}) for i in range(10)) + "\n")
    data = dm.RWKVDataModule(source=str(src), batch_size=2, val_fraction=0.2)
    data.setup("fit")
    assert len(data.train_set) == 8 and len(data.val_set) == 2
    data.setup("validate")
    assert data.train_set is None and len(data.val_set) == 10
    assert data.max_token_id < 65536
