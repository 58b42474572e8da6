"""The bundled demo data: Women's E-Commerce Clothing Reviews (CC0), a processed sample.

``scripts/make_bundled_data.py`` makes it from the public source; see the README for the
licence and how items and shoppers were derived.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CLOTHING", "clothing_catalog", "clothing_events"]

CLOTHING = Path(__file__).resolve().parent / "clothing"


def clothing_catalog() -> Path:
    """Path of the bundled catalogue (1,199 clothing items, Parquet)."""
    return CLOTHING / "items.parquet"


def clothing_events() -> Path:
    """Path of the bundled events (5,000 reviews by anonymous shoppers, Parquet)."""
    return CLOTHING / "events.parquet"
