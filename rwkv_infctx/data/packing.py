"""Length handling and packing of tokenised documents, on (ids, train) pairs of numpy arrays.

``train[i]`` marks token i as a prediction target. Each document ends with the end-of-document
token. When documents are packed into one sequence the state is NOT reset between them (one
sequence is one recurrent pass); instead the EOS separator marks the boundary, as in BlinkDL's
trainer, and the first token of every packed document is not a target: predicting it would mean
predicting a new document from the previous one, so no loss crosses a document.
"""

from __future__ import annotations

import numpy as np

Sample = tuple[np.ndarray, np.ndarray]  # (ids, train), same length


def filter_lengths(docs: list[Sample], min_tokens: int | None, max_tokens: int | None,
                   split_long: bool) -> list[Sample]:
    """Drop documents shorter than min_tokens; longer than max_tokens: drop, or cut when split_long."""
    out = []
    for ids, train in docs:
        if min_tokens and len(ids) < min_tokens:
            continue
        if max_tokens and len(ids) > max_tokens:
            if not split_long:
                continue
            out += [(ids[s:s + max_tokens], train[s:s + max_tokens]) for s in range(0, len(ids), max_tokens)]
            continue
        out.append((ids, train))
    return [d for d in out if len(d[0]) > 1]


def pack(docs: list[Sample], packing_len: int, sort_by_length: bool = False) -> list[Sample]:
    """Greedy packing of whole documents into sequences of at most packing_len tokens.

    A document longer than packing_len stays alone (infinite context trains on it whole).
    """
    order = sorted(range(len(docs)), key=lambda i: -len(docs[i][0])) if sort_by_length else range(len(docs))
    packs: list[list[Sample]] = []
    current: list[Sample] = []
    used = 0
    for i in order:
        ids, train = docs[i]
        if current and used + len(ids) > packing_len:
            packs.append(current)
            current, used = [], 0
        current.append((ids, train))
        used += len(ids)
    if current:
        packs.append(current)
    return [_concat(p) for p in packs]


def _concat(docs: list[Sample]) -> Sample:
    trains = []
    for n, (_, train) in enumerate(docs):
        train = train.copy()
        if n > 0:
            train[0] = 0  # the first token of a packed document is not predicted from the one before
        trains.append(train)
    return np.concatenate([d[0] for d in docs]), np.concatenate(trains)


def cut_stream(docs: list[Sample], sample_len: int) -> list[Sample]:
    """Concatenate everything and cut windows of sample_len predictions (BlinkDL's way).

    Consecutive windows share one token so that every target of the stream is predicted once.
    """
    if not docs:
        return []
    ids = np.concatenate([d[0] for d in docs])
    train = np.concatenate([d[1] for d in docs])
    starts = range(0, max(len(ids) - 1, 0), sample_len)
    return [(ids[s:s + sample_len + 1], train[s:s + sample_len + 1]) for s in starts if len(ids[s:s + sample_len + 1]) > 1]
