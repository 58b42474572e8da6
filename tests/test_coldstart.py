"""The profiler's recommender on a hand-built catalogue of three clear groups.

Catalogue: 12 items in three groups of four, ``a0..a3`` (running shoes), ``b0..b3`` (coffee
mugs) and ``c0..c3`` (wool jackets), whose unit vectors lie near the basis vectors e0, e1
and e2 of an 8-d space (seeded noise, so no two scores tie).

Training users: five per group (``a-user0`` .. ``c-user4``); user ``j`` of group ``g`` buys
``g{j % 4}`` and ``g{(j + 1) % 4}`` and reviews the second with 5 stars and a text near the
group's axis. ``a-user0`` and ``a-user1`` also view ``a0``, the most interacted item.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from profiler import metrics
from profiler.coldstart import (
    DEFAULT_GRID,
    BlendParams,
    Components,
    ProfileRecommender,
    mmr,
    ranked_ndcg,
)
from profiler.profiles import ProfileConfig
from profiler.recommender import Corpus, Query, top_k

DIM = 8
T0 = 1_700_000_000.0
GROUPS = {"a": 0, "b": 1, "c": 2}
WORDS = {"a": "running shoes", "b": "coffee mug", "c": "wool jacket"}
COLUMNS = ["user_id", "timestamp", "kind", "item_id", "text", "rating", "text_row"]
DEFAULTS = ("", np.nan, -1)  # text, rating, text_row of an event that leaves them out


def around(axis: int, n: int, seed: int, noise: float = 0.1) -> np.ndarray:
    """``n`` float32 unit vectors scattered around basis vector ``axis``."""
    rng = np.random.default_rng(seed)
    vectors = np.eye(DIM)[axis] + noise * rng.standard_normal((n, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


ITEM_IDS = [f"{g}{j}" for g in GROUPS for j in range(4)]
ITEM_VECTORS = np.concatenate([around(axis, 4, seed=axis) for axis in GROUPS.values()])
ITEM_TEXTS = [f"{WORDS[i[0]]} model {i}" for i in ITEM_IDS]
#: Review texts: rows 5 * axis + j belong to user j of the group on that axis.
TEXT_VECTORS = np.concatenate([around(a, 5, seed=10 + a) for a in GROUPS.values()])
P = {item_id: position for position, item_id in enumerate(ITEM_IDS)}


def group(letter: str) -> list[int]:
    return [P[f"{letter}{j}"] for j in range(4)]


def frame(rows: list[tuple], start: float = T0) -> pd.DataFrame:
    """Rows of (user, kind, item[, text, rating, text_row]) an hour apart, oldest first."""
    records = []
    for n, (user, kind, item, *rest) in enumerate(rows):
        text, rating, text_row = (*rest, *DEFAULTS[len(rest) :])
        records.append((user, start + 3600.0 * n, kind, item, text, float(rating), text_row))
    return pd.DataFrame(records, columns=COLUMNS).astype(
        {"timestamp": np.float64, "rating": np.float64, "text_row": np.int64}
    )


def training_rows() -> list[tuple]:
    rows = []
    for g, axis in GROUPS.items():
        for j in range(5):
            user, first, second = f"{g}-user{j}", f"{g}{j % 4}", f"{g}{(j + 1) % 4}"
            rows += [(user, "purchase", first), (user, "purchase", second)]
            rows.append((user, "review", second, f"great {WORDS[g]}", 5.0, 5 * axis + j))
    return [*rows, ("a-user0", "view", "a0"), ("a-user1", "view", "a0")]


def make_corpus(rows: list[tuple]) -> Corpus:
    return Corpus(
        ITEM_IDS, ITEM_VECTORS, ITEM_TEXTS, [""] * len(ITEM_IDS), frame(rows), TEXT_VECTORS
    )


def query(*rows: tuple, texts: tuple[str, ...] = (), text_vectors=None) -> Query:
    """A shopper ``q`` with events (kind, item[, text, rating, text_row]) and free texts."""
    events = frame([("q", *row) for row in rows], start=T0 + 1e6)
    vectors = None if text_vectors is None else np.asarray(text_vectors, dtype=np.float32)
    return Query("q", events, texts, vectors)


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return make_corpus(training_rows())


@pytest.fixture(scope="module")
def fitted(corpus) -> ProfileRecommender:
    return ProfileRecommender(ProfileConfig(half_life_days=None)).fit(corpus)


class TestFit:
    def test_fit_returns_self_with_a_profile_per_user(self, corpus):
        model = ProfileRecommender()
        assert model.fit(corpus) is model
        assert len(model.profiles_) == 15 and model.user_vectors_.shape == (15, DIM)
        assert model.params_ == BlendParams()

    def test_popularity_prior_is_log_scaled(self, fitted, corpus):
        counts = np.bincount(
            corpus.events["item_id"].map(P).to_numpy(), minlength=len(ITEM_IDS)
        ).astype(float)
        # a0: two purchases, a purchase and a review by a-user3, two views
        assert counts[P["a0"]] == 6 and np.sort(counts)[-2] == 5
        np.testing.assert_allclose(fitted.popularity_, np.log1p(counts) / np.log1p(6))

    def test_positives_mark_each_users_liked_items_once(self, fitted):
        row = fitted.positives_[fitted.user_row_["a-user0"]].toarray().ravel()
        # a-user0 bought a0 and a1, reviewed a1 and viewed a0: each counts once
        assert np.flatnonzero(row).tolist() == [P["a0"], P["a1"]] and set(row[row > 0]) == {1.0}


class TestBlend:
    def test_shrinkage_towards_neighbours(self, fitted):
        rng = np.random.default_rng(0)
        own_vector, nbr_vector = rng.standard_normal((2, DIM))
        own_vector /= np.linalg.norm(own_vector)
        nbr_vector /= np.linalg.norm(nbr_vector)
        votes = rng.uniform(0, 1, len(ITEM_IDS))
        params = BlendParams(tau=2.0, mu=0.0, lam=0.0, beta=0.0, omega=0.5, pi=0.0)

        def blended(n: int) -> np.ndarray:
            parts = Components(
                n=np.asarray(n),
                own=ITEM_VECTORS @ own_vector,
                centre=np.zeros(len(ITEM_IDS)),
                negative=np.zeros(len(ITEM_IDS)),
                neighbours=ITEM_VECTORS @ nbr_vector,
                own_dot_neighbours=np.asarray(own_vector @ nbr_vector),
                has_neighbours=np.asarray(1.0),
                votes=votes,
                lexical=np.zeros(len(ITEM_IDS)),
            )
            return fitted.blend(parts, params)

        for n in (1, 20):
            alpha = n / (n + 2.0)
            q = alpha * own_vector + (1 - alpha) * nbr_vector
            expected = ITEM_VECTORS @ (q / np.linalg.norm(q)) + 0.5 * (1 - alpha) * votes
            np.testing.assert_allclose(blended(n), expected, atol=1e-6)
        # with more evidence the blend is closer to the own profile, farther from neighbours
        few, many = blended(1), blended(20)
        own, nbrs = ITEM_VECTORS @ own_vector, ITEM_VECTORS @ nbr_vector
        assert np.corrcoef(many, own)[0, 1] > np.corrcoef(few, own)[0, 1]
        assert np.corrcoef(many, nbrs)[0, 1] < np.corrcoef(few, nbrs)[0, 1]

    def test_blend_stacks_queries(self, fitted):
        qs = [query(("purchase", "a1")), query(("purchase", "b2"), ("purchase", "c0"))]
        parts = [fitted.components(q) for q in qs]
        stacked = fitted.blend(Components.stack(parts))
        assert stacked.shape == (2, len(ITEM_IDS))
        for row, part in enumerate(parts):
            np.testing.assert_allclose(stacked[row], fitted.blend(part), atol=1e-12)

    def test_no_neighbours_scores_the_own_profile(self, fitted):
        own_vector = ITEM_VECTORS[P["a0"]].astype(np.float64)
        zeros = np.zeros(len(ITEM_IDS))
        parts = Components(
            n=np.asarray(1),
            own=ITEM_VECTORS @ own_vector,
            centre=zeros,
            negative=zeros,
            neighbours=zeros,
            own_dot_neighbours=np.asarray(0.0),
            has_neighbours=np.asarray(0.0),
            votes=zeros,
            lexical=zeros,
        )
        params = BlendParams(tau=2.0, mu=0.0, beta=0.0, omega=0.0, pi=0.5)
        expected = ITEM_VECTORS @ own_vector + 0.5 * fitted.popularity_
        np.testing.assert_allclose(fitted.blend(parts, params), expected, atol=1e-6)


class TestColdStart:
    def test_no_evidence_is_the_popularity_prior(self, fitted):
        empty = query()
        assert empty.n_events == 0
        np.testing.assert_array_equal(fitted.score(empty), fitted.popularity_)
        assert fitted.recommend(empty, k=1) == ["a0"]

    def test_text_only_query_finds_its_group(self, fitted):
        for letter, axis in GROUPS.items():
            text = query(texts=("something",), text_vectors=around(axis, 1, seed=99))
            assert sorted(P[i] for i in fitted.recommend(text, k=4)) == group(letter)

    def test_one_event_finds_its_group_and_never_the_seen_item(self, fitted):
        for seen in ("a2", "b0", "c3"):
            ranked = fitted.recommend(query(("purchase", seen)), k=len(ITEM_IDS))
            assert seen not in ranked and len(ranked) == len(ITEM_IDS) - 1
            assert {i[0] for i in ranked[:3]} == {seen[0]}

    def test_query_user_is_not_her_own_neighbour(self, fitted, corpus):
        events = corpus.events[corpus.events["user_id"] == "b-user2"]
        as_herself = fitted.components(Query("b-user2", events))
        as_stranger = fitted.components(Query(None, events))
        # her training profile is her query profile: a stranger's best neighbour is her
        assert not np.allclose(as_herself.neighbours, as_stranger.neighbours)
        assert as_herself.own_dot_neighbours < as_stranger.own_dot_neighbours

    def test_text_count_is_evidence(self, fitted):
        parts = fitted.components(
            query(("purchase", "a1"), texts=("x", "y"), text_vectors=around(0, 2, seed=5))
        )
        assert int(parts.n) == 3

    def test_mismatched_text_vectors(self, fitted):
        with pytest.raises(ValueError, match="2 texts"):
            fitted.score(query(texts=("x", "y"), text_vectors=around(0, 1, seed=5)))


class TestNeighbourVotes:
    def test_co_interacted_item_rises_with_votes(self):
        # eight more shoppers bought a0 together with the jacket c3
        extra = [(f"x-user{u}", "purchase", item) for u in range(8) for item in ("a0", "c3")]
        corpus = make_corpus(training_rows() + extra)
        crossover = ProfileRecommender(ProfileConfig(half_life_days=None)).fit(corpus)
        q = query(("purchase", "a0"))
        parts = crossover.components(q)
        assert parts.votes.argsort()[-2:].tolist() == [P["c3"], P["a0"]]
        base = BlendParams(tau=8.0, mu=0.0, lam=0.0, beta=0.0, omega=0.0, pi=0.0)
        crossover.params_ = base
        assert "c3" not in crossover.recommend(q, k=3)
        crossover.params_ = replace(base, omega=2.0)
        assert "c3" in crossover.recommend(q, k=3)
        # with a small tau her own event is trusted and the votes fade
        crossover.params_ = replace(base, omega=2.0, tau=0.5)
        assert "c3" not in crossover.recommend(q, k=3)


class TestNegativeDemotion:
    def test_disliked_group_is_demoted(self, fitted):
        q = query(("review", "a1", "love them", 5.0, 0), ("dislike", "b0"))
        parts = fitted.components(q)
        assert parts.negative[group("b")].min() > 0.8
        base = BlendParams(tau=2.0, mu=0.5, lam=0.0, beta=0.0, omega=0.5, pi=0.0)
        without = fitted.blend(parts, base)
        with_negative = fitted.blend(parts, replace(base, beta=1.0))
        drop = without - with_negative
        np.testing.assert_allclose(drop, np.maximum(parts.negative, 0.0))
        assert drop[group("b")].min() > 0.8 and drop[group("a")].max() < 0.2

        # the disliked group falls further behind the neutral one
        def margin(scores: np.ndarray) -> float:
            return scores[group("c")].min() - scores[group("b")].max()

        assert margin(with_negative) > margin(without) + 0.8


TUNE_GRID = {"tau": (0.5, 4.0), "mu": (0.0, 1.0), "omega": (0.0, 1.5), "pi": (0.0, 0.2)}


@pytest.fixture(scope="module")
def validation_cases() -> list[tuple[Query, frozenset[str]]]:
    cases = []
    for letter, axis in GROUPS.items():
        for j in range(4):
            seen = f"{letter}{j}"
            cases.append((query(("purchase", seen)), frozenset([f"{letter}{(j + 2) % 4}"])))
        text = query(texts=("t",), text_vectors=around(axis, 1, seed=40 + axis))
        cases.append((text, frozenset([f"{letter}0", f"{letter}3"])))
    # a broad shopper and one whose target lies outside her group
    broad = query(("purchase", "a1"), ("purchase", "c2"), ("review", "b1", "ok", 4.0, 6))
    cases.append((broad, frozenset(["c1", "b2"])))
    cases.append((query(("purchase", "b3")), frozenset(["a3"])))
    return cases


class TestTune:
    @staticmethod
    def recomputed(model: ProfileRecommender, cases) -> float:
        return float(
            np.mean([metrics.ndcg_at_k(model.recommend(q, k=10), t, 10) for q, t in cases])
        )

    def test_validation_ndcg_matches_the_per_list_metric(self, corpus, validation_cases):
        model = ProfileRecommender(ProfileConfig(half_life_days=None)).fit(corpus)
        best = model.tune(validation_cases, grid=TUNE_GRID, k=10)
        assert model.params_ == best
        for name, values in TUNE_GRID.items():
            assert getattr(best, name) in values
        assert best.beta == BlendParams().beta  # not in the grid: kept
        assert model.validation_ndcg_ == pytest.approx(self.recomputed(model, validation_cases))
        # and it is the best of the grid by the per-list metric too
        for tau in TUNE_GRID["tau"]:
            for omega in TUNE_GRID["omega"]:
                model.params_ = replace(best, tau=tau, omega=omega)
                assert self.recomputed(model, validation_cases) <= model.validation_ndcg_ + 1e-12

    def test_default_grid(self, corpus, validation_cases):
        model = ProfileRecommender().fit(corpus)
        best = model.tune(validation_cases)
        for name, values in DEFAULT_GRID.items():
            assert getattr(best, name) in values
        assert model.validation_ndcg_ == pytest.approx(self.recomputed(model, validation_cases))

    def test_needs_cases(self, fitted):
        with pytest.raises(ValueError, match="at least one"):
            fitted.tune([], grid=TUNE_GRID)


class TestRankedNdcg:
    @pytest.mark.parametrize("k", [1, 3, 10])
    def test_matches_the_per_list_metric(self, k):
        rng = np.random.default_rng(k)
        n_rows, n_items = 40, 25
        ids = [f"i{p}" for p in range(n_items)]
        scores = rng.standard_normal((n_rows, n_items))
        # banned (seen) items: a few per row, or nearly all, so a banned target can sit
        # fewer than k places from the top
        share = np.where(np.arange(n_rows) % 2, 0.1, 0.9)[:, None]
        scores[rng.uniform(size=scores.shape) < share] = -np.inf
        targets = [rng.choice(n_items, rng.integers(1, 4), replace=False) for _ in range(n_rows)]
        got = ranked_ndcg(scores, targets, k)
        for row in range(n_rows):
            ranked = [ids[p] for p in top_k(scores[row], k)]
            want = metrics.ndcg_at_k(ranked, {ids[p] for p in targets[row]}, k)
            assert got[row] == pytest.approx(want, abs=1e-12), row

    def test_hand_computed(self):
        scores = np.array([[0.9, 0.1, 0.5, 0.7]])
        # targets at ranks 2 (0.7) and 3 (0.5): (1/log2 3 + 1/log2 4) / (1 + 1/log2 3)
        want = (1 / np.log2(3) + 0.5) / (1 + 1 / np.log2(3))
        np.testing.assert_allclose(ranked_ndcg(scores, [np.array([3, 2])], 3), [want])
        np.testing.assert_allclose(ranked_ndcg(scores, [np.array([3, 2])], 1), [0.0])
        np.testing.assert_allclose(ranked_ndcg(scores, [np.array([], np.int64)], 3), [0.0])


class TestMMR:
    def test_no_diversity_is_plain_top_k(self):
        scores = np.random.default_rng(0).standard_normal(30)
        vectors = around(0, 30, seed=1)
        np.testing.assert_array_equal(mmr(scores, vectors, 5, 0.0), top_k(scores, 5))

    def test_diversity_lets_a_distinct_item_in(self):
        # five near-duplicates of e0 scored .9 .. .86, one item on e1 scored .5
        vectors = np.concatenate([around(0, 5, seed=2, noise=0.01), around(1, 1, seed=3)])
        scores = np.array([0.9, 0.89, 0.88, 0.87, 0.86, 0.5])
        assert 5 not in top_k(scores, 2)
        picked = mmr(scores, vectors, 2, diversity=0.7)
        assert picked.tolist() == [0, 5]
        assert sorted(mmr(scores, vectors, 6, diversity=0.7).tolist()) == list(range(6))

    def test_only_the_pool_is_reranked(self):
        vectors = np.concatenate([around(0, 5, seed=2, noise=0.01), around(1, 1, seed=3)])
        scores = np.array([0.9, 0.89, 0.88, 0.87, 0.86, 0.5])
        assert 5 not in mmr(scores, vectors, 2, diversity=0.7, pool=2)

    @pytest.mark.parametrize("diversity", [-0.1, 1.5, np.nan])
    def test_invalid_diversity(self, diversity):
        with pytest.raises(ValueError, match="diversity"):
            mmr(np.zeros(3), np.eye(3), 2, diversity)
