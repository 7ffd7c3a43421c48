"""load -> tokenise/format -> filter -> pack or cut -> cache, streamed in batches.

Everything that changes the samples is in ``DataSpec``; its hash names the cache folder, so a
changed setting builds a new cache and an existing one is never overwritten unless asked.

The corpus is never held in memory: ``datasets`` tokenises into an Arrow file on disk (with
worker processes), which is read back in record batches; each batch is filtered and appended to
the cache's token and mask files, and only per-sample start offsets (and, for sort_by_length,
per-document lengths) are kept as numpy arrays.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DataError
from .formats import FormatConfig, format_record
from .packing import NextFit, WindowSpans, filter_lengths, spans_from_starts
from .sources import binidx_prefix, is_local, load_records, resolve_files
from .store import NpyAppender, SampleStore, open_binidx, open_cache
from .tokenizer import load_tokenizer

CACHE_VERSION = 2
_RECORD_BATCH = 256  # documents per step: the working set is one batch, bounded whatever the corpus size


@dataclass
class DataSpec:
    source: str
    source_name: str | None = None
    split: str = "train"
    data_files: str | list[str] | dict | None = None
    tokenizer: str = "world"
    fmt: FormatConfig = field(default_factory=FormatConfig)
    min_token_size: int | None = None
    max_token_size: int | None = None
    split_long: bool = False
    sample_len: int | None = None
    packing_len: int | None = None
    sort_by_length: bool = False

    def __post_init__(self) -> None:
        for name in ("sample_len", "packing_len", "min_token_size", "max_token_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise DataError(f"data.{name} must be a positive number of tokens or null, got {value}")

    def fingerprint(self) -> dict:
        """The spec plus what identifies its inputs' content (local file sizes and mtimes)."""
        spec = asdict(self)
        prefix = binidx_prefix(self.source)
        if prefix:
            files = [Path(prefix + ".bin"), Path(prefix + ".idx")]
        elif is_local(self.source):
            files = resolve_files(self.source)
        else:
            files = []
        spec["files"] = [f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
        tok = Path(self.tokenizer)
        if tok.exists():
            spec["tokenizer_file"] = _file_digest(tok if tok.is_file() else tok / "tokenizer.json")
        spec["cache_version"] = CACHE_VERSION
        return json.loads(json.dumps(spec, default=str))

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.fingerprint(), sort_keys=True).encode()).hexdigest()[:16]

    def binidx_in_place(self) -> str | None:
        """The binidx prefix when its samples are its documents or windows as they are: read in place."""
        prefix = binidx_prefix(self.source)
        changes = self.min_token_size or self.max_token_size or (
            not self.sample_len and (self.packing_len or self.sort_by_length))
        return prefix if prefix and not changes else None


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "missing"


# -- tokenising -----------------------------------------------------------------------------------
_TOKENIZERS: dict = {}


def _tokenize_batch(batch: dict, indices: list[int], fmt: FormatConfig, tokenizer_name: str, source: str) -> dict:
    # Worker processes build their tokenizer once, not once per batch.
    tokenizer = _TOKENIZERS.get(tokenizer_name)
    if tokenizer is None:
        tokenizer = _TOKENIZERS[tokenizer_name] = load_tokenizer(tokenizer_name)
    ids, train = [], []
    for row, values in zip(indices, zip(*batch.values())):
        try:
            record_ids, record_train = format_record(dict(zip(batch, values)), fmt, tokenizer)
        except DataError as exc:
            raise DataError(f"data.source {source}: record {row}: {exc}") from None
        ids.append(record_ids)
        train.append(record_train)
    return {"input_ids": ids, "train": train}


def _token_features():
    import datasets

    return datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                              "train": datasets.Sequence(datasets.Value("int8"))})


def document_batches(spec: DataSpec, num_proc: int, workdir: Path) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(token ids, loss mask, document lengths) of consecutive documents, a batch at a time."""
    prefix = binidx_prefix(spec.source)
    if prefix:  # already tokenised by RWKV-LM's tools: every token is a target
        yield from _binidx_batches(prefix)
        return
    import pyarrow.compute as pc

    records = load_records(spec.source, spec.source_name, spec.split, spec.data_files)
    tokenized = records.map(_tokenize_batch, batched=True, batch_size=64, with_indices=True,
                            remove_columns=records.column_names, features=_token_features(),
                            fn_kwargs={"fmt": spec.fmt, "tokenizer_name": spec.tokenizer, "source": spec.source},
                            num_proc=num_proc if num_proc > 1 else None, desc="tokenizing",
                            load_from_cache_file=False, cache_file_name=str(workdir / "tokenized.arrow"))
    for table in tokenized.with_format("arrow").iter(batch_size=_RECORD_BATCH):
        ids, train = table.column("input_ids"), table.column("train")
        yield (pc.list_flatten(ids).to_numpy(), pc.list_flatten(train).to_numpy(),
               pc.list_value_length(ids).to_numpy().astype(np.int64))


def _binidx_batches(prefix: str, docs_per_batch: int = _RECORD_BATCH):
    from .binidx import BinIdxDataset

    data = BinIdxDataset(prefix)
    for first in range(0, len(data), docs_per_batch):
        docs = [data[i] for i in range(first, min(first + docs_per_batch, len(data)))]
        ids = np.concatenate(docs).astype(np.int32)
        yield ids, np.ones(len(ids), dtype=np.int8), np.array([len(d) for d in docs], dtype=np.int64)


# -- writing the cache ----------------------------------------------------------------------------
class _CacheWriter:
    """Appends filtered documents to tokens.npy/train.npy and records where samples start."""

    def __init__(self, spec: DataSpec, folder: Path, work: Path):
        self.spec, self.folder = spec, folder
        self.tokens = NpyAppender(folder / "tokens.npy", np.int32)
        self.train = NpyAppender(folder / "train.npy", np.int8)
        self.sorting = spec.sort_by_length and not spec.sample_len
        self.starts = None if spec.sample_len else NpyAppender(work / "starts.npy", np.int64)
        self.lengths = NpyAppender(work / "lengths.npy", np.int64) if self.sorting else None
        self.packer = NextFit(spec.packing_len) if spec.packing_len and not spec.sample_len and not self.sorting else None
        self.max_token_id = -1

    def add(self, ids: np.ndarray, train: np.ndarray, lengths: np.ndarray) -> None:
        spec = self.spec
        lengths, keep = filter_lengths(lengths, spec.min_token_size, spec.max_token_size, spec.split_long)
        if not keep.all():
            ids, train = ids[keep], train[keep]
        if not len(ids):
            return
        self.max_token_id = max(self.max_token_id, int(ids.max()))
        local_starts = np.concatenate([[0], np.cumsum(lengths[:-1])])
        if self.packer is not None:
            new_pack = self.packer.starts(lengths)
            train = train.copy()
            train[local_starts[~new_pack]] = 0  # a packed document's first token is not predicted
            local_starts = local_starts[new_pack]
        if self.lengths is not None:
            self.lengths.append(lengths)
        if self.starts is not None:
            self.starts.append(self.tokens.count + local_starts)
        self.tokens.append(ids)
        self.train.append(train)

    def finish(self) -> dict:
        """Closes the arrays, lays the samples out (spans.npy) and returns the metadata."""
        for appender in (self.tokens, self.train, self.starts, self.lengths):
            if appender is not None:
                appender.close()
        n_tokens = self.tokens.count
        if self.spec.sample_len:
            windows = WindowSpans(n_tokens, self.spec.sample_len)
            return self._meta("windows", len(windows), windows.total_tokens())
        starts = np.load(self.starts.path)
        if self.sorting:
            spans = _sorted_spans(self, starts, np.load(self.lengths.path))
        else:
            spans = spans_from_starts(starts, n_tokens)
        np.save(self.folder / "spans.npy", spans)
        return self._meta("spans", len(spans), int((spans[:, 1] - spans[:, 0]).sum()) if len(spans) else 0)

    def _meta(self, layout: str, samples: int, tokens: int) -> dict:
        return {"spec": self.spec.fingerprint(), "layout": layout, "sample_len": self.spec.sample_len,
                "samples": samples, "tokens": tokens, "stream_tokens": self.tokens.count,
                "max_token_id": self.max_token_id, "tokenizer": self.spec.tokenizer}


def _sorted_spans(writer: _CacheWriter, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Longest documents first (stable); packed, they are copied into tokens.npy in that order."""
    order = np.argsort(-lengths, kind="stable")
    if not writer.spec.packing_len:
        return np.stack([starts[order], starts[order] + lengths[order]], axis=1)
    new_pack = NextFit(writer.spec.packing_len).starts(lengths[order])
    source_tokens, source_train = np.load(writer.tokens.path, mmap_mode="r"), np.load(writer.train.path, mmap_mode="r")
    tokens_path, train_path = writer.tokens.path, writer.train.path
    writer.tokens = NpyAppender(tokens_path.with_name("tokens-sorted.npy"), np.int32)
    writer.train = NpyAppender(train_path.with_name("train-sorted.npy"), np.int8)
    pack_starts = []
    for doc, first in zip(order.tolist(), new_pack.tolist()):
        begin, end = int(starts[doc]), int(starts[doc] + lengths[doc])
        train = np.array(source_train[begin:end])
        if first:
            pack_starts.append(writer.tokens.count)
        else:
            train[0] = 0
        writer.tokens.append(source_tokens[begin:end])
        writer.train.append(train)
    writer.tokens.close()
    writer.train.close()
    del source_tokens, source_train
    os.replace(writer.tokens.path, tokens_path)
    os.replace(writer.train.path, train_path)
    writer.tokens.path, writer.train.path = tokens_path, train_path
    return spans_from_starts(np.array(pack_starts, dtype=np.int64), writer.tokens.count)


def build_cache(spec: DataSpec, folder: Path, num_proc: int = 1) -> dict:
    """Streams the source into ``folder`` (written as ``<folder>.tmp-<pid>``, renamed when complete,
    removed on any failure: a crash or a full disk never leaves a cache that looks valid)."""
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        work = tmp / "work"
        work.mkdir(parents=True)
        writer = _CacheWriter(spec, tmp, work)
        for ids, train, lengths in document_batches(spec, num_proc, work):
            writer.add(ids, train, lengths)
        meta = writer.finish()
        if not meta["samples"]:
            raise DataError(f"data.source {spec.source!r} gave no samples (empty, or every document filtered "
                            "out by min_token_size/max_token_size)")
        shutil.rmtree(work)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if folder.exists():
            shutil.rmtree(folder)  # only reached with overwrite, once the new cache is complete
        tmp.rename(folder)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DataError(f"disk full while writing the cache to {folder.parent}; free space or point "
                            "data.data_path at another disk") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


# -- finding the cache ----------------------------------------------------------------------------
def check_cache_matches(folder: Path, spec: DataSpec) -> None:
    """data_path pointing straight at a cache built with other settings is an error, not a silent reuse."""
    try:
        built_with = json.loads((folder / "meta.json").read_text())["spec"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"the cache {folder} is unreadable ({exc}); rebuild it with --data.overwrite_cache true "
                        "or --overwrite (preload_datapath.py)") from None
    wanted = spec.fingerprint()
    differ = [k for k in sorted(set(wanted) | set(built_with)) if wanted.get(k) != built_with.get(k)]
    if differ:
        shown = ", ".join(f"{k}={built_with.get(k)!r} (now {wanted.get(k)!r})" for k in differ[:3])
        raise DataError(f"the cache {folder} was built with other data settings: {shown}; point data.data_path "
                        "at its parent folder to build a new cache beside it")


def cache_folder(data_path: str, spec: DataSpec) -> Path:
    root = Path(data_path).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"data.data_path {data_path!r} is a file; it must be a folder for the cache")
    if (root / "meta.json").is_file():  # the user named one cache directly
        check_cache_matches(root, spec)
        return root
    return root / f"samples-{spec.key()}"


def _check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"data.data_path {str(root)!r} cannot be created ({exc.strerror})") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise DataError(f"data.data_path {str(root)!r} is not writable; choose a folder you can write to")


def load_or_build(spec: DataSpec, data_path: str | None, num_proc: int = 1,
                  overwrite: bool = False) -> tuple[SampleStore, dict, bool]:
    """(samples, meta, built): reads the cache when it exists, else builds it (in data_path, or in a
    temporary folder that lives as long as the samples). A binidx source is read in place."""
    prefix = spec.binidx_in_place()
    if prefix:
        store = open_binidx(prefix, spec.sample_len)
        if not len(store):
            raise DataError(f"data.source {spec.source!r} gave no samples (no document of 2 tokens or more)")
        return store, {"samples": len(store), "tokens": store.binidx.total_tokens, "max_token_id": None,
                       "in_place": True}, False
    if data_path is None:
        keep_alive = tempfile.TemporaryDirectory(prefix="rwkv-samples-")
        folder = Path(keep_alive.name) / "samples"
        build_cache(spec, folder, num_proc)
        return (*open_cache(folder, keep_alive), True)
    folder = cache_folder(data_path, spec)
    if (folder / "meta.json").is_file() and not overwrite:
        return (*open_cache(folder), False)
    _check_writable(folder.parent)
    build_cache(spec, folder, num_proc)
    return (*open_cache(folder), True)


def build_samples(spec: DataSpec, num_proc: int = 1) -> SampleStore:
    """The samples of ``spec``, built without a cache folder (kept in a temporary one)."""
    return load_or_build(spec, None, num_proc)[0]
