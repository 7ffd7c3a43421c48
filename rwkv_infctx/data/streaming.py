"""data.streaming: samples made on the fly from a source too large to preload.

Records come from ``datasets`` in streaming mode, are formatted and tokenised one at a time
(``format_record``, as the cache does) and cut into the very samples the cache would hold, in
the source's order: windows of ``sample_len + 1`` tokens of the concatenated documents
(consecutive windows share one token, as ``WindowSpans``), or one sample per document. No
shuffling: in the stream's order, a resume is a count of samples to skip, exact on any number of
devices (a shuffle buffer would have to be replayed as well).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import ConfigError, DataError
from .formats import format_record
from .packing import filter_lengths
from .pipeline import DataSpec
from .sources import (LOCAL_BUILDERS, binidx_prefix, data_suffix, explain_load_failure, is_local, load_records,
                      resolve_files)
from .store import Sample
from .tokenizer import load_tokenizer


def check_streaming_settings(values: dict) -> None:
    """The settings that need the whole corpus (or a cache) have no meaning on a stream."""
    needs_whole = {"magic_prime": "windows the whole token stream", "sources": "mixes cached sources",
                   "packing_len": "packs a cached corpus", "sort_by_length": "sorts the whole corpus",
                   "data_path": "names a cache, and a stream is never cached"}
    for key, why in needs_whole.items():
        if values.get(key):
            raise ConfigError(f"data.streaming cannot be combined with data.{key} (it {why}); unset one of them")
    if binidx_prefix(values["source"]):
        raise ConfigError("data.streaming reads records with datasets; a binidx source is already read in place: "
                          "set data.streaming false")
    if 0 < values["test_split"] < 1:
        raise ConfigError(f"data.test_split={values['test_split']} is a fraction, but a stream's size is unknown: "
                          "give a count of samples to hold out (e.g. 100) or 0")


def stream_documents(spec: DataSpec) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(token ids, loss mask) of each document kept by the length filters, in the source's order."""
    tokenizer = load_tokenizer(spec.tokenizer)
    for row, record in enumerate(_records(spec)):
        try:
            ids, train = format_record(record, spec.fmt, tokenizer)
        except DataError as exc:
            raise DataError(f"data.source {spec.source}: record {row}: {exc}") from None
        lengths, keep = filter_lengths(np.array([len(ids)]), spec.min_token_size, spec.max_token_size,
                                       spec.split_long)
        if not len(lengths):  # filtered out
            continue
        ids, train = np.asarray(ids, dtype=np.int32)[keep], np.asarray(train, dtype=np.int8)[keep]
        cuts = np.cumsum(lengths)[:-1]  # split_long's pieces
        yield from zip(np.split(ids, cuts), np.split(train, cuts))


def _records(spec: DataSpec) -> Iterator[dict]:
    records = load_records(spec.source, spec.source_name, spec.split, spec.data_files, streaming=True)
    try:
        # .iter(), not iteration: inside a DataLoader worker, datasets would hand each worker only some
        # shards, and each worker here needs the whole stream to keep the stream's batch order.
        for batch in records.iter(batch_size=64):
            yield from (dict(zip(batch, values)) for values in zip(*batch.values()))
    except Exception as exc:  # a stream fails while read, not when opened: say which file and line
        if not is_local(spec.source):
            raise
        files = resolve_files(spec.source)
        raise explain_load_failure(files, LOCAL_BUILDERS[data_suffix(files[0])], exc) from None


def stream_samples(spec: DataSpec) -> Iterator[Sample]:
    """The cache's samples for ``spec``, in order, made as the documents arrive."""
    documents = stream_documents(spec)
    if not spec.sample_len:
        yield from documents
        return
    window = spec.sample_len + 1
    ids, train = np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int8)
    for doc_ids, doc_train in documents:
        ids, train = np.concatenate([ids, doc_ids]), np.concatenate([train, doc_train])
        cut = 0
        while len(ids) - cut >= window:
            yield ids[cut:cut + window], train[cut:cut + window]
            cut += spec.sample_len
        ids, train = ids[cut:], train[cut:]
    if len(ids) > 1:  # the last, shorter window, as WindowSpans has it
        yield ids, train


class StreamedSamples(IterableDataset):
    """Training samples of a stream: after the ``held_out`` validation samples, cut into global
    batches of ``batch_size x world_size`` samples of which rank r takes the r-th slice, as
    ``GlobalBatchSampler`` does. So ``samples_done`` counts the same on any number of devices, and a
    resumed run skips exactly the samples its checkpoint had consumed.

    Every rank reads the whole stream and keeps its share: simple, and the same samples whatever
    the number of devices (``split_dataset_by_node`` would split by shard or record, not by sample).
    Under several devices a last incomplete global batch is dropped, so that every rank runs as many
    steps. DataLoader workers take whole global batches in turn, so the batch order stays the stream's.
    """

    def __init__(self, spec: DataSpec, held_out: int, batch_size: int, world_size: int = 1, rank: int = 0):
        self.spec, self.held_out = spec, held_out
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.skip_samples = 0  # set on resume, for the first epoch this loader runs

    def __iter__(self) -> Iterator[Sample]:
        # The skip is read now, not when the first sample is drawn: StreamLoader clears it in between.
        return self._samples(self.held_out + self.skip_samples)

    def _samples(self, skip: int) -> Iterator[Sample]:
        global_batch = self.batch_size * self.world_size
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        samples = itertools.islice(stream_samples(self.spec), skip, None)
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        for number, batch in enumerate(iter(lambda: list(itertools.islice(samples, global_batch)), [])):
            if len(batch) < global_batch and self.world_size > 1:
                return
            if number % workers == worker_id:
                yield from batch[mine]


class StreamLoader(DataLoader):
    """Skips the resumed samples on its first epoch only: the count is cleared once the epoch's
    iterator (and with it any worker's copy of the dataset) exists."""

    def __iter__(self):
        iterator = super().__iter__()
        self.dataset.skip_samples = 0
        return iterator


def held_out_samples(spec: DataSpec, count: int) -> list[Sample]:
    """The first ``count`` samples of the stream: the validation set (small, so held in memory)."""
    return [(np.array(ids), np.array(train)) for ids, train in itertools.islice(stream_samples(spec), count)]
