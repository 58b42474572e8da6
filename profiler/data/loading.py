"""Read CSV, JSON Lines and Parquet files as a stream of row dicts with ``datasets``.

Files stream (``streaming=True``): no copy of the data is cached on disk and memory stays
flat however large the input. CSV columns are read as strings so that validation, not the
CSV parser, decides what a bad value is.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["FORMATS", "iter_rows", "read_columns"]

logger = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _format_of(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(FORMATS)}"
        )
    return fmt


def read_columns(path: str | os.PathLike[str]) -> list[str]:
    """Column names of a file, without reading its rows."""
    path = Path(path)
    fmt = _format_of(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            header = next(csv.reader(fh), None)
        if not header:
            raise ValueError(f"{path}: empty file, expected a header row")
        return [h.strip() for h in header]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception as exc:
            raise ValueError(f"{path}: cannot read Parquet schema ({exc})") from exc
    raise ValueError("JSON Lines has no header; columns are known after reading")


def iter_rows(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the rows of a CSV/JSONL/Parquet file as dicts, streaming.

    Invalid UTF-8 bytes are replaced by U+FFFD rather than failing the whole file, so the
    validator can quarantine just the rows that hold them.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file type is unsupported or the file cannot be parsed at all; the message
        names the file.
    """
    import datasets

    path = Path(path)
    fmt = _format_of(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    datasets.disable_progress_bars()
    kwargs: dict[str, Any] = {}
    if fmt == "csv":
        names = read_columns(path)
        kwargs = {
            "features": datasets.Features({name: datasets.Value("string") for name in names}),
            "keep_default_na": False,
            "encoding_errors": "replace",
        }
    elif fmt == "json":
        kwargs = {"encoding_errors": "replace"}
    try:
        stream = datasets.load_dataset(
            fmt, data_files=str(path), split="train", streaming=True, **kwargs
        )
        yield from stream
    except (ValueError, OSError, TypeError) as exc:
        raise ValueError(f"{path}: cannot read as {fmt} ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # datasets wraps parser errors in its own types
        if type(exc).__module__.startswith(("datasets", "pyarrow", "pandas")):
            raise ValueError(f"{path}: cannot read as {fmt} ({type(exc).__name__}: {exc})") from exc
        raise
