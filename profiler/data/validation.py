"""Validate catalogue and event rows; quarantine bad rows with the reason, keep the good.

Every row is checked on its own. A bad row never stops a build: it goes to a JSON Lines
quarantine file with the file name, row number (data rows counted from 1, header
excluded), field and reason, and the good rows go on. Only a file that cannot be read at
all, or lacks a required column, raises.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from profiler.data.loading import (
    EXTRA_CELLS,
    READER_KEYS,
    ROW_ERROR,
    iter_numbered_rows,
    read_columns,
)
from profiler.data.schema import (
    CATALOG_COLUMNS,
    CATALOG_REQUIRED,
    EVENT_COLUMNS,
    EVENT_KINDS,
    EVENT_REQUIRED,
    KINDS_NEEDING_ITEM,
    KINDS_NEEDING_TEXT,
    MAX_TIMESTAMP,
    RATING_RANGE,
)
from profiler.storage import write_text

if TYPE_CHECKING:
    from profiler.privacy import PrivacyPolicy

__all__ = [
    "Loaded",
    "Rejection",
    "ValidationReport",
    "load_catalog",
    "load_events",
    "parse_timestamp",
]

logger = logging.getLogger(__name__)

Source = str | os.PathLike[str] | pd.DataFrame


@dataclass(frozen=True)
class Rejection:
    """One rejected row: where it was, which field was wrong, why, and the row itself."""

    file: str
    row: int
    field: str
    reason: str
    record: dict[str, Any]

    def __str__(self) -> str:
        return f"{self.file} row {self.row} field {self.field!r}: {self.reason}"


@dataclass(frozen=True)
class ValidationReport:
    """What happened to one input: rows read, accepted, rejected (with reasons)."""

    file: str
    n_rows: int
    rejections: tuple[Rejection, ...] = ()
    quarantine: Path | None = None
    n_duplicates: int = 0  # exact duplicate rows dropped (events)

    @property
    def n_rejected(self) -> int:
        return len(self.rejections)

    @property
    def n_accepted(self) -> int:
        return self.n_rows - self.n_rejected - self.n_duplicates

    def summary(self) -> str:
        text = (
            f"{self.file}: {self.n_rows} rows, {self.n_accepted} accepted, "
            f"{self.n_rejected} rejected"
        )
        if self.n_duplicates:
            text += f", {self.n_duplicates} exact duplicates dropped"
        if self.rejections:
            by_field = Counter(r.field for r in self.rejections)
            text += " (" + ", ".join(f"{f}: {n}" for f, n in by_field.most_common()) + ")"
            if self.quarantine is not None:
                text += f" -> {self.quarantine}"
        return text


class Loaded(NamedTuple):
    """Validated rows as a typed DataFrame, and the report of what was rejected."""

    frame: pd.DataFrame
    report: ValidationReport


class _RowError(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


# -- field parsers ---------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _text(value: Any, name: str, *, required: bool) -> str:
    if _is_missing(value):
        if required:
            raise _RowError(name, "missing value")
        return ""
    if isinstance(value, (dict, list, bool)):
        raise _RowError(name, f"expected text, got {type(value).__name__} {value!r:.60}")
    text = str(value)
    if "\ufffd" in text:
        raise _RowError(name, "not valid UTF-8 (undecodable bytes in the file)")
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))  # ids read as floats from a typed column: 12.0 -> "12"
    return text.strip()


#: Longest id accepted (characters): ids are stored per row, and a 1 MB id is a mistake.
MAX_ID_LENGTH = 256
#: How far past the current time an event may be (clock skew); later ones are rejected.
FUTURE_TOLERANCE_S = 86_400.0
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")


def _id(value: Any, name: str, *, required: bool) -> str:
    """An id: text, NFC-normalised (look-alike NFC and NFD spellings are one id), with no
    control characters, at most :data:`MAX_ID_LENGTH` characters."""
    text = _text(value, name, required=required)
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Cs")), None)
    if bad is not None:
        raise _RowError(name, f"control or invisible character U+{ord(bad):04X} in the id")
    text = unicodedata.normalize("NFC", text)
    if len(text) > MAX_ID_LENGTH:
        raise _RowError(name, f"id of {len(text)} characters, longer than {MAX_ID_LENGTH}")
    return text


def _display(value: Any, name: str, *, required: bool) -> str:
    """Free text with terminal escape sequences and control characters other than line
    breaks and tabs removed, so a title cannot drive the user's terminal."""
    text = _text(value, name, required=required)
    if not text:
        return text
    text = _ANSI.sub("", text)
    kept = (c for c in text if c in "\n\r\t" or unicodedata.category(c) != "Cc")
    cleaned = "".join(kept).strip()
    if required and not cleaned:
        raise _RowError(name, "missing value (only control characters)")
    return cleaned


def _number(value: Any, name: str, lo: float | None = None, hi: float | None = None) -> float:
    if _is_missing(value):
        return math.nan
    if isinstance(value, bool):
        raise _RowError(name, f"expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _RowError(name, f"expected a number, got {value!r:.60}") from None
    if not math.isfinite(number):
        raise _RowError(name, f"not a finite number: {value!r}")
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise _RowError(name, f"{number:g} outside [{lo:g}, {hi:g}]")
    return number


def parse_timestamp(value: Any) -> float:
    """Parse unix seconds (number or numeric string) or ISO 8601 to unix seconds (UTC).

    Naive ISO times are taken as UTC. Raises ``ValueError`` naming the value.
    """
    if _is_missing(value):
        raise ValueError("missing value")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, datetime):
        seconds = (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    elif isinstance(value, pd.Timestamp):
        seconds = (value if value.tzinfo else value.tz_localize("UTC")).timestamp()
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(
                    f"cannot parse {value!r:.60} as unix seconds or ISO 8601"
                ) from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            seconds = moment.timestamp()
    else:
        raise ValueError(f"cannot parse {type(value).__name__} {value!r:.60} as a timestamp")
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite time: {value!r}")
    if abs(seconds) > MAX_TIMESTAMP:
        raise ValueError(f"{value!r} is past the year 3000: milliseconds? expected unix seconds")
    return seconds


# -- driving the validation ------------------------------------------------------------


def _rows(
    source: Source, columns: Mapping[str, str] | None
) -> tuple[str, Iterable[tuple[int, dict]]]:
    """Name of the source and its ``(row number, row)`` pairs with columns renamed."""
    rename = dict(columns or {})
    if isinstance(source, pd.DataFrame):
        frame = source.rename(columns=rename)
        return "<DataFrame>", enumerate(frame.to_dict(orient="records"), start=1)
    if type(source).__module__.startswith("datasets"):
        renamed = ({rename.get(k, k): v for k, v in r.items()} for r in source)
        return "<Dataset>", enumerate(renamed, start=1)
    path = Path(source)
    pairs = iter_numbered_rows(path)
    return str(path), ((n, {rename.get(k, k): v for k, v in r.items()}) for n, r in pairs)


def _unreadable(record: Mapping[str, Any]) -> None:
    """A row the reader could not parse, or with more cells than its header."""
    if ROW_ERROR in record:
        raise _RowError("row", str(record[ROW_ERROR]))
    if EXTRA_CELLS in record:
        extra = record[EXTRA_CELLS]
        raise _RowError("row", f"{len(extra)} more cell(s) than the header has columns")


def _check_seen_columns(name: str, seen: set[str], required: Iterable[str], n_rows: int) -> None:
    """JSON Lines has no header: a required key absent from every row is a missing column."""
    seen = seen - READER_KEYS
    missing = [c for c in required if c not in seen]
    if n_rows and seen and missing:  # no row parsed at all: the rejections say why
        raise ValueError(
            f"{name}: missing required column(s) {missing} in all {n_rows} rows; found "
            f"{sorted(seen)} (map other names with columns={{'their_name': 'our_name'}})"
        )


def _check_columns(name: str, source: Source, required: Iterable[str], rename: Mapping) -> None:
    if isinstance(source, pd.DataFrame):
        present = {rename.get(c, c) for c in source.columns}
    elif type(source).__module__.startswith("datasets"):
        present = {rename.get(c, c) for c in source.column_names}
    elif Path(source).suffix.lower() in (".csv", ".parquet"):
        present = {rename.get(c, c) for c in read_columns(source)}
    else:
        return  # JSON Lines: a missing column shows up row by row as a missing value
    missing = [c for c in required if c not in present]
    if missing:
        raise ValueError(
            f"{name}: missing required column(s) {missing}; found {sorted(present)} "
            "(map other names with columns={'their_name': 'our_name'})"
        )


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON types: NaN/inf -> None, numpy scalars -> Python, others -> str."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    return str(value)


def _write_quarantine(path: Path | None, rejections: list[Rejection], privacy=None) -> Path | None:
    if path is None:
        return None
    if not rejections:
        path.unlink(missing_ok=True)  # a clean input leaves no stale quarantine behind
        return None
    lines = [
        json.dumps(
            {
                "file": r.file,
                "row": r.row,
                "field": r.field,
                "reason": r.reason,
                "record": json_safe(privacy.record(r.record) if privacy is not None else r.record),
            },
            ensure_ascii=False,
        )
        for r in rejections
    ]
    write_text(path, "\n".join(lines) + "\n")
    return path


def _finish(
    name: str,
    rows: list[dict],
    rejections: list[Rejection],
    n_rows: int,
    quarantine: Path | None,
    columns: list[str],
    n_duplicates: int = 0,
    privacy=None,
) -> Loaded:
    written = _write_quarantine(quarantine, rejections, privacy)
    report = ValidationReport(name, n_rows, tuple(rejections), written, n_duplicates)
    log = logger.warning if rejections or n_duplicates else logger.info
    log("%s", report.summary())
    for rejection in rejections[:5]:  # file, row, field and reason: never the record
        logger.warning("  %s", rejection)
    frame = pd.DataFrame(rows, columns=columns) if rows else pd.DataFrame(columns=columns)
    return Loaded(frame, report)


def load_catalog(
    source: Source,
    *,
    columns: Mapping[str, str] | None = None,
    quarantine: str | os.PathLike[str] | None = None,
) -> Loaded:
    """Load and validate a catalogue: one row per item.

    Parameters
    ----------
    source : path or DataFrame or datasets.Dataset
        CSV, JSON Lines or Parquet file (by extension), or an in-memory table.
    columns : mapping, optional
        Rename source columns to ours, e.g. ``{"asin": "item_id"}``.
    quarantine : path, optional
        JSON Lines file for rejected rows (written atomically; removed if none).

    Returns
    -------
    Loaded
        ``frame`` with ``item_id``, ``title``, ``description``, ``category``, ``brand``
        (str) and ``price`` (float, NaN when absent) plus any extra columns as text, and
        the ``report``.
    """
    name, records = _rows(source, columns)
    _check_columns(name, source, CATALOG_REQUIRED, columns or {})
    seen: dict[str, int] = {}
    rows: list[dict] = []
    rejections: list[Rejection] = []
    extra: dict[str, None] = {}
    n_rows = 0
    keys: set[str] = set()
    for number, record in records:
        n_rows += 1
        keys.update(record)
        try:
            _unreadable(record)
            item_id = _id(record.get("item_id"), "item_id", required=True)
            if item_id in seen:
                raise _RowError(
                    "item_id", f"duplicate item_id {item_id!r} (first at row {seen[item_id]})"
                )
            row = {
                "item_id": item_id,
                "title": _display(record.get("title"), "title", required=True),
                "description": _display(record.get("description"), "description", required=False),
                "category": _display(record.get("category"), "category", required=False),
                "brand": _display(record.get("brand"), "brand", required=False),
                "price": _number(record.get("price"), "price", 0.0, math.inf),
            }
            for key, value in record.items():
                if key not in CATALOG_COLUMNS:
                    extra[key] = None
                    row[key] = _display(value, key, required=False)
        except _RowError as err:
            rejections.append(Rejection(name, number, err.field, err.reason, record))
            continue
        seen[item_id] = number
        rows.append(row)
    _check_seen_columns(name, keys, CATALOG_REQUIRED, n_rows)
    out_columns = [*CATALOG_COLUMNS, *extra]
    return _finish(name, rows, rejections, n_rows, _path(quarantine), out_columns)


def load_events(
    source: Source,
    *,
    items: Iterable[str] | None = None,
    columns: Mapping[str, str] | None = None,
    quarantine: str | os.PathLike[str] | None = None,
    privacy: PrivacyPolicy | None = None,
) -> Loaded:
    """Load and validate events: one row per user action.

    Parameters
    ----------
    source : path or DataFrame or datasets.Dataset
        CSV, JSON Lines or Parquet file, or an in-memory table.
    items : iterable of str, optional
        Known item ids; events naming any other item are rejected.
    columns : mapping, optional
        Rename source columns to ours.
    quarantine : path, optional
        JSON Lines file for rejected rows.
    privacy : PrivacyPolicy, optional
        Maps each valid user id to its pseudonym and scrubs personal data from texts
        (:mod:`profiler.privacy`); quarantined records are written scrubbed too.

    Returns
    -------
    Loaded
        ``frame`` with ``user_id``, ``kind``, ``item_id``, ``text`` (str, ``""`` when
        absent), ``timestamp`` (float unix seconds, UTC), ``rating`` (float, NaN when
        absent), and the ``report``.
    """
    name, records = _rows(source, columns)
    _check_columns(name, source, EVENT_REQUIRED, columns or {})
    known = set(items) if items is not None else None
    rows: list[dict] = []
    rejections: list[Rejection] = []
    n_rows = 0
    keys: set[str] = set()
    latest = time.time() + FUTURE_TOLERANCE_S
    distinct: set[tuple] = set()
    duplicates = 0
    renormalised: set[str] = set()
    for number, record in records:
        n_rows += 1
        keys.update(record)
        try:
            _unreadable(record)
            row = _event(record, known, latest)
            raw = record.get("user_id")
            if isinstance(raw, str) and raw.strip() != row["user_id"]:
                renormalised.add(row["user_id"])
            if privacy is not None:
                row["user_id"] = privacy.user(row["user_id"])
                row["text"] = privacy.text(row["text"])
        except _RowError as err:
            rejections.append(Rejection(name, number, err.field, err.reason, record))
            continue
        key = tuple(row.values())
        if key in distinct:  # the same event twice would count twice in her profile
            duplicates += 1
            continue
        distinct.add(key)
        rows.append(row)
    _check_seen_columns(name, keys, EVENT_REQUIRED, n_rows)
    if renormalised:  # NFD and NFC spellings of one id are one shopper: say so
        logger.warning(
            "%s: %d user ids were not in Unicode NFC form and were normalised (look-alike "
            "spellings of one id count as one shopper)",
            name,
            len(renormalised),
        )
    return _finish(
        name,
        rows,
        rejections,
        n_rows,
        _path(quarantine),
        list(EVENT_COLUMNS),
        duplicates,
        privacy,
    )


def _event(record: Mapping[str, Any], known: set[str] | None, latest: float) -> dict[str, Any]:
    user_id = _id(record.get("user_id"), "user_id", required=True)
    try:
        timestamp = parse_timestamp(record.get("timestamp"))
    except ValueError as exc:
        raise _RowError("timestamp", str(exc)) from None
    if timestamp > latest:
        moment = datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")
        raise _RowError("timestamp", f"{moment} is in the future (clock or unit error?)")
    kind = _text(record.get("kind"), "kind", required=True).lower()
    if kind not in EVENT_KINDS:
        raise _RowError("kind", f"unknown kind {kind!r}; expected one of {list(EVENT_KINDS)}")
    item_id = _id(record.get("item_id"), "item_id", required=kind in KINDS_NEEDING_ITEM)
    if item_id and known is not None and item_id not in known:
        raise _RowError("item_id", f"item {item_id!r} is not in the catalogue")
    text = _display(record.get("text"), "text", required=kind in KINDS_NEEDING_TEXT)
    rating = _number(record.get("rating"), "rating", *RATING_RANGE)
    return {
        "user_id": user_id,
        "timestamp": timestamp,
        "kind": kind,
        "item_id": item_id,
        "text": text,
        "rating": rating,
        "device": _display(record.get("device"), "device", required=False)[:64],
        "channel": _display(record.get("channel"), "channel", required=False)[:64],
    }


def _path(value: str | os.PathLike[str] | None) -> Path | None:
    return None if value is None else Path(value)
