"""Small file-system rules shared by everything that writes into a run's folder."""

from __future__ import annotations

from pathlib import Path


def first_unused(path: str | Path) -> Path:
    """``path`` if nothing is there yet, else the first free ``stem-2.ext``, ``stem-3.ext``, ...:
    a second run writing into the same folder (a resumed run, a shared wandb folder) never
    replaces what an earlier one left."""
    path = Path(path)
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def save_torch_atomic(obj, path: str | Path) -> Path:
    """torch.save under a temporary name in the same folder, then a rename: a crash never
    leaves a half-written file under the real name."""
    import os

    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path
