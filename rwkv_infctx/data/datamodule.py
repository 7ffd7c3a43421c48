"""A minimal data module: local text/jsonl/json files -> tokens -> whole-document samples.

Steps are small pure functions (find files -> read documents -> tokenise -> cut samples ->
collate); the LightningDataModule only wires them together and caches the tokens.
"""

from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from ..ops import CTX_LEN_MULTIPLE
from .tokenizer import load_tokenizer

TEXT_SUFFIXES = (".txt", ".md")
RECORD_SUFFIXES = (".jsonl", ".json")
DEFAULT_SOURCE = str(Path(__file__).parent / "corpus" / "english_prose.jsonl")


def resolve_files(source: str) -> list[Path]:
    """A file, a folder (its text/json files, recursively) or a glob -> sorted file list."""
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES + RECORD_SUFFIXES]
    else:
        files = [Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file()]
    if not files:
        raise DataError(f"data.source: no file matches {source!r}")
    return sorted(files)


def read_documents(path: Path, text_column: str) -> list[str]:
    """One document per .txt/.md file; one per record of a .jsonl/.json file."""
    if path.suffix not in RECORD_SUFFIXES:
        return [path.read_text(encoding="utf-8")]
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in raw.splitlines() if line.strip()]
    else:
        records = json.loads(raw)
        records = records.get("data", records) if isinstance(records, dict) else records
    docs = []
    for i, record in enumerate(records):
        if not isinstance(record, dict) or text_column not in record:
            raise DataError(f"{path}: record {i} has no column {text_column!r} (set data.text_column)")
        docs.append(str(record[text_column]))
    return docs


def tokenize_documents(docs: list[str], tokenizer) -> list[np.ndarray]:
    """Each document's ids followed by the end-of-document token; empty documents dropped."""
    out = []
    for doc in docs:
        ids = tokenizer.encode(doc)
        if ids:
            out.append(np.asarray(ids + [tokenizer.eos_id], dtype=np.int64))
    return out


def cut_samples(docs: list[np.ndarray], sample_len: int | None, max_token_size: int | None) -> list[np.ndarray]:
    """Samples of (input + 1 target) tokens.

    With ``sample_len`` the documents are concatenated and cut into windows of sample_len
    predictions (consecutive windows share one token so no target is lost). Without it each
    document is one sample, however long: the trainer's chunked state carry handles any length.
    """
    if sample_len:
        stream = np.concatenate(docs) if docs else np.zeros(0, dtype=np.int64)
        starts = range(0, max(len(stream) - 1, 0), sample_len)
        return [stream[s : s + sample_len + 1] for s in starts if len(stream[s : s + sample_len + 1]) > 1]
    samples = [d for d in docs if len(d) > 1]
    if max_token_size:
        samples = [d for d in samples if len(d) - 1 <= max_token_size]
    return samples


class TokenSamples(Dataset):
    def __init__(self, samples: list[np.ndarray]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.samples[i]


def collate_samples(samples: list[np.ndarray], multiple: int = CTX_LEN_MULTIPLE) -> dict[str, torch.Tensor]:
    """Right-pad to a common length (a multiple of ``multiple``); padding has mask 0.

    Padding sits after each sample's last real token, so it never changes a real token's output.
    """
    longest = max(len(s) - 1 for s in samples)
    T = -(-longest // multiple) * multiple
    input_ids = torch.zeros(len(samples), T, dtype=torch.long)
    targets = torch.zeros(len(samples), T, dtype=torch.long)
    mask = torch.zeros(len(samples), T, dtype=torch.float32)
    for i, s in enumerate(samples):
        n = len(s) - 1
        ids = torch.from_numpy(np.asarray(s, dtype=np.int64))
        input_ids[i, :n], targets[i, :n], mask[i, :n] = ids[:-1], ids[1:], 1.0
    return {"input_ids": input_ids, "targets": targets, "mask": mask}


def cache_key(files: list[Path], tokenizer: str, text_column: str) -> str:
    """Everything that changes the tokens: files (with size and mtime), tokenizer, column."""
    parts = [tokenizer, text_column] + [f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def load_or_tokenize(files: list[Path], tokenizer_name: str, text_column: str,
                     data_path: str | None) -> list[np.ndarray]:
    """Tokenised documents, read from ``data_path`` when it holds them, else built (and saved there)."""
    cache = Path(data_path) / f"tokens-{cache_key(files, tokenizer_name, text_column)}.npz" if data_path else None
    if cache is not None and cache.is_file():
        stored = np.load(cache)
        return np.split(stored["tokens"], stored["offsets"][1:-1])
    tokenizer = load_tokenizer(tokenizer_name)
    docs = tokenize_documents([d for f in files for d in read_documents(f, text_column)], tokenizer)
    if cache is not None and docs:
        cache.parent.mkdir(parents=True, exist_ok=True)
        offsets = np.cumsum([0] + [len(d) for d in docs])
        tmp = cache.with_name(cache.stem + ".tmp.npz")
        np.savez(tmp, tokens=np.concatenate(docs), offsets=offsets)
        tmp.replace(cache)
    return docs


class RWKVDataModule(L.LightningDataModule):
    def __init__(
        self,
        source: str = DEFAULT_SOURCE,
        tokenizer: str = "world",
        data_path: str | None = None,
        text_column: str = "text",
        batch_size: int = 4,
        sample_len: int | None = None,
        max_token_size: int | None = None,
        val_fraction: float = 0.02,
        num_workers: int = 0,
        seed: int = 42,
    ):
        """Local text data for RWKV training.

        Args:
            source: A local file, folder or glob: .txt/.md (one document per file) or .jsonl/.json
                (one document per record). Default: the embedded English prose corpus.
            tokenizer: world (RWKV, 65536 tokens) or a path to a Hugging Face tokenizer.json.
            data_path: Folder where tokenised documents are cached (keyed by files, tokenizer and
                column); null tokenises in memory on every run.
            text_column: The record field holding the text (.jsonl/.json).
            batch_size: Samples per micro-batch (per device).
            sample_len: If set, all documents are concatenated (each ended by the end-of-document
                token) and cut into samples of this many tokens; if null, each document is one sample.
            max_token_size: Drop documents longer than this many tokens (null keeps all). Long
                documents are never cut to ctx_len: the chunked state carry trains on them whole.
            val_fraction: Fraction of the samples held out for validation during fit (at least one).
            num_workers: DataLoader worker processes.
            seed: Seed of the train/validation split and of the shuffling.
        """
        super().__init__()
        self.save_hyperparameters()
        if batch_size <= 0:
            raise DataError(f"data.batch_size must be positive, got {batch_size}")
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        self.max_token_id: int | None = None
        self.train_set = self.val_set = None

    def setup(self, stage: str) -> None:
        hp = self.hparams
        files = resolve_files(hp.source)
        docs = load_or_tokenize(files, hp.tokenizer, hp.text_column, hp.data_path)
        samples = cut_samples(docs, hp.sample_len, hp.max_token_size)
        if not samples:
            raise DataError(f"data.source {hp.source!r} gave no samples (empty files, or all longer than max_token_size)")
        self.max_token_id = int(max(s.max() for s in samples))
        if stage in ("validate", "test"):  # evaluate on the whole source
            self.train_set, self.val_set = None, TokenSamples(samples)
            return
        order = np.random.default_rng(hp.seed).permutation(len(samples))
        n_val = min(max(1, round(len(samples) * hp.val_fraction)), len(samples) - 1) if hp.val_fraction > 0 else 0
        self.val_set = TokenSamples([samples[i] for i in order[:n_val]]) if n_val else None
        self.train_set = TokenSamples([samples[i] for i in order[n_val:]])

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(dataset, batch_size=self.hparams.batch_size, shuffle=shuffle, generator=generator,
                          collate_fn=collate_samples, num_workers=self.hparams.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []

    def test_dataloader(self):
        return self.val_dataloader()
