"""Several sources in one run: their sample stores side by side, drawn in set proportions.

Each source keeps its own cache (its own ``DataSpec``); the mixture is only an index array over
the concatenated stores, so mixing costs no copy and no object per sample.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError


class ConcatStore:
    """Stores one after another: sample ``offsets[k] + i`` is sample i of store k."""

    def __init__(self, stores: list):
        self.stores = stores
        self.offsets = np.cumsum([0] + [len(s) for s in stores])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int):
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.stores[k][int(i - self.offsets[k])]

    def source_of(self, indices: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, indices, side="right") - 1


def mixture_counts(available: list[int], weights: list[float] | None, repeats: list[float] | None) -> list[int]:
    """Samples per source in one epoch: ``repeat`` x its samples, or ``weight`` share of all samples."""
    if weights is not None:
        total = sum(available)
        return [int(round(total * w / sum(weights))) for w in weights]
    return [int(round(n * r)) for n, r in zip(available, repeats)]


def mixture_index(pools: list[np.ndarray], counts: list[int], seed: int) -> np.ndarray:
    """``counts[k]`` indices from ``pools[k]`` each: a seeded permutation, cycled when a source repeats."""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.resize(rng.permutation(pool), count) if len(pool) else pool[:0]
                           for pool, count in zip(pools, counts)])


def parse_entries(entries: list[dict], spec_keys: set[str]) -> tuple[list[dict], list[float] | None, list[float] | None]:
    """(per-source overrides, weights, repeats) of ``data.sources``; one-line errors for what is wrong."""
    if not entries:
        raise ConfigError("data.sources must list at least one {source: ..., weight: ...}")
    has_weight = ["weight" in e for e in entries]
    if any(has_weight) and not all(has_weight):
        raise ConfigError("data.sources: give every source a weight, or none (then each its repeat, default 1)")
    overrides, weights, repeats = [], [], []
    for n, entry in enumerate(entries):
        entry = dict(entry)
        if "source" not in entry:
            raise ConfigError(f"data.sources[{n}] has no 'source'")
        share = entry.pop("weight", None) if all(has_weight) else entry.pop("repeat", 1.0)
        if not isinstance(share, (int, float)) or share < 0:
            raise ConfigError(f"data.sources[{n}]: weight/repeat must be a number >= 0, got {share!r}")
        unknown = sorted(set(entry) - spec_keys)
        if unknown:
            raise ConfigError(f"data.sources[{n}]: unknown key {unknown[0]!r} (per-source keys: {', '.join(sorted(spec_keys))})")
        overrides.append(entry)
        (weights if all(has_weight) else repeats).append(float(share))
    return overrides, (weights if all(has_weight) else None), (None if all(has_weight) else repeats)
