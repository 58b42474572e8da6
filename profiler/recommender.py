"""The contract every recommender follows: the profiler's own and every baseline.

A :class:`Recommender` is fitted on a :class:`Corpus` (the catalogue with its vectors and
the *training* events) and scores every catalogue item for a :class:`Query` (one shopper's
events before the cut and/or free texts). Scoring the whole catalogue keeps evaluation
exact; serving paths may use an ANN index for candidates instead.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["Corpus", "Query", "Recommender", "top_k"]


@dataclass(frozen=True, eq=False)
class Corpus:
    """What a recommender may learn from.

    Attributes
    ----------
    item_ids : list of str
        Catalogue ids; every score vector is aligned with this order.
    item_vectors : ndarray, shape (n_items, d)
        L2-normalised item embeddings.
    item_texts : list of str
        The text that was embedded for each item (title, category, brand, description).
    item_categories : list of str
        Category path per item (``""`` when unknown).
    events : DataFrame
        Training events (``user_id``, ``timestamp``, ``kind``, ``item_id``, ``text``,
        ``rating``, ``text_row``), oldest first. Nothing after the evaluation cut.
    text_vectors : ndarray, shape (n_texts, d)
        Event-text vectors; ``events.text_row`` indexes it (-1: no text).
    item_brands, item_prices, item_titles : list, optional
        Brand (``""`` when unknown), price (NaN) and display title per item.
    """

    item_ids: list[str]
    item_vectors: np.ndarray
    item_texts: list[str]
    item_categories: list[str]
    events: pd.DataFrame
    text_vectors: np.ndarray
    item_brands: list[str] | None = None
    item_prices: list[float] | None = None
    item_titles: list[str] | None = None
    position: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "position", {i: p for p, i in enumerate(self.item_ids)})
        if self.item_titles is None:
            object.__setattr__(self, "item_titles", list(self.item_texts))
        if len(self.item_vectors) != len(self.item_ids):
            raise ValueError(
                f"{len(self.item_ids)} item ids but {len(self.item_vectors)} item vectors"
            )

    def positions(self, item_ids: Collection[str]) -> np.ndarray:
        """Catalogue positions of the known ids among ``item_ids`` (unknown ones skipped)."""
        get = self.position.get
        return np.array([p for p in (get(i) for i in item_ids) if p is not None], dtype=np.int64)

    def with_events(self, events: pd.DataFrame) -> Corpus:
        """The same catalogue with other training events."""
        return dataclasses.replace(self, events=events)


@dataclass(frozen=True, eq=False)
class Query:
    """One shopper: their events before the cut (oldest first) and/or free texts.

    ``events`` has the columns of :attr:`Corpus.events`; its ``text_row`` indexes the
    corpus's ``text_vectors``. ``texts`` are texts without an item (searches, a review of
    something outside the catalogue), with their vectors in ``text_vectors``.
    """

    user_id: str | None
    events: pd.DataFrame
    texts: tuple[str, ...] = ()
    text_vectors: np.ndarray | None = None

    @property
    def n_events(self) -> int:
        return len(self.events)

    @property
    def seen(self) -> set[str]:
        """Items the shopper already interacted with (never recommended back)."""
        return {item for item in self.events["item_id"].tolist() if item}


class Recommender(ABC):
    """Scores every catalogue item for a shopper.

    Subclasses follow scikit-learn's habits: ``__init__`` only stores parameters,
    :meth:`fit` learns state (attributes ending in ``_``) and returns ``self``.
    """

    name: str = "recommender"

    @abstractmethod
    def fit(self, corpus: Corpus) -> Recommender:
        """Learn from the catalogue and the training events; return ``self``."""

    @abstractmethod
    def score(self, query: Query) -> np.ndarray:
        """Scores for every catalogue item (``corpus.item_ids`` order), higher is better."""

    def recommend(self, query: Query, k: int = 10, exclude: Collection[str] = ()) -> list[str]:
        """The ``k`` best item ids, never one the shopper has seen or one in ``exclude``."""
        corpus: Corpus = self.corpus_
        scores = np.asarray(self.score(query), dtype=np.float64).copy()
        banned = corpus.positions(query.seen | set(exclude))
        scores[banned] = -np.inf
        return [corpus.item_ids[p] for p in top_k(scores, k)]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest finite scores, best first (ties: lower position)."""
    finite = np.flatnonzero(np.isfinite(scores))
    if len(finite) <= k:
        chosen = finite
    else:
        chosen = finite[np.argpartition(-scores[finite], k - 1)[:k]]
    order = np.lexsort((chosen, -scores[chosen]))
    return chosen[order]
