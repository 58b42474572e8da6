"""Baselines on a hand-built catalogue whose right answers can be worked out on paper.

Catalogue (position, id, text, vector):

    0 shoe-red     red running shoes            [1, 0, 0, 0]
    1 shoe-trail   trail running shoes for mud  [.8, .6, 0, 0]
    2 jacket-rain  waterproof rain jacket       [0, 1, 0, 0]
    3 jacket-down  warm down jacket             [0, .6, .8, 0]
    4 mug          ceramic coffee mug           [0, 0, 1, 0]
    5 kettle       electric kettle              [0, 0, .8, .6]
    6 lamp         reading lamp                 [0, 0, 0, 1]
    7 socks        wool hiking socks            [.6, 0, 0, .8]

Training events: runners a0..a9 buy shoe-red, shoe-trail and socks; a0..a4 also view
shoe-red and a0 reviews it; cooks b0..b9 buy mug, kettle and lamp; hikers c0..c2 buy both
jackets and c0 also socks; s0 searches "running shoes" (no item).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from profiler.baselines import ALSBaseline, ItemKNN, MeanEmbedding, Popularity, TfidfBaseline
from profiler.recommender import Corpus, Query, Recommender

ITEMS = [
    ("shoe-red", "red running shoes", [1.0, 0.0, 0.0, 0.0]),
    ("shoe-trail", "trail running shoes for mud", [0.8, 0.6, 0.0, 0.0]),
    ("jacket-rain", "waterproof rain jacket", [0.0, 1.0, 0.0, 0.0]),
    ("jacket-down", "warm down jacket", [0.0, 0.6, 0.8, 0.0]),
    ("mug", "ceramic coffee mug", [0.0, 0.0, 1.0, 0.0]),
    ("kettle", "electric kettle", [0.0, 0.0, 0.8, 0.6]),
    ("lamp", "reading lamp", [0.0, 0.0, 0.0, 1.0]),
    ("socks", "wool hiking socks", [0.6, 0.0, 0.0, 0.8]),
]
IDS = [item_id for item_id, _, _ in ITEMS]
P = {item_id: position for position, item_id in enumerate(IDS)}
# Event-text vectors: row 0 the search "running shoes", row 1 a0's review.
TEXT_VECTORS = np.array([[1.0, 0.0, 0.0, 0.0], [0.8, 0.0, 0.0, 0.6]], dtype=np.float32)
COLUMNS = ["user_id", "timestamp", "kind", "item_id", "text", "rating", "text_row"]


def event_frame(rows: list[tuple]) -> pd.DataFrame:
    """Rows of (user_id, kind, item_id[, text, text_row]) as an events table, oldest first."""
    records = []
    for n, row in enumerate(rows):
        user, kind, item = row[:3]
        text, text_row = row[3:] if len(row) > 3 else ("", -1)
        rating = 5.0 if kind == "review" else np.nan
        timestamp = pd.Timestamp("2024-01-01") + pd.Timedelta(minutes=n)
        records.append((user, timestamp, kind, item, text, rating, text_row))
    frame = pd.DataFrame(records, columns=COLUMNS)
    return frame.astype({"text_row": np.int64, "rating": np.float64})


def training_rows() -> list[tuple]:
    rows = []
    for u in range(10):
        rows += [(f"a{u}", "purchase", i) for i in ("shoe-red", "shoe-trail", "socks")]
        rows += [(f"b{u}", "purchase", i) for i in ("mug", "kettle", "lamp")]
    rows += [(f"a{u}", "view", "shoe-red") for u in range(5)]
    rows += [("a0", "review", "shoe-red", "great for running", 1)]
    for u in range(3):
        rows += [(f"c{u}", "purchase", i) for i in ("jacket-rain", "jacket-down")]
    rows += [("c0", "purchase", "socks"), ("s0", "search", "", "running shoes", 0)]
    return rows


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return Corpus(
        item_ids=IDS,
        item_vectors=np.array([v for _, _, v in ITEMS], dtype=np.float32),
        item_texts=[text for _, text, _ in ITEMS],
        item_categories=[""] * len(ITEMS),
        events=event_frame(training_rows()),
        text_vectors=TEXT_VECTORS,
    )


def query(*item_ids: str, texts: tuple[str, ...] = (), text_vectors=None) -> Query:
    """A shopper who bought ``item_ids`` and/or wrote ``texts``."""
    events = event_frame([("q", "purchase", i) for i in item_ids])
    return Query("q", events, texts, None if text_vectors is None else np.array(text_vectors))


def positions(ids) -> list[int]:
    return [P[i] for i in ids]


ALL = [Popularity, TfidfBaseline, MeanEmbedding, ItemKNN, ALSBaseline]
# Hand-computed expected popularity: events with an item per position.
# shoe-red 10 purchases + 5 views + 1 review; socks 10 + c0; jackets 3 each; others 10.
COUNTS = [16, 10, 3, 3, 10, 10, 10, 11]


@pytest.fixture(scope="module", params=ALL, ids=lambda cls: cls.name)
def fitted(request, corpus) -> Recommender:
    model = request.param(factors=8) if request.param is ALSBaseline else request.param()
    return model.fit(corpus)


class TestContract:
    def test_fit_returns_self_and_keeps_the_corpus(self, corpus):
        for cls in ALL:
            model = cls()
            assert model.fit(corpus) is model and model.corpus_ is corpus

    def test_names_are_distinct(self):
        assert len({cls.name for cls in ALL}) == len(ALL)
        assert "recommender" not in {cls.name for cls in ALL}

    def test_scores_every_item(self, fitted):
        for q in (query("mug"), query(texts=("coffee",), text_vectors=[[0, 0, 1, 0]]), query()):
            scores = np.asarray(fitted.score(q))
            assert scores.shape == (len(IDS),) and np.isfinite(scores).all()

    def test_recommend_never_returns_seen_items(self, fitted):
        seen = ("shoe-red", "socks", "mug")
        ranked = fitted.recommend(query(*seen), k=len(IDS))
        assert not set(ranked) & set(seen)
        assert sorted(ranked) == sorted(set(IDS) - set(seen))

    def test_recommend_honours_exclude(self, fitted):
        ranked = fitted.recommend(query("mug"), k=len(IDS), exclude={"kettle"})
        assert "kettle" not in ranked and "mug" not in ranked and len(ranked) == len(IDS) - 2

    def test_unknown_query_items_are_ignored(self, fitted):
        with_unknown = fitted.score(query("mug", "not-in-catalogue"))
        assert np.allclose(with_unknown, fitted.score(query("mug")))

    def test_unknown_training_items_are_skipped_with_a_warning(self, corpus, caplog):
        ghost = event_frame([("a0", "purchase", "ghost-item"), ("a0", "purchase", "mug")])
        noisy = corpus.with_events(pd.concat([corpus.events, ghost], ignore_index=True))
        for cls in (ItemKNN, ALSBaseline):
            with caplog.at_level("WARNING", logger="profiler.baselines"):
                caplog.clear()
                cls().fit(corpus)
                assert not caplog.records  # search events without an item are not "unknown"
                model = cls().fit(noisy)
            assert "1 training events" in caplog.text and "ghost-item" in caplog.text
            assert np.isfinite(model.score(query("mug"))).all()
        assert Popularity().fit(noisy).counts_[P["mug"]] == COUNTS[P["mug"]] + 1


class TestPopularity:
    def test_counts_every_event_with_an_item(self, corpus):
        model = Popularity().fit(corpus)
        assert model.counts_.tolist() == COUNTS

    def test_most_interacted_item_first(self, corpus):
        model = Popularity().fit(corpus)
        # ties (10 each) break by catalogue position
        expected = ["shoe-red", "socks", "shoe-trail", "mug", "kettle", "lamp"]
        assert model.recommend(query(), k=6) == expected
        assert model.recommend(query("shoe-red"), k=1) == ["socks"]

    def test_same_scores_for_everyone(self, corpus):
        model = Popularity().fit(corpus)
        assert np.array_equal(model.score(query("mug")), model.score(query(texts=("lamp",))))


class TestTfidf:
    def test_lexical_match_first_for_text_only_query(self, corpus):
        model = TfidfBaseline().fit(corpus)
        scores = model.score(query(texts=("running shoes",)))
        # both shoes share "running", "shoes", "running shoes"; the red one has fewer other
        # terms so a higher cosine; nothing else shares a term
        assert model.recommend(query(texts=("running shoes",)), k=2) == ["shoe-red", "shoe-trail"]
        assert scores[P["shoe-red"]] > scores[P["shoe-trail"]] > 0
        assert np.count_nonzero(scores) == 2

    def test_event_text_counts_like_a_free_text(self, corpus):
        model = TfidfBaseline().fit(corpus)
        search = Query("q", event_frame([("q", "search", "", "running shoes", 0)]))
        assert np.allclose(model.score(search), model.score(query(texts=("running shoes",))))

    def test_item_event_finds_the_item_sharing_words(self, corpus):
        model = TfidfBaseline().fit(corpus)
        scores = model.score(query("jacket-rain"))
        assert model.recommend(query("jacket-rain"), k=1) == ["jacket-down"]
        assert np.flatnonzero(scores).tolist() == positions(["jacket-rain", "jacket-down"])

    def test_query_is_the_normalised_mean_of_its_evidence(self, corpus):
        model = TfidfBaseline().fit(corpus)
        rows = sp.vstack(
            [model.item_matrix_[[P["mug"]]], model.vectorizer_.transform(["warm jacket"])]
        )
        profile = np.asarray(rows.mean(axis=0)).ravel()
        expected = model.item_matrix_ @ (profile / np.linalg.norm(profile))
        assert np.allclose(model.score(query("mug", texts=("warm jacket",))), expected)

    def test_no_evidence_scores_zero(self, corpus):
        model = TfidfBaseline().fit(corpus)
        assert not model.score(query()).any()
        # only stop words: evidence exists but has no terms
        assert not model.score(query(texts=("the and of",))).any()


class TestMeanEmbedding:
    def test_nearest_vector_first(self, corpus):
        model = MeanEmbedding().fit(corpus)
        # lamp [0,0,0,1]: socks .8, kettle .6, the rest 0
        assert model.recommend(query("lamp"), k=2) == ["socks", "kettle"]

    def test_text_only_query_uses_its_vectors(self, corpus):
        model = MeanEmbedding().fit(corpus)
        # [.6,.8,0,0]: shoe-trail .96, jacket-rain .8, shoe-red .6
        q = query(texts=("muddy trail",), text_vectors=[[0.6, 0.8, 0.0, 0.0]])
        assert model.recommend(q, k=3) == ["shoe-trail", "jacket-rain", "shoe-red"]

    def test_mixes_items_event_texts_and_query_texts(self, corpus):
        model = MeanEmbedding().fit(corpus)
        events = event_frame([("q", "purchase", "mug"), ("q", "review", "kettle", "nice", 1)])
        q = Query("q", events, ("lamp",), np.array([[0.0, 0.0, 0.0, 1.0]]))
        # evidence: mug, kettle, review text row 1, the free text's vector
        mean = (
            np.array([0, 0, 1, 0]) + np.array([0, 0, 0.8, 0.6]) + TEXT_VECTORS[1] + [0, 0, 0, 1]
        ) / 4
        expected = corpus.item_vectors @ (mean / np.linalg.norm(mean))
        assert np.allclose(model.score(q), expected, atol=1e-6)

    def test_no_evidence_scores_zero(self, corpus):
        assert not MeanEmbedding().fit(corpus).score(query(texts=("no vector",))).any()

    def test_bad_query_vectors(self, corpus):
        model = MeanEmbedding().fit(corpus)
        with pytest.raises(ValueError, match=r"expected \(n, 4\)"):
            model.score(query(texts=("x",), text_vectors=[[1.0, 0.0]]))
        bad_row = Query("q", event_frame([("q", "search", "", "x", 7)]))
        with pytest.raises(ValueError, match="text_row 7"):
            model.score(bad_row)


class TestItemKNN:
    def test_hand_computed_cosines(self, corpus):
        model = ItemKNN().fit(corpus)
        sim = model.similarity_.toarray()
        # jackets share all 3 buyers; socks has 11 buyers, 10 shared with shoe-red
        assert sim[P["jacket-rain"], P["jacket-down"]] == pytest.approx(1.0)
        assert sim[P["shoe-red"], P["socks"]] == pytest.approx(10 / math.sqrt(10 * 11))
        assert sim[P["jacket-rain"], P["socks"]] == pytest.approx(1 / math.sqrt(3 * 11))
        assert sim[P["mug"], P["shoe-red"]] == 0.0
        assert np.allclose(np.diag(sim), 0.0) and np.allclose(sim, sim.T)

    def test_recommends_the_co_interacted_item(self, corpus):
        model = ItemKNN().fit(corpus)
        assert model.recommend(query("jacket-rain"), k=2) == ["jacket-down", "socks"]
        assert model.recommend(query("mug"), k=2) == ["kettle", "lamp"]

    def test_scores_sum_over_query_items(self, corpus):
        model = ItemKNN().fit(corpus)
        sim = model.similarity_.toarray()
        expected = sim[P["jacket-rain"]] + sim[P["shoe-red"]]
        assert np.allclose(model.score(query("jacket-rain", "shoe-red", "jacket-rain")), expected)

    def test_keeps_only_the_top_neighbours(self, corpus):
        # socks' neighbours: shoe-red and shoe-trail at .95 (tie: lower position), jackets .17
        model = ItemKNN(neighbours=1).fit(corpus)
        assert model.similarity_[[P["socks"]]].indices.tolist() == [P["shoe-red"]]
        assert np.flatnonzero(model.score(query("socks"))).tolist() == [P["shoe-red"]]

    def test_no_items_scores_zero(self, corpus):
        assert not ItemKNN().fit(corpus).score(query(texts=("running shoes",))).any()

    @pytest.mark.parametrize("neighbours", [0, -1, 2.5])
    def test_bad_neighbours(self, corpus, neighbours):
        with pytest.raises(ValueError, match="neighbours"):
            ItemKNN(neighbours=neighbours).fit(corpus)


@pytest.fixture(scope="module")
def als(corpus) -> ALSBaseline:
    return ALSBaseline(factors=8, seed=0).fit(corpus)


class TestALS:
    def test_co_interacted_items_above_unrelated(self, als):
        scores = als.score(query("mug"))
        cooks = scores[positions(["kettle", "lamp"])]
        others = scores[positions(["shoe-red", "shoe-trail", "jacket-rain", "jacket-down"])]
        assert cooks.min() > others.max()
        assert set(als.recommend(query("shoe-red"), k=2)) == {"shoe-trail", "socks"}

    def test_falls_back_to_popularity_without_items(self, als, corpus):
        text_only = query(texts=("running shoes",))
        assert als.score(text_only).tolist() == COUNTS
        popularity = Popularity().fit(corpus)
        assert als.recommend(text_only, k=8) == popularity.recommend(text_only, k=8)

    def test_user_step_matches_implicit(self, corpus):
        import threadpoolctl
        from implicit.als import AlternatingLeastSquares

        model = ALSBaseline(factors=4, regularization=0.1, iterations=3, alpha=2.0, seed=1)
        model.fit(corpus)
        reference = AlternatingLeastSquares(
            factors=4, regularization=0.1, alpha=2.0, iterations=3, random_state=1, use_gpu=False
        )
        row = np.zeros((1, len(IDS)), dtype=np.float32)
        row[0, positions(["mug", "lamp"])] = 1.0
        # the same binary training matrix, users in order of first appearance
        users = list(dict.fromkeys(corpus.events["user_id"][corpus.events["item_id"] != ""]))
        dense = np.zeros((len(users), len(IDS)), dtype=np.float32)
        for user, item in corpus.events[["user_id", "item_id"]].itertuples(index=False):
            if item:
                dense[users.index(user), P[item]] = 1.0
        with threadpoolctl.threadpool_limits(1, "blas"):
            reference.fit(sp.csr_matrix(dense), show_progress=False)
            expected_user = reference.recalculate_user(0, sp.csr_matrix(row))
        assert np.allclose(model.item_factors_, reference.item_factors, atol=1e-5)
        assert np.allclose(model.user_factors(query("mug", "lamp")), expected_user, atol=1e-4)

    def test_seed_makes_it_reproducible(self, corpus, als):
        again = ALSBaseline(factors=8, seed=0).fit(corpus)
        assert np.array_equal(again.item_factors_, als.item_factors_)

    @pytest.mark.parametrize(
        ("param", "value"),
        [("factors", 0), ("iterations", 0), ("alpha", 0.0), ("regularization", -1.0)],
    )
    def test_bad_params(self, corpus, param, value):
        with pytest.raises(ValueError, match=param):
            ALSBaseline(**{param: value}).fit(corpus)
