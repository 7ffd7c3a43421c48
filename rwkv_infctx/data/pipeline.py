"""load -> tokenise/format -> filter -> pack or cut -> cache. Everything that changes the samples
is in ``DataSpec``; its hash names the cache folder, so a changed setting builds a new cache and an
existing one is never overwritten unless asked.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .formats import FormatConfig, format_record
from .packing import Sample, cut_stream, filter_lengths, pack
from .sources import binidx_prefix, is_local, load_records, resolve_files
from .tokenizer import load_tokenizer

CACHE_VERSION = 1


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
        return spec

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.fingerprint(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "missing"


_TOKENIZERS: dict = {}


def _tokenize_batch(batch: dict, fmt: FormatConfig, tokenizer_name: str) -> dict:
    # Worker processes build their tokenizer once, not once per batch.
    tokenizer = _TOKENIZERS.get(tokenizer_name)
    if tokenizer is None:
        tokenizer = _TOKENIZERS[tokenizer_name] = load_tokenizer(tokenizer_name)
    records = [dict(zip(batch, values)) for values in zip(*batch.values())]
    ids, train = zip(*(format_record(r, fmt, tokenizer) for r in records)) if records else ((), ())
    return {"input_ids": list(ids), "train": list(train)}


def tokenize(spec: DataSpec, num_proc: int = 1) -> list[Sample]:
    """Formatted, tokenised documents as (ids, train) numpy pairs."""
    prefix = binidx_prefix(spec.source)
    if prefix:  # already tokenised by RWKV-LM's tools: every token is a target
        from .binidx import BinIdxDataset

        docs = BinIdxDataset(prefix)
        return [(np.asarray(d, dtype=np.int64), np.ones(len(d), dtype=np.int8)) for d in docs]
    records = load_records(spec.source, spec.source_name, spec.split, spec.data_files)
    tokenized = records.map(_tokenize_batch, batched=True, batch_size=64, remove_columns=records.column_names,
                            fn_kwargs={"fmt": spec.fmt, "tokenizer_name": spec.tokenizer},
                            num_proc=num_proc if num_proc > 1 else None, desc="tokenizing", load_from_cache_file=False)
    tokenized = tokenized.with_format("numpy")
    return [(np.asarray(r["input_ids"], dtype=np.int64), np.asarray(r["train"], dtype=np.int8)) for r in tokenized]


def build_samples(spec: DataSpec, num_proc: int = 1) -> list[Sample]:
    docs = filter_lengths(tokenize(spec, num_proc), spec.min_token_size, spec.max_token_size, spec.split_long)
    if spec.sample_len:
        return cut_stream(docs, spec.sample_len)
    if spec.packing_len:
        return pack(docs, spec.packing_len, spec.sort_by_length)
    if spec.sort_by_length:
        docs = sorted(docs, key=lambda d: -len(d[0]))
    return docs


def save_cache(samples: list[Sample], folder: Path, spec: DataSpec) -> None:
    """tokens.npy + train.npy + offsets.npy + meta.json, written to a temporary folder then renamed."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lengths = [len(s[0]) for s in samples]
    np.save(tmp / "tokens.npy", np.concatenate([s[0] for s in samples]).astype(np.int32))
    np.save(tmp / "train.npy", np.concatenate([s[1] for s in samples]).astype(np.int8))
    np.save(tmp / "offsets.npy", np.cumsum([0] + lengths).astype(np.int64))
    meta = {"spec": spec.fingerprint(), "samples": len(samples), "tokens": int(sum(lengths)),
            "max_token_id": int(max(s[0].max() for s in samples)), "tokenizer": spec.tokenizer}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    if folder.exists():
        shutil.rmtree(folder)  # only reached with overwrite
    tmp.rename(folder)


def load_cache(folder: Path) -> tuple[list[Sample], dict]:
    meta = json.loads((folder / "meta.json").read_text())
    tokens = np.load(folder / "tokens.npy", mmap_mode="r")
    train = np.load(folder / "train.npy", mmap_mode="r")
    offsets = np.load(folder / "offsets.npy")
    samples = [(tokens[a:b], train[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
    return samples, meta


def check_cache_matches(folder: Path, spec: DataSpec) -> None:
    """data_path pointing straight at a cache built with other settings is an error, not a silent reuse."""
    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("tokenizer") != spec.tokenizer:
        raise DataError(f"the cache {folder} was built with tokenizer {meta.get('tokenizer')!r} but "
                        f"data.tokenizer={spec.tokenizer!r}; point data.data_path at its parent folder to build a new cache")


def cache_folder(data_path: str, spec: DataSpec) -> Path:
    root = Path(data_path)
    if (root / "meta.json").is_file():  # the user named one cache directly
        check_cache_matches(root, spec)
        return root
    return root / f"samples-{spec.key()}"


def load_or_build(spec: DataSpec, data_path: str | None, num_proc: int = 1,
                  overwrite: bool = False) -> tuple[list[Sample], dict, bool]:
    """(samples, meta, built): reads the cache when it exists, else builds (and saves if data_path)."""
    folder = cache_folder(data_path, spec) if data_path else None
    if folder is not None and (folder / "meta.json").is_file() and not overwrite:
        samples, meta = load_cache(folder)
        return samples, meta, False
    samples = build_samples(spec, num_proc)
    if not samples:
        raise DataError(f"data.source {spec.source!r} gave no samples (empty, or every document filtered "
                        "out by min_token_size/max_token_size)")
    if folder is not None:
        save_cache(samples, folder, spec)
        return (*load_cache(folder), True)
    return samples, {"max_token_id": int(max(s[0].max() for s in samples)), "samples": len(samples)}, True
