"""Length handling and packing of tokenised documents, as arithmetic on document lengths.

The pipeline streams documents as flat token arrays plus their lengths, so every step here
works on a batch of lengths (numpy), never on per-document objects; the samples end up as spans
``[start, end)`` of one token array.

``train[i]`` marks token i as a prediction target. Each document ends with the end-of-document
token. When documents are packed into one sequence the state is NOT reset between them (one
sequence is one recurrent pass); instead the EOS separator marks the boundary, as in BlinkDL's
trainer, and the first token of every packed document is not a target: predicting it would mean
predicting a new document from the previous one, so no loss crosses a document.
"""

from __future__ import annotations

import numpy as np


def filter_lengths(lengths: np.ndarray, min_tokens: int | None, max_tokens: int | None,
                   split_long: bool) -> tuple[np.ndarray, np.ndarray]:
    """(lengths of the documents kept, a keep mask over the batch's tokens).

    Drops documents shorter than min_tokens; longer than max_tokens: drops them, or cuts them
    into pieces of max_tokens when split_long. Documents (and pieces) of one token are dropped:
    they predict nothing.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    keep = np.ones(len(lengths), dtype=bool)
    if min_tokens:
        keep &= lengths >= min_tokens
    pieces = np.ones(len(lengths), dtype=np.int64)
    if max_tokens:
        too_long = lengths > max_tokens
        if split_long:
            pieces[too_long] = -(-lengths[too_long] // max_tokens)
        else:
            keep &= ~too_long
    piece_lengths = np.full(int(pieces.sum()), max_tokens or 0, dtype=np.int64)
    last_piece = np.cumsum(pieces) - 1
    piece_lengths[last_piece] = lengths - (pieces - 1) * (max_tokens or 0)
    piece_keep = np.repeat(keep, pieces) & (piece_lengths > 1)
    return piece_lengths[piece_keep], np.repeat(piece_keep, piece_lengths)


class NextFit:
    """Greedy packing of whole documents into sequences of at most packing_len tokens, in order.

    A document longer than packing_len stays alone (infinite context trains on it whole). The
    state carries over from one batch of lengths to the next.
    """

    def __init__(self, packing_len: int):
        self.packing_len = packing_len
        self.used = 0

    def starts(self, lengths: np.ndarray) -> np.ndarray:
        """Per document: whether it starts a new packed sequence."""
        flags = np.zeros(len(lengths), dtype=bool)
        for i, n in enumerate(lengths.tolist()):
            if self.used == 0 or self.used + n > self.packing_len:
                flags[i], self.used = True, 0
            self.used += n
        return flags


class WindowSpans:
    """Samples of ``sample_len`` predictions cut from one token stream (BlinkDL's way).

    Consecutive windows share one token so that every target of the stream is predicted once.
    Computed, not stored: O(1) memory whatever the corpus size.
    """

    def __init__(self, n_tokens: int, sample_len: int):
        self.n_tokens, self.sample_len = n_tokens, sample_len

    def __len__(self) -> int:
        return -(-(self.n_tokens - 1) // self.sample_len) if self.n_tokens > 1 else 0

    def __getitem__(self, i: int) -> tuple[int, int]:
        start = int(i) * self.sample_len
        return start, min(start + self.sample_len + 1, self.n_tokens)

    def total_tokens(self) -> int:
        n = len(self)
        return (n - 1) * (self.sample_len + 1) + (self[n - 1][1] - self[n - 1][0]) if n else 0


def spans_from_starts(starts: np.ndarray, n_tokens: int) -> np.ndarray:
    """(n, 2) [start, end) of samples that partition a token array, from their starts."""
    starts = np.asarray(starts, dtype=np.int64)
    if not len(starts):
        return np.zeros((0, 2), dtype=np.int64)
    return np.stack([starts, np.append(starts[1:], n_tokens)], axis=1)
