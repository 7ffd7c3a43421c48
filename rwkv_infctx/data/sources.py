"""Where records come from: local files (json/jsonl/parquet/csv/text) or a Hugging Face hub dataset."""

from __future__ import annotations

import glob
from pathlib import Path

from ..errors import DataError

LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv",
                  ".txt": "text", ".md": "text"}
BINIDX_SUFFIXES = (".bin", ".idx")


def is_local(source: str) -> bool:
    """A path, a folder or a glob that exists here; anything else is taken as a hub dataset name."""
    return Path(source).expanduser().exists() or bool(glob.glob(source)) or source.startswith((".", "/", "~"))


def binidx_prefix(source: str) -> str | None:
    """``data/minipile`` or ``data/minipile.bin``/``.idx`` -> the prefix, if its .idx exists."""
    prefix = source[:-4] if source.endswith(BINIDX_SUFFIXES) else source
    return prefix if Path(prefix + ".idx").is_file() else None


def resolve_files(source: str) -> list[Path]:
    """A file, a folder (its supported files, recursively) or a glob -> sorted file list."""
    path = Path(source).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_BUILDERS]
    else:
        files = [Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file()]
    if not files:
        raise DataError(f"data.source: no file matches {source!r}")
    unsupported = [p for p in files if p.suffix not in LOCAL_BUILDERS]
    if unsupported:
        raise DataError(f"data.source: cannot read {unsupported[0]} (supported: {', '.join(sorted(LOCAL_BUILDERS))})")
    return sorted(files)


def load_records(source: str, name: str | None = None, split: str = "train",
                 data_files: str | list[str] | dict | None = None):
    """A ``datasets.Dataset`` of records. Plain-text files give one record {"text": ...} per file."""
    import datasets

    if is_local(source):
        files = resolve_files(source)
        builders = {LOCAL_BUILDERS[p.suffix] for p in files}
        if len(builders) > 1:
            raise DataError(f"data.source {source!r} mixes file types {sorted(builders)}; point it at one type")
        builder = builders.pop()
        kwargs = {"sample_by": "document"} if builder == "text" else {}
        return datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train", **kwargs)
    try:
        return datasets.load_dataset(source, name, split=split, data_files=data_files)
    except FileNotFoundError as exc:
        raise DataError(f"data.source {source!r}: not a local path and not found on the hub ({exc})") from None
    except ConnectionError as exc:
        raise DataError(f"data.source {source!r}: the hub cannot be reached ({exc}); use local files") from None
