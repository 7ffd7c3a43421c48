"""The .bin/.idx reader must read RWKV-LM's files exactly, and reject broken pairs in one line."""

import pickle
import struct

import numpy as np
import pytest

from rwkv_infctx.data.binidx import BinIdxDataset, binidx_paths, write_binidx
from rwkv_infctx.errors import DataError

# Several documents: ordinary, empty, longer than 65535 tokens (sizes are int32, so allowed),
# and both ends of the uint16 range (the world vocabulary's last id is 65535).
DOCS = [
    [5, 17, 0],
    [],
    (np.arange(70_000) % 65536).tolist(),
    [65535, 0],
    [0],
    [],
]


def _reference_pair(prefix, docs, doc_idx=None, code=8, token_format="H"):
    """An independent writer of the documented byte layout, field by field with struct.

    It mirrors what RWKV-LM's MMapIndexedDataset writer produces: sizes (int32), byte pointers
    (int64) and doc_idx (int64) after a 34-byte header, tokens back to back in the .bin.
    """
    sizes = [len(d) for d in docs]
    width = struct.calcsize("<" + token_format)
    pointers = [sum(sizes[:i]) * width for i in range(len(sizes))]
    doc_idx = list(range(len(docs) + 1)) if doc_idx is None else doc_idx
    idx = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", code)
    idx += struct.pack("<Q", len(sizes)) + struct.pack("<Q", len(doc_idx))
    idx += struct.pack(f"<{len(sizes)}i", *sizes) + struct.pack(f"<{len(pointers)}q", *pointers)
    idx += struct.pack(f"<{len(doc_idx)}q", *doc_idx)
    bin_path, idx_path = binidx_paths(prefix)
    bin_path.write_bytes(b"".join(struct.pack(f"<{len(d)}{token_format}", *d) for d in docs))
    idx_path.write_bytes(idx)


def _assert_docs(ds, docs):
    assert len(ds) == len(docs)
    for i, doc in enumerate(docs):
        assert ds[i].tolist() == list(doc), i
    assert ds.total_tokens == sum(len(d) for d in docs)
    assert ds.tokens.tolist() == [t for d in docs for t in d]


def test_write_and_read_back_exact_tokens(tmp_path):
    prefix = tmp_path / "sub" / "data_text_document"
    assert write_binidx(prefix, iter(DOCS)) == sum(len(d) for d in DOCS)  # a generator works
    ds = BinIdxDataset(prefix)
    _assert_docs(ds, DOCS)
    assert ds.dtype == np.uint16 and ds[2].dtype == np.uint16
    assert ds[2][-1] == 69_999 % 65536 and len(ds[2]) == 70_000
    assert ds.doc_idx.tolist() == list(range(len(DOCS) + 1))
    assert ds[-3].tolist() == DOCS[-3]
    with pytest.raises(IndexError):
        ds[len(DOCS)]
    assert [d.tolist() for d in ds] == DOCS  # iteration stops at the end


def test_documents_are_read_only_views_of_the_memory_map(tmp_path):
    write_binidx(tmp_path / "d", DOCS)
    ds = BinIdxDataset(tmp_path / "d")
    doc = ds[2]
    assert isinstance(doc, np.ndarray) and not doc.flags.writeable and not doc.flags.owndata
    assert np.shares_memory(doc, ds.tokens)
    assert isinstance(ds.tokens.base, np.memmap)


def test_prefix_may_name_either_file(tmp_path):
    write_binidx(tmp_path / "d.bin", DOCS[:1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.bin", "d.idx"]
    assert BinIdxDataset(tmp_path / "d.idx")[0].tolist() == DOCS[0]


@pytest.mark.parametrize("dtype, docs", [
    (np.int32, [[70_000, 1], [], [2**31 - 1]]),
    (np.uint8, [[255, 0, 1]]),
    (np.int64, [[-5, 2**40]]),
])
def test_other_token_dtypes(tmp_path, dtype, docs):
    write_binidx(tmp_path / "d", docs, dtype=dtype)
    ds = BinIdxDataset(tmp_path / "d")
    assert ds.dtype == np.dtype(dtype)
    _assert_docs(ds, docs)


def test_empty_dataset(tmp_path):
    assert write_binidx(tmp_path / "d", []) == 0
    ds = BinIdxDataset(tmp_path / "d")
    assert len(ds) == 0 and ds.total_tokens == 0 and ds.tokens.size == 0


def test_pickles_by_reopening_not_by_copying(tmp_path):
    write_binidx(tmp_path / "d", DOCS)
    ds = BinIdxDataset(tmp_path / "d")
    blob = pickle.dumps(ds)
    assert len(blob) < 1000  # the 140 KB of tokens are not in it
    _assert_docs(pickle.loads(blob), DOCS)


def test_our_writer_is_byte_identical_to_the_documented_layout(tmp_path):
    write_binidx(tmp_path / "ours", DOCS)
    _reference_pair(tmp_path / "ref", DOCS)
    for ours, ref in zip(binidx_paths(tmp_path / "ours"), binidx_paths(tmp_path / "ref")):
        assert ours.read_bytes() == ref.read_bytes(), ours.name


def test_reads_rwkv_lm_layout_with_sentence_grouped_doc_idx(tmp_path):
    # Megatron-style doc_idx that groups sequences: RWKV-LM's reader still indexes sequences.
    docs = [[1, 2], [3], [], [4, 5, 6]]
    _reference_pair(tmp_path / "ref", docs, doc_idx=[0, 2, 4])
    ds = BinIdxDataset(tmp_path / "ref")
    _assert_docs(ds, docs)
    assert ds.doc_idx.tolist() == [0, 2, 4]


def test_reads_int32_layout(tmp_path):
    docs = [[100_000, 7], [65_536]]
    _reference_pair(tmp_path / "ref", docs, code=4, token_format="i")
    ds = BinIdxDataset(tmp_path / "ref")
    assert ds.dtype == np.int32
    _assert_docs(ds, docs)


def _one_line_error(prefix, match):
    with pytest.raises(DataError, match=match) as info:
        BinIdxDataset(prefix)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("missing", [".bin", ".idx"])
def test_missing_file(tmp_path, missing):
    write_binidx(tmp_path / "d", DOCS)
    (tmp_path / f"d{missing}").unlink()
    assert f"d{missing}" in _one_line_error(tmp_path / "d", "does not exist")


def test_bad_magic(tmp_path):
    write_binidx(tmp_path / "d", DOCS)
    idx = tmp_path / "d.idx"
    idx.write_bytes(b"TNTIDX\x00\x00" + idx.read_bytes()[8:])  # Megatron's older, non-mmap format
    assert "d.idx" in _one_line_error(tmp_path / "d", "not a Megatron/RWKV .idx")
    idx.write_bytes(b"MMID")
    _one_line_error(tmp_path / "d", "not a Megatron/RWKV .idx")


@pytest.mark.parametrize("change", [b"\x00\x00", -2, -1])
def test_bin_size_must_match_index(tmp_path, change):
    write_binidx(tmp_path / "d", DOCS)
    bin_path = tmp_path / "d.bin"
    data = bin_path.read_bytes()
    bin_path.write_bytes(data + change if isinstance(change, bytes) else data[:change])
    assert "d.bin" in _one_line_error(tmp_path / "d", "do not match")


def test_truncated_index(tmp_path):
    write_binidx(tmp_path / "d", DOCS)
    idx = tmp_path / "d.idx"
    idx.write_bytes(idx.read_bytes()[:-8])
    _one_line_error(tmp_path / "d", "truncated or corrupt")


@pytest.mark.parametrize("code, version, match", [(6, 1, "not an integer token type"), (9, 1, "dtype code 9"),
                                                  (8, 2, "version 2")])
def test_unsupported_header_fields(tmp_path, code, version, match):
    _reference_pair(tmp_path / "d", [[1, 2]], code=code)
    idx = tmp_path / "d.idx"
    data = bytearray(idx.read_bytes())
    data[9:17] = struct.pack("<Q", version)
    idx.write_bytes(bytes(data))
    _one_line_error(tmp_path / "d", match)


def test_pointer_outside_bin_is_reported_on_access(tmp_path):
    _reference_pair(tmp_path / "d", [[1, 2], [3, 4]])
    idx = tmp_path / "d.idx"
    data = bytearray(idx.read_bytes())
    data[34 + 8 + 8 : 34 + 8 + 16] = struct.pack("<q", 6)  # second pointer: 2 tokens from byte 6 of 8
    idx.write_bytes(bytes(data))
    ds = BinIdxDataset(tmp_path / "d")
    assert ds[0].tolist() == [1, 2]
    with pytest.raises(DataError, match="document 1 .* lies outside"):
        ds[1]


@pytest.mark.parametrize("docs, dtype, match", [
    ([[1, 65536]], np.uint16, "token id 65536 does not fit in uint16"),
    ([[3], [-1]], np.uint16, "document 1: token id -1"),
    ([[1.5, 2.0]], np.uint16, "integer token ids"),
    (["some text"], np.uint16, "integer token ids"),
    ([[1]], np.float32, "no .idx code"),
])
def test_writer_refuses_what_it_cannot_store(tmp_path, docs, dtype, match):
    with pytest.raises(DataError, match=match):
        write_binidx(tmp_path / "d", docs, dtype=dtype)
    assert list(tmp_path.iterdir()) == []  # no partial pair, no temporary left behind


_OPEN_AND_MEASURE = r"""
import sys
from array import array
from pathlib import Path
import numpy as np
from rwkv_infctx.data import binidx, pipeline
from rwkv_infctx.data.datamodule import TokenSamples, split_train_test

def rss_kb():
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmRSS")))

folder = Path(sys.argv[1])
for tokens in (1_000_000, 40_000_000):
    prefix = folder / f"c{tokens}"
    sizes = array("q", [1000] * (tokens // 1000))
    (folder / f"c{tokens}.idx").write_bytes(binidx._index_bytes(sizes, np.dtype(np.uint16)))
    with open(folder / f"c{tokens}.bin", "wb") as f:
        f.truncate(tokens * 2)  # sparse: only the pages read would cost memory
    for sample_len in (512, None):
        before = rss_kb()
        samples, _, _ = pipeline.load_or_build(pipeline.DataSpec(source=str(prefix), sample_len=sample_len), None)
        train, test = split_train_test(len(samples), 0.01, 0)
        first = TokenSamples(samples, train)[0]
        print(tokens, sample_len, len(samples), rss_kb() - before, flush=True)
"""


def test_binidx_opens_in_place_with_flat_memory(tmp_path):
    """A 40M-token .bin (80 MB) opens with about the memory of a 1M-token one: nothing is read or converted."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _OPEN_AND_MEASURE, str(tmp_path)], cwd=root, capture_output=True,
                         text=True, timeout=120, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    growth = {(int(t), s): int(kb) for t, s, _, kb in (line.split() for line in out.stdout.split("\n") if line)}
    assert growth[(40_000_000, "512")] < 8_000 and growth[(40_000_000, "None")] < 8_000, growth  # kB; the file is 78 MB
