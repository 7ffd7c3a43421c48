"""Where records come from: local files (json/jsonl/parquet/csv/text, also .gz/.zst compressed)
or a Hugging Face hub dataset."""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import os
from pathlib import Path

from ..errors import DataError

# datasets' json builder decompresses .gz and .zst (with the zstandard package) by file name.
LOCAL_BUILDERS = {".jsonl.zst": "json", ".jsonl.gz": "json", ".json.zst": "json", ".json.gz": "json",
                  ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv",
                  ".txt": "text", ".md": "text"}
BINIDX_SUFFIXES = (".bin", ".idx")
_PATH_LIKE_SUFFIXES = (*LOCAL_BUILDERS, *BINIDX_SUFFIXES, ".zst", ".gz", ".arrow")


def data_suffix(path: str | Path) -> str | None:
    """The supported data suffix a file name ends with (``x.jsonl.zst`` -> ``.jsonl.zst``), or None."""
    name = str(path).lower()
    return next((s for s in sorted(LOCAL_BUILDERS, key=len, reverse=True) if name.endswith(s)), None)


def looks_like_path(source: str) -> bool:
    """A hub name is ``name`` or ``org/name``; a data file extension, ./, ~ or deeper folders mean a path."""
    return (source.startswith((".", "/", "~")) or source.lower().endswith(_PATH_LIKE_SUFFIXES)
            or source.count("/") > 1 or (os.sep != "/" and os.sep in source))


def is_local(source: str) -> bool:
    """A path, a folder or a glob that exists here, or what looks like one; anything else is a hub name."""
    return Path(source).expanduser().exists() or bool(glob.glob(source)) or looks_like_path(source)


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
        files = [p for p in path.rglob("*") if p.is_file() and data_suffix(p)]
    else:
        files = [Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True) if Path(p).is_file()]
    if not files:
        raise DataError(f"data.source: no such file: no file matches {source!r}")
    unsupported = [p for p in files if not data_suffix(p)]
    if unsupported:
        raise DataError(f"data.source: cannot read {unsupported[0]} (supported: {', '.join(sorted(LOCAL_BUILDERS))})")
    return sorted(files)


def _open_text(path: Path):
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    if str(path).endswith(".zst"):
        import zstandard

        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def check_csv(path: Path) -> None:
    """An unterminated or stray quote would make pandas merge rows silently: refuse it, naming the line."""
    with _open_text(path) as f:
        reader = csv.reader(f, strict=True)
        try:
            for _ in reader:
                pass
        except csv.Error as exc:
            raise DataError(f"{path}: line {reader.line_num}: malformed CSV ({exc}; an unterminated quote?)") from None


def explain_load_failure(files: list[Path], builder: str, exc: Exception) -> DataError:
    """Why ``datasets`` could not read local files, as one line naming the file (and line)."""
    for path in files:
        try:
            with _open_text(path) as f:
                for number, line in enumerate(f, 1):
                    if builder == "json" and line.strip() and data_suffix(path) != ".json":
                        try:
                            json.loads(line)
                        except ValueError as bad:
                            return DataError(f"{path}: line {number} is not valid JSON ({bad})")
        except UnicodeDecodeError as bad:
            return DataError(f"{path}: not UTF-8 text ({bad.reason} at byte {bad.start} of a chunk); "
                             "convert it to UTF-8")
    return DataError(f"cannot read {files[0] if len(files) == 1 else f'{len(files)} files'} as {builder}: "
                     f"{' '.join(str(exc).split())[:300]}")


def load_records(source: str, name: str | None = None, split: str = "train",
                 data_files: str | list[str] | dict | None = None, streaming: bool = False):
    """A ``datasets.Dataset`` of records (an ``IterableDataset`` read as it goes, with ``streaming``).
    Plain-text files give one record {"text": ...} per file."""
    import datasets

    if is_local(source):
        files = resolve_files(source)
        builders = {LOCAL_BUILDERS[data_suffix(p)] for p in files}
        if len(builders) > 1:
            raise DataError(f"data.source {source!r} mixes file types {sorted(builders)}; point it at one type")
        builder = builders.pop()
        if builder == "csv":
            for path in files:
                check_csv(path)
        kwargs = {"sample_by": "document"} if builder == "text" else {}
        try:
            return datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train", streaming=streaming,
                                         **kwargs)
        except Exception as exc:  # datasets wraps parse errors in its own types; say which file and line
            raise explain_load_failure(files, builder, exc) from None
    try:
        return datasets.load_dataset(source, name, split=split, data_files=data_files, streaming=streaming)
    except FileNotFoundError as exc:
        raise DataError(f"data.source {source!r}: not a local path and not found on the hub ({exc})") from None
    except ConnectionError as exc:
        raise DataError(f"data.source {source!r}: the hub cannot be reached ({exc}); use local files") from None
