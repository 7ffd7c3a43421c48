"""Samples on disk: one token array, its loss mask and the samples' spans, all memory-mapped.

A cache folder holds ``tokens.npy`` (int32, the token stream), ``train.npy`` (int8, 1 where a
token is a prediction target), ``spans.npy`` (int64 [start, end) per sample; absent when the
samples are ``sample_len`` windows of the stream, which are computed) and ``meta.json``. Opening
one costs O(1) Python objects whatever the corpus size; a sample is read when it is indexed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import DataError
from .packing import WindowSpans

_NPY_HEADER = 128  # bytes reserved for the .npy header, rewritten with the final shape on close


Sample = tuple[np.ndarray, np.ndarray]  # (token ids, train mask), the same length


class NpyAppender:
    """A 1-D ``.npy`` file written by appending chunks; its length is only known when it closes.

    numpy can only save arrays it holds whole, so the header (a fixed-size space reserved at the
    start, as the .npy format allows) is written last.
    """

    def __init__(self, path: Path, dtype):
        self.path, self.dtype, self.count = Path(path), np.dtype(dtype), 0
        self._file = open(self.path, "wb")
        self._file.write(b"\0" * _NPY_HEADER)

    def append(self, values: np.ndarray) -> None:
        chunk = np.ascontiguousarray(values, dtype=self.dtype)
        self._file.write(memoryview(chunk).cast("B"))
        self.count += len(chunk)

    def close(self) -> None:
        if self._file.closed:
            return
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.count,)}
        text = repr(header).encode("latin1")
        text += b" " * (_NPY_HEADER - 10 - len(text) - 1) + b"\n"
        self._file.seek(0)
        self._file.write(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text)
        self._file.close()


class SampleStore:
    """Sample i is ``(tokens[a:b], train[a:b])`` for ``(a, b) = spans[i]``.

    ``train`` None means every token is a target (binidx data). ``reopen`` says how to open the
    store again in another process: memory maps would otherwise be pickled as full copies.
    """

    def __init__(self, tokens: np.ndarray, train: np.ndarray | None, spans, reopen: tuple, keep_alive=None):
        self.tokens, self.train, self.spans = tokens, train, spans
        self._reopen = reopen
        self._keep_alive = keep_alive  # e.g. the temporary folder of a cache built without data_path

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range ({len(self)} samples)")
        start, end = (int(x) for x in self.spans[i])
        train = self.train[start:end] if self.train is not None else np.ones(end - start, dtype=np.int8)
        return self.tokens[start:end], train

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getstate__(self) -> dict:
        return {"reopen": self._reopen}

    def __setstate__(self, state: dict) -> None:
        kind, *args = state["reopen"]
        opened = open_cache(*args)[0] if kind == "cache" else open_binidx(*args)
        self.__dict__.update(opened.__dict__)


def open_cache(folder: Path, keep_alive=None) -> tuple[SampleStore, dict]:
    """The store and metadata of a cache folder; anything unreadable is a one-line DataError."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        tokens = np.load(folder / "tokens.npy", mmap_mode="r")
        train = np.load(folder / "train.npy", mmap_mode="r")
        if meta["layout"] == "windows":
            spans = WindowSpans(len(tokens), int(meta["sample_len"]))
        else:
            spans = np.load(folder / "spans.npy", mmap_mode="r")
        if len(train) != len(tokens) or len(spans) != meta["samples"]:
            raise ValueError("its arrays do not match its meta.json")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"the cache {folder} is unreadable ({' '.join(str(exc).split())[:200]}); rebuild it with "
                        "--data.overwrite_cache true (fit) or --overwrite (preload_datapath.py)") from None
    return SampleStore(tokens, train, spans, ("cache", str(folder)), keep_alive), meta


def open_binidx(prefix: str, sample_len: int | None) -> SampleStore:
    """A binidx pair read in place: its documents (of 2 tokens or more), or windows of its stream."""
    from .binidx import BinIdxDataset

    data = BinIdxDataset(prefix)
    if sample_len:
        spans = WindowSpans(data.total_tokens, sample_len)
    else:
        spans = data.document_spans()
        spans = spans[spans[:, 1] - spans[:, 0] > 1]
    store = SampleStore(data.tokens, None, spans, ("binidx", prefix, sample_len))
    store.binidx = data
    return store
