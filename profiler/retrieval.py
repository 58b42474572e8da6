"""Candidate channels: each proposes a short list for one shopper through an index.

No channel scans the catalogue's vectors or every user at query time:

========================  ================================================================
channel                   how
========================  ================================================================
``dense``                 item index (FAISS) searched with the profile vector
``centre``                the same index searched with each interest centre
``lexical``               BM25 (``bm25s``, a sparse inverted index) over item texts, queried
                          with her texts and the titles of her items
``neighbours``            the user index (FAISS) gives her nearest users; the items they
                          liked, weighted by similarity (a sparse user x item matrix)
``cooccurrence``          items liked by the same users as her items ("bought together",
                          sparse item x item counts)
``category``, ``brand``   trending items of her top categories and brands
``trending``              recency-weighted counts: the prior for a shopper with no evidence
========================  ================================================================

The union of the lists is scored on :data:`FEATURES` (every feature for every candidate,
whatever channel proposed it), and each candidate remembers which channels proposed it.
Item vectors are read from the index only for candidates.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import sparse

from profiler.profiles import SECONDS_PER_DAY, UserProfile
from profiler.storage import atomic_path, read_json, save_npy, write_json
from profiler.text import TOKEN_PATTERN, segment, strip_field_labels
from profiler.vectors import VectorIndex

__all__ = [
    "CHANNELS",
    "FEATURES",
    "CandidateGenerator",
    "Candidates",
    "Catalogue",
    "ChannelConfig",
    "Interactions",
    "LexicalIndex",
    "Shopper",
]

logger = logging.getLogger(__name__)

CHANNELS = (
    "dense",
    "centre",
    "lexical",
    "neighbours",
    "cooccurrence",
    "category",
    "brand",
    "trending",
)

#: Per-(shopper, candidate) features, in the order of :attr:`Candidates.features`.
FEATURES = (
    "dense",  # profile vector . item
    "centre",  # best interest centre . item
    "neighbour_profile",  # similarity-weighted mean of her neighbours' profiles . item
    "negative",  # max(0, negative vector . item): like what she disliked
    "bm25",  # BM25 of her texts and her items' texts, joined, against the item's text
    "bm25_share",  # bm25 / her best bm25 among candidates
    "bm25_items",  # BM25 of her items' texts alone
    "bm25_texts",  # BM25 of her own texts (reviews, searches) alone
    "mean_embedding",  # mean of her item and text vectors (unweighted) . item
    "evidence_max",  # best cosine to any one piece of her evidence
    "item_max",  # best cosine to one of her items' vectors
    "text_mean",  # mean of her texts' vectors . item
    "category",  # share of her positive evidence in the item's category
    "category_dense",  # share of her dense neighbourhood in the item's category
    "brand",  # share of her positive evidence with the item's brand
    "votes",  # similarity-weighted share of her neighbours who liked the item
    "cooccurrence",  # log(1 + co-occurrence count with her items)
    "cooccurrence_cosine",  # sum over her items of count / sqrt(likers(i) * likers(j))
    "popularity",  # log(1 + events on the item), scaled to [0, 1]
    "trend",  # log(1 + recency-weighted events), scaled to [0, 1]
    "price_gap",  # |log(1 + price) - her mean log(1 + price)|; NaN when unknown
    "evidence",  # log(1 + her events and texts)
)


@dataclass(frozen=True)
class ChannelConfig:
    """How many candidates each channel proposes. JSON round-trips with ``to_dict``."""

    dense: int = 100
    centre: int = 50
    lexical: int = 100
    neighbours: int = 30
    neighbour_items: int = 50
    cooccurrence: int = 50
    affinity: int = 30
    top_categories: int = 2
    top_brands: int = 2
    trending: int = 20
    trend_half_life_days: float = 30.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ChannelConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown channel settings {sorted(unknown)}")
        return cls(**data)


# -- the catalogue as arrays ----------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Catalogue:
    """Item ids with category, brand and price as arrays aligned with ``item_ids``."""

    item_ids: list[str]
    categories: np.ndarray  # int32 code per item, -1: none
    category_names: list[str]
    brands: np.ndarray  # int32 code per item, -1: none
    brand_names: list[str]
    log_prices: np.ndarray  # log1p(price), NaN: unknown

    @classmethod
    def from_columns(
        cls,
        item_ids: Sequence[str],
        categories: Sequence[str] | None = None,
        brands: Sequence[str] | None = None,
        prices: Sequence[float] | None = None,
        *,
        position: dict[str, int] | None = None,
    ) -> Catalogue:
        """``position``: ``{item_id: position}`` of ``item_ids`` when the caller has it
        (shared, not rebuilt: a dict of 1M ids is 56 MB)."""
        n = len(item_ids)
        if position is not None and len(position) != n:
            raise ValueError(f"{len(position)} positions for {n} items")

        def codes(values: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
            if values is None:
                return np.full(n, -1, np.int32), []
            series = pd.Series(list(values), dtype=object).fillna("").astype(str)
            found, names = pd.factorize(series.where(series.str.strip() != ""), sort=True)
            return found.astype(np.int32), [str(name) for name in names]

        category_codes, category_names = codes(categories)
        brand_codes, brand_names = codes(brands)
        if prices is None:
            log_prices = np.full(n, np.nan)
        else:
            log_prices = np.log1p(
                pd.to_numeric(pd.Series(list(prices)), errors="coerce").to_numpy()
            )
        catalogue = cls(
            list(item_ids), category_codes, category_names, brand_codes, brand_names, log_prices
        )
        if position is not None:
            object.__setattr__(catalogue, "_position", position)
        return catalogue

    @property
    def position(self) -> dict[str, int]:
        cached = self.__dict__.get("_position")
        if cached is None:
            cached = {item: p for p, item in enumerate(self.item_ids)}
            object.__setattr__(self, "_position", cached)
        return cached

    def __len__(self) -> int:
        return len(self.item_ids)

    def positions_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Positions of the known ids among ``item_ids`` (unknown ones skipped)."""
        position = self.position
        return np.array([position[i] for i in item_ids if i in position], dtype=np.int64)


# -- counts learned from events -------------------------------------------------------------


class Interactions:
    """Who liked what, as sparse counts: the neighbour, co-occurrence and trending channels.

    ``positives_`` is the binary user x item matrix of positive evidence (rows follow
    ``users_``); ``cooccurrence_`` is ``positives_.T @ positives_`` without its diagonal;
    ``counts_`` are events per item (every kind), ``trend_`` the same with each event
    halved every ``trend_half_life_days`` before the newest event.
    :meth:`add` updates all of them with new events and equals refitting (tested).
    """

    def __init__(self, n_items: int, trend_half_life_days: float = 30.0) -> None:
        self.n_items = n_items
        self.trend_half_life_days = trend_half_life_days

    def fit(
        self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, positive: np.ndarray
    ) -> Interactions:
        """Learn from events given as aligned arrays: user id, item position (-1: none),
        timestamp, and whether the event is positive evidence."""
        self.users_: list[str] = []
        self.user_row_: dict[str, int] = {}
        self.positives_ = sparse.csr_matrix((0, self.n_items), dtype=np.float32)
        self.cooccurrence_ = sparse.csr_matrix((self.n_items, self.n_items), dtype=np.float32)
        self.counts_ = np.zeros(self.n_items)
        self.trend_ = np.zeros(self.n_items)
        self.latest_ = -np.inf
        return self.add(users, items, timestamps, positive)

    def _refresh(self) -> None:
        """Derived arrays every query reads: scaled counts and a trending cache."""
        self.popularity_ = self.scaled(self.counts_)
        self.likers_ = np.asarray(self.positives_.sum(axis=0), dtype=np.float64).ravel()
        self.trend_scaled_ = self.scaled(self.trend_)
        self._trending: dict[tuple[int, int], np.ndarray] = {}

    def add(
        self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, positive: np.ndarray
    ) -> Interactions:
        """Add events (same arrays as :meth:`fit`)."""
        users = np.asarray(users, dtype=object)
        items = np.asarray(items, dtype=np.int64)
        timestamps = np.asarray(timestamps, dtype=np.float64)
        has_item = items >= 0
        for user in pd.unique(users):
            if user not in self.user_row_:
                self.user_row_[user] = len(self.users_)
                self.users_.append(user)
        n_users = len(self.users_)
        if self.positives_.shape[0] < n_users:
            grow = n_users - self.positives_.shape[0]
            self.positives_ = sparse.vstack(
                [self.positives_, sparse.csr_matrix((grow, self.n_items), dtype=np.float32)]
            ).tocsr()
        latest = max(self.latest_, float(timestamps.max(initial=-np.inf)))
        if np.isfinite(self.latest_):
            self.trend_ *= self._decay(latest - self.latest_)
        self.latest_ = latest
        np.add.at(self.counts_, items[has_item], 1.0)
        np.add.at(self.trend_, items[has_item], self._decay(latest - timestamps[has_item]))

        liked = has_item & np.asarray(positive, dtype=bool)
        rows = np.array([self.user_row_[u] for u in users[liked]], dtype=np.int64)
        new = sparse.csr_matrix(
            (np.ones(len(rows), np.float32), (rows, items[liked])), shape=self.positives_.shape
        )
        new.data[:] = 1.0
        new = new - new.multiply(self.positives_)  # pairs she already had count once
        new.eliminate_zeros()
        if new.nnz:
            # (X + N)^T (X + N) - X^T X = N^T X + X^T N + N^T N; diagonal dropped.
            before = self.positives_
            delta = new.T @ before + before.T @ new + new.T @ new
            delta.setdiag(0)
            delta.eliminate_zeros()
            self.cooccurrence_ = (self.cooccurrence_ + delta).tocsr()
            self.positives_ = (before + new).tocsr()
        self._refresh()
        return self

    def _decay(self, age: np.ndarray | float) -> np.ndarray | float:
        return 0.5 ** (np.asarray(age) / (self.trend_half_life_days * SECONDS_PER_DAY))

    def scaled(self, values: np.ndarray) -> np.ndarray:
        """``log1p(values)`` scaled by the largest such value, so in [0, 1]."""
        top = np.log1p(max(float(values.max(initial=0.0)), 0.0))
        return np.log1p(values) / top if top > 0 else np.zeros_like(values)

    def trending(self, k: int, within: np.ndarray | None = None, key: int = -1) -> np.ndarray:
        """Positions of the ``k`` most trending items (optionally among ``within``, cached
        under ``key`` until the next :meth:`add`)."""
        cached = self._trending.get((key, k)) if key >= 0 or within is None else None
        if cached is None:
            cached = self._top_trend(k, within)
            if key >= 0 or within is None:
                self._trending[(key, k)] = cached
        return cached

    def _top_trend(self, k: int, within: np.ndarray | None) -> np.ndarray:
        scores = self.trend_ if within is None else self.trend_[within]
        k = min(k, len(scores))
        if not k:
            return np.empty(0, np.int64)
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.lexsort((best, -scores[best]))]
        return best if within is None else within[best]

    def save(self, directory: Path) -> None:
        # through a temporary name: the target may be a hard link into the previous
        # generation (profiler.store), which an in-place write would change too
        for name, matrix in (("positives", self.positives_), ("cooccurrence", self.cooccurrence_)):
            with atomic_path(directory / f"interactions.{name}.npz") as tmp, open(tmp, "wb") as fh:
                sparse.save_npz(fh, matrix)
        save_npy(directory / "interactions.counts.npy", self.counts_)
        save_npy(directory / "interactions.trend.npy", self.trend_)
        save_npy(
            directory / "interactions.users.npy", np.array(self.users_, dtype=object).astype(str)
        )
        write_json(
            directory / "interactions.json",
            {
                "n_items": self.n_items,
                "trend_half_life_days": self.trend_half_life_days,
                "latest": self.latest_ if np.isfinite(self.latest_) else None,
                "users": len(self.users_),
            },
        )

    @classmethod
    def load(cls, directory: Path) -> Interactions:
        meta = read_json(directory / "interactions.json")
        out = cls(meta["n_items"], meta["trend_half_life_days"])
        out.positives_ = sparse.load_npz(directory / "interactions.positives.npz").tocsr()
        out.cooccurrence_ = sparse.load_npz(directory / "interactions.cooccurrence.npz").tocsr()
        out.counts_ = np.load(directory / "interactions.counts.npy", allow_pickle=False)
        out.trend_ = np.load(directory / "interactions.trend.npy", allow_pickle=False)
        users = np.load(directory / "interactions.users.npy", allow_pickle=False)
        out.users_ = users.tolist()
        out.user_row_ = {u: r for r, u in enumerate(out.users_)}
        out.latest_ = -np.inf if meta["latest"] is None else float(meta["latest"])
        out._refresh()
        if (
            out.positives_.shape != (len(out.users_), out.n_items)
            or len(out.users_) != meta["users"]
        ):
            raise ValueError(f"{directory}: interaction files disagree; rebuild the workspace")
        return out


# -- lexical --------------------------------------------------------------------------------


class LexicalIndex:
    """BM25 over item texts through ``bm25s`` (a sparse index; English stop words;
    Chinese segmented into words by :func:`profiler.text.segment`)."""

    def fit(self, documents: Sequence[str]) -> LexicalIndex:
        import bm25s

        self.n_items_ = len(documents)
        tokens = bm25s.tokenize(
            [segment(strip_field_labels(d)) for d in documents],
            stopwords="en",
            token_pattern=TOKEN_PATTERN,
            show_progress=False,
        )
        self.bm25_ = bm25s.BM25()
        self.bm25_.index(tokens, show_progress=False)
        return self

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """BM25 score of every item for the texts joined into one query (zeros: no text)."""
        import bm25s

        joined = " ".join(strip_field_labels(t) for t in texts if t)
        if not joined.strip():
            return np.zeros(self.n_items_, np.float32)
        tokens = bm25s.tokenize(
            [segment(joined)],
            stopwords="en",
            token_pattern=TOKEN_PATTERN,
            return_ids=False,
            show_progress=False,
        )
        return np.asarray(self.bm25_.get_scores(tokens[0]), dtype=np.float32)

    def save(self, directory: str | os.PathLike[str]) -> None:
        directory = Path(directory)
        if directory.is_dir():  # bm25s writes in place: never through a linked file
            for old in directory.iterdir():
                old.unlink()
        self.bm25_.save(str(directory), show_progress=False)
        write_json(Path(directory) / "lexical.json", {"n_items": self.n_items_})

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, mmap: bool = False) -> LexicalIndex:
        import bm25s

        out = cls()
        out.n_items_ = read_json(Path(directory) / "lexical.json")["n_items"]
        out.bm25_ = bm25s.BM25.load(str(directory), mmap=mmap, show_progress=False)
        return out


# -- one shopper ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Shopper:
    """What the channels know about one shopper.

    ``items``/``item_weights`` are the catalogue positions of her events and their decayed
    signed weights; ``evidence`` holds one unit vector per event or free text, labelled in
    ``evidence_labels`` (the item id, or the text) for the reasons.
    """

    user_id: str | None
    profile: UserProfile
    items: np.ndarray
    item_weights: np.ndarray
    texts: tuple[str, ...]
    evidence: np.ndarray
    evidence_labels: tuple[str, ...]
    seen: frozenset[str]
    text_vectors: np.ndarray | None = None  # her texts' own vectors (reviews, searches)

    @property
    def n_evidence(self) -> int:
        return len(self.evidence_labels)


class Candidates(NamedTuple):
    """The union of the channels' lists for one shopper (row per candidate)."""

    positions: np.ndarray  # catalogue positions
    channels: np.ndarray  # bool [n, len(CHANNELS)]: which channels proposed it
    features: np.ndarray  # float [n, len(FEATURES)]
    vectors: np.ndarray  # float32 [n, d] item vectors
    closest: np.ndarray  # int [n]: index into Shopper.evidence_labels (-1: none)

    def __len__(self) -> int:  # type: ignore[override]
        return len(self.positions)


class CandidateGenerator:
    """Runs every channel for a shopper and scores the union on :data:`FEATURES`.

    Parameters
    ----------
    config : ChannelConfig
    catalogue : Catalogue
    item_index : VectorIndex
        Item vectors by item id.
    user_index : VectorIndex or None
        Profile vectors by user id (the neighbours channel).
    interactions : Interactions
    lexical : LexicalIndex or None
    item_text : callable
        Catalogue position -> item text; her items' texts are pieces of the BM25 query.
    effort : dict, optional
        Share of the indexes' tuned search work the item and user searches spend, for a
        known shopper (``"known"``) and a shopper described by texts (``"texts"``); 1
        (default): the tuned searches (see :func:`profiler.ranking.tune_candidate_search`).
    """

    def __init__(
        self,
        config: ChannelConfig,
        catalogue: Catalogue,
        item_index: VectorIndex,
        user_index: VectorIndex | None,
        interactions: Interactions,
        lexical: LexicalIndex | None,
        item_text: Callable[[int], str],
        effort: dict[str, float] | None = None,
    ) -> None:
        self.config = config
        self.effort = {"known": 1.0, "texts": 1.0, **(effort or {})}
        self.catalogue = catalogue
        self.item_index = item_index
        self.user_index = user_index
        self.interactions = interactions
        self.lexical = lexical
        self.item_text = item_text
        self._by_category = _members(catalogue.categories, len(catalogue.category_names))
        self._by_brand = _members(catalogue.brands, len(catalogue.brand_names))
        self._labels: tuple[tuple, np.ndarray] | None = None

    def _item_vectors(self, positions: np.ndarray) -> np.ndarray:
        """Item vectors at catalogue positions, through the item index's labels of the
        whole catalogue, made once per state of the index (``VectorIndex.version``): a
        known shopper's ~500 candidates cost 1.1 ms of id and label lookups per query."""
        index = self.item_index
        key = (id(index), index.version)
        if self._labels is None or self._labels[0] != key:
            self._labels = key, index.labels_of(self.catalogue.item_ids)
        labels = self._labels[1][np.asarray(positions, dtype=np.int64)]
        if (labels < 0).any():
            missing = np.asarray(positions)[labels < 0][0]
            raise KeyError(f"unknown id {self.catalogue.item_ids[int(missing)]!r}")
        return index.get_labelled(labels)

    def effort_for(self, shopper: Shopper) -> float | None:
        """The search effort for ``shopper`` (``None``: the tuned searches)."""
        effort = self.effort["known" if shopper.user_id is not None else "texts"]
        return None if effort >= 1.0 else effort

    def generate(self, shopper: Shopper, extra: np.ndarray | None = None) -> Candidates:
        """The candidates for ``shopper`` (never an item she has seen); ``extra`` adds
        positions of the caller's own (a filtered search)."""
        cfg, cat = self.config, self.catalogue
        profile = shopper.profile
        proposed: dict[str, np.ndarray] = {}
        seen = shopper.seen
        exclude = set(seen)
        effort = self.effort_for(shopper)

        vector = profile.vector
        has_vector = bool(np.any(vector))
        dense_hits = np.empty(0, np.int64)
        dense_scores = np.empty(0)
        centres = profile.centres if len(profile.centres) > 1 else profile.centres[:0]
        if (has_vector or len(centres)) and len(self.item_index):
            # one call for the profile and its centres: an exact search reads the item
            # matrix once for up to 4 queries (measured at 50k items: 3 queries 10.4 ms in
            # one call, 9.8 ms each in three)
            queries = np.vstack([vector[None, :], centres]) if has_vector else centres
            fetch = max(cfg.dense if has_vector else 0, cfg.centre if len(centres) else 0)
            found = self.item_index.search(queries, fetch, exclude=exclude, effort=effort)
            rows = list(zip(found.ids, found.scores))
            if has_vector:
                ids, scores = rows.pop(0)
                dense_hits, dense_scores = self._positions(ids[: cfg.dense], scores[: cfg.dense])
                proposed["dense"] = dense_hits
            if rows:
                proposed["centre"] = np.concatenate(
                    [
                        self._positions(ids[: cfg.centre], scores[: cfg.centre])[0]
                        for ids, scores in rows
                    ]
                )

        bm25 = bm25_items = bm25_texts = None
        if self.lexical is not None and (shopper.texts or len(shopper.items)):
            if shopper.texts:
                bm25_texts = self.lexical.scores(list(shopper.texts))
            if len(shopper.items):
                bm25_items = self.lexical.scores([self.item_text(int(p)) for p in shopper.items])
            if bm25_texts is not None and bm25_items is not None:
                bm25 = bm25_texts + bm25_items
            else:
                bm25 = bm25_texts if bm25_texts is not None else bm25_items
            proposed["lexical"] = _top(bm25, cfg.lexical)

        votes = np.zeros(0)
        voted = np.empty(0, np.int64)
        neighbour_vector = np.zeros_like(vector)
        if has_vector and self.user_index is not None and len(self.user_index):
            skip = {shopper.user_id} if shopper.user_id is not None else None
            found = self.user_index.search(vector, cfg.neighbours, exclude=skip, effort=effort)
            ids = [u for u in found.ids[0] if u is not None]
            sims = np.maximum(found.scores[0][: len(ids)].astype(np.float64), 0.0)
            if len(ids) and sims.sum() > 0:
                neighbour_vector = (sims @ self.user_index.get(ids)).astype(np.float32)
                neighbour_vector /= max(float(np.linalg.norm(neighbour_vector)), 1e-12)
                rows = [self.interactions.user_row_.get(u, -1) for u in ids]
                known = np.array([r >= 0 for r in rows])
                if known.any():
                    voted, votes = _weighted_rows(
                        self.interactions.positives_,
                        np.array(rows)[known],
                        sims[known] / sims.sum(),
                    )
                    proposed["neighbours"] = voted[_top(votes, cfg.neighbour_items)]

        liked = np.unique(shopper.items[shopper.item_weights > 0])
        cooc_positions, cooc_counts = np.empty(0, np.int64), np.zeros(0)
        cooc_cosine = np.zeros(0)
        if len(liked):
            likers = self.interactions.likers_
            cooc_positions, cooc_counts, cosine = _weighted_rows(
                self.interactions.cooccurrence_,
                liked,
                np.ones(len(liked)),
                1.0 / np.sqrt(np.maximum(likers[liked], 1.0)),
            )
            if len(cooc_positions):
                cooc_cosine = cosine / np.sqrt(np.maximum(likers[cooc_positions], 1.0))
                # normalised counts propose: raw ones would mostly repeat the popular items
                proposed["cooccurrence"] = cooc_positions[_top(cooc_cosine, cfg.cooccurrence)]

        category_share = _shares(cat.categories, shopper.items, shopper.item_weights)
        brand_share = _shares(cat.brands, shopper.items, shopper.item_weights)
        dense_share = _shares(cat.categories, dense_hits[:20], np.maximum(dense_scores[:20], 0))
        for name, shares, members, top in (
            ("category", category_share or dense_share, self._by_category, cfg.top_categories),
            ("brand", brand_share, self._by_brand, cfg.top_brands),
        ):
            best = sorted(shares, key=lambda c: (-shares[c], c))[:top]
            offset = 0 if name == "category" else len(cat.category_names)
            lists = [
                self.interactions.trending(cfg.affinity, members[c], key=offset + c) for c in best
            ]
            if lists:
                proposed[name] = np.concatenate(lists)
        proposed["trending"] = self.interactions.trending(cfg.trending + len(seen))
        if extra is not None and len(extra):
            proposed["dense"] = np.concatenate([proposed.get("dense", []), extra]).astype(np.int64)

        # -- the union, without what she has seen --
        lists = [np.asarray(p, np.int64) for p in proposed.values()]
        union, at = np.unique(np.concatenate(lists), return_inverse=True)
        channels = np.zeros((len(union), len(CHANNELS)), dtype=bool)
        proposer = [CHANNELS.index(name) for name in proposed]
        channels[at, np.repeat(proposer, [len(p) for p in lists])] = True
        if seen:
            banned = np.array([cat.position[i] for i in seen if i in cat.position], np.int64)
            keep = ~np.isin(union, banned)
            union, channels = union[keep], channels[keep]

        # -- features for every candidate --
        vectors = self._item_vectors(union) if len(union) else None
        if vectors is None:
            vectors = np.empty((0, profile.pos_sum.shape[0]), np.float32)
        features = np.zeros((len(union), len(FEATURES)))
        column = {name: features[:, i] for i, name in enumerate(FEATURES)}
        column["dense"][:] = vectors @ vector
        column["centre"][:] = (
            (vectors @ profile.centres.T).max(axis=1) if len(profile.centres) else vectors @ vector
        )
        column["neighbour_profile"][:] = vectors @ neighbour_vector
        if profile.has_negative:
            column["negative"][:] = np.maximum(vectors @ profile.negative, 0.0)
        if bm25 is not None:
            column["bm25"][:] = bm25[union]
            top = float(column["bm25"].max(initial=0.0))
            column["bm25_share"][:] = column["bm25"] / top if top > 0 else 0.0
            if bm25_items is not None:
                column["bm25_items"][:] = bm25_items[union]
            if bm25_texts is not None:
                column["bm25_texts"][:] = bm25_texts[union]
        if shopper.n_evidence and len(union):
            column["mean_embedding"][:] = vectors @ _unit_mean(shopper.evidence)
            column["evidence_max"][:] = (vectors @ shopper.evidence.T).max(axis=1)
        if len(shopper.items) and len(union):
            mine = self._item_vectors(shopper.items)
            column["item_max"][:] = (vectors @ mine.T).max(axis=1)
        if shopper.text_vectors is not None and len(shopper.text_vectors) and len(union):
            column["text_mean"][:] = vectors @ _unit_mean(shopper.text_vectors)
        column["category"][:] = _lookup(category_share, cat.categories[union])
        column["category_dense"][:] = _lookup(dense_share, cat.categories[union])
        column["brand"][:] = _lookup(brand_share, cat.brands[union])
        column["votes"][:] = _sparse_lookup(voted, votes, union)
        column["cooccurrence"][:] = np.log1p(_sparse_lookup(cooc_positions, cooc_counts, union))
        column["cooccurrence_cosine"][:] = _sparse_lookup(cooc_positions, cooc_cosine, union)
        column["popularity"][:] = self.interactions.popularity_[union]
        column["trend"][:] = self.interactions.trend_scaled_[union]
        prices = cat.log_prices[shopper.items]
        usual = float(np.nanmean(prices)) if np.isfinite(prices).any() else np.nan
        column["price_gap"][:] = np.abs(cat.log_prices[union] - usual)
        column["evidence"][:] = np.log1p(shopper.n_evidence)

        closest = np.full(len(union), -1, dtype=np.int64)
        if shopper.n_evidence and len(union):
            closest = np.argmax(vectors @ shopper.evidence.T, axis=1)
        return Candidates(union, channels, features, vectors.astype(np.float32), closest)

    def _positions(self, ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        position = self.catalogue.position
        keep = [i for i, item in enumerate(ids) if item is not None]
        return (
            np.array([position[ids[i]] for i in keep], dtype=np.int64),
            np.asarray(scores, dtype=np.float64)[keep],
        )


def _unit_mean(vectors: np.ndarray) -> np.ndarray:
    """The L2-normalised mean of ``vectors`` (float32)."""
    mean = vectors.astype(np.float64).mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


def _members(codes: np.ndarray, n_codes: int) -> list[np.ndarray]:
    """Positions of the items of each code."""
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(n_codes + 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(n_codes)]


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest positive scores, best first; among scores tied at the
    k-th, the lower indices."""
    positive = np.flatnonzero(scores > 0)
    if len(positive) > k:
        values = scores[positive]
        if len(values) > 64 * k:
            # a threshold from every 16th value keeps about 4k of them: partitioning those
            # instead of all (BM25 at 1M items: 300k positive scores, 3.8 -> 1.7 ms). Exact:
            # used only when at least k values reach it, so every tie at the k-th is kept
            sample = values[::16]
            m = max(1, k // 4)
            threshold = np.partition(sample, len(sample) - m)[len(sample) - m]
            near = values >= threshold
            if np.count_nonzero(near) >= k:
                positive, values = positive[near], values[near]
        kth = np.partition(values, len(values) - k)[len(values) - k]
        above = positive[values > kth]
        positive = np.concatenate([above, positive[values == kth][: k - len(above)]])
    return positive[np.lexsort((positive, -scores[positive]))]


def _shares(codes: np.ndarray, positions: np.ndarray, weights: np.ndarray) -> dict[int, float]:
    """Share of the positive weight per code (category or brand) among ``positions``."""
    weights = np.asarray(weights, dtype=np.float64)
    keep = (weights > 0) & (codes[positions] >= 0) if len(positions) else np.zeros(0, bool)
    if not keep.any():
        return {}
    found, at = np.unique(codes[positions][keep], return_inverse=True)
    sums = np.bincount(at, weights=weights[keep])
    total = float(sums.sum())
    return {int(c): float(w) / total for c, w in zip(found, sums)}


def _lookup(shares: dict[int, float], codes: np.ndarray) -> np.ndarray:
    """The share of each code (0 for a code not in ``shares``, and for -1)."""
    if not shares:
        return np.zeros(len(codes))
    keys = np.fromiter(shares, np.int64, len(shares))
    values = np.fromiter(shares.values(), np.float64, len(shares))
    return _sparse_lookup(keys, values, np.asarray(codes, np.int64))


def _weighted_rows(
    matrix: sparse.csr_matrix, rows: np.ndarray, *weights: np.ndarray
) -> tuple[np.ndarray, ...]:
    """``w @ matrix[rows]`` for each weight vector ``w`` (aligned with ``rows``), as the
    sorted column positions where any row has an entry and one value array per ``w``.

    The same sums as a sparse product, read straight from the CSR arrays: a query touches
    a few dozen rows, where building sparse matrices cost more than the arithmetic.
    """
    rows = np.asarray(rows, np.int64)
    starts = matrix.indptr[rows].astype(np.int64)
    lengths = matrix.indptr[rows + 1].astype(np.int64) - starts
    # the entries of every row, one after another: offset of each entry in indices/data
    first = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    entry = np.arange(int(lengths.sum())) + first
    positions, at = np.unique(matrix.indices[entry], return_inverse=True)
    values = matrix.data[entry].astype(np.float64)
    sums = [
        np.bincount(at, weights=values * np.repeat(w, lengths), minlength=len(positions))
        for w in weights
    ]
    return (positions.astype(np.int64), *sums)


def _sparse_lookup(positions: np.ndarray, values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``values`` at ``wanted`` positions of a sparse vector given as (positions, values)."""
    out = np.zeros(len(wanted))
    if len(positions):
        order = np.argsort(positions)
        at = np.searchsorted(positions[order], wanted)
        at = np.minimum(at, len(positions) - 1)
        hit = positions[order][at] == wanted
        out[hit] = values[order][at[hit]]
    return out
