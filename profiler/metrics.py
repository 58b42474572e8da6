"""Ranking metrics for one ranked list against a set of relevant items (binary relevance).

Each function takes ``ranked`` (ids, best first) and ``relevant`` (a set of ids) and
returns a float; averaging over users is the caller's job. Catalogue-level metrics
(coverage) take all users' lists.

An empty ``relevant`` set raises ``ValueError``: such a user has nothing to find, so
scoring them would silently drag every average towards zero; the caller should skip them.
An id that appears twice in ``ranked`` counts once, at its best rank.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Sequence

import numpy as np

__all__ = [
    "catalogue_coverage",
    "hit_rate_at_k",
    "intra_list_diversity",
    "mrr",
    "ndcg_at_k",
    "recall_at_k",
]

logger = logging.getLogger(__name__)


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def _check_relevant(relevant: Collection[str]) -> None:
    if len(relevant) == 0:
        raise ValueError("relevant is empty: a user with no relevant items cannot be scored")


def _hit_ranks(ranked: Sequence[str], relevant: Collection[str], k: int | None) -> list[int]:
    """1-based ranks (within the first ``k``, or all when ``None``) of distinct relevant ids."""
    head = ranked if k is None else ranked[:k]
    found: set[str] = set()
    ranks = []
    for rank, item in enumerate(head, start=1):
        if item in relevant and item not in found:
            found.add(item)
            ranks.append(rank)
    return ranks


def recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Share of the relevant items found in the first ``k``.

    Parameters
    ----------
    ranked : sequence of str
        Recommended ids, best first.
    relevant : collection of str
        The ids that count as hits; must not be empty.
    k : int
        Cut-off, positive.

    Returns
    -------
    float
        ``|top-k ∩ relevant| / |relevant|``, in ``[0, 1]``.

    Examples
    --------
    >>> recall_at_k(["a", "b", "c"], {"b", "z"}, k=2)
    0.5
    """
    _check_k(k)
    _check_relevant(relevant)
    return len(_hit_ranks(ranked, relevant, k)) / len(relevant)


def hit_rate_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """1.0 if any relevant item is in the first ``k``, else 0.0.

    Parameters
    ----------
    ranked : sequence of str
        Recommended ids, best first.
    relevant : collection of str
        The ids that count as hits; must not be empty.
    k : int
        Cut-off, positive.

    Returns
    -------
    float
        1.0 or 0.0.
    """
    _check_k(k)
    _check_relevant(relevant)
    return 1.0 if any(item in relevant for item in ranked[:k]) else 0.0


def ndcg_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Normalised discounted cumulative gain at ``k`` with binary gains.

    ``DCG = sum(1 / log2(rank + 1))`` over the 1-based ranks of hits in the first ``k``;
    the ideal DCG puts ``min(|relevant|, k)`` hits at ranks 1, 2, ...

    Parameters
    ----------
    ranked : sequence of str
        Recommended ids, best first.
    relevant : collection of str
        The ids that count as hits; must not be empty.
    k : int
        Cut-off, positive.

    Returns
    -------
    float
        ``DCG / IDCG``, in ``[0, 1]``.

    Examples
    --------
    >>> round(ndcg_at_k(["x", "a"], {"a"}, k=2), 4)  # 1/log2(3)
    0.6309
    """
    _check_k(k)
    _check_relevant(relevant)
    dcg = sum(1.0 / np.log2(rank + 1) for rank in _hit_ranks(ranked, relevant, k))
    ideal = np.arange(1, min(len(relevant), k) + 1)
    idcg = float(np.sum(1.0 / np.log2(ideal + 1)))
    return float(dcg / idcg)


def mrr(ranked: Sequence[str], relevant: Collection[str]) -> float:
    """Reciprocal rank of the first relevant item in the whole list (0.0 if none).

    Parameters
    ----------
    ranked : sequence of str
        Recommended ids, best first.
    relevant : collection of str
        The ids that count as hits; must not be empty.

    Returns
    -------
    float
        ``1 / rank`` of the first hit, in ``[0, 1]``.
    """
    _check_relevant(relevant)
    for rank, item in enumerate(ranked, start=1):
        if item in relevant:
            return 1.0 / rank
    return 0.0


def catalogue_coverage(lists: Iterable[Sequence[str]], n_items: int) -> float:
    """Share of the catalogue that appears in at least one user's list.

    Parameters
    ----------
    lists : iterable of sequence of str
        Every user's recommended ids (already cut to the list length being judged).
    n_items : int
        Catalogue size, positive.

    Returns
    -------
    float
        ``|distinct recommended ids| / n_items``.
    """
    if isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)) or n_items < 1:
        raise ValueError(f"n_items must be a positive integer, got {n_items!r}")
    distinct: set[str] = set()
    for ranked in lists:
        distinct.update(ranked)
    if len(distinct) > n_items:
        raise ValueError(f"{len(distinct)} distinct recommended ids but n_items={n_items}")
    return len(distinct) / n_items


def intra_list_diversity(ranked_vectors: np.ndarray) -> float:
    """Mean pairwise cosine distance ``1 - cos`` between the items of one list.

    Parameters
    ----------
    ranked_vectors : ndarray, shape (k, d)
        The listed items' vectors, L2-normalised by contract (rows are re-normalised here,
        so the result is the cosine distance either way).

    Returns
    -------
    float
        Mean over the ``k (k - 1) / 2`` pairs; 0.0 for lists shorter than 2.
    """
    vectors = np.asarray(ranked_vectors, dtype=np.float64)
    if vectors.ndim != 2:
        raise ValueError(f"ranked_vectors must be 2-D [k, d], got shape {vectors.shape}")
    n = len(vectors)
    if n < 2:
        return 0.0
    if not np.isfinite(vectors).all():
        raise ValueError("ranked_vectors contains NaN or infinite values")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(
            f"ranked_vectors rows {np.flatnonzero(norms[:, 0] == 0).tolist()} are zero"
        )
    vectors = vectors / norms
    gram = vectors @ vectors.T
    pair_similarity = (gram.sum() - np.trace(gram)) / 2
    return float(1.0 - pair_similarity / (n * (n - 1) / 2))
