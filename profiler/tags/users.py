"""A shopper's interest tags: per-event tag probabilities, weighted like her profile.

Each event contributes the tag probabilities of its text (review or search), or, for an
event with an item but no text, a certain tag from the item's category. Contributions are
weighted exactly as in the profile (kind, rating, time decay; see
:mod:`profiler.profiles`), so a 1-star review *lowers* the tags it speaks of::

    confidence(tag) = clip( sum_e w_e * p_e(tag) / sum_e |w_e| , 0, 1)

Each tag comes with the events that contributed most (id, kind, item, time, snippet).
A shopper may pin a tag (always shown, and added to her recommendation query) or remove
one (never shown, and its items are filtered out of her recommendations); these
overrides persist in ``models/tags/overrides.json``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from profiler.storage import read_json, write_json
from profiler.text import shorten

__all__ = ["Evidence", "TagOverrides", "UserTag", "aggregate_tags", "text_tags"]

SNIPPET = 100


@dataclass(frozen=True)
class Evidence:
    """One event behind a tag."""

    event: int
    kind: str
    item_id: str
    timestamp: float
    snippet: str
    contribution: float
    rating: float | None = None
    rating_predicted: bool = False  # the rating came from the sentiment model

    def to_dict(self) -> dict:
        return {
            "event": self.event,
            "kind": self.kind,
            "item_id": self.item_id or None,
            "timestamp": self.timestamp,
            "snippet": self.snippet,
            "contribution": round(self.contribution, 4),
            "rating": None if self.rating is None else round(self.rating, 2),
            "rating_predicted": self.rating_predicted,
        }


@dataclass(frozen=True)
class UserTag:
    """A tag with its confidence, whether the shopper pinned it, its evidence and its type
    (``category``, ``brand``, ``price`` or ``style``)."""

    tag: str
    confidence: float
    evidence: tuple[Evidence, ...] = ()
    pinned: bool = False
    type: str = "category"

    def to_dict(self) -> dict:
        return {
            "tag": self.tag,
            "type": self.type,
            "confidence": round(self.confidence, 4),
            "pinned": self.pinned,
            "evidence": [e.to_dict() for e in self.evidence],
        }


def _snippet(text: str) -> str:
    return shorten(" ".join(str(text).split()), SNIPPET)


def aggregate_tags(
    events: pd.DataFrame,
    probs: np.ndarray,
    weights: np.ndarray,
    names: Sequence[str],
    *,
    top: int = 5,
    min_confidence: float = 0.05,
    n_evidence: int = 3,
    pinned: Sequence[str] = (),
    removed: Sequence[str] = (),
) -> list[UserTag]:
    """Top tags of one shopper from her events' tag probabilities.

    Parameters
    ----------
    events : DataFrame
        Her events (``kind``, ``item_id``, ``timestamp``, ``text``); its index labels are
        reported as evidence ids.
    probs : ndarray, shape (n_events, n_tags)
        Tag probabilities per event.
    weights : ndarray, shape (n_events,)
        Signed, decayed evidence weights (negative for bad reviews and dislikes).
    names : sequence of str
        Tag names, one per column.
    """
    if probs.shape != (len(events), len(names)) or len(weights) != len(events):
        raise ValueError(
            f"expected probs ({len(events)}, {len(names)}) and {len(events)} weights, "
            f"got {probs.shape} and {len(weights)}"
        )
    total = float(np.abs(weights).sum())
    contributions = weights[:, None] * probs
    scores = contributions.sum(axis=0) / total if total > 0 else np.zeros(len(names))
    scores = np.clip(scores, 0.0, 1.0)
    removed_set, pinned_set = set(removed), set(pinned)
    order = np.argsort(-scores, kind="stable")
    chosen = [j for j in order if names[j] in pinned_set]
    chosen += [
        j
        for j in order
        if names[j] not in pinned_set
        and names[j] not in removed_set
        and scores[j] >= min_confidence
    ][: max(top - len(chosen), 0)]
    labels = list(events.index)
    out = []
    for j in chosen:
        best = np.argsort(-contributions[:, j], kind="stable")[:n_evidence]
        evidence = tuple(
            Evidence(
                event=int(labels[e]) if isinstance(labels[e], (int, np.integer)) else labels[e],
                kind=str(events["kind"].iloc[e]),
                item_id=str(events["item_id"].iloc[e]),
                timestamp=float(events["timestamp"].iloc[e]),
                snippet=_snippet(events["text"].iloc[e]),
                contribution=float(contributions[e, j]),
                rating=_rating(events, e),
                rating_predicted=bool(
                    "rating_predicted" in events and events["rating_predicted"].iloc[e]
                ),
            )
            for e in best
            if contributions[e, j] > 0
        )
        out.append(UserTag(names[j], float(scores[j]), evidence, names[j] in pinned_set))
    return out


def _rating(events: pd.DataFrame, row: int) -> float | None:
    if "rating" not in events:
        return None
    value = float(events["rating"].iloc[row])
    return value if np.isfinite(value) else None


@dataclass
class TagOverrides:
    """Per-user pinned and removed tags, persisted as JSON."""

    path: Path
    users: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TagOverrides:
        path = Path(path)
        return cls(path, read_json(path) if path.is_file() else {})

    def pinned(self, user: str) -> list[str]:
        return list(self.users.get(user, {}).get("pinned", []))

    def removed(self, user: str) -> list[str]:
        return list(self.users.get(user, {}).get("removed", []))

    def pin(self, user: str, tag: str) -> None:
        entry = self.users.setdefault(user, {"pinned": [], "removed": []})
        entry["removed"] = [t for t in entry.get("removed", []) if t != tag]
        if tag not in entry.setdefault("pinned", []):
            entry["pinned"].append(tag)

    def remove(self, user: str, tag: str) -> None:
        entry = self.users.setdefault(user, {"pinned": [], "removed": []})
        entry["pinned"] = [t for t in entry.get("pinned", []) if t != tag]
        if tag not in entry.setdefault("removed", []):
            entry["removed"].append(tag)

    def reset(self, user: str) -> None:
        self.users.pop(user, None)

    def save(self, path: str | os.PathLike[str] | None = None) -> None:
        """Write the overrides to ``path`` (default: where they were read from)."""
        write_json(self.path if path is None else path, self.users)


def text_tags(model, texts: Sequence[str] | str, *, top: int = 5) -> list[UserTag]:
    """Tags of free texts taken together (one anonymous shopper's), from ``model`` (a
    :class:`~profiler.tags.training.TagModel`): each text an event of weight 1, its own
    evidence. ``ValueError`` when no text is left once blank ones are dropped."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError("texts must hold at least one non-empty text")
    events = pd.DataFrame({"kind": "search", "item_id": "", "timestamp": 0.0, "text": texts})
    probs = model.predict_proba(texts)
    return aggregate_tags(events, probs, np.ones(len(texts)), model.taxonomy.names, top=top)
