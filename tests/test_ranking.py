"""The second stage: scorers, their explanations, persistence, and training on real data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from profiler import metrics
from profiler.data import clothing_catalog, clothing_events
from profiler.evaluate import text_split
from profiler.ranking import (
    BlendScorer,
    EnsembleScorer,
    LightGBMScorer,
    RankerConfig,
    TwoStageRecommender,
    load_scorer,
    mmr,
    save_scorer,
)
from profiler.recommender import Corpus, top_k
from profiler.retrieval import FEATURES
from profiler.workspace import item_document
from tests.groups import around


def queries(n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Synthetic queries in which the target is the candidate with the highest ``bm25``
    plus ``dense`` (and noise elsewhere)."""
    rng = np.random.default_rng(seed)
    groups, labels = [], []
    for _ in range(n):
        x = rng.standard_normal((30, len(FEATURES)))
        y = np.zeros(30)
        y[np.argmax(x[:, FEATURES.index("bm25")] + x[:, FEATURES.index("dense")])] = 1
        groups.append(x)
        labels.append(y)
    return groups, labels


def test_blend_contributions_are_its_exact_terms():
    groups, labels = queries(60, seed=0)
    blend = BlendScorer().fit(groups, labels)
    assert blend.weights["bm25"] > 0 and blend.weights["dense"] > 0
    x = groups[0]
    np.testing.assert_allclose(blend.contributions(x).sum(axis=1), blend.score(x))
    np.testing.assert_allclose(
        blend.contributions(x, np.array([3, 0])), blend.contributions(x)[[3, 0]]
    )


def test_lightgbm_learns_and_explains(tmp_path):
    groups, labels = queries(300, seed=1)
    valid_groups, valid_labels = queries(60, seed=2)
    booster = LightGBMScorer(RankerConfig(n_estimators=60, min_child_samples=5)).fit(
        groups, labels, valid_groups, valid_labels
    )
    hits = [np.argmax(booster.score(g)) == np.argmax(y) for g, y in zip(valid_groups, valid_labels)]
    assert np.mean(hits) > 0.5  # chance is 1/30
    x = valid_groups[0]
    contributions = booster.contributions(x)
    bias = booster.booster_.predict(x, pred_contrib=True)[:, -1]  # raw inputs: same shape
    assert contributions.shape == x.shape
    np.testing.assert_allclose(contributions.sum(axis=1) + bias, booster.score(x), atol=1e-6)
    # the top rows alone (what recommend explains): standardised over all candidates still
    rows = np.argsort(-booster.score(x))[:5]
    np.testing.assert_allclose(booster.contributions(x, rows), contributions[rows], atol=1e-9)
    ensemble = EnsembleScorer(booster)
    np.testing.assert_allclose(ensemble.contributions(x, rows), ensemble.contributions(x)[rows])
    save_scorer(booster, tmp_path, {"queries": 300})
    loaded, report = load_scorer(tmp_path)
    assert report == {"queries": 300}
    np.testing.assert_allclose(loaded.score(x), booster.score(x))


def test_monotone_features_never_weigh_negatively():
    groups, labels = queries(80, seed=3)
    for g, y in zip(groups, labels):  # make popularity anti-correlated with the target
        g[:, FEATURES.index("popularity")] = -y + 0.01 * np.arange(len(y))
    blend = BlendScorer().fit(groups, labels)
    assert blend.weights.get("popularity", 0.0) >= 0.0


def test_bad_ranker_config_is_refused():
    with pytest.raises(ValueError, match="scorer"):
        RankerConfig(scorer="magic")


def bundled_shop(encoder) -> Corpus:
    """The real bundled shoppers (5,000, one review each) and items, embedded by ``encoder``."""
    items = pd.read_parquet(clothing_catalog())
    events = pd.read_parquet(clothing_events())
    events = events[events["item_id"].isin(items["item_id"])].reset_index(drop=True)
    texts = pd.unique(events["text"])
    events["text_row"] = events["text"].map({t: r for r, t in enumerate(texts)})
    events["rating"] = events["rating"].astype(float)
    documents = [item_document(r) for r in items.to_dict(orient="records")]
    return Corpus(
        item_ids=items["item_id"].tolist(),
        item_vectors=encoder.encode(documents),
        item_texts=documents,
        item_categories=items["category"].fillna("").tolist(),
        events=events,
        text_vectors=encoder.encode(list(texts)),
    )


@pytest.fixture(scope="module")
def bundled_corpus(embedder) -> Corpus:
    """:func:`bundled_shop` embedded with the bundled model (about a minute: fewer shoppers
    leave too few training queries)."""
    return bundled_shop(embedder)


@pytest.mark.slow  # embeds the bundled data and trains the ranker: 2.5 minutes on 2 cores
def test_trained_ranker_beats_the_fixed_blend_on_held_out_bundled_shoppers(bundled_corpus):
    split = text_split(bundled_corpus.events, bundled_corpus.text_vectors, seed=0)
    model = TwoStageRecommender().fit(bundled_corpus.with_events(split.train))
    assert model.report_["queries_with_target"] >= 100
    trained = model.scorer_

    def ndcg(scorer) -> float:
        model.scorer_ = scorer
        ranked = [model.recommend(c.query, k=10) for c in split.cases]
        return float(
            np.mean([metrics.ndcg_at_k(r, c.targets, 10) for r, c in zip(ranked, split.cases)])
        )

    learned, fixed = ndcg(trained), ndcg(BlendScorer())
    assert learned > fixed + 0.02, (learned, fixed)


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


def test_exact_workspaces_skip_candidate_tuning_and_validation_queries_hold_both_kinds(
    tiny_workspace_template, embedder, tmp_path
):
    from tests.conftest import copy_workspace

    ws = copy_workspace(tiny_workspace_template, tmp_path, embedder)
    assert "skipped" in ws.manifest["recommender"]["candidate_search"]
    queries = ws._validation_queries(n=10)
    known = [q for q, stored in queries if stored]
    texts = [q for q, stored in queries if not stored]
    assert len(known) == 10 and all(len(q.events) for q in known)
    assert len(texts) == 10 and all(q.text_vectors.shape == (1, 384) for q in texts)
    ws.close()


def test_candidate_search_keeps_the_recommendations_it_measured():
    """On the real bundled shoppers and items (fake encoder, untrained blend: fast), with
    IVF item and user indexes: the smallest tried nprobe whose recommendations keep
    CANDIDATE_AGREEMENT of the tuned searches' top 10 is chosen, and serving with it
    keeps that share."""
    from profiler.ranking import CANDIDATE_AGREEMENT, tune_candidate_search
    from profiler.recommender import Query
    from tests.conftest import HashingEncoder

    encoder = HashingEncoder(dim=32)
    corpus = bundled_shop(encoder)
    events, texts = corpus.events, pd.unique(corpus.events["text"])
    model = TwoStageRecommender().fit(corpus, train=False)
    assert "skipped" in tune_candidate_search(model, lambda: [])
    for index, threshold in ((model.item_index_, 500), (model.state_.user_index, 1000)):
        index.ann_threshold = threshold
        index.optimize()
        assert index.structure_.startswith("IVF") and index.nprobe_ > 4
    rng = np.random.default_rng(0)
    users = rng.choice(sorted(events["user_id"].unique()), 60, replace=False)
    queries = [(Query(u, events[events["user_id"] == u]), True) for u in users]
    for text in rng.choice(texts, 60, replace=False):
        queries.append((Query(None, events.iloc[:0], (text,), encoder.encode([text])), False))
    report = tune_candidate_search(model, lambda: queries)
    assert set(report["nprobe"]) == {"items", "users"}
    assert report["queries"] == {"known": 60, "texts": 60}
    for kind in ("known", "texts"):
        tried = [t for t in report["fractions"] if kind in t["agreement"]]
        passed = [t["fraction"] for t in tried if t["agreement"][kind] >= CANDIDATE_AGREEMENT]
        assert passed == [t["fraction"] for t in tried[: len(passed)]]  # until its first miss
        assert len(passed) == len(tried) or tried[len(passed)]["agreement"][kind] < 0.95
        assert model.search_effort_[kind] == (passed[-1] if passed else 1.0)
    assert model.generator_.effort == model.search_effort_ == report["effort"]
    assert model.describe()["search_effort"] == report["effort"]

    def tops() -> list[np.ndarray]:
        return [model.rank(model.shopper(q, stored=s)).positions[:10] for q, s in queries]

    served = tops()
    model.generator_.effort.update(known=1.0, texts=1.0)  # the tuned searches
    reference = tops()
    for kind in (True, False):
        kept = [
            len(np.intersect1d(a, b)) / max(1, len(a))
            for (_, stored), a, b in zip(queries, reference, served)
            if stored == kind
        ]
        assert np.mean(kept) >= CANDIDATE_AGREEMENT
