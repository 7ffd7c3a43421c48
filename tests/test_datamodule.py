"""Data pipeline: sources, formats, packing, cache, the DataModule and preload_datapath.py."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from rwkv_infctx.data import pipeline
from rwkv_infctx.data.datamodule import RWKVDataModule, collate_samples, split_train_test
from rwkv_infctx.data.formats import ColumnSpec, FormatConfig, format_record
from rwkv_infctx.data.packing import NextFit, WindowSpans, filter_lengths
from rwkv_infctx.data.sources import resolve_files
from rwkv_infctx.errors import ConfigError, DataError

from .helpers import ROOT



class CharTokenizer:
    """Hand-checkable ids: one id per character (its code point), EOS = 0."""
    eos_id = 0
    vocab_size = 256

    def encode(self, text):
        return [ord(c) for c in text]


def ids_of(text):
    return [ord(c) for c in text]


def test_text_format_ids_and_mask():
    ids, train = format_record({"text": "hi"}, FormatConfig(), CharTokenizer())
    assert ids == [104, 105, 0] and train == [1, 1, 1]


def test_prompt_completion_masks_the_prompt():
    cfg = FormatConfig(format="prompt_completion")
    ids, train = format_record({"prompt": "Q:", "completion": "ok"}, cfg, CharTokenizer())
    assert ids == ids_of("Q:ok") + [0] and train == [0, 0, 1, 1, 1]
    ids, train = format_record({"prompt": "Q:", "completion": "ok"}, FormatConfig(format="prompt_completion", mask_prompt=False), CharTokenizer())
    assert train == [1] * 5


def test_multi_column_template():
    cfg = FormatConfig(format="columns", columns=[ColumnSpec("instruction", "I:", "|", False), ColumnSpec("output", "O:", "", True)])
    ids, train = format_record({"instruction": "a", "output": "b"}, cfg, CharTokenizer())
    assert ids == ids_of("I:a|O:b") + [0]
    assert train == [0, 0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(ConfigError, match="data.columns"):
        FormatConfig(format="columns")


@pytest.mark.parametrize("turns", [
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
    [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}],
], ids=["role-content", "sharegpt"])
def test_conversation_rwkv_template_trains_on_assistant_only(turns):
    ids, train = format_record({"conversations": turns}, FormatConfig(format="conversation"), CharTokenizer())
    text = "User: hi\n\nAssistant: yo\n\n"
    assert ids == ids_of(text) + [0]
    trained = "".join(chr(i) for i, t in zip(ids, train) if t and i)
    assert trained == " yo\n\n"


def test_conversation_errors_name_the_problem():
    with pytest.raises(DataError, match="no column 'conversations'"):
        format_record({"messages": []}, FormatConfig(format="conversation"), CharTokenizer())
    with pytest.raises(DataError, match="role/content nor from/value"):
        format_record({"conversations": [{"speaker": "x"}]}, FormatConfig(format="conversation"), CharTokenizer())


def test_next_fit_packing_carries_over_batches():
    packer = NextFit(packing_len=10)
    assert packer.starts(np.array([5, 3])).tolist() == [True, False]
    assert packer.starts(np.array([7, 12, 2])).tolist() == [True, True, True]  # 5+3 | 7 | 12 alone | 2
    assert NextFit(12).starts(np.array([12, 7, 5, 3])).tolist() == [True, True, False, True]


def test_length_filters_and_split_long():
    lengths = np.array([2, 6, 20])
    kept, keep = filter_lengths(lengths, 3, 10, False)
    assert kept.tolist() == [6] and keep.tolist() == [False] * 2 + [True] * 6 + [False] * 20
    kept, keep = filter_lengths(lengths, None, 8, True)
    assert kept.tolist() == [2, 6, 8, 8, 4] and keep.all()
    kept, keep = filter_lengths(np.array([9, 1]), None, 4, True)  # pieces of one token are dropped
    assert kept.tolist() == [4, 4] and keep.tolist() == [True] * 8 + [False, False]


def test_windows_predict_every_token_once():
    windows = WindowSpans(10, 4)
    assert [windows[i] for i in range(len(windows))] == [(0, 5), (4, 9), (8, 10)]
    assert windows.total_tokens() == 12 and len(WindowSpans(1, 4)) == 0


def test_collate_shifts_labels_and_masks_padding():
    batch = collate_samples([(np.arange(20), np.ones(20, dtype=np.int8)),
                             (np.arange(5), np.array([0, 0, 1, 1, 1], dtype=np.int8))])
    assert batch["input_ids"].shape == (2, 32)
    assert torch.equal(batch["targets"][1, :4], torch.arange(1, 5))
    assert batch["mask"][1, :4].tolist() == [0, 1, 1, 1]  # target 1 is prompt: masked
    assert batch["mask"][1, 4:].sum() == 0 and batch["mask"][0].sum() == 19


def test_split_fraction_and_count():
    train, test = split_train_test(100, 0.1, 0)
    assert len(test) == 10 and len(set(train) | set(test)) == 100
    assert len(split_train_test(100, 3, 0)[1]) == 3
    assert len(split_train_test(2, 0.5, 0)[0]) == 1


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


@pytest.mark.parametrize("suffix", ["jsonl", "parquet", "csv", "txt"])
def test_local_file_types(tmp_path, suffix):
    texts = ["first document here", "second one"]
    if suffix == "jsonl":
        write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts])
    elif suffix == "parquet":
        import datasets
        datasets.Dataset.from_dict({"text": texts}).to_parquet(str(tmp_path / "d.parquet"))
    elif suffix == "csv":
        (tmp_path / "d.csv").write_text("text\n" + "\n".join(texts) + "\n")
    else:
        for i, t in enumerate(texts):
            (tmp_path / f"d{i}.txt").write_text(t)
    spec = pipeline.DataSpec(source=str(tmp_path))
    samples = pipeline.build_samples(spec)
    from rwkv_infctx.data.tokenizer import load_tokenizer
    world = load_tokenizer("world")
    assert sorted(world.decode(s[0].tolist()) for s in samples) == sorted(texts)


def test_cache_reuse_rebuild_and_never_overwrite(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": "Hello world. " * 20}, {"text": "Another document."}])
    cache = tmp_path / "cache"
    spec = pipeline.DataSpec(source=str(src))
    samples, meta, built = pipeline.load_or_build(spec, str(cache))
    assert built and meta["samples"] == 2

    def no_build(*a, **k):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(pipeline, "build_cache", no_build)
    again, _, built = pipeline.load_or_build(spec, str(cache))
    assert not built and [a[0].tolist() for a in again] == [s[0].tolist() for s in samples]
    monkeypatch.undo()
    # another tokenizer or another formatting switch: a new cache beside the first
    other = pipeline.DataSpec(source=str(src), min_token_size=5)
    pipeline.load_or_build(other, str(cache))
    assert len(list(cache.glob("samples-*"))) == 2
    # pointing data_path at a cache built with another tokenizer is an error
    with pytest.raises(DataError, match=r"built with other data settings: .*tokenizer='world' \(now 'neox'\)"):
        pipeline.cache_folder(str(next(cache.glob("samples-*"))), pipeline.DataSpec(source=str(src), tokenizer="neox"))


def test_empty_after_filtering_is_a_one_line_error(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": "short"}])
    with pytest.raises(DataError, match="gave no samples"):
        pipeline.load_or_build(pipeline.DataSpec(source=str(src), min_token_size=100), None)


def test_resolve_files_rejects_unknown_types(tmp_path):
    (tmp_path / "x.bin2").write_text("?")
    with pytest.raises(DataError, match="cannot read"):
        resolve_files(str(tmp_path / "x.bin2"))
    with pytest.raises(DataError, match="no file matches"):
        resolve_files(str(tmp_path / "*.parquet"))


def test_validate_stage_uses_the_whole_source(tmp_path):
    src = write_jsonl(tmp_path / "v.jsonl", [{"text": f"document number {i} " * 5} for i in range(10)])
    data = RWKVDataModule(source=str(src), batch_size=2, test_split=0.2)
    data.setup("fit")
    assert len(data.train_set) == 8 and len(data.val_set) == 2
    data.setup("validate")
    assert data.train_set is None and len(data.val_set) == 10
    assert data.max_token_id < 65536 and data.tokenizer_vocab_size == 65536


@pytest.mark.slow
def test_preload_script_builds_then_reuses(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": "Some text to tokenise. " * 10}] * 3)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  vocab_size: 65536\ndata:\n  source: {src}\n  data_path: {tmp_path / 'cache'}\n  sample_len: 16\n")
    run = lambda *a: subprocess.run([sys.executable, "preload_datapath.py", str(cfg), *a], cwd=ROOT,
                                    capture_output=True, text=True, timeout=300)
    first, second = run("--num_proc", "2"), run()
    assert first.returncode == 0 and first.stdout.startswith("built"), first.stderr[-2000:]
    assert second.returncode == 0 and second.stdout.startswith("found"), second.stderr[-2000:]
    cfg.write_text(f"data:\n  source: {src}\n  data_path: {tmp_path / 'cache'}\n  smaple_len: 16\n")
    bad = run()
    assert bad.returncode == 2 and "smaple_len" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_binidx_source_trains_on_the_exact_tokens(tmp_path):
    from rwkv_infctx.data.binidx import write_binidx
    docs = [[5, 6, 7, 0], [9, 10, 0], [11, 12, 13, 14, 15, 0]]
    write_binidx(tmp_path / "corpus", docs)
    for source in (tmp_path / "corpus", tmp_path / "corpus.bin"):
        data = RWKVDataModule(source=str(source), test_split=0, batch_size=3)
        data.setup("fit")
        assert sorted(s[0].tolist() for s in data.train_set) == sorted(docs)
    samples = pipeline.build_samples(pipeline.DataSpec(source=str(tmp_path / "corpus"), sample_len=4))
    assert np.concatenate([s[0][1:] for s in samples]).tolist() == sum(docs, [])[1:]


def test_hub_names_pass_config_split_and_data_files_to_load_dataset(monkeypatch):
    import datasets
    seen = {}

    def fake_load_dataset(path, name=None, split=None, data_files=None, **kwargs):
        seen.update(path=path, name=name, split=split, data_files=data_files)
        return datasets.Dataset.from_dict({"text": ["from the hub"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    spec = pipeline.DataSpec(source="someone/corpus", source_name="en", split="validation", data_files="x/*.parquet")
    samples = pipeline.build_samples(spec)
    assert seen == {"path": "someone/corpus", "name": "en", "split": "validation", "data_files": "x/*.parquet"}
    assert len(samples) == 1


def test_fit_without_preload_builds_the_cache_once(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": f"text number {i}. " * 8} for i in range(6)])
    calls = []
    real_build = pipeline.build_cache
    monkeypatch.setattr(pipeline, "build_cache", lambda *a, **k: calls.append(1) or real_build(*a, **k))
    data = RWKVDataModule(source=str(src), data_path=str(tmp_path / "cache"), batch_size=2)
    data.prepare_data()
    data.setup("fit")
    data.setup("validate")
    assert len(calls) == 1


def test_hf_chat_template_trains_on_assistant_spans(tmp_path):
    """A saved transformers tokenizer folder with a chat template (data.chat_template: hf)."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<eos>", "<|user|>", "<|assistant|>", "hi", "yo", "there", "\n"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    fast.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
                          "{% if add_generation_prompt %}<|assistant|> {% endif %}")
    fast.save_pretrained(tmp_path / "tok")

    from rwkv_infctx.data.tokenizer import load_tokenizer
    hf = load_tokenizer(str(tmp_path / "tok"))
    cfg = FormatConfig(format="conversation", chat_template="hf")
    turns = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "yo"}]
    ids, train = format_record({"conversations": turns}, cfg, hf)
    assert ids == [1, 3, 5, 2, 4, 0]  # <|user|> hi there <|assistant|> yo <eos>
    assert train == [0, 0, 0, 0, 1, 1]  # the reply and the eos; the <|assistant|> header is context


@pytest.mark.parametrize("fmt, record, trained_text", [
    ("prompt_completion", {"prompt": "Question: two plus two?", "completion": " Four."}, " Four."),
    ("conversation", {"conversations": [{"from": "human", "value": "Hi!"}, {"from": "gpt", "value": "Hello."}]},
     " Hello.\n\n"),
], ids=["prompt_completion", "conversation"])
def test_formats_from_a_local_file_with_the_world_tokenizer(tmp_path, fmt, record, trained_text):
    from rwkv_infctx.data.tokenizer import load_tokenizer
    src = write_jsonl(tmp_path / "d.jsonl", [record])
    [(ids, train)] = pipeline.build_samples(pipeline.DataSpec(source=str(src), fmt=FormatConfig(format=fmt)))
    world = load_tokenizer("world")
    assert ids[-1] == 0 and train[-1] == 1  # end of document, trained on
    assert world.decode([int(i) for i, t in zip(ids, train) if t and i]) == trained_text
    assert world.encode(trained_text) == [int(i) for i, t in zip(ids, train) if t and i]
