"""Ranking metrics for one ranked list against a set of relevant items (binary relevance).

Each function takes ``ranked`` (ids, best first) and ``relevant`` (a set of ids) and
returns a float; averaging over users is the caller's job. Catalogue-level metrics
(coverage) take all users' lists.

An empty ``relevant`` set raises ``ValueError``: such a user has nothing to find, so
scoring them would silently drag every average towards zero; the caller should skip them.
An id that appears twice in ``ranked`` counts once, at its best rank.

Tagging metrics (multi-label) take whole ``[n, T]`` arrays instead: multi-hot ``targets``
and 0/1 ``predictions``, real-valued ``scores`` or ``probs`` in ``[0, 1]``, one row per
text and one column per tag of the taxonomy. Mismatched shapes raise ``ValueError``.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "catalogue_coverage",
    "expected_calibration_error",
    "hit_rate_at_k",
    "intra_list_diversity",
    "long_tail_share",
    "macro_roc_auc",
    "mean_average_precision",
    "mrr",
    "multilabel_f1",
    "ndcg_at_k",
    "novelty",
    "recall_at_k",
    "self_information",
    "short_head",
    "top_label_calibration_error",
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


# --- multi-label tagging metrics ------------------------------------------------------------


def _tag_arrays(
    first: np.ndarray, second: np.ndarray, names: tuple[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    """Two finite float64 ``[n, T]`` arrays of the same, non-empty shape."""
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    for name, array in zip(names, (a, b)):
        if array.ndim != 2:
            raise ValueError(f"{name} must be 2-D [n, T], got shape {array.shape}")
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {a.shape} and {b.shape}"
        )
    if a.size == 0:
        raise ValueError(f"{names[0]} is empty (shape {a.shape}): nothing to score")
    for name, array in zip(names, (a, b)):
        if not np.isfinite(array).all():
            row, col = np.argwhere(~np.isfinite(array))[0]
            raise ValueError(f"{name} has a non-finite value at row {row}, column {col}")
    return a, b


def _check_binary(array: np.ndarray, name: str) -> None:
    bad = (array != 0) & (array != 1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        value = float(array[row, col])
        raise ValueError(f"{name} must hold only 0 and 1, got {value!r} at row {row}, column {col}")


def _check_unit_interval(array: np.ndarray, name: str) -> None:
    bad = (array < 0) | (array > 1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"{name} must lie in [0, 1], got {float(array[row, col])!r} at row {row}, column {col}"
        )


def _check_n_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")


def multilabel_f1(targets: np.ndarray, predictions: np.ndarray) -> tuple[float, float]:
    """Micro- and macro-averaged F1 of 0/1 tag decisions.

    Micro F1 pools every (row, tag) cell: ``2 TP / (2 TP + FP + FN)``. Macro F1 is the
    plain mean of per-tag F1 over the tags that have at least one positive target **or**
    one positive prediction; a tag with neither has an undefined F1 (0 / 0) and is skipped
    rather than counted as 0 or 1. When no cell is positive at all, both are 0.0.

    Parameters
    ----------
    targets : ndarray, shape (n, T)
        Multi-hot ground truth (0/1).
    predictions : ndarray, shape (n, T)
        0/1 decisions, e.g. ``probs >= thresholds``.

    Returns
    -------
    tuple of float
        ``(micro_f1, macro_f1)``, each in ``[0, 1]``.

    Examples
    --------
    >>> multilabel_f1(np.array([[1, 0], [1, 1]]), np.array([[1, 0], [0, 1]]))
    (0.8, 0.8333333333333333)
    """
    truth, pred = _tag_arrays(targets, predictions, ("targets", "predictions"))
    _check_binary(truth, "targets")
    _check_binary(pred, "predictions")
    tp = (truth * pred).sum(axis=0)
    fp = ((1 - truth) * pred).sum(axis=0)
    fn = (truth * (1 - pred)).sum(axis=0)
    pooled = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = float(2 * tp.sum() / pooled) if pooled > 0 else 0.0
    denominator = 2 * tp + fp + fn
    defined = denominator > 0
    if not defined.any():
        return micro, 0.0
    macro = float(np.mean(2 * tp[defined] / denominator[defined]))
    return micro, macro


def mean_average_precision(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mean over tags of the average precision of ranking the rows by that tag's score.

    For one tag, rows are ranked by score, highest first (tied scores keep their row order:
    a stable sort), and ``AP = mean(precision@k for each rank k holding a positive)``,
    which is scikit-learn's step-wise ``average_precision_score`` when scores are distinct.
    Tags with no positive target have no AP and are left out of the mean.

    Parameters
    ----------
    targets : ndarray, shape (n, T)
        Multi-hot ground truth (0/1).
    scores : ndarray, shape (n, T)
        Any real scores, higher meaning more likely (probabilities, logits, cosines).

    Returns
    -------
    float
        Mean AP over the tags with at least one positive, in ``[0, 1]``.

    Raises
    ------
    ValueError
        If no tag has a positive target.

    Examples
    --------
    >>> mean_average_precision(np.array([[1], [0], [1]]), np.array([[0.9], [0.8], [0.7]]))
    0.8333333333333333
    """
    truth, score = _tag_arrays(targets, scores, ("targets", "scores"))
    _check_binary(truth, "targets")
    positives = truth.sum(axis=0)
    scored = np.flatnonzero(positives > 0)
    if scored.size == 0:
        raise ValueError("targets has no positive in any tag: average precision is undefined")
    order = np.argsort(-score[:, scored], axis=0, kind="stable")
    hits = np.take_along_axis(truth[:, scored], order, axis=0)
    precision_at_k = np.cumsum(hits, axis=0) / np.arange(1, len(hits) + 1)[:, None]
    ap = (precision_at_k * hits).sum(axis=0) / positives[scored]
    return float(ap.mean())


def macro_roc_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mean over tags of the ROC-AUC of separating that tag's rows from the rest by score
    (ties count half). Tags whose rows are all positive or all negative are left out.

    >>> macro_roc_auc(np.array([[1], [0], [1], [0]]), np.array([[0.9], [0.8], [0.7], [0.1]]))
    0.75
    """
    from scipy.stats import rankdata

    truth, score = _tag_arrays(targets, scores, ("targets", "scores"))
    _check_binary(truth, "targets")
    positives = truth.sum(axis=0)
    scored = np.flatnonzero((positives > 0) & (positives < len(truth)))
    if scored.size == 0:
        raise ValueError("no tag has both positive and negative rows: ROC-AUC is undefined")
    aucs = []
    for tag in scored:
        ranks = rankdata(score[:, tag])  # average ranks: ties count half
        n_pos = positives[tag]
        n_neg = len(truth) - n_pos
        aucs.append((ranks[truth[:, tag] == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs))


def _binned_calibration_error(confidence: np.ndarray, outcome: np.ndarray, n_bins: int) -> float:
    """``sum_b |b|/N * |mean(confidence in b) - mean(outcome in b)|`` over equal-width bins."""
    # Bin i holds [i/n_bins, (i+1)/n_bins); 1.0 goes to the last bin.
    bins = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    outcome_sum = np.bincount(bins, weights=outcome, minlength=n_bins)
    return float(np.abs(conf_sum - outcome_sum).sum() / counts.sum())


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error over every (row, tag) probability.

    All ``n * T`` probabilities are pooled with their 0/1 targets and put into ``n_bins``
    equal-width bins on ``[0, 1]`` (bin ``i`` is ``[i/n_bins, (i+1)/n_bins)``, the last bin
    also holds 1.0); then ``ECE = sum_b (|b| / N) * |mean(prob in b) - mean(target in b)|``.

    Parameters
    ----------
    probs : ndarray, shape (n, T)
        Predicted probabilities in ``[0, 1]``.
    targets : ndarray, shape (n, T)
        Multi-hot ground truth (0/1).
    n_bins : int, default 15
        Number of equal-width bins.

    Returns
    -------
    float
        ECE in ``[0, 1]``; 0 is perfectly calibrated.

    Examples
    --------
    >>> probs, targets = np.array([[0.9, 0.1]]), np.array([[1, 0]])
    >>> round(expected_calibration_error(probs, targets, n_bins=10), 4)  # (0.1 + 0.1) / 2
    0.1
    """
    _check_n_bins(n_bins)
    prob, truth = _tag_arrays(probs, targets, ("probs", "targets"))
    _check_unit_interval(prob, "probs")
    _check_binary(truth, "targets")
    return _binned_calibration_error(prob.ravel(), truth.ravel(), n_bins)


def top_label_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> float:
    """Calibration error of each row's most confident tag.

    Per row, ``confidence = max(probs[row])`` and ``correct = targets[row, argmax]`` (the
    first tag wins a tie); the rows are then binned as in
    :func:`expected_calibration_error`:
    ``sum_b (|b| / n) * |mean(confidence in b) - mean(correct in b)|``.

    Parameters
    ----------
    probs : ndarray, shape (n, T)
        Predicted probabilities in ``[0, 1]``.
    targets : ndarray, shape (n, T)
        Multi-hot ground truth (0/1).
    n_bins : int, default 15
        Number of equal-width bins.

    Returns
    -------
    float
        Top-label ECE in ``[0, 1]``.
    """
    _check_n_bins(n_bins)
    prob, truth = _tag_arrays(probs, targets, ("probs", "targets"))
    _check_unit_interval(prob, "probs")
    _check_binary(truth, "targets")
    top = prob.argmax(axis=1)
    rows = np.arange(len(prob))
    return _binned_calibration_error(prob[rows, top], truth[rows, top], n_bins)


def novelty(ranked: Sequence[str], bits: Mapping[str, float]) -> float:
    """Mean self-information ``-log2 p(item)`` of a list's items, with ``p`` an item's
    share of interactions (``bits`` from :func:`self_information`); 0.0 for an empty list."""
    values = [bits[i] for i in ranked if i in bits]
    return float(np.mean(values)) if values else 0.0


def self_information(counts: Mapping[str, int], n_items: int) -> dict[str, float]:
    """``-log2`` of each item's add-one smoothed share of interactions; items never
    interacted with get the largest value (use ``.get(item, unseen)``)."""
    total = float(sum(counts.values())) + n_items
    return {i: float(-np.log2((c + 1.0) / total)) for i, c in counts.items()}


def long_tail_share(ranked: Sequence[str], head: set[str]) -> float:
    """Share of a list's items outside the short head (``head``: the most interacted-with
    items, see :func:`short_head`); 0.0 for an empty list."""
    return float(np.mean([i not in head for i in ranked])) if len(ranked) else 0.0


def short_head(counts: Mapping[str, int], n_items: int, share: float = 0.2) -> set[str]:
    """The most interacted-with ``share`` of the catalogue (the Pareto 20% by default)."""
    ordered = sorted(counts, key=lambda i: (-counts[i], i))
    return set(ordered[: max(1, round(share * n_items))])
