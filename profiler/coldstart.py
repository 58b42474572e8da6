"""The profiler's recommender: own profile, similar users and popularity, blended by evidence.

For a shopper with ``n`` pieces of evidence (events plus free texts) the score of item ``i``
is::

    alpha    = n / (n + tau)                                   # trust in own evidence
    q        = unit(alpha * p_own + (1 - alpha) * p_nbrs)      # shrunk interest vector
    score(i) = q . v_i                                          # content match
             + mu     * max_c (c . v_i)                         # best interest centre
             + lam    * tfidf(i)                                # lexical match (optional)
             - beta   * max(0, p_neg . v_i)                     # demote what she disliked
             + omega  * (1 - alpha) * votes(i)                  # what similar users chose
             + pi     * pop(i)                                  # popularity prior

``p_own`` is her :class:`~profiler.profiles.UserProfile` vector, ``c`` its centres,
``p_neg`` its negative vector; ``p_nbrs`` is the similarity-weighted mean profile of her
``n_neighbours`` nearest training users (cosine of profile vectors) and ``votes(i)`` the
similarity-weighted share of them that interacted positively with ``i``. ``pop`` is
``log(1 + count)`` scaled to [0, 1]. With ``n = 0`` (no events, no text) the ranking is
popularity alone. ``tau`` and the weights are fitted on validation users with
:meth:`ProfileRecommender.tune`, never on test users.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import sparse

from profiler.profiles import Evidence, ProfileBuilder, ProfileConfig, UserProfile
from profiler.recommender import Corpus, Query, Recommender, top_k

__all__ = [
    "BlendParams",
    "Components",
    "ProfileRecommender",
    "event_evidence",
    "mmr",
    "ranked_ndcg",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlendParams:
    """Weights of the score formula in the module docstring."""

    tau: float = 2.0
    mu: float = 0.5
    lam: float = 0.0
    beta: float = 0.3
    omega: float = 0.5
    pi: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


#: Grid searched by :meth:`ProfileRecommender.tune` (tau, mu, lam, omega, pi; beta fixed).
DEFAULT_GRID: Mapping[str, Sequence[float]] = {
    "tau": (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0),
    "mu": (0.0, 0.5, 1.0),
    "lam": (0.0, 0.5, 1.0, 2.0),
    "omega": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
    "pi": (0.0, 0.05),
}


def event_evidence(builder: ProfileBuilder, events: pd.DataFrame, corpus: Corpus) -> Evidence:
    """Evidence for events, looking item and text vectors up in ``corpus``."""
    dim = corpus.item_vectors.shape[1]
    item_vectors = np.full((len(events), dim), np.nan, dtype=np.float32)
    text_vectors = np.full((len(events), dim), np.nan, dtype=np.float32)
    if len(events):
        positions = events["item_id"].map(corpus.position).to_numpy()
        known = ~pd.isna(positions)
        item_vectors[known] = corpus.item_vectors[positions[known].astype(np.int64)]
        rows = events["text_row"].to_numpy()
        text_vectors[rows >= 0] = corpus.text_vectors[rows[rows >= 0]]
    return builder.evidence(events, item_vectors, text_vectors)


class Components(NamedTuple):
    """Per-item score components of one query (arrays ``[n_items]``), or of a stack of
    queries (``[n_queries, n_items]``, scalars ``[n_queries]``); :meth:`blend` combines
    either. Absent parts (no dislikes, no lexical channel) are zeros."""

    n: np.ndarray
    own: np.ndarray
    centre: np.ndarray
    negative: np.ndarray
    neighbours: np.ndarray
    own_dot_neighbours: np.ndarray
    has_neighbours: np.ndarray
    votes: np.ndarray
    lexical: np.ndarray

    @classmethod
    def stack(cls, parts: Sequence[Components]) -> Components:
        return cls(*(np.stack([getattr(p, f) for p in parts]) for f in cls._fields))


class ProfileRecommender(Recommender):
    """Profiles + similar users + popularity, shrunk toward own evidence as it grows.

    Parameters
    ----------
    config : ProfileConfig, optional
        How events become profiles.
    params : BlendParams, optional
        Blend weights (see the module docstring); :meth:`tune` fits them.
    n_neighbours : int
        Similar users consulted per query.
    """

    name = "profiler"

    def __init__(
        self,
        config: ProfileConfig | None = None,
        params: BlendParams | None = None,
        n_neighbours: int = 30,
    ) -> None:
        self.config = config
        self.params = params
        self.n_neighbours = n_neighbours

    # -- fitting --------------------------------------------------------------------------

    def fit(
        self, corpus: Corpus, profiles: Mapping[str, UserProfile] | None = None
    ) -> ProfileRecommender:
        """Build (or take) the training users' profiles, the neighbour index and counts."""
        self.corpus_ = corpus
        self.builder_ = ProfileBuilder(self.config)
        self.params_ = self.params or BlendParams()
        events = corpus.events
        if profiles is None:
            profiles = {}
            for user, rows in events.groupby("user_id", sort=False).indices.items():
                user_events = events.iloc[rows]
                profiles[user] = self.builder_.build(
                    user, event_evidence(self.builder_, user_events, corpus)
                )
        self.profiles_ = dict(profiles)
        self.users_ = list(self.profiles_)
        dim = corpus.item_vectors.shape[1]
        self.user_vectors_ = (
            np.stack([self.profiles_[u].vector for u in self.users_])
            if self.users_
            else np.empty((0, dim), np.float32)
        )
        self.user_row_ = {u: r for r, u in enumerate(self.users_)}

        with_item = events[events["item_id"] != ""]
        positions = with_item["item_id"].map(corpus.position)
        ok = positions.notna().to_numpy()
        with_item, positions = with_item[ok], positions[ok].astype(np.int64).to_numpy()
        rows = with_item["user_id"].map(self.user_row_).to_numpy(dtype=np.int64)
        evidence = event_evidence(self.builder_, with_item, corpus)
        positive = evidence.weights > 0
        self.positives_ = sparse.csr_matrix(
            (np.ones(positive.sum()), (rows[positive], positions[positive])),
            shape=(len(self.users_), len(corpus.item_ids)),
        )
        self.positives_.data[:] = 1.0  # duplicates summed by the constructor count once
        counts = np.bincount(positions, minlength=len(corpus.item_ids)).astype(np.float64)
        self.popularity_ = np.log1p(counts) / max(np.log1p(counts.max(initial=0.0)), 1e-12)
        self.lexical_ = None
        if self.params_.lam > 0 or self.params is None:
            from profiler.baselines import TfidfBaseline

            self.lexical_ = TfidfBaseline().fit(corpus)
        return self

    # -- scoring --------------------------------------------------------------------------

    def profile(self, query: Query) -> UserProfile:
        """The query shopper's profile: her events, plus free texts as searches made now."""
        evidence = event_evidence(self.builder_, query.events, self.corpus_)
        if query.texts:
            vectors = np.asarray(query.text_vectors, dtype=np.float32)
            if vectors.shape != (len(query.texts), self.corpus_.item_vectors.shape[1]):
                raise ValueError(f"query has {len(query.texts)} texts but vectors {vectors.shape}")
            now = evidence.timestamps.max() if len(evidence) else 0.0
            weight = self.builder_.config.kind_weights["search"]
            evidence = evidence.concat(
                Evidence(vectors, np.full(len(vectors), weight), np.full(len(vectors), now))
            )
        return self.builder_.build(query.user_id or "", evidence)

    def components(self, query: Query) -> Components:
        """Everything :meth:`blend` needs, computed once per query."""
        items = self.corpus_.item_vectors
        profile = self.profile(query)
        own_vector = profile.vector
        own = items @ own_vector
        centre = (items @ profile.centres.T).max(axis=1) if len(profile.centres) else own
        negative = items @ profile.negative if profile.has_negative else np.zeros(len(items))

        sims = self.user_vectors_ @ own_vector if len(self.users_) else np.empty(0)
        if query.user_id is not None and query.user_id in self.user_row_:
            sims[self.user_row_[query.user_id]] = -np.inf  # never her own training profile
        nearest = top_k(sims, self.n_neighbours) if len(sims) else np.empty(0, np.int64)
        weights = np.maximum(sims[nearest], 0.0)
        if weights.sum() > 0:
            nbr_vector = weights @ self.user_vectors_[nearest]
            nbr_vector /= max(np.linalg.norm(nbr_vector), 1e-12)
            votes = (weights @ self.positives_[nearest].toarray()) / weights.sum()
        else:
            nbr_vector = np.zeros_like(own_vector)
            votes = np.zeros(len(items))
        if self.lexical_ is not None:
            lexical = self.lexical_.score(query)
        else:
            lexical = np.zeros(len(items))
        return Components(
            n=np.asarray(query.n_events + len(query.texts)),
            own=own,
            centre=centre,
            negative=negative,
            neighbours=items @ nbr_vector,
            own_dot_neighbours=np.asarray(float(own_vector @ nbr_vector)),
            has_neighbours=np.asarray(float(np.any(nbr_vector))),
            votes=votes,
            lexical=lexical,
        )

    def blend(self, parts: Components, params: BlendParams | None = None) -> np.ndarray:
        """Combine components with ``params`` (default: the fitted ones)."""
        p = params or self.params_
        n = np.asarray(parts.n, dtype=np.float64)[..., None]
        dot = np.asarray(parts.own_dot_neighbours, dtype=np.float64)[..., None]
        nbr = np.asarray(parts.has_neighbours, dtype=np.float64)[..., None]  # |p_nbrs|: 0 or 1
        alpha = n / (n + p.tau)
        norm = np.sqrt(alpha**2 + nbr * (1 - alpha) ** 2 + 2 * alpha * (1 - alpha) * dot)
        score = (alpha * parts.own + (1 - alpha) * parts.neighbours) / np.maximum(norm, 1e-12)
        score = score + p.mu * parts.centre + p.lam * parts.lexical
        score = score - p.beta * np.maximum(parts.negative, 0.0)
        score = score + p.omega * (1 - alpha) * parts.votes + p.pi * self.popularity_
        # No evidence at all: the popularity prior alone.
        return np.where(n == 0, self.popularity_, score)

    def score(self, query: Query) -> np.ndarray:
        return self.blend(self.components(query))

    # -- tuning and serving ---------------------------------------------------------------

    def tune(
        self,
        cases: Iterable[tuple[Query, Collection[str]]],
        grid: Mapping[str, Sequence[float]] | None = None,
        k: int = 10,
    ) -> BlendParams:
        """Pick the blend weights with the best mean NDCG@k on validation cases.

        Components are computed once per case and every setting is scored for all cases
        at once, so the grid costs a few array operations per setting. Sets ``params_``
        and ``validation_ndcg_``; returns the best parameters.
        """
        grid = dict(DEFAULT_GRID if grid is None else grid)
        parts, banned, targets = [], [], []
        for query, wanted in cases:
            parts.append(self.components(query))
            banned.append(self.corpus_.positions(query.seen))
            targets.append(self.corpus_.positions(wanted))
        if not parts:
            raise ValueError("tune() needs at least one validation case")
        stacked = Components.stack(parts)
        mask = np.zeros(stacked.own.shape, dtype=bool)
        for row, positions in enumerate(banned):
            mask[row, positions] = True
        names = list(grid)
        best, best_score = self.params_, -1.0
        for values in itertools.product(*(grid[name] for name in names)):
            params = replace(self.params_, **dict(zip(names, values)))
            scores = np.where(mask, -np.inf, self.blend(stacked, params))
            mean = float(np.mean(ranked_ndcg(scores, targets, k)))
            if mean > best_score + 1e-12:
                best, best_score = params, mean
        logger.info("tuned on %d cases: %s (NDCG@%d %.4f)", len(parts), best, k, best_score)
        self.params_ = best
        self.validation_ndcg_ = best_score
        return best


def ranked_ndcg(scores: np.ndarray, targets: Sequence[np.ndarray], k: int) -> np.ndarray:
    """NDCG@k per row of a score matrix, with binary relevance at ``targets[row]``.

    A target's rank is the number of items scored strictly higher (ties favour the
    target), which matches ranking the row and cutting at ``k``. Rows are processed in
    blocks with targets padded, so the comparison is one array operation per block.
    """
    n_rows, n_items = scores.shape
    counts = np.array([len(t) for t in targets])
    width = max(int(counts.max(initial=0)), 1)
    padded = np.zeros((n_rows, width), dtype=np.int64)
    valid = np.arange(width)[None, :] < counts[:, None]
    for row, positions in enumerate(targets):
        padded[row, : len(positions)] = positions
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)[np.clip(np.minimum(counts, k) - 1, 0, None)]
    out = np.zeros(n_rows)
    block = max(1, (1 << 24) // (width * n_items))
    for lo in range(0, n_rows, block):
        hi = min(lo + block, n_rows)
        target_scores = np.take_along_axis(scores[lo:hi], padded[lo:hi], axis=1)
        ranks = (scores[lo:hi, None, :] > target_scores[:, :, None]).sum(axis=2)
        hit = valid[lo:hi] & np.isfinite(target_scores) & (ranks < k)
        gains = np.where(hit, discounts[np.minimum(ranks, k - 1)], 0.0).sum(axis=1)
        out[lo:hi] = np.where(counts[lo:hi] > 0, gains / ideal[lo:hi], 0.0)
    return out


def mmr(
    scores: np.ndarray,
    vectors: np.ndarray,
    k: int,
    diversity: float,
    pool: int = 100,
) -> np.ndarray:
    """Maximal marginal relevance re-ranking of the best ``pool`` positions.

    Greedily picks the item maximising ``(1 - diversity) * relevance - diversity *
    max_similarity_to_already_picked``, with relevance min-max scaled to [0, 1] over the
    pool. ``diversity=0`` keeps the ranking; returns positions, best first.
    """
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"diversity must be in [0, 1], got {diversity}")
    candidates = top_k(scores, max(pool, k))
    if diversity == 0.0 or len(candidates) <= 1:
        return candidates[:k]
    rel = scores[candidates]
    rel = (rel - rel.min()) / max(rel.max() - rel.min(), 1e-12)
    sims = vectors[candidates] @ vectors[candidates].T
    chosen = [0]
    closest = sims[0].copy()
    remaining = np.ones(len(candidates), dtype=bool)
    remaining[0] = False
    while len(chosen) < min(k, len(candidates)):
        gain = (1 - diversity) * rel - diversity * closest
        gain[~remaining] = -np.inf
        pick = int(np.argmax(gain))
        chosen.append(pick)
        remaining[pick] = False
        closest = np.maximum(closest, sims[pick])
    return candidates[chosen]
