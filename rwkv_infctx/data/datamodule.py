"""The LightningDataModule: wires the data pipeline (``pipeline.py``) to padded training batches."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError
from ..ops import CTX_LEN_MULTIPLE
from .formats import ColumnSpec, Format, FormatConfig
from .magic_prime import check_magic_prime_setting, magic_prime_datasets
from .mixing import ConcatStore, mixture_counts, mixture_index, parse_entries
from .pipeline import DataSpec, load_or_build
from .sampler import GlobalBatchSampler, MagicPrimeSampler, ShardSampler
from .sources import binidx_prefix
from .store import Sample, SampleStore
from .streaming import StreamLoader, StreamedSamples, check_streaming_settings, held_out_samples
from .tokenizer import load_tokenizer

DEFAULT_SOURCE = str(Path(__file__).parent / "corpus" / "english_prose.jsonl")


class TokenSamples(Dataset):
    """The samples of a ``SampleStore`` picked by an index array (a split): no object per sample."""

    def __init__(self, store: SampleStore, index: np.ndarray | None = None):
        self.store = store
        self.index = np.arange(len(store)) if index is None else np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Sample:
        if i == len(self.index):  # ShardSampler's filler: a real sample's shape, nothing trained
            ids, train = self.store[int(self.index[0])]
            return ids, np.zeros(len(train), dtype=bool)
        return self.store[int(self.index[i])]

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def collate_samples(samples: list[Sample], multiple: int = CTX_LEN_MULTIPLE) -> dict[str, torch.Tensor]:
    """Inputs, next-token targets and loss mask, right-padded to a common multiple of ``multiple``.

    Position t predicts token t+1, and is in the loss when token t+1 is a target. Padding sits
    after each sample's last real token, so it never changes a real token's output.
    """
    longest = max(len(ids) - 1 for ids, _ in samples)
    T = -(-longest // multiple) * multiple
    input_ids = torch.zeros(len(samples), T, dtype=torch.long)
    targets = torch.zeros(len(samples), T, dtype=torch.long)
    mask = torch.zeros(len(samples), T, dtype=torch.float32)
    for i, (ids, train) in enumerate(samples):
        n = len(ids) - 1
        ids = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        input_ids[i, :n], targets[i, :n] = ids[:-1], ids[1:]
        mask[i, :n] = torch.from_numpy(np.asarray(train[1:], dtype=np.float32))
    return {"input_ids": input_ids, "targets": targets, "mask": mask}


def split_train_test(n: int, test_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """test_split < 1 is a fraction, >= 1 a count; at least one sample stays for training."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(n * test_split) if test_split < 1 else int(test_split)
    n_test = min(max(n_test, 1 if test_split > 0 else 0), n - 1)
    return order[n_test:], order[:n_test]


# The data.* keys that change a source's samples: data.sources entries may override them per source.
_FORMAT_KEYS = tuple(f.name for f in fields(FormatConfig))  # data.* keys of the same names
_PER_SOURCE_KEYS = {"source", "source_name", "split", "data_files", *_FORMAT_KEYS, "min_token_size",
                    "max_token_size", "split_long", "sample_len", "packing_len", "sort_by_length"}


def _make_spec(values: dict) -> DataSpec:
    fmt = FormatConfig(**{k: values[k] if k != "columns" else list(values[k] or []) for k in _FORMAT_KEYS})
    return DataSpec(fmt=fmt, **{k: v for k, v in values.items() if k not in _FORMAT_KEYS})


class RWKVDataModule(L.LightningDataModule):
    def __init__(
        self,
        source: str = DEFAULT_SOURCE,
        source_name: str | None = None,
        split: str = "train",
        data_files: str | list[str] | dict | None = None,
        tokenizer: str = "world",
        data_path: str | None = None,
        overwrite_cache: bool = False,
        streaming: bool = False,
        num_proc: int = 1,
        format: Format = "text",
        text_column: str = "text",
        prompt_column: str = "prompt",
        completion_column: str = "completion",
        mask_prompt: bool = True,
        columns: list[ColumnSpec] | None = None,
        conversation_column: str = "conversations",
        chat_template: Literal["rwkv", "hf"] = "rwkv",
        train_on: Literal["assistant", "all"] = "assistant",
        min_token_size: int | None = None,
        max_token_size: int | None = None,
        split_long: bool = False,
        sample_len: int | None = None,
        magic_prime: int | Literal["auto"] | None = None,
        packing_len: int | None = None,
        sort_by_length: bool = False,
        test_split: float = 0.02,
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 42,
        sources: list[dict] | None = None,
    ):
        """Text data for RWKV training: load, tokenise, format, pack, cache.

        Args:
            source: A Hugging Face hub dataset name, or a local file, folder or glob of
                .json/.jsonl/.parquet/.csv/.txt/.md files (.jsonl.zst, .jsonl.gz and .json.gz are read
                compressed), or an RWKV-LM binidx prefix (data/x for data/x.bin + data/x.idx, read in
                place by memory map). Default: the embedded English prose corpus.
            source_name: The hub dataset's configuration name (load_dataset's second argument).
            split: The hub dataset's split.
            data_files: Passed to datasets.load_dataset for hub datasets.
            tokenizer: world (RWKV, 65536), neox (GPT-NeoX 20B, 50277) or a Hugging Face tokenizer.json path.
            data_path: Cache folder: tokenised samples are saved in a subfolder named by a hash of
                every setting that changes them, and memory-mapped on the next run. Without it, the
                cache is built in a temporary folder for this run.
            overwrite_cache: Rebuild the cache for these settings even if it exists.
            streaming: Read the source as a stream (datasets' streaming mode) for data too large to
                preload: records are formatted, tokenised and cut into samples as training goes, in
                the source's order (no shuffling); the first test_split samples (a count) are held out
                for validation, and a resumed run goes on after the samples its checkpoint consumed.
                Not with magic_prime, sources, packing_len, sort_by_length or data_path.
            num_proc: Worker processes for tokenisation.
            format: text | prompt_completion | columns | conversation.
            text_column: The text field (format text).
            prompt_column: The prompt field (format prompt_completion).
            completion_column: The completion field (format prompt_completion).
            mask_prompt: Loss only on the completion (format prompt_completion).
            columns: Multi-column template (format columns): a list of {name, prefix, suffix, train}.
            conversation_column: The list of turns (role/content or ShareGPT from/value).
            chat_template: rwkv ('User: ...\\n\\nAssistant: ...\\n\\n') or hf (the tokenizer's template).
            train_on: assistant (loss on assistant replies only) or all.
            min_token_size: Drop documents shorter than this many tokens.
            max_token_size: Drop documents longer than this (or cut them, with split_long). Long
                documents are otherwise kept whole: the chunked state carry trains on any length.
            split_long: Cut documents longer than max_token_size into pieces instead of dropping them.
            sample_len: Concatenate all documents and cut samples of exactly this many tokens (BlinkDL's way);
                a positive number or null.
            magic_prime: auto or a prime = 2 (mod 3): BlinkDL's sampling (RWKV-LM's --magic_prime).
                Sample n of the run is the sample_len + 1 tokens of the whole token stream from
                token (floor(p * 0.618...) * (n+1)^3 mod p) * sample_len: every window once per
                p samples, a fixed order (no shuffling, the same on any number of devices, resumable).
                auto: the largest such prime below tokens / sample_len - 1. Needs sample_len; a
                binidx source is read in place. Validation windows come from the end of the stream.
            packing_len: Pack whole short documents into samples of at most this many tokens.
            sort_by_length: Longest first (packing, or whole documents); training then keeps
                this order instead of shuffling, so an out-of-memory batch shows at once.
            test_split: Held out for validation: a fraction (< 1) or a count (>= 1).
            batch_size: Samples per micro-batch, per device. The global batch of one optimizer step
                is batch_size x devices x nodes x trainer.accumulate_grad_batches; the samples of
                each global batch are the same whatever the number of devices.
            num_workers: DataLoader worker processes.
            seed: Seed of the train/validation split and of the shuffling.
            sources: Several sources in one run, instead of source: a list of {source, weight} or
                {source, repeat}, each with any of the format and length keys above to override
                for that source (e.g. format: conversation). Each source has its own cache. weight:
                the source's share of the training samples of an epoch (epoch size = all training
                samples); repeat: how many times its samples are used per epoch (0.5: a seeded half;
                2: each twice). The mixture is drawn once per run with the seed; validation holds
                out test_split of every source, unweighted.
        """
        super().__init__()
        self.save_hyperparameters()
        if batch_size <= 0:
            raise DataError(f"data.batch_size must be positive, got {batch_size}")
        if test_split < 0:
            raise DataError(f"data.test_split must be >= 0, got {test_split}")
        check_magic_prime_setting(magic_prime, sample_len, packing_len)
        if streaming:
            check_streaming_settings(self.hparams)
        if magic_prime is not None and sources is not None:
            raise ConfigError("data.magic_prime windows one token stream: give data.source, not data.sources")
        base = {k: v for k, v in self.hparams.items() if k in _PER_SOURCE_KEYS | {"tokenizer"}}
        if magic_prime is not None:
            base["sample_len"] = None  # the cache keeps whole documents: magic_prime windows their stream
        self.weights = self.repeats = None
        if sources is None:
            self.specs = [_make_spec(base)]
        else:
            overrides, self.weights, self.repeats = parse_entries(sources, _PER_SOURCE_KEYS)
            self.specs = [_make_spec({**base, **o}) for o in overrides]
        self.spec = self.specs[0]
        self._max_token_id: int | None = None
        self._stores: list[SampleStore] = []
        self.tokenizer_vocab_size: int | None = None
        self.train_set = self.val_set = None
        self._resume: dict | None = None

    def preload(self, overwrite: bool | None = None) -> dict:
        """Build (or find) the cache; returns its metadata. Used by preload_datapath.py."""
        hp = self.hparams
        if hp.streaming:
            raise ConfigError("data.streaming trains from the source as it is read: there is no cache to preload")
        overwrite = hp.overwrite_cache if overwrite is None else overwrite
        metas = [{**meta, "built": built} for _, meta, built in
                 (load_or_build(spec, hp.data_path, hp.num_proc, overwrite) for spec in self.specs)]
        if len(metas) == 1:
            return metas[0]
        ids = [m["max_token_id"] for m in metas if m["max_token_id"] is not None]
        return {"samples": sum(m["samples"] for m in metas), "tokens": sum(m["tokens"] for m in metas),
                "max_token_id": max(ids, default=None), "built": any(m["built"] for m in metas),
                "in_place": all(m.get("in_place") for m in metas)}

    def prepare_data(self) -> None:
        if self.hparams.data_path:  # rank 0 builds the cache once; setup() then reads it everywhere
            self.preload()

    def setup(self, stage: str) -> None:
        hp = self.hparams
        # binidx data was tokenised elsewhere: only its ids are checked, not data.tokenizer
        tokenized_here = [spec for spec in self.specs if not binidx_prefix(spec.source)]
        self.tokenizer_vocab_size = load_tokenizer(hp.tokenizer).vocab_size if tokenized_here else None
        if hp.streaming:
            self._setup_stream()
            return
        if hp.magic_prime is not None:  # BlinkDL's sampling: windows of the whole token stream
            store, meta, _ = load_or_build(self.spec, hp.data_path, hp.num_proc, overwrite=False)
            self._stores, self._max_ids, self._max_token_id = [store], [meta["max_token_id"]], None
            self.train_set, self.val_set = magic_prime_datasets(stage, store.tokens, store.train, hp.sample_len,
                                                                hp.magic_prime, hp.test_split)
            return
        opened = [load_or_build(spec, hp.data_path, hp.num_proc, overwrite=False) for spec in self.specs]
        self._stores = [store for store, _, _ in opened]
        self._max_token_id = None
        self._max_ids = [meta["max_token_id"] for _, meta, _ in opened]
        store = self._stores[0] if len(opened) == 1 else ConcatStore(self._stores)
        for spec, (part, meta, built) in zip(self.specs, opened):
            how = "read in place" if meta.get("in_place") else "built" if built else "read from cache"
            rank_zero_info(f"data: {len(part)} samples of {spec.source} ({how})")
        if stage in ("validate", "test"):  # evaluate on the whole source
            self.train_set, self.val_set = None, TokenSamples(store)
            return
        train_idx, test_idx = split_train_test(len(store), hp.test_split, hp.seed)
        if len(opened) > 1:
            pools = [train_idx[store.source_of(train_idx) == k] for k in range(len(opened))]
            counts = mixture_counts([len(p) for p in pools], self.weights, self.repeats)
            train_idx = mixture_index(pools, counts, hp.seed)
            rank_zero_info(f"data: training mixture of {counts} samples per source")
        self.train_set = TokenSamples(store, train_idx)
        self.val_set = TokenSamples(store, test_idx) if len(test_idx) else None

    def _setup_stream(self) -> None:
        """Validation: the first test_split samples of the stream; training: the samples after them."""
        held_out = int(self.hparams.test_split)
        self.val_set = TokenSamples(held_out_samples(self.spec, held_out)) if held_out else None
        world_size, rank = self._world()
        self.train_set = StreamedSamples(self.spec, held_out, self.hparams.batch_size, world_size, rank)
        rank_zero_info(f"data: streaming {self.spec.source}, {held_out} samples held out for validation")

    @property
    def max_token_id(self) -> int | None:
        """The largest token id of the data (checked against model.vocab_size). A binidx source read in
        place is scanned for it only when asked, so that opening it stays instant."""
        if self._max_token_id is None and self._stores:
            self._max_token_id = max(known if known is not None else store.binidx.max_token_id()
                                     for known, store in zip(self._max_ids, self._stores))
        return self._max_token_id

    def _loader(self, dataset, sampler=None) -> DataLoader:
        return DataLoader(dataset, batch_size=self.hparams.batch_size, sampler=sampler,
                          collate_fn=collate_samples, num_workers=self.hparams.num_workers)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        if self.hparams.streaming:
            return self._stream_loader()
        world_size, rank = self._world()
        sampler_class = MagicPrimeSampler if self.hparams.magic_prime is not None else GlobalBatchSampler
        sampler = sampler_class(self.train_set, self.hparams.batch_size, world_size, rank,
                                shuffle=not self.hparams.sort_by_length, seed=self.hparams.seed)
        if self._resume:
            sampler.resume(self._resume["epoch"], self._batches_to_skip(sampler.global_batch))
            self._resume = None
        return self._loader(self.train_set, sampler)

    def _stream_loader(self) -> DataLoader:
        if self._resume and self._resume["epoch"] == self.trainer.current_epoch:
            # samples, not batches: the global batch may differ from the checkpoint's
            self.train_set.skip_samples = self._resume["batches_done"] * self._resume["global_batch"]
        self._resume = None
        return StreamLoader(self.train_set, batch_size=self.hparams.batch_size, collate_fn=collate_samples,
                            num_workers=self.hparams.num_workers)

    # -- mid-epoch resume: Lightning saves this with every checkpoint ----------------------------
    def state_dict(self) -> dict:
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        batch_size = self.hparams.batch_size
        return {"epoch": trainer.current_epoch, "global_batch": batch_size * trainer.world_size,
                "batches_done": trainer.fit_loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state_dict: dict) -> None:
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":  # validate/test restore it too: not theirs
            return
        self._resume = dict(state_dict) or None
        if self._resume and trainer.fit_loop._combined_loader is not None:
            # DeepSpeed and FSDP restore after building the train loader (to count the steps):
            # make Lightning ask for it again, so that it starts where the checkpoint stopped.
            # No public API asks for that (tests/test_lightning_internals.py checks the attribute);
            # torchdata's StatefulDataLoader would move the position into Lightning's own loader
            # state, but it would replace our samplers' resume (BlinkDL's magic-prime order too).
            trainer.fit_loop._combined_loader = None

    def _batches_to_skip(self, global_batch: int) -> int:
        samples_done = self._resume["batches_done"] * self._resume["global_batch"]
        if samples_done % global_batch:
            rank_zero_warn(f"resuming with a global batch of {global_batch} samples instead of "
                           f"{self._resume['global_batch']}: the epoch goes on from the nearest batch")
        return samples_done // global_batch

    def val_dataloader(self):
        return self._loader(self.val_set, ShardSampler(self.val_set, *self._world())) if self.val_set is not None else []

    def test_dataloader(self):
        return self.val_dataloader()
