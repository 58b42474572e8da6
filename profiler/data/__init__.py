"""Inputs: schemas, loaders, validation with quarantine, and the bundled sample data."""

from __future__ import annotations

from profiler.data.bundled import clothing_catalog, clothing_events
from profiler.data.loading import iter_rows
from profiler.data.schema import EVENT_KINDS
from profiler.data.validation import (
    Loaded,
    Rejection,
    ValidationReport,
    load_catalog,
    load_events,
    parse_timestamp,
)

__all__ = [
    "EVENT_KINDS",
    "Loaded",
    "Rejection",
    "ValidationReport",
    "clothing_catalog",
    "clothing_events",
    "iter_rows",
    "load_catalog",
    "load_events",
    "parse_timestamp",
]
