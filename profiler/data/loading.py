"""Read CSV, JSON Lines and Parquet files as a stream of row dicts.

Files stream row by row (CSV and JSON Lines a line at a time, Parquet a record batch at a
time): memory stays flat however large the input. Values keep the type the file gave them
and nothing is inferred across rows: a CSV cell is a string, a JSON value is what the line
says (``"007"`` stays the string ``"007"`` even after a numeric ``7`` on another line), so
validation, not a parser's type inference, decides what a bad value is.

What a user's spreadsheet tool writes is read as meant: a UTF-8 byte-order mark ("CSV UTF-8"
from Excel) is dropped and header names are stripped of surrounding spaces. A JSON Lines
line that does not parse (a truncated last line, a stray bracket) is yielded as a row that
carries :data:`ROW_ERROR`, so validation quarantines that line alone with its line number
and the other lines go on. An empty file (0 bytes, or nothing but a header) is an error that
names the file.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "EXTRA_CELLS",
    "FORMATS",
    "READER_KEYS",
    "ROW_ERROR",
    "ROW_TEXT",
    "iter_numbered_rows",
    "iter_rows",
    "read_columns",
]

logger = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
#: Key of the row yielded for a line that could not be parsed; its value is the reason.
ROW_ERROR = "__row_error__"
#: Key of the same row holding the start of the line as read (for the quarantine).
ROW_TEXT = "__row_text__"
#: Key under which a CSV row keeps the cells beyond its header's columns.
EXTRA_CELLS = "__extra_cells__"
#: Keys the reader adds to rows; never a column of the file.
READER_KEYS = frozenset({ROW_ERROR, ROW_TEXT, EXTRA_CELLS})


def _format_of(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(FORMATS)}"
        )
    return fmt


def _checked(path: str | os.PathLike[str]) -> tuple[Path, str]:
    path = Path(path)
    fmt = _format_of(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes), expected a header or rows")
    return path, fmt


def read_columns(path: str | os.PathLike[str]) -> list[str]:
    """Column names of a CSV or Parquet file, without reading its rows."""
    path, fmt = _checked(path)
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
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
    """Yield the rows of a CSV/JSONL/Parquet file as dicts, streaming (row numbers:
    :func:`iter_numbered_rows`).

    Invalid UTF-8 bytes are replaced by U+FFFD rather than failing the whole file, so the
    validator can quarantine just the rows that hold them.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file type is unsupported, the file is empty or cannot be parsed at all; the
        message names the file.
    """
    for _, row in iter_numbered_rows(path):
        yield row


def iter_numbered_rows(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row number, row)`` pairs: data rows from 1 (CSV: the header excluded; JSON Lines:
    the line number, blank lines skipped but counted)."""
    path, fmt = _checked(path)
    if fmt == "csv":
        yield from _csv_rows(path)
    elif fmt == "json":
        yield from _jsonl_rows(path)
    else:
        yield from _parquet_rows(path)


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            if not header:
                raise ValueError(f"{path}: empty file, expected a header row")
            names = [h.strip() for h in header]
            for number, cells in enumerate(reader, start=1):
                if not cells:
                    continue  # a blank line
                row: dict[str, Any] = dict(zip(names, cells))
                for name in names[len(cells) :]:
                    row[name] = ""
                if len(cells) > len(names):
                    row[EXTRA_CELLS] = cells[len(names) :]
                yield number, row
        except csv.Error as exc:
            raise ValueError(
                f"{path}: cannot read as CSV at line {reader.line_num} ({exc})"
            ) from exc


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                tail = " (a truncated last line?)" if not line.endswith("\n") else ""
                yield number, {ROW_ERROR: f"not valid JSON: {exc.msg}{tail}", ROW_TEXT: line[:200]}
                continue
            if not isinstance(value, dict):
                yield number, {ROW_ERROR: f"expected a JSON object, got {type(value).__name__}"}
                continue
            yield number, value


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read as parquet ({type(exc).__name__}: {exc})") from exc
    number = 0
    try:
        for batch in parquet.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                number += 1
                yield number, row
    except Exception as exc:
        if type(exc).__module__.startswith("pyarrow") or isinstance(exc, OSError):
            raise ValueError(
                f"{path}: cannot read as parquet ({type(exc).__name__}: {exc})"
            ) from exc
        raise
