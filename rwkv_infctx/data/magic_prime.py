"""BlinkDL's magic_prime sampling: windows of one token stream, visited in a fixed pseudo-random order.

RWKV-LM's ``MyDataset`` (RWKV-v7/train_temp) reads sample ``n`` of a run (counted from 0 over
every device and mini-epoch) as the ``sample_len + 1`` tokens starting at token
``window_index(n, p) * sample_len``, where ``p`` (the magic prime) is a prime ``= 2 (mod 3)``
just below ``tokens / sample_len - 1``. Cubing is then a bijection modulo ``p``, so any ``p``
consecutive samples visit each of the ``p`` windows exactly once, in an order that scatters
neighbours across the corpus without a stored permutation (memory stays flat on any corpus).
"""

from __future__ import annotations

import math

import numpy as np
import sympy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import Dataset

from ..errors import ConfigError
from .store import Sample

GOLDEN_FRACTION = (math.sqrt(5) - 1) / 2  # computed in float64 exactly as RWKV-LM does


def window_index(n: int, magic_prime: int) -> int:
    """The window (start token / sample_len) of sample ``n`` (0-based) of the run."""
    factor = int(magic_prime * GOLDEN_FRACTION)
    return factor * pow(n + 1, 3, magic_prime) % magic_prime


def auto_magic_prime(n_tokens: int, sample_len: int) -> int:
    """The largest prime p = 2 (mod 3) with p < n_tokens / sample_len - 1 (RWKV-LM's rule)."""
    p = -(-n_tokens // sample_len) - 2  # the largest integer strictly below n_tokens / sample_len - 1
    while p >= 2 and not (p % 3 == 2 and sympy.isprime(p)):
        p -= 1
    if p < 2:
        raise ConfigError(f"data.magic_prime: {n_tokens} tokens hold fewer than 3 windows of "
                          f"data.sample_len={sample_len} tokens; use more data or a shorter sample_len")
    return p


def resolve_magic_prime(setting: int | str, n_tokens: int, sample_len: int) -> int:
    """``auto`` -> auto_magic_prime; a number is checked: prime, = 2 (mod 3), and its last window fits."""
    if setting == "auto":
        return auto_magic_prime(n_tokens, sample_len)
    p = int(setting)
    if not sympy.isprime(p) or p % 3 != 2:
        raise ConfigError(f"data.magic_prime={p} must be a prime = 2 (mod 3) (e.g. "
                          f"{auto_magic_prime(n_tokens, sample_len)} for these {n_tokens} tokens), or auto")
    if p * sample_len + 1 > n_tokens:
        raise ConfigError(f"data.magic_prime={p}: its last window ends at token {p * sample_len + 1}, past the "
                          f"{n_tokens} training tokens; use auto ({auto_magic_prime(n_tokens, sample_len)})")
    return p


def check_magic_prime_setting(setting: int | str | None, sample_len: int | None, packing_len: int | None) -> None:
    """What can be checked before the data is read (the numbers are checked against the tokens later)."""
    if setting is None:
        return
    if setting != "auto" and (isinstance(setting, bool) or not isinstance(setting, int) or setting < 2):
        raise ConfigError(f"data.magic_prime must be auto, a prime = 2 (mod 3) or null, got {setting!r}")
    if not sample_len or packing_len:
        raise ConfigError("data.magic_prime needs data.sample_len (the window length) and no data.packing_len")


class TokenWindows(Dataset):
    """Window ``w`` is tokens ``[w * sample_len, (w + 1) * sample_len]`` (both ends included).

    ``tokens`` and ``train`` are 1-D arrays (memory maps welcome: a window is sliced, never the
    stream); ``train=None`` trains every token (a binidx stream). Index ``len(self)`` is the
    validation filler of ``ShardSampler``: a window's shape with nothing trained.
    """

    def __init__(self, tokens: np.ndarray, train: np.ndarray | None, sample_len: int, n_windows: int | None = None):
        self.tokens, self.train, self.sample_len = tokens, train, sample_len
        fits = max(len(tokens) - 1, 0) // sample_len
        self.n_windows = fits if n_windows is None else n_windows
        assert self.n_windows <= fits, "callers size n_windows to the stream"

    def __len__(self) -> int:
        return self.n_windows

    def __getitem__(self, w: int) -> Sample:
        filler = w == self.n_windows
        start = 0 if filler else w * self.sample_len
        stop = start + self.sample_len + 1
        ids = np.asarray(self.tokens[start:stop], dtype=np.int64)
        if filler:
            return ids, np.zeros(len(ids), dtype=np.int8)
        train = np.ones(len(ids), dtype=np.int8) if self.train is None else np.asarray(self.train[start:stop])
        return ids, train


def held_out_windows(n_tokens: int, sample_len: int, test_split: float) -> int:
    """Validation windows cut from the end of the stream: test_split < 1 a fraction, >= 1 a count."""
    windows = max(n_tokens - 1, 0) // sample_len
    held = round(windows * test_split) if test_split < 1 else int(test_split)
    return min(max(held, 1 if test_split > 0 else 0), max(windows - 3, 0))


def magic_prime_sets(tokens: np.ndarray, train: np.ndarray | None, sample_len: int, setting: int | str,
                     test_split: float) -> tuple[TokenWindows, TokenWindows | None, int]:
    """(training windows, validation windows or None, magic prime).

    Validation takes consecutive windows from the end of the stream; the prime is chosen (or
    checked) on what is left, so no validation target is ever trained on.
    """
    held = held_out_windows(len(tokens), sample_len, test_split)
    train_end = len(tokens) - held * sample_len  # the validation windows start at token train_end - 1
    p = resolve_magic_prime(setting, train_end, sample_len)
    train_set = TokenWindows(tokens[:train_end], None if train is None else train[:train_end], sample_len, p)
    if not held:
        return train_set, None, p
    val_set = TokenWindows(tokens[train_end - 1:], None if train is None else train[train_end - 1:], sample_len)
    return train_set, val_set, p


def magic_prime_datasets(stage: str, tokens: np.ndarray, train: np.ndarray | None, sample_len: int,
                         setting: int | str, test_split: float) -> tuple[TokenWindows | None, TokenWindows | None]:
    """(train_set, val_set) of RWKVDataModule.setup: validate/test evaluate every window of the stream in order."""
    if stage in ("validate", "test"):
        return None, TokenWindows(tokens, train, sample_len)
    train_set, val_set, p = magic_prime_sets(tokens, train, sample_len, setting, test_split)
    covered = p * sample_len / max(len(train_set.tokens), 1)
    rank_zero_info(f"data: magic_prime {p}: {p} windows of {sample_len + 1} tokens cover {covered:.1%} of the "
                   f"{len(train_set.tokens)} training tokens; {len(val_set) if val_set else 0} validation windows")
    if setting != "auto" and covered < 0.9:  # RWKV-LM refuses this: a prime meant for another corpus?
        rank_zero_warn(f"data.magic_prime={p} leaves {1 - covered:.0%} of the training tokens unused; "
                       f"auto would use {auto_magic_prime(len(train_set.tokens), sample_len)}")
    return train_set, val_set
