"""Megatron-style indexed token datasets (``<prefix>.bin`` + ``<prefix>.idx``), as RWKV-LM trains on.

This is our own reader and writer of the on-disk format that RWKV-LM's ``MMapIndexedDataset``
(inherited from Megatron-LM / GPT-NeoX, and written by their ``json2binidx`` tools) uses, so
existing RWKV training data can be read without either project's code.

``<prefix>.idx``, all little-endian, version 1::

    offset  size     field
    0       9        magic  b"MMIDIDX\\x00\\x00"
    9       8        u64    version, always 1
    17      1        u8     dtype code of the tokens: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 8 uint16
    18      8        u64    n, number of sequences
    26      8        u64    m, number of doc_idx entries
    34      4 n      i32[n] sizes: tokens in each sequence
    34+4n   8 n      i64[n] pointers: byte offset of each sequence in the .bin file
    34+12n  8 m      i64[m] doc_idx: first sequence of each document, then n

``<prefix>.bin`` holds the sequences' tokens back to back, with no header.

Here a *document* is one sequence: ``json2binidx`` writes one sequence per JSON record (its end-of-
text token included) and BlinkDL's reader indexes sequences too. ``doc_idx``, which only groups
sequences when Megatron splits documents into sentences, is exposed but not used.
"""

from __future__ import annotations

import operator
import os
import struct
from array import array
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import DataError

_MAGIC = b"MMIDIDX\x00\x00"
_VERSION = 1
# magic, version, dtype code, sequences, doc_idx entries; "<" also means no padding: 34 bytes.
_HEADER = struct.Struct("<9sQBQQ")
# Megatron's codes 6 and 7 are float types (whose meaning changed between its versions);
# token ids are never floats, so those files are refused rather than guessed at.
_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}
_CODES = {np.dtype(t): code for code, t in _DTYPES.items()}
_MAX_SEQUENCE = np.iinfo(np.int32).max  # sizes are stored as int32


def binidx_paths(prefix: str | os.PathLike) -> tuple[Path, Path]:
    """``(<prefix>.bin, <prefix>.idx)``; a path to either file is accepted as the prefix too."""
    text = os.fspath(prefix)
    if text.endswith((".bin", ".idx")):
        text = text[:-4]
    return Path(text + ".bin"), Path(text + ".idx")


def _map(path: Path, dtype, offset: int, count: int) -> np.ndarray:
    """A read-only memory map of ``count`` items; mmap refuses zero-length maps, hence the special case."""
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,)).view(np.ndarray)


class BinIdxDataset:
    """Documents of a ``.bin``/``.idx`` pair, memory-mapped: nothing is loaded until it is indexed.

    ``ds[i]`` is document ``i``'s tokens as a read-only array in the file's dtype (usually uint16).
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = os.fspath(prefix)
        self._open()

    def _open(self) -> None:
        self._bin_path, self._idx_path = binidx_paths(self.prefix)
        for path in (self._idx_path, self._bin_path):
            if not path.is_file():
                raise DataError(f"binidx dataset {self.prefix!r}: {path} does not exist (need both .bin and .idx)")
        self._read_index()
        self._map_tokens()

    def _read_index(self) -> None:
        path = self._idx_path
        with open(path, "rb") as f:
            head = f.read(_HEADER.size)
        if len(head) < _HEADER.size or not head.startswith(_MAGIC):
            raise DataError(f"{path}: not a Megatron/RWKV .idx file (its first bytes are not {_MAGIC!r})")
        _, version, code, n, m = _HEADER.unpack(head)
        if version != _VERSION:
            raise DataError(f"{path}: index version {version} is not supported (only {_VERSION})")
        if code not in _DTYPES:
            raise DataError(f"{path}: dtype code {code} is not an integer token type (expected one of {sorted(_DTYPES)})")
        expected = _HEADER.size + 12 * n + 8 * m
        if path.stat().st_size != expected:
            raise DataError(f"{path}: {path.stat().st_size} bytes, but its header announces {n} sequences and "
                            f"{m} doc_idx entries ({expected} bytes): truncated or corrupt")
        self.dtype = np.dtype(_DTYPES[code])
        self.sizes = _map(path, "<i4", _HEADER.size, n)
        self._pointers = _map(path, "<i8", _HEADER.size + 4 * n, n)
        self.doc_idx = _map(path, "<i8", _HEADER.size + 12 * n, m)

    def _map_tokens(self) -> None:
        """Check the .bin against the index once, here, so that a mismatched pair fails early."""
        self.total_tokens = int(self.sizes.sum(dtype=np.int64))
        self._bin_bytes = self._bin_path.stat().st_size
        expected = self.total_tokens * self.dtype.itemsize
        if self._bin_bytes != expected:
            raise DataError(f"{self._bin_path}: {self._bin_bytes} bytes, but {self._idx_path.name} indexes "
                            f"{self.total_tokens} {self.dtype} tokens ({expected} bytes): the files do not match")
        self.tokens = _map(self._bin_path, self.dtype.newbyteorder("<"), 0, self.total_tokens)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        i = operator.index(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"document {i} out of range ({len(self)} documents)")
        pointer, size = int(self._pointers[i]), int(self.sizes[i])
        item = self.dtype.itemsize
        # Checked per document: a whole-index check would cost gigabytes of temporaries on big sets.
        if size < 0 or pointer < 0 or pointer % item or pointer + size * item > self._bin_bytes:
            raise DataError(f"{self._idx_path}: document {i} (byte {pointer}, {size} tokens) lies outside "
                            f"{self._bin_path.name} ({self._bin_bytes} bytes)")
        return self.tokens[pointer // item : pointer // item + size]

    def document_spans(self) -> np.ndarray:
        """(n, 2) [start, end) of every document in ``tokens``, checked against the .bin's size."""
        item = self.dtype.itemsize
        starts = self._pointers // item
        spans = np.stack([starts, starts + self.sizes], axis=1)
        bad = np.flatnonzero((self._pointers % item != 0) | (self.sizes < 0) | (spans[:, 1] * item > self._bin_bytes))
        if len(bad):
            i = int(bad[0])
            raise DataError(f"{self._idx_path}: document {i} (byte {int(self._pointers[i])}, {int(self.sizes[i])} "
                            f"tokens) lies outside {self._bin_path.name} ({self._bin_bytes} bytes)")
        return spans

    def max_token_id(self, chunk_tokens: int = 1 << 24) -> int:
        """The largest id in the .bin, read in chunks into private buffers: the whole file is read
        once (linear time), but memory stays flat and the memory map's pages are not touched."""
        largest = -1
        with open(self._bin_path, "rb") as f:
            while True:
                chunk = np.fromfile(f, dtype=self.dtype.newbyteorder("<"), count=chunk_tokens)
                if not len(chunk):
                    return largest
                largest = max(largest, int(chunk.max()))

    def __getstate__(self) -> dict:
        # Memory maps would be pickled as full copies; DataLoader workers reopen the files instead.
        return {"prefix": self.prefix}

    def __setstate__(self, state: dict) -> None:
        self.prefix = state["prefix"]
        self._open()

    def __repr__(self) -> str:
        return f"BinIdxDataset({self.prefix!r}, documents={len(self)}, tokens={self.total_tokens}, dtype={self.dtype})"


def _document_array(i: int, doc: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """One document as little-endian ``dtype``, refusing what would be silently wrapped or truncated."""
    arr = np.asarray(doc)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise DataError(f"document {i} is not a flat sequence of integer token ids")
    if len(arr) > _MAX_SEQUENCE:
        raise DataError(f"document {i} has {len(arr)} tokens; the .idx format stores at most {_MAX_SEQUENCE}")
    if arr.size:
        info = np.iinfo(dtype)
        low, high = int(arr.min()), int(arr.max())
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise DataError(f"document {i}: token id {bad} does not fit in {dtype} ({info.min}..{info.max})")
    return arr.astype(dtype.newbyteorder("<"), copy=False)


def _index_bytes(sizes: array, dtype: np.dtype) -> bytes:
    n = len(sizes)
    sizes_arr = np.frombuffer(sizes, dtype=np.int64) if n else np.zeros(0, dtype=np.int64)
    pointers = np.zeros(n, dtype="<i8")
    np.cumsum(sizes_arr[:-1] * dtype.itemsize, out=pointers[1:])
    doc_idx = np.arange(n + 1, dtype="<i8")  # one document per sequence, as json2binidx writes
    header = _HEADER.pack(_MAGIC, _VERSION, _CODES[dtype], n, len(doc_idx))
    return header + sizes_arr.astype("<i4").tobytes() + pointers.tobytes() + doc_idx.tobytes()


def write_binidx(prefix: str | os.PathLike, documents: Iterable[Sequence[int]], dtype=np.uint16) -> int:
    """Write ``documents`` (each a sequence of token ids) as ``<prefix>.bin`` and ``<prefix>.idx``.

    Documents are streamed to disk, so the iterable may be a generator over a huge corpus. Returns
    the number of tokens written. End-of-document tokens are not added: include them in the
    documents, as RWKV-LM's data does. ``dtype`` uint16 fits vocabularies up to 65536 (world, NeoX).
    """
    dtype = np.dtype(dtype)
    if dtype not in _CODES:
        raise DataError(f"binidx: dtype {dtype} has no .idx code (use one of {sorted(map(str, _CODES))})")
    bin_path, idx_path = binidx_paths(prefix)
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    # Temporary names until both files are complete: a crash never leaves a pair that looks valid.
    tmp_bin, tmp_idx = bin_path.with_name(bin_path.name + ".tmp"), idx_path.with_name(idx_path.name + ".tmp")
    sizes, total = array("q"), 0
    try:
        with open(tmp_bin, "wb") as f:
            for i, doc in enumerate(documents):
                arr = _document_array(i, doc, dtype)
                f.write(arr.tobytes())
                sizes.append(len(arr))
                total += len(arr)
        tmp_idx.write_bytes(_index_bytes(sizes, dtype))
        os.replace(tmp_bin, bin_path)
        os.replace(tmp_idx, idx_path)
    finally:
        tmp_bin.unlink(missing_ok=True)
        tmp_idx.unlink(missing_ok=True)
    return total
