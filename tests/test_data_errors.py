"""Bad data and bad data paths are one-line DataErrors that say what to fix; nothing partial is left."""

import errno
import gzip
import json
import os
import time

import pytest

from rwkv_infctx.data import pipeline, store
from rwkv_infctx.data.datamodule import RWKVDataModule
from rwkv_infctx.errors import DataError


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def corpus(tmp_path):
    return write_jsonl(tmp_path / "d.jsonl", [{"text": f"document {i} says hello. " * 4} for i in range(6)])


def test_a_cache_named_directly_is_reused_only_for_the_same_settings(tmp_path, corpus):
    pipeline.load_or_build(pipeline.DataSpec(source=str(corpus), sample_len=8), str(tmp_path / "cache"))
    [folder] = (tmp_path / "cache").glob("samples-*")
    same, _, built = pipeline.load_or_build(pipeline.DataSpec(source=str(corpus), sample_len=8), str(folder))
    assert not built and len(same)
    other = write_jsonl(tmp_path / "other.jsonl", [{"text": "something else entirely"}])
    for spec in (pipeline.DataSpec(source=str(corpus), sample_len=16), pipeline.DataSpec(source=str(other), sample_len=8)):
        with pytest.raises(DataError) as exc:
            pipeline.load_or_build(spec, str(folder))
        assert "built with other data settings" in one_line(exc)
    assert "sample_len=8 (now 16)" in str(pytest.raises(DataError, pipeline.load_or_build,
                                                        pipeline.DataSpec(source=str(corpus), sample_len=16), str(folder)).value)


@pytest.mark.parametrize("value, said", [(None, "is null"), (7, "holds int")])
def test_null_or_numeric_text_names_the_record(tmp_path, value, said):
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": "fine"}, {"text": value}, {"text": "fine too"}])
    if value == 7:  # a column of numbers only: pyarrow reads it as int64
        src = write_jsonl(tmp_path / "d.jsonl", [{"text": 3}, {"text": value}])
    with pytest.raises(DataError) as exc:
        pipeline.build_samples(pipeline.DataSpec(source=str(src)))
    message = one_line(exc)
    assert said in message and "record " in message and "d.jsonl" in message


@pytest.mark.parametrize("content, line", [('text\n"hello\nworld\nthird row\n', 4),
                                           ('text\n"hello\nworld\nthird "row"\nfourth\n', 4)],
                         ids=["unterminated", "merged-rows"])
def test_csv_with_a_bad_quote_is_refused_not_merged(tmp_path, content, line):
    (tmp_path / "d.csv").write_text(content)
    with pytest.raises(DataError) as exc:
        pipeline.build_samples(pipeline.DataSpec(source=str(tmp_path / "d.csv")))
    assert f"line {line}: malformed CSV" in one_line(exc)


def test_empty_jsonl(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DataError) as exc:
        pipeline.build_samples(pipeline.DataSpec(source=str(tmp_path / "e.jsonl")))
    assert "e.jsonl" in one_line(exc) or "no samples" in one_line(exc)


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n{"text": oops}\n{"text": "d"}\n')
    with pytest.raises(DataError) as exc:
        pipeline.build_samples(pipeline.DataSpec(source=str(tmp_path / "m.jsonl")))
    assert "m.jsonl: line 3 is not valid JSON" in one_line(exc)


def test_non_utf8_text_names_the_file(tmp_path):
    (tmp_path / "good.txt").write_text("fine text")
    (tmp_path / "bad.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(DataError) as exc:
        pipeline.build_samples(pipeline.DataSpec(source=str(tmp_path)))
    assert "bad.txt: not UTF-8" in one_line(exc)


def test_data_path_that_is_a_file_or_cannot_be_created(tmp_path, corpus):
    spec = pipeline.DataSpec(source=str(corpus))
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        pipeline.load_or_build(spec, str(tmp_path / "f"))
    with pytest.raises(DataError, match="cannot be created"):
        pipeline.load_or_build(spec, str(tmp_path / "f" / "sub"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_data_path_not_writable(tmp_path, corpus):
    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(DataError, match="not writable"):
        pipeline.load_or_build(pipeline.DataSpec(source=str(corpus)), str(tmp_path / "ro"))


@pytest.mark.parametrize("damage", ["truncated tokens", "broken meta"])
def test_corrupt_cache_suggests_overwrite(tmp_path, corpus, damage):
    spec = pipeline.DataSpec(source=str(corpus))
    pipeline.load_or_build(spec, str(tmp_path / "cache"))
    [folder] = (tmp_path / "cache").glob("samples-*")
    if damage == "truncated tokens":
        os.truncate(folder / "tokens.npy", 140)
    else:
        (folder / "meta.json").write_text('{"spec": ')
    with pytest.raises(DataError) as exc:
        pipeline.load_or_build(spec, str(tmp_path / "cache"))
    assert "--data.overwrite_cache" in one_line(exc) and "--overwrite" in one_line(exc)
    _, _, built = pipeline.load_or_build(spec, str(tmp_path / "cache"), overwrite=True)
    assert built


def test_disk_full_leaves_no_partial_cache_and_keeps_the_old_one(tmp_path, corpus, monkeypatch):
    spec = pipeline.DataSpec(source=str(corpus))
    old, _, _ = pipeline.load_or_build(spec, str(tmp_path / "cache"))
    before = sorted(p.name for p in (tmp_path / "cache").iterdir())

    def full(self, values):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.NpyAppender, "append", full)
    with pytest.raises(DataError) as exc:
        pipeline.load_or_build(spec, str(tmp_path / "cache"), overwrite=True)
    assert "disk full" in one_line(exc)
    with pytest.raises(DataError, match="disk full"):
        pipeline.load_or_build(pipeline.DataSpec(source=str(corpus), sample_len=4), str(tmp_path / "cache"))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == before  # no temporary folder left
    monkeypatch.undo()
    again, _, built = pipeline.load_or_build(spec, str(tmp_path / "cache"))
    assert not built and [s[0].tolist() for s in again] == [s[0].tolist() for s in old]


@pytest.mark.parametrize("source", ["data/x.jsonl", "./x", "some/deep/folder", "corpus.jsonl.zst"])
def test_a_mistyped_local_path_is_not_looked_up_on_the_hub(monkeypatch, source):
    import datasets

    def hub(*a, **k):
        raise AssertionError("looked up on the hub")

    monkeypatch.setattr(datasets, "load_dataset", hub)
    start = time.perf_counter()
    with pytest.raises(DataError) as exc:
        pipeline.build_samples(pipeline.DataSpec(source=source))
    assert "no such file" in one_line(exc) and time.perf_counter() - start < 5


@pytest.mark.parametrize("key", ["sample_len", "packing_len"])
@pytest.mark.parametrize("value", [0, -5])
def test_non_positive_lengths_are_refused(key, value):
    with pytest.raises(DataError, match=f"data.{key} must be a positive number of tokens or null, got {value}"):
        RWKVDataModule(**{key: value})


def test_gzip_of_broken_json_names_the_line(tmp_path):
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write('{"text": "a"}\n{"text": \n')
    with pytest.raises(DataError) as exc:
        pipeline.build_samples(pipeline.DataSpec(source=str(tmp_path / "b.jsonl.gz")))
    assert "b.jsonl.gz: line 2 is not valid JSON" in one_line(exc)


@pytest.mark.parametrize("args, said", [(["--data.sample_len", "0"], "data.sample_len must be a positive"),
                                        (["--data.source", "data/x.jsonl"], "no such file")],
                         ids=["sample_len-0", "mistyped-path"])
def test_fit_prints_one_line_and_exits_2(capsys, tmp_path, args, said):
    from tests.test_cli import one_line_error

    assert said in one_line_error(args, capsys, tmp_path)
