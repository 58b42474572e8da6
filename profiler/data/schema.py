"""Column names and rules of the two inputs: the catalogue (items) and events (users)."""

from __future__ import annotations

__all__ = [
    "CATALOG_COLUMNS",
    "CATALOG_REQUIRED",
    "EVENT_COLUMNS",
    "EVENT_KINDS",
    "EVENT_REQUIRED",
    "KINDS_NEEDING_ITEM",
    "KINDS_NEEDING_TEXT",
]

CATALOG_COLUMNS = ("item_id", "title", "description", "category", "brand", "price")
CATALOG_REQUIRED = ("item_id", "title")

EVENT_COLUMNS = ("user_id", "timestamp", "kind", "item_id", "text", "rating", "device", "channel")
EVENT_REQUIRED = ("user_id", "timestamp", "kind")
#: Optional context of an event, kept for context-aware exploration (LinUCB); "" if absent.
EVENT_CONTEXT = ("device", "channel")

EVENT_KINDS = ("review", "search", "view", "click", "purchase", "like", "dislike")
#: A search is its query text; a review is about an item and says something about it.
KINDS_NEEDING_TEXT = frozenset({"search", "review"})
KINDS_NEEDING_ITEM = frozenset({"review", "view", "click", "purchase", "like", "dislike"})

RATING_RANGE = (1.0, 5.0)
#: Unix seconds past this (year 3000) are almost surely milliseconds.
MAX_TIMESTAMP = 32_503_680_000
