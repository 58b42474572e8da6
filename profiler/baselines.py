"""Baseline recommenders the profiler is measured against.

Each is a :class:`~profiler.recommender.Recommender` that scores the whole catalogue
(``corpus.item_ids`` order), with defaults chosen to be a fair opponent rather than a
straw man:

- :class:`Popularity`: training events per item.
- :class:`TfidfBaseline`: lexical match between the shopper's evidence and item texts.
- :class:`MeanEmbedding`: cosine to the mean of the shopper's item and text vectors.
- :class:`ItemKNN`: item-item cosine on co-interactions, top neighbours per item.
- :class:`ALSBaseline`: implicit-feedback matrix factorisation (``implicit``), with the
  shopper's factors solved from their own items at query time.

A query may have no events but free texts (cold start, "text only"). The content
baselines use those texts; the collaborative ones cannot, so :class:`ItemKNN` returns
zeros and :class:`ALSBaseline` falls back to popularity.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp

from profiler.recommender import Corpus, Query, Recommender
from profiler.text import TOKEN_PATTERN, prepare

__all__ = ["ALSBaseline", "ItemKNN", "MeanEmbedding", "Popularity", "TfidfBaseline"]

logger = logging.getLogger(__name__)


def _interactions(corpus: Corpus) -> sp.csr_matrix:
    """Binary user × item matrix (users in order of first appearance) of training events."""
    events = corpus.events
    with_item = events[events["item_id"] != ""]
    positions = with_item["item_id"].map(corpus.position)
    known = positions.notna().to_numpy()
    if not known.all():
        unknown = with_item["item_id"][~known]
        logger.warning(
            "skipping %d training events whose item is not in the catalogue (e.g. %r)",
            len(unknown),
            unknown.iloc[0],
        )
    users, user_ids = pd.factorize(with_item["user_id"][known])
    items = positions[known].to_numpy(dtype=np.int64)
    matrix = sp.csr_matrix(
        (np.ones(len(items), dtype=np.float32), (users, items)),
        shape=(len(user_ids), len(corpus.item_ids)),
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def _event_counts(corpus: Corpus) -> np.ndarray:
    """Training events per catalogue item (events without a known item ignored)."""
    events = corpus.events
    positions = corpus.positions(events["item_id"][events["item_id"] != ""].tolist())
    return np.bincount(positions, minlength=len(corpus.item_ids)).astype(np.float64)


def _query_positions(corpus: Corpus, query: Query) -> np.ndarray:
    """Catalogue positions of the query's event items, one per event (unknown ids skipped)."""
    item_ids = query.events["item_id"]
    return corpus.positions(item_ids[item_ids != ""].tolist())


def _query_texts(query: Query) -> list[str]:
    """The query's non-blank event texts followed by its free texts."""
    event_texts = query.events["text"].fillna("").astype(str).tolist()
    return [t for t in [*event_texts, *query.texts] if t.strip()]


def _check_positive(name: str, value: float, *, integer: bool = False) -> None:
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        kind = "integer" if integer else "number"
        raise ValueError(f"{name} must be a positive {kind}, got {value!r}")


class Popularity(Recommender):
    """Scores each item by its number of training events (every kind counts once).

    The same list for everyone; queries only matter through the seen items that
    :meth:`~profiler.recommender.Recommender.recommend` removes.

    Attributes
    ----------
    counts_ : ndarray of float64, shape (n_items,)
        Training events per item.
    """

    name = "popularity"

    def fit(self, corpus: Corpus) -> Popularity:
        self.corpus_ = corpus
        self.counts_ = _event_counts(corpus)
        return self

    def score(self, query: Query) -> np.ndarray:
        return self.counts_.copy()


class TfidfBaseline(Recommender):
    """Cosine between TF-IDF vectors of the item texts and of the shopper's evidence.

    The vectoriser (sublinear tf, unigrams and bigrams, English stop words) is fitted on
    ``corpus.item_texts``. The query vector is the mean of one L2-normalised TF-IDF row per
    piece of evidence: each event's item, each non-blank event text, each free text.
    A query with no evidence scores zeros.

    Attributes
    ----------
    vectorizer_ : sklearn.feature_extraction.text.TfidfVectorizer
        Fitted on the item texts.
    item_matrix_ : scipy.sparse.csr_matrix, shape (n_items, n_terms)
        L2-normalised TF-IDF rows of the items.
    """

    name = "tfidf"

    def fit(self, corpus: Corpus) -> TfidfBaseline:
        from sklearn.feature_extraction.text import TfidfVectorizer

        if len(corpus.item_texts) != len(corpus.item_ids):
            raise ValueError(
                f"{len(corpus.item_ids)} item ids but {len(corpus.item_texts)} item texts"
            )
        self.corpus_ = corpus
        self.vectorizer_ = TfidfVectorizer(
            sublinear_tf=True,
            ngram_range=(1, 2),
            min_df=1,
            stop_words="english",
            preprocessor=prepare,  # Chinese segmented into words
            token_pattern=TOKEN_PATTERN,
        )
        self.item_matrix_ = sp.csr_matrix(self.vectorizer_.fit_transform(corpus.item_texts))
        return self

    def score(self, query: Query) -> np.ndarray:
        rows = []
        positions = _query_positions(self.corpus_, query)
        if len(positions):
            rows.append(self.item_matrix_[positions])
        texts = _query_texts(query)
        if texts:
            rows.append(self.vectorizer_.transform(texts))
        if not rows:
            return np.zeros(len(self.corpus_.item_ids))
        evidence = sp.vstack(rows).tocsr()
        profile = np.asarray(evidence.mean(axis=0)).ravel()
        norm = np.linalg.norm(profile)
        if norm == 0:
            return np.zeros(len(self.corpus_.item_ids))
        return self.item_matrix_ @ (profile / norm)


class MeanEmbedding(Recommender):
    """Cosine between every item vector and the mean of the shopper's vectors.

    The evidence is each event's item vector, each event text's vector
    (``corpus.text_vectors[text_row]`` where ``text_row >= 0``) and ``query.text_vectors``;
    their mean is L2-normalised. A query with no evidence scores zeros.

    Attributes
    ----------
    item_vectors_ : ndarray of float32, shape (n_items, d)
        The corpus's item vectors.
    """

    name = "mean-embedding"

    def fit(self, corpus: Corpus) -> MeanEmbedding:
        self.corpus_ = corpus
        self.item_vectors_ = np.asarray(corpus.item_vectors, dtype=np.float32)
        return self

    def score(self, query: Query) -> np.ndarray:
        corpus = self.corpus_
        pieces = [self.item_vectors_[_query_positions(corpus, query)]]
        text_rows = query.events["text_row"].to_numpy(dtype=np.int64)
        text_rows = text_rows[text_rows >= 0]
        if len(text_rows):
            if text_rows.max() >= len(corpus.text_vectors):
                raise ValueError(
                    f"query {query.user_id!r} has text_row {int(text_rows.max())} but the "
                    f"corpus has {len(corpus.text_vectors)} text vectors"
                )
            pieces.append(corpus.text_vectors[text_rows])
        if query.text_vectors is not None and np.size(query.text_vectors):
            extra = np.atleast_2d(np.asarray(query.text_vectors, dtype=np.float32))
            if extra.ndim != 2 or extra.shape[1] != self.item_vectors_.shape[1]:
                raise ValueError(
                    f"query {query.user_id!r} text_vectors have shape {extra.shape}; "
                    f"expected (n, {self.item_vectors_.shape[1]})"
                )
            pieces.append(extra)
        evidence = np.concatenate(pieces).astype(np.float64)
        if not len(evidence):
            return np.zeros(len(corpus.item_ids), dtype=np.float32)
        profile = evidence.mean(axis=0)
        norm = np.linalg.norm(profile)
        if norm == 0:
            return np.zeros(len(corpus.item_ids), dtype=np.float32)
        return self.item_vectors_ @ (profile / norm).astype(np.float32)


class ItemKNN(Recommender):
    """Item-based nearest neighbours on the binary user × item training matrix.

    ``sim(i, j) = |users(i) ∩ users(j)| / sqrt(|users(i)| |users(j)|)`` (cosine of the
    item columns), keeping each item's ``neighbours`` most similar items (ties: lower
    position). ``score(i) = sum(sim(j, i))`` over the distinct items ``j`` of the query's
    events. Queries without known items score zeros.

    Parameters
    ----------
    neighbours : int, default 100
        Neighbours kept per item.

    Attributes
    ----------
    similarity_ : scipy.sparse.csr_matrix, shape (n_items, n_items)
        Row ``j`` holds item ``j``'s kept neighbours and their cosines; zero diagonal.
    """

    name = "item-knn"

    def __init__(self, neighbours: int = 100) -> None:
        self.neighbours = neighbours

    def fit(self, corpus: Corpus) -> ItemKNN:
        _check_positive("neighbours", self.neighbours, integer=True)
        self.corpus_ = corpus
        users_items = _interactions(corpus).astype(np.float64)
        co = (users_items.T @ users_items).tocsr()
        inverse_norm = 1.0 / np.sqrt(np.maximum(co.diagonal(), 1.0))
        cosine = sp.diags(inverse_norm) @ co @ sp.diags(inverse_norm)
        cosine = sp.csr_matrix(cosine)
        cosine.setdiag(0.0)
        cosine.eliminate_zeros()
        self.similarity_ = _keep_top_per_row(cosine, self.neighbours)
        return self

    def score(self, query: Query) -> np.ndarray:
        positions = np.unique(_query_positions(self.corpus_, query))
        if not len(positions):
            return np.zeros(len(self.corpus_.item_ids))
        return np.asarray(self.similarity_[positions].sum(axis=0)).ravel()


def _keep_top_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Each row's ``k`` largest entries (ties: lower column), as a new CSR matrix."""
    matrix.sort_indices()
    indptr, indices, data = matrix.indptr, matrix.indices, matrix.data
    keep = np.ones(len(data), dtype=bool)
    for row in np.flatnonzero(np.diff(indptr) > k):
        lo, hi = indptr[row], indptr[row + 1]
        order = np.lexsort((indices[lo:hi], -data[lo:hi]))
        keep[lo + order[k:]] = False
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(indptr))
    return sp.csr_matrix((data[keep], (rows[keep], indices[keep])), shape=matrix.shape)


class ALSBaseline(Recommender):
    """Implicit-feedback ALS (Hu, Koren and Volinsky) via ``implicit``, on the CPU.

    Trained on the binary user × item matrix of training events; ``implicit`` turns it into
    confidences ``alpha`` for observed pairs and 1 (with preference 0) elsewhere. At query
    time the shopper's factors are solved exactly from their own items with the ALS user
    step, ``x = (YᵀY + reg·I + (alpha - 1) Σ y_i y_iᵀ)⁻¹ alpha Σ y_i``, the same solution
    as ``implicit``'s ``recalculate_user``, so unseen shoppers need no refit. A query with
    no known items cannot be placed in the factor space and falls back to popularity
    (training events per item).

    Parameters
    ----------
    factors : int, default 64
        Latent dimensions.
    regularization : float, default 0.05
        L2 penalty on the factors.
    iterations : int, default 15
        ALS sweeps.
    alpha : float, default 1.0
        Confidence of an observed interaction.
    seed : int, default 0
        Seeds the factor initialisation.

    Attributes
    ----------
    item_factors_ : ndarray of float32, shape (n_items, factors)
        Learned item factors ``Y``.
    gram_ : ndarray of float64, shape (factors, factors)
        ``YᵀY + regularization·I``, cached for the query-time solve.
    popularity_ : ndarray of float64, shape (n_items,)
        Training events per item, the fallback scores.
    """

    name = "als"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        iterations: int = 15,
        alpha: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.iterations = iterations
        self.alpha = alpha
        self.seed = seed

    def fit(self, corpus: Corpus) -> ALSBaseline:
        try:
            import threadpoolctl
            from implicit.als import AlternatingLeastSquares
        except ImportError as error:
            raise ImportError(
                "ALSBaseline needs the 'implicit' package: pip install 'implicit>=0.7'"
            ) from error

        _check_positive("factors", self.factors, integer=True)
        _check_positive("iterations", self.iterations, integer=True)
        _check_positive("alpha", self.alpha)
        if isinstance(self.regularization, bool) or not self.regularization >= 0:
            raise ValueError(f"regularization must be >= 0, got {self.regularization!r}")
        self.corpus_ = corpus
        users_items = _interactions(corpus)
        # implicit's own advice: a multi-threaded BLAS inside its threaded solver is slow.
        with threadpoolctl.threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                random_state=self.seed,
                use_gpu=False,
            )
            model.fit(users_items, show_progress=False)
        logger.debug("ALS fitted on %d users x %d items", *users_items.shape)
        self.item_factors_ = np.asarray(model.item_factors, dtype=np.float32)
        item_factors = self.item_factors_.astype(np.float64)
        self.gram_ = item_factors.T @ item_factors + self.regularization * np.eye(self.factors)
        self.popularity_ = _event_counts(corpus)
        return self

    def user_factors(self, query: Query) -> np.ndarray | None:
        """The query's factors from its known items, or ``None`` when it has none."""
        positions = np.unique(_query_positions(self.corpus_, query))
        if not len(positions):
            return None
        seen = self.item_factors_[positions].astype(np.float64)
        lhs = self.gram_ + (self.alpha - 1.0) * seen.T @ seen
        rhs = self.alpha * seen.sum(axis=0)
        return np.linalg.solve(lhs, rhs)

    def score(self, query: Query) -> np.ndarray:
        factors = self.user_factors(query)
        if factors is None:
            return self.popularity_.copy()
        return self.item_factors_ @ factors.astype(np.float32)
