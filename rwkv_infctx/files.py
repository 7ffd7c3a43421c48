"""Small file-system rules shared by everything that writes into a run's folder."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import WriteError


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


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Write ``path`` atomically: yields a temporary path in the same folder (same file system,
    so the final rename is atomic); when the block ends without error the file is flushed to disk
    and renamed onto ``path``. A kill at any moment leaves the old file or the new one, and an
    error (disk full included) removes the temporary file and leaves the old one untouched.

    Write to the yielded path with anything that takes a path (``torch.save``, ``savefig``, ...)::

        with atomic_write(out / "rwkv-final.pth") as tmp:
            torch.save(state_dict, tmp)
    """
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"{path} is a folder; give the name of the file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)  # mkstemp's 0600 would make outputs private to this user
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        reason = _write_failure(exc)
        if reason:
            raise WriteError(f"{path}: could not be written ({reason}); free space or write elsewhere "
                             f"(the previous file, if any, is untouched)") from None
        raise


def save_torch_atomic(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` through ``atomic_write``: the file appears whole or not at all."""
    import torch

    with atomic_write(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # mkstemp's names in atomic_write


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete what an ``atomic_write`` killed with SIGKILL (or a power cut) left in ``folder``.
    Call it only where no other process is writing into that folder right now."""
    folder = Path(folder)
    stale = [p for p in folder.iterdir() if p.is_file() and _TEMPORARY.match(p.name)] if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _write_failure(exc: BaseException) -> str | None:
    """Why a write failed, where the device refused it; None for any other error."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        return os.strerror(exc.errno).lower()
    # torch.save reports a refused write as a RuntimeError from its zip writer, not an OSError
    if isinstance(exc, RuntimeError) and "write failed" in str(exc):
        return "the device refused the write: is the disk full?"
    return None
