"""Second stage: rank the channels' candidates, learned on the workspace's own histories.

Two scorers over the same :data:`~profiler.retrieval.FEATURES`:

* :class:`BlendScorer`, the documented fixed blend: each feature z-scored within the
  shopper's candidates, summed with weights fitted on training queries by logistic
  regression (target vs other candidates). Weights of the interaction-count features
  (:data:`MONOTONE`) are kept >= 0.
* :class:`LightGBMScorer`: LightGBM ``lambdarank`` with early stopping on validation
  queries, increasing in the :data:`MONOTONE` features.

:func:`train_scorer` builds the training queries from the events themselves (each
sampled user's last event with an item is the target, everything strictly before it her
history, and the same users cut to 1 event and to her last text alone, so cold start is
learned too), scores the default blend, the fitted blend and LightGBM by
5-fold cross-validation over users and keeps the best, refitted on all queries; with too
few queries it keeps the default blend. :class:`TwoStageRecommender` is what
``profiler build`` trains, ``profiler evaluate`` measures and ``recommend`` serves: one
training path.

Why :data:`MONOTONE`: in a sparse extract nearly every item is touched by one shopper, so
an item no one touched is, by construction, somebody's held-out target; a scorer free to
weigh counts negatively learns "untouched means target", which no real catalogue allows.
More evidence that others want an item may only help it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from profiler.profiles import (
    Evidence,
    ProfileBuilder,
    ProfileConfig,
    ProfileStore,
    build_profiles,
)
from profiler.recommender import Corpus, Query, Recommender, top_k
from profiler.retrieval import (
    CHANNELS,
    FEATURES,
    CandidateGenerator,
    Candidates,
    Catalogue,
    ChannelConfig,
    Interactions,
    LexicalIndex,
    Shopper,
)
from profiler.storage import atomic_path, read_json, write_json
from profiler.vectors import TARGET_RECALL, FaissIndex, VectorIndex

__all__ = [
    "MONOTONE",
    "BlendScorer",
    "EnsembleScorer",
    "LightGBMScorer",
    "Ranked",
    "RankerConfig",
    "TwoStageRecommender",
    "event_evidence",
    "load_scorer",
    "mmr",
    "save_scorer",
    "train_scorer",
    "tune_candidate_search",
]

logger = logging.getLogger(__name__)

#: Mean share of a shopper's top-10 that must stay the same when the channels search the
#: item and user indexes faster than their tuned recall (:func:`tune_candidate_search`):
#: the recall an index search promises against exact search, now asked of the
#: recommendations against those made with the index's tuned searches.
CANDIDATE_AGREEMENT = TARGET_RECALL
#: Fractions of an IVF index's tuned ``nprobe`` tried for candidate searches, in order
#: (halving down to 1/128: on the 1M x 300k benchmark known shoppers kept 0.985 of their
#: top 10 at every share from 1/16 to 1/128, so stopping at 1/16 left time unused).
CANDIDATE_FRACTIONS = tuple(1 / 2**n for n in range(1, 8))

#: Features that count other shoppers' interactions: a scorer may only increase in them.
MONOTONE = ("votes", "cooccurrence", "cooccurrence_cosine", "popularity", "trend")

#: The blend used when there is no history to fit it on, and where fitting starts: the
#: lexical match, the mean and best similarity to her evidence and her category affinity,
#: z-scored and summed (on the Amazon dev split this plain hybrid already leads TF-IDF).
DEFAULT_WEIGHTS = {
    "bm25": 1.0,
    "mean_embedding": 1.0,
    "evidence_max": 1.0,
    "category": 1.0,
    "category_dense": 0.5,
    "negative": -0.5,
}

#: Time quantile of the ``"after-cut"`` training queries' global cut.
CUT_QUANTILE = 0.9

#: Most share of a workspace's events that lone-review training queries hold out.
LONE_SHARE = 0.25

#: Values coordinate ascent tries for each blend weight.
WEIGHT_GRID = (-1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)


@dataclass(frozen=True)
class RankerConfig:
    """How the second stage is trained. JSON round-trips with ``to_dict``/``from_dict``.

    Parameters
    ----------
    scorer : str
        ``"auto"`` (the best by cross-validation), ``"blend"``, ``"lightgbm"`` or
        ``"ensemble"`` (LightGBM + the default blend).
    max_users : int
        Users sampled for training queries (each gives up to three).
    folds : int
        Folds of users for choosing the scorer (each query scored by scorers fitted
        without its user); LightGBM stops early on the next fold.
    min_queries : int
        Fewer training queries with the target among the candidates: the blend serves.
    rounds : int
        Targets per sampled shopper: her last item, then (with a state fitted without
        it) the one before, and so on; each round also cuts her to one event and to her
        last text.
    """

    scorer: str = "auto"
    max_users: int = 2000
    folds: int = 5
    min_queries: int = 100
    rounds: int = 3
    n_estimators: int = 500
    learning_rate: float = 0.05
    num_leaves: int = 7
    min_child_samples: int = 50
    early_stopping: int = 40
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scorer not in ("auto", "blend", "lightgbm", "ensemble"):
            raise ValueError(
                f"scorer must be auto, blend, lightgbm or ensemble, got {self.scorer!r}"
            )
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RankerConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown ranker settings {sorted(unknown)}")
        return cls(**data)


# -- scorers --------------------------------------------------------------------------------


def _zscore(features: np.ndarray) -> np.ndarray:
    """Features standardised within one shopper's candidates (NaN and constant: 0)."""
    finite = np.isfinite(features)
    x = np.where(finite, features, np.nan)
    # nanmean/nanstd by hand: an all-NaN column (no prices) is expected, and silencing
    # numpy's warning with warnings.catch_warnings is not thread-safe (serving threads)
    count = finite.sum(axis=0)
    values = np.where(finite, features, 0.0)
    mean = values.sum(axis=0) / np.maximum(count, 1)
    var = (np.where(finite, values - mean, 0.0) ** 2).sum(axis=0) / np.maximum(count, 1)
    std = np.where(count > 0, np.sqrt(var), 0.0)
    z = (np.nan_to_num(x, nan=0.0) - mean) / np.where(std > 1e-9, std, 1.0)
    z[:, ~(std > 1e-9)] = 0.0
    return np.where(np.isnan(x), 0.0, z)


def _ranker_inputs(features: np.ndarray) -> np.ndarray:
    """What LightGBM sees: features z-scored within the shopper's candidates (so trees
    compare candidates, not shoppers), with the amount of evidence kept as it is."""
    z = _zscore(features)
    column = FEATURES.index("evidence")
    z[:, column] = features[:, column]
    return z


class BlendScorer:
    """``score = sum_f w_f * z_f``: z-scored features, weights by logistic regression."""

    kind = "blend"

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)

    @property
    def _vector(self) -> np.ndarray:
        return np.array([self.weights.get(f, 0.0) for f in FEATURES])

    def fit(
        self, groups: Sequence[np.ndarray], labels: Sequence[np.ndarray], passes: int = 4
    ) -> BlendScorer:
        """Coordinate ascent on mean NDCG@10 of the training queries, from the current
        weights over :data:`WEIGHT_GRID` (weights of :data:`MONOTONE` features >= 0)."""
        stack = _Stack(groups, labels)
        weights = self._vector.copy()
        best = stack.ndcg(weights)
        for _ in range(passes):
            improved = False
            for f, name in enumerate(FEATURES):
                for value in WEIGHT_GRID:
                    if (name in MONOTONE and value < 0) or value == weights[f]:
                        continue
                    trial = weights.copy()
                    trial[f] = value
                    score = stack.ndcg(trial)
                    if score > best + 1e-9:
                        best, weights, improved = score, trial, True
            if not improved:
                break
        self.weights = {f: float(w) for f, w in zip(FEATURES, weights) if w != 0}
        self.train_ndcg_ = best
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        return _zscore(features) @ self._vector

    def contributions(self, features: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Exact terms ``w_f * z_f`` per candidate (of ``rows``, default all) and feature
        (they sum to the score)."""
        z = _zscore(features)
        return (z if rows is None else z[rows]) * self._vector

    def to_dict(self) -> dict:
        return {"kind": self.kind, "weights": self.weights}


class LightGBMScorer:
    """LightGBM LambdaRank over the z-scored features (:func:`_ranker_inputs`)."""

    kind = "lightgbm"

    def __init__(self, config: RankerConfig | None = None) -> None:
        self.config = config or RankerConfig()

    def fit(
        self,
        groups: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        valid_groups: Sequence[np.ndarray] | None = None,
        valid_labels: Sequence[np.ndarray] | None = None,
    ) -> LightGBMScorer:
        """Fit; with validation queries, stop early on their NDCG@10."""
        import lightgbm

        cfg = self.config
        monotone = [1 if f in MONOTONE else 0 for f in FEATURES]
        self.model_ = lightgbm.LGBMRanker(
            objective="lambdarank",
            n_estimators=cfg.n_estimators,
            learning_rate=cfg.learning_rate,
            num_leaves=cfg.num_leaves,
            min_child_samples=cfg.min_child_samples,
            monotone_constraints=monotone,
            random_state=cfg.seed,
            deterministic=True,
            force_row_wise=True,
            n_jobs=1,
            verbose=-1,
        )
        stopping = {}
        if valid_groups:
            stopping = {
                "eval_X": (np.concatenate([_ranker_inputs(g) for g in valid_groups]),),
                "eval_y": (np.concatenate(valid_labels),),
                "eval_group": [[len(g) for g in valid_groups]],
                "eval_at": [10],
                "callbacks": [lightgbm.early_stopping(cfg.early_stopping, verbose=False)],
            }
        self.model_.fit(
            np.concatenate([_ranker_inputs(g) for g in groups]),
            np.concatenate(labels),
            group=[len(g) for g in groups],
            feature_name=list(FEATURES),
            **stopping,
        )
        self.booster_ = self.model_.booster_
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        return self.booster_.predict(_ranker_inputs(features), num_threads=1)

    def contributions(self, features: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """SHAP-style contributions (``pred_contrib``) per candidate of ``rows`` (default
        all) and feature. The inputs are standardised over all the candidates, as when
        they were scored; TreeSHAP runs only for ``rows`` (it costs ~20 score passes)."""
        inputs = _ranker_inputs(features)
        if rows is not None:
            inputs = inputs[rows]
        return self.booster_.predict(inputs, pred_contrib=True, num_threads=1)[:, :-1]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "best_iteration": int(self.booster_.best_iteration or 0)}

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            self.booster_.save_model(str(tmp), num_iteration=self.booster_.best_iteration)

    @classmethod
    def load(cls, path: Path) -> LightGBMScorer:
        import lightgbm

        out = cls()
        out.booster_ = lightgbm.Booster(model_file=str(path))
        if list(out.booster_.feature_name()) != list(FEATURES):
            raise ValueError(f"{path}: ranker features differ from this library's; rebuild")
        return out


class EnsembleScorer:
    """LightGBM and the default blend, each standardised within the shopper's candidates,
    summed: ``z(lightgbm) + z(blend)``.

    Why: on the Amazon dev split LightGBM alone had the better NDCG@10 but ranked worse
    below the top ten (Recall@50 0.546 vs the default blend's 0.590), and the sum kept
    both strengths (R@10 0.279, NDCG@10 0.169, R@50 0.583); it earns its place like the
    others, by cross-validation.
    """

    kind = "ensemble"

    def __init__(self, booster: LightGBMScorer, blend: BlendScorer | None = None) -> None:
        self.booster = booster
        self.blend = blend or BlendScorer()

    def _parts(self, features: np.ndarray) -> list[tuple[np.ndarray, float]]:
        out = []
        for part in (self.booster, self.blend):
            score = part.score(features)
            std = float(score.std())
            out.append((score, std if std > 1e-9 else 1.0))
        return out

    def score(self, features: np.ndarray) -> np.ndarray:
        return sum((score - score.mean()) / std for score, std in self._parts(features))

    def contributions(self, features: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Each part's contributions over its spread: they sum to the score up to one
        constant per shopper (the parts' means)."""
        (_, booster_std), (_, blend_std) = self._parts(features)
        return (
            self.booster.contributions(features, rows) / booster_std
            + self.blend.contributions(features, rows) / blend_std
        )

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "best_iteration": self.booster.to_dict()["best_iteration"],
            "weights": self.blend.weights,
        }


Scorer = BlendScorer | LightGBMScorer | EnsembleScorer


class _Stack:
    """Training queries stacked for fast NDCG@10 of many weight vectors."""

    def __init__(self, groups: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> None:
        self.z = np.concatenate([_zscore(g) for g in groups])
        sizes = np.array([len(g) for g in groups])
        self.starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.owner = np.repeat(np.arange(len(groups)), sizes)
        self.target = np.array([start + int(np.argmax(y)) for start, y in zip(self.starts, labels)])
        self.has_target = np.array([bool(np.any(y)) for y in labels])

    def ndcg(self, weights: np.ndarray) -> float:
        scores = self.z @ weights
        above = scores > scores[self.target][self.owner]
        ranks = np.bincount(self.owner, weights=above, minlength=len(self.target))
        gains = np.where(ranks < 10, 1.0 / np.log2(ranks + 2), 0.0)
        return float(np.mean(np.where(self.has_target, gains, 0.0)))


# -- evidence and state ---------------------------------------------------------------------


def event_evidence(
    builder: ProfileBuilder,
    events: pd.DataFrame,
    item_index: VectorIndex,
    text_vectors: np.ndarray,
    extra_text_vectors: np.ndarray | None = None,
) -> Evidence:
    """Evidence of events, reading item vectors from ``item_index`` (only those events')."""
    dim = item_index.dim
    has_item, has_text = _has_vectors(events, item_index, text_vectors)
    item_vectors = np.zeros((len(events), dim), dtype=np.float32)
    texts = np.zeros((len(events), dim), dtype=np.float32)
    if has_item.any():
        ids = events["item_id"].to_numpy()[has_item].tolist()
        item_vectors[has_item] = item_index.get(ids)
    if has_text.any():
        texts[has_text] = text_vectors[events["text_row"].to_numpy()[has_text]]
    return builder.evidence_of(events, item_vectors, texts, has_item, has_text)


def event_weights(
    builder: ProfileBuilder,
    events: pd.DataFrame,
    item_index: VectorIndex,
    text_vectors: np.ndarray,
) -> np.ndarray:
    """The weights of :func:`event_evidence` without reading a vector (every event's,
    at 1M items, read 900k item vectors for nothing)."""
    has_item, has_text = _has_vectors(events, item_index, text_vectors)
    return builder.weights(events, has_item | has_text)


def _has_vectors(
    events: pd.DataFrame, item_index: VectorIndex, text_vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Which events have an item vector (an item in the index) and which a text vector
    (a text row whose vector is not NaN)."""
    if not len(events):
        return np.zeros(0, bool), np.zeros(0, bool)
    ids = events["item_id"].tolist()
    has_item = np.array([bool(i) and i in item_index for i in ids], dtype=bool)
    rows = events["text_row"].to_numpy()
    has_text = rows >= 0
    has_text[has_text] = ~np.isnan(text_vectors[rows[has_text], 0])
    return has_item, has_text


def _all_evidence(
    builder: ProfileBuilder,
    events: pd.DataFrame,
    item_index: VectorIndex,
    text_vectors: np.ndarray,
    chunk: int = 200_000,
) -> Evidence:
    parts = [
        event_evidence(builder, events.iloc[lo : lo + chunk], item_index, text_vectors)
        for lo in range(0, len(events), chunk)
    ]
    if not parts:
        return Evidence.empty(item_index.dim)
    return parts[0] if len(parts) == 1 else Evidence(*(np.concatenate(a) for a in zip(*parts)))


@dataclass
class State:
    """What the channels read, fitted from one set of events."""

    profiles: ProfileStore
    user_index: VectorIndex
    interactions: Interactions


def fit_state(
    builder: ProfileBuilder,
    events: pd.DataFrame,
    catalogue: Catalogue,
    item_index: VectorIndex,
    text_vectors: np.ndarray,
    trend_half_life_days: float,
    model_id: str | None = None,
    template: FaissIndex | None = None,
) -> State:
    """Profiles (array operations), the user index and interaction counts for ``events``
    (sorted by time). ``template`` lends the user index its trained structure (a training
    state of the same users takes the serving one's)."""
    ordered = events.sort_values(["user_id", "timestamp"], kind="stable")
    evidence = _all_evidence(builder, ordered, item_index, text_vectors)
    profiles = build_profiles(builder, ordered["user_id"].to_numpy(), evidence)
    if template is not None:
        user_index = template.empty_like()
    else:
        user_index = FaissIndex(item_index.dim, model_id=model_id)
    users = list(profiles)
    vectors = profiles.vectors(users)
    usable = np.flatnonzero(np.abs(vectors).sum(axis=1) > 0)
    if len(usable):
        user_index.add([users[i] for i in usable], vectors[usable])
    if user_index.needs_optimize:
        # every training query searches it: exact search over 300k users cost 38 ms each
        user_index.optimize()
    position = catalogue.position
    items = np.array([position.get(i, -1) for i in ordered["item_id"]], dtype=np.int64)
    interactions = Interactions(len(catalogue), trend_half_life_days).fit(
        ordered["user_id"].to_numpy(),
        items,
        ordered["timestamp"].to_numpy(dtype=np.float64),
        evidence.weights > 0,
    )
    return State(profiles, user_index, interactions)


# -- one ranked list ------------------------------------------------------------------------


class Ranked(NamedTuple):
    """A shopper's ranked candidates (best first)."""

    positions: np.ndarray
    scores: np.ndarray
    candidates: Candidates  # rows in ranked order
    by_trend: bool  # no evidence at all: ranked by the trend prior, not the scorer


class TwoStageRecommender(Recommender):
    """Channels propose, a trained scorer ranks: the profiler's recommender.

    Parameters
    ----------
    config : ProfileConfig, optional
        How events become profiles.
    channels : ChannelConfig, optional
        Candidates per channel.
    ranker : RankerConfig, optional
        How the scorer is trained and chosen.
    """

    name = "profiler"

    def __init__(
        self,
        config: ProfileConfig | None = None,
        channels: ChannelConfig | None = None,
        ranker: RankerConfig | None = None,
    ) -> None:
        self.config = config
        self.channels = channels
        self.ranker = ranker

    # -- fitting --------------------------------------------------------------------------

    def fit(
        self,
        corpus: Corpus,
        *,
        item_index: VectorIndex | None = None,
        lexical: LexicalIndex | None = None,
        train: bool = True,
    ) -> TwoStageRecommender:
        """Fit the channels' state on ``corpus.events`` and train the scorer on them."""
        self.builder_ = ProfileBuilder(self.config)
        self.search_effort_: dict[str, float] = {}  # the tuned searches until measured
        self.channels_ = self.channels or ChannelConfig()
        self.ranker_ = self.ranker or RankerConfig()
        self.corpus_ = corpus
        self.catalogue_ = Catalogue.from_columns(
            corpus.item_ids, corpus.item_categories, corpus.item_brands, corpus.item_prices
        )
        if item_index is None:
            item_index = FaissIndex(corpus.item_vectors.shape[1])
            item_index.add(corpus.item_ids, corpus.item_vectors)
        self.item_index_ = item_index
        self.lexical_ = lexical or LexicalIndex().fit(corpus.item_texts)
        self.text_vectors_ = corpus.text_vectors
        self.item_text_ = corpus.item_texts.__getitem__
        state = self.fit_state(corpus.events)
        if train:
            self.scorer_, self.report_ = train_scorer(self, corpus.events, state.user_index)
        else:
            self.scorer_, self.report_ = BlendScorer(), {"scorer": "blend", "why": "not trained"}
        self.set_state(state)
        return self

    @classmethod
    def assemble(
        cls,
        *,
        config: ProfileConfig,
        channels: ChannelConfig,
        ranker: RankerConfig,
        catalogue: Catalogue,
        item_index: VectorIndex,
        lexical: LexicalIndex,
        text_vectors: np.ndarray,
        item_text,
        scorer: Scorer,
        report: dict,
        state: State,
        search_effort: dict[str, float] | None = None,
    ) -> TwoStageRecommender:
        """A fitted recommender from stored parts (a workspace opened for serving)."""
        model = cls(config, channels, ranker)
        model.search_effort_ = dict(search_effort or {})
        model.builder_ = ProfileBuilder(config)
        model.channels_, model.ranker_ = channels, ranker
        model.catalogue_, model.item_index_, model.lexical_ = catalogue, item_index, lexical
        model.text_vectors_, model.item_text_ = text_vectors, item_text
        model.scorer_, model.report_ = scorer, report
        model.set_state(state)
        return model

    def fit_state(self, events: pd.DataFrame, template: FaissIndex | None = None) -> State:
        return fit_state(
            self.builder_,
            events,
            self.catalogue_,
            self.item_index_,
            self.text_vectors_,
            self.channels_.trend_half_life_days,
            self.item_index_.model_id,
            template,
        )

    def set_state(self, state: State) -> None:
        self.state_ = state
        self.generator_ = CandidateGenerator(
            self.channels_,
            self.catalogue_,
            self.item_index_,
            state.user_index,
            state.interactions,
            self.lexical_,
            self.item_text_,
            self.search_effort_,
        )

    # -- serving --------------------------------------------------------------------------

    def shopper(self, query: Query, *, stored: bool = False) -> Shopper:
        """The channels' view of a query shopper; ``stored`` reads her profile from the
        state (a known user queried with all her events) instead of building it."""
        events = query.events
        evidence = event_evidence(self.builder_, events, self.item_index_, self.text_vectors_)
        item_ids, event_texts = events["item_id"].tolist(), events["text"].tolist()
        labels = [item if item else text for item, text in zip(item_ids, event_texts)]
        now = float(evidence.timestamps.max()) if len(evidence) else 0.0
        if query.texts:
            vectors = np.asarray(query.text_vectors, dtype=np.float32)
            weight = self.builder_.config.kind_weights["search"]
            evidence = evidence.concat(
                Evidence(vectors, np.full(len(vectors), weight), np.full(len(vectors), now))
            )
            labels += list(query.texts)
        if stored and not query.texts and query.user_id in self.state_.profiles:
            profile = self.state_.profiles[query.user_id]
        else:
            profile = self.builder_.build(query.user_id or "", evidence)
        position = self.catalogue_.position
        n_events = len(events)
        with_item = np.array([bool(i) and i in position for i in item_ids], bool)
        decayed = evidence.weights[:n_events] * self.builder_.decay(
            now - evidence.timestamps[:n_events]
        )
        texts = [t for t in event_texts if t] + list(query.texts)
        rows = events["text_row"].to_numpy(dtype=np.int64)
        text_vectors = [self.text_vectors_[rows[rows >= 0]]]
        if query.texts:
            text_vectors.append(np.asarray(query.text_vectors, dtype=np.float32))
        return Shopper(
            query.user_id,
            profile,
            np.array([position[i] for i, has in zip(item_ids, with_item) if has], dtype=np.int64),
            np.asarray(decayed[with_item], dtype=np.float64),
            tuple(texts),
            evidence.vectors,
            tuple(labels),
            frozenset(query.seen),
            np.concatenate(text_vectors).astype(np.float32),
        )

    def rank(
        self,
        shopper: Shopper,
        *,
        exclude: Sequence[str] = (),
        extra: np.ndarray | None = None,
    ) -> Ranked:
        """Every candidate of ``shopper``, ranked by the scorer."""
        candidates = self.generator_.generate(shopper, extra=extra)
        if exclude:
            banned = self.catalogue_.positions_of(exclude)
            keep = ~np.isin(candidates.positions, banned)
            candidates = Candidates(*(a[keep] for a in candidates))
        by_trend = shopper.n_evidence == 0
        if not len(candidates):
            return Ranked(np.empty(0, np.int64), np.empty(0), candidates, by_trend)
        if by_trend:
            scores = candidates.features[:, FEATURES.index("trend")].copy()
        else:
            scores = np.asarray(self.scorer_.score(candidates.features), dtype=np.float64)
        order = np.lexsort((candidates.positions, -scores))
        ranked = Candidates(*(a[order] for a in candidates))
        return Ranked(ranked.positions, scores[order], ranked, by_trend)

    def explain_rows(self, ranked: Ranked, rows: np.ndarray) -> np.ndarray:
        """Feature contributions ``[len(rows), len(FEATURES)]`` of ranked candidates
        (standardised over all her candidates, as when they were scored)."""
        if not len(rows):
            return np.empty((0, len(FEATURES)))
        if ranked.by_trend:
            out = np.zeros((len(rows), len(FEATURES)))
            out[:, FEATURES.index("trend")] = ranked.scores[rows]
            return out
        return self.scorer_.contributions(ranked.candidates.features, np.asarray(rows))

    def recommend(self, query: Query, k: int = 10, exclude: Sequence[str] = ()) -> list[str]:
        ranked = self.rank(self.shopper(query), exclude=exclude)
        return [self.catalogue_.item_ids[p] for p in ranked.positions[:k]]

    def score(self, query: Query) -> np.ndarray:
        """Scores of the candidates, ``-inf`` for every other item (not a full ranking)."""
        out = np.full(len(self.catalogue_), -np.inf)
        ranked = self.rank(self.shopper(query))
        out[ranked.positions] = ranked.scores
        return out

    # -- persistence ----------------------------------------------------------------------

    def describe(self) -> dict:
        return {
            "profile": self.builder_.config.to_dict(),
            "channels": self.channels_.to_dict(),
            "ranker": self.ranker_.to_dict(),
            "scorer": self.scorer_.to_dict(),
            "training": self.report_,
            "search_effort": self.generator_.effort,
        }


# -- training -------------------------------------------------------------------------------


def tune_candidate_search(
    model: TwoStageRecommender,
    make_queries: Callable[[], Sequence[tuple[Query, bool]]],
    k: int = 10,
) -> dict:
    """Choose how fast the channels may search the item and user indexes.

    An IVF index's ``nprobe`` is tuned for recall@10 against exact search (what
    ``search`` promises), but the channels only propose candidates that the ranker then
    orders with every other channel's, and a candidate missed by the dense search is
    often proposed by another channel or would not have reached the top anyway. So each
    share of :data:`CANDIDATE_FRACTIONS` of the tuned ``nprobe`` (both indexes alike) is
    tried on the queries ``make_queries()`` returns (``(query, stored)``: known shoppers
    from their stored profiles, and texts; called only when an index is IVF). For known
    shoppers and for texts apart, the smallest share whose recommendations keep at least
    :data:`CANDIDATE_AGREEMENT` of each query's top ``k`` on average (tried in order,
    until one misses) becomes the model's ``search_effort_`` for that kind: a one-text
    shopper's list comes mostly from the dense search, a known shopper's from many
    channels, and they tolerate different shares.

    Exact (``Flat``) indexes have nothing to trade: the report says so. Returns the report
    (``fractions``: agreement per share tried, ``effort`` per kind, ``nprobe``).
    """
    indexes = {
        name: index
        for name, index in (("items", model.item_index_), ("users", model.state_.user_index))
        if isinstance(index, FaissIndex) and index.structure_ != "Flat" and index.nprobe_
    }
    if not indexes:
        return {"skipped": "exact indexes: candidate searches are exact"}
    queries = list(make_queries())
    if not queries:
        return {"skipped": "no queries to measure on"}
    names = {True: "known", False: "texts"}
    kinds = [names[stored] for _, stored in queries]

    def top_lists(effort: dict[str, float]) -> list[np.ndarray | None]:
        """Each query's top ``k`` at these efforts (``None`` for kinds not asked)."""
        model.generator_.effort.update(effort)
        return [
            model.rank(model.shopper(query, stored=stored)).positions[:k]
            if kind in effort
            else None
            for (query, stored), kind in zip(queries, kinds)
        ]

    reference = top_lists({"known": 1.0, "texts": 1.0})
    chosen = {kind: 1.0 for kind in set(kinds)}
    open_kinds = set(chosen)
    tried = []
    for fraction in CANDIDATE_FRACTIONS:
        found = top_lists({kind: fraction for kind in open_kinds})
        agreement = {}
        for kind in sorted(open_kinds):
            shares = [
                len(np.intersect1d(a, b)) / max(1, len(a))
                for got, a, b in zip(kinds, reference, found)
                if got == kind
            ]
            agreement[kind] = round(float(np.mean(shares)), 4)
            if agreement[kind] >= CANDIDATE_AGREEMENT:
                chosen[kind] = fraction
            else:
                open_kinds.discard(kind)  # stops at its first miss
        tried.append({"fraction": fraction, "agreement": agreement})
        if not open_kinds:
            break
    model.search_effort_ = {"known": 1.0, "texts": 1.0, **chosen}
    model.generator_.effort.update(model.search_effort_)
    report = {
        "agreement_needed": CANDIDATE_AGREEMENT,
        "queries": {kind: kinds.count(kind) for kind in sorted(chosen)},
        "fractions": tried,
        "effort": model.search_effort_,
        "nprobe": {
            name: {
                "tuned": index.nprobe_,
                **{
                    kind: max(1, int(np.ceil(index.nprobe_ * share)))
                    for kind, share in model.search_effort_.items()
                },
            }
            for name, index in indexes.items()
        },
    }
    logger.info(
        "candidate searches: known shoppers at %s of the tuned nprobe, texts at %s (%s): %s",
        model.search_effort_["known"],
        model.search_effort_["texts"],
        ", ".join(
            f"{n} {v['known']}/{v['texts']} of {v['tuned']}" for n, v in report["nprobe"].items()
        ),
        "; ".join(f"{t['fraction']:g}: {t['agreement']}" for t in tried),
    )
    return report


def _quality(scores: np.ndarray, labels: np.ndarray) -> float:
    """What chooses the scorer: the mean of NDCG@10, Recall@10 and Recall@50 of one query
    (single target; ties favour it). NDCG@10 alone chose a LightGBM that ranked worse
    below the top ten on the dev split's test shoppers (Recall@50 0.546 vs 0.583)."""
    if not labels.any():
        return 0.0
    rank = int((scores > scores[labels.argmax()]).sum())
    ndcg = 1.0 / np.log2(rank + 2) if rank < 10 else 0.0
    return (ndcg + float(rank < 10) + float(rank < 50)) / 3.0


def training_queries(
    model: TwoStageRecommender, events: pd.DataFrame, template: FaissIndex | None = None
) -> tuple[list[str], list[np.ndarray], list[np.ndarray], int, list[str]]:
    """Candidates and labels of training queries from ``events``, from two sources:

    * ``"last"``: leave-last-out rounds (see :class:`RankerConfig`), lone reviews;
    * ``"after-cut"``: one global time cut at :data:`CUT_QUANTILE` of event times; each
      sampled shopper with events on both sides is queried with everything before it,
      her first item after it is the target, and the state is every event before it.
      This is what serving does (predict what comes after now): on MovieLens the
      last-item rounds alone taught a content-only blend (NDCG@10 0.065 on the
      temporal split, trending items alone 0.207).

    Returns the user of each query, its feature rows, its labels (1: the held-out item),
    the number of queries (including those whose target no channel proposed) and the
    source of each query.
    """
    from profiler.evaluate import Case, leave_last_out

    cfg = model.ranker_
    users = pd.unique(events["user_id"])
    rng = np.random.default_rng(cfg.seed)
    if len(users) > cfg.max_users:
        users = rng.choice(users, size=cfg.max_users, replace=False)
    chosen = events["user_id"].isin(set(users)).to_numpy()
    owners: list[str] = []
    groups: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    sources: list[str] = []
    n_cases = 0
    position = model.catalogue_.position
    everything = events

    def score_cases(cases: list, source: str) -> None:
        for case in cases:
            targets = [position[t] for t in case.targets if t in position]
            candidates = model.generator_.generate(model.shopper(case.query))
            owners.append(str(case.query.user_id))
            groups.append(candidates.features)
            labels.append(np.isin(candidates.positions, targets).astype(np.float64))
            sources.append(source)

    for depth in range(cfg.rounds):
        if depth:
            # the next round ends each sampled shopper one item event earlier
            events = _drop_last_item_event(events, chosen)
            chosen = events["user_id"].isin(set(users)).to_numpy()
        split = leave_last_out(events[chosen], model.text_vectors_, truncate=(0, 1))
        cases = list(split.cases)
        kept = split.train
        if depth == 0:
            lone = _lone_reviews(events, chosen, rng)
            for event in lone.itertuples(index=False):
                texts = model.text_vectors_[[int(event.text_row)]]
                query = Query(event.user_id, lone.iloc[:0], (event.text,), texts)
                cases.append(Case(query, frozenset([event.item_id])))
            kept = kept.drop(index=lone.index, errors="ignore")  # labels are events'
        if not cases:
            break
        train_events = pd.concat([events[~chosen], kept]).sort_values("timestamp", kind="stable")
        model.set_state(model.fit_state(train_events, template))
        score_cases(cases, "last")
        n_cases += len(cases)
    cases, before = _after_cut_cases(everything, set(users))
    if cases:
        model.set_state(model.fit_state(before, template))
        score_cases(cases, "after-cut")
        n_cases += len(cases)
    return owners, groups, labels, n_cases, sources


def _after_cut_cases(events: pd.DataFrame, users: set) -> tuple[list, pd.DataFrame]:
    """Queries of the ``"after-cut"`` source and the events before the cut."""
    from profiler.evaluate import Case

    times = events["timestamp"].to_numpy(dtype=np.float64)
    if not len(times):
        return [], events
    cut = float(np.quantile(times, CUT_QUANTILE))
    before = events[times < cut]
    after = events[(times >= cut) & (events["item_id"] != "").to_numpy()]
    after = after[after["user_id"].isin(users)]
    history = before.groupby("user_id", sort=False).indices
    cases = []
    for user, rows in after.groupby("user_id", sort=False).indices.items():
        if user in history:
            first = after["item_id"].iloc[rows[0]]
            cases.append(Case(Query(user, before.iloc[history[user]]), frozenset([first])))
    return cases, before


def _lone_reviews(events: pd.DataFrame, chosen: np.ndarray, rng) -> pd.DataFrame:
    """Sampled shoppers' only event where it has a text and an item (a lone review): it
    teaches text-only cold start (her text is the query, her item the target).

    Held-out lone reviews leave the state with all their counts, so at most
    :data:`LONE_SHARE` of all events are taken, or training would see emptier counts than
    serving does (with every lone shopper held out, the bundled data's ranker trained on
    zero counts).
    """
    sizes = events["user_id"][chosen].value_counts()
    lone = events[chosen & events["user_id"].isin(set(sizes.index[sizes == 1])).to_numpy()]
    lone = lone[(lone["item_id"] != "") & (lone["text_row"] >= 0)]
    limit = int(LONE_SHARE * len(events))
    if len(lone) > limit:
        lone = lone.iloc[np.sort(rng.choice(len(lone), size=limit, replace=False))]
    return lone


def _drop_last_item_event(events: pd.DataFrame, chosen: np.ndarray) -> pd.DataFrame:
    """``events`` without each chosen shopper's last event with an item, nor anything at
    or after its time."""
    sub = events[chosen & (events["item_id"] != "").to_numpy()]
    last = sub.groupby("user_id")["timestamp"].max()
    cut = events["user_id"].map(last)
    drop = chosen & (events["timestamp"] >= cut).to_numpy()
    return events[~drop]


def train_scorer(
    model: TwoStageRecommender, events: pd.DataFrame, template: FaissIndex | None = None
) -> tuple[Scorer, dict]:
    """Train blend and LightGBM on the events' own histories; keep the better one.
    ``template``: the serving user index, whose structure the training states reuse."""
    cfg = model.ranker_
    owners, groups, labels, n_queries, sources = training_queries(model, events, template)
    hits = [i for i, y in enumerate(labels) if y.any()]
    # each source of queries counts as much as the other in the choice
    per_source = pd.Series(sources).value_counts() if sources else pd.Series(dtype=int)
    weight = np.array([1.0 / per_source[s] for s in sources])
    report: dict = {
        "queries": n_queries,
        "queries_with_target": len(hits),
        "candidate_recall": len(hits) / n_queries if n_queries else None,
        "candidates_per_query": float(np.mean([len(g) for g in groups])) if groups else 0.0,
        "sources": {str(k): int(v) for k, v in per_source.items()},
    }
    if len(hits) < cfg.min_queries:
        report.update(scorer="blend", why=f"only {len(hits)} training queries: default weights")
        logger.info("ranker: %s", report["why"])
        return BlendScorer(), report
    # Users are split into folds; every query is scored by scorers fitted without its
    # user, so the choice rests on all queries (one 20% split of ~150 queries was noise:
    # it picked LightGBM at +0.03 NDCG@10 that lost 0.03 on the dev split's test users).
    # in order of first appearance, not by id: pseudonyms are keyed per workspace, so
    # sorting them would give every workspace (and every test run) other folds
    unique = np.array(list(dict.fromkeys(owners)), dtype=object)
    fold_of_user = dict(zip(unique, np.random.default_rng(cfg.seed).permutation(len(unique))))
    n_folds = max(2, min(cfg.folds, len(unique)))
    fold = np.array([fold_of_user[o] % n_folds for o in owners])
    results: dict[str, list[float]] = {
        "default_blend": [],
        "blend": [],
        "lightgbm": [],
        "ensemble": [],
    }
    weights: dict[str, list[float]] = {name: [] for name in results}
    iterations = []
    for k in range(n_folds):
        inner = [i for i in hits if fold[i] != k]
        outer = np.flatnonzero(fold == k)
        if not len(outer) or not inner:
            continue

        def ndcg(scorer: Scorer, name: str, outer: np.ndarray = outer) -> None:
            results[name] += [_quality(scorer.score(groups[i]), labels[i]) for i in outer]
            weights[name] += list(weight[outer])

        ndcg(BlendScorer(), "default_blend")
        ndcg(BlendScorer().fit(*_pick(groups, labels, inner)), "blend")
        if cfg.scorer != "blend":
            stop = [i for i in inner if fold[i] == (k + 1) % n_folds]
            fit = [i for i in inner if fold[i] != (k + 1) % n_folds]
            booster = LightGBMScorer(cfg).fit(
                *_pick(groups, labels, fit), *_pick(groups, labels, stop)
            )
            iterations.append(int(booster.booster_.best_iteration or cfg.n_estimators))
            ndcg(booster, "lightgbm")
            ndcg(EnsembleScorer(booster), "ensemble")
    means = {name: float(np.average(v, weights=weights[name])) for name, v in results.items() if v}
    if cfg.scorer == "auto":
        kind = max(means, key=lambda name: (means[name], name == "default_blend"))
    else:
        kind = cfg.scorer
    if kind in ("lightgbm", "ensemble"):
        rounds = int(np.median(iterations)) if iterations else cfg.n_estimators
        chosen: Scorer = LightGBMScorer(replace(cfg, n_estimators=max(rounds, 1))).fit(
            *_pick(groups, labels, hits)
        )
        if kind == "ensemble":
            chosen = EnsembleScorer(chosen)
    elif kind == "blend":
        chosen = BlendScorer().fit(*_pick(groups, labels, hits))
    else:
        chosen = BlendScorer()
    report.update(
        scorer=chosen.kind,
        chosen=kind,
        cross_validated=means,
        folds=n_folds,
        users=len(unique),
        why=(
            f"{kind} has the best {n_folds}-fold mean of NDCG@10, Recall@10 and Recall@50 "
            "on the workspace's own histories ("
            + ", ".join(f"{k} {v:.4f}" for k, v in means.items())
            + ")"
        ),
    )
    logger.info("ranker: %s", report["why"])
    return chosen, report


def _pick(
    groups: Sequence[np.ndarray], labels: Sequence[np.ndarray], rows: Sequence[int]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return [groups[i] for i in rows], [labels[i] for i in rows]


def save_scorer(scorer: Scorer, directory: Path, report: dict) -> None:
    """``models/ranker.json`` (kind, weights or iteration, training report, features) and
    ``models/ranker.lgb`` (LightGBM's text model) when it is LightGBM."""
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(scorer, LightGBMScorer):
        scorer.save(directory / "ranker.lgb")
    elif isinstance(scorer, EnsembleScorer):
        scorer.booster.save(directory / "ranker.lgb")
    write_json(
        directory / "ranker.json",
        {
            "features": list(FEATURES),
            "channels": list(CHANNELS),
            **scorer.to_dict(),
            "training": report,
        },
    )


def load_scorer(directory: Path) -> tuple[Scorer, dict]:
    meta = read_json(directory / "ranker.json")
    if meta.get("features") != list(FEATURES):
        raise ValueError(
            f"{directory / 'ranker.json'}: features differ from this library's; rebuild"
        )
    if meta["kind"] == "lightgbm":
        return LightGBMScorer.load(directory / "ranker.lgb"), meta["training"]
    if meta["kind"] == "ensemble":
        booster = LightGBMScorer.load(directory / "ranker.lgb")
        return EnsembleScorer(booster, BlendScorer(meta["weights"])), meta["training"]
    return BlendScorer(meta["weights"]), meta["training"]


# -- re-ranking -----------------------------------------------------------------------------


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
