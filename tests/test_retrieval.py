"""Candidate channels against exact references: counts, neighbours, dense search, BM25."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from profiler.profiles import ProfileBuilder, ProfileConfig
from profiler.retrieval import (
    CHANNELS,
    FEATURES,
    CandidateGenerator,
    Catalogue,
    ChannelConfig,
    Interactions,
    LexicalIndex,
    Shopper,
)
from profiler.vectors import ExactIndex
from tests.conftest import unit_vectors

DIM, N_ITEMS = 8, 40
T0 = 1_700_000_000.0


def random_events(n: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    users = np.array([f"u{u}" for u in rng.integers(0, 12, n)], dtype=object)
    items = rng.integers(-1, N_ITEMS, n)  # -1: an event without an item (a search)
    times = T0 + rng.uniform(0, 90 * 86_400, n)
    positive = rng.random(n) > 0.2
    return users, items, times, positive


def reference_counts(users, items, positive) -> tuple[dict, np.ndarray]:
    liked: dict[str, set[int]] = {}
    for user, item, ok in zip(users, items, positive):
        if ok and item >= 0:
            liked.setdefault(user, set()).add(int(item))
    cooc = np.zeros((N_ITEMS, N_ITEMS))
    for chosen in liked.values():
        for a in chosen:
            for b in chosen:
                if a != b:
                    cooc[a, b] += 1
    return liked, cooc


class TestInteractions:
    def test_counts_match_a_hand_computed_reference(self):
        users, items, times, positive = random_events(200, seed=1)
        fitted = Interactions(N_ITEMS).fit(users, items, times, positive)
        liked, cooc = reference_counts(users, items, positive)
        for user, chosen in liked.items():
            row = fitted.positives_[fitted.user_row_[user]]
            assert set(row.indices) == chosen and np.all(row.data == 1)
        np.testing.assert_array_equal(fitted.cooccurrence_.toarray(), cooc)
        np.testing.assert_array_equal(
            fitted.counts_, np.bincount(items[items >= 0], minlength=N_ITEMS)
        )
        assert fitted.trending(3)[0] == int(np.argmax(fitted.trend_))

    def test_incremental_equals_refit(self, tmp_path):
        users, items, times, positive = random_events(300, seed=2)
        order = np.argsort(times)
        users, items, times, positive = (a[order] for a in (users, items, times, positive))
        whole = Interactions(N_ITEMS).fit(users, items, times, positive)
        parts = Interactions(N_ITEMS).fit(users[:120], items[:120], times[:120], positive[:120])
        parts.add(users[120:], items[120:], times[120:], positive[120:])
        assert parts.users_ == whole.users_
        assert (parts.positives_ != whole.positives_).nnz == 0
        assert (parts.cooccurrence_ != whole.cooccurrence_).nnz == 0
        np.testing.assert_allclose(parts.trend_, whole.trend_)
        parts.save(tmp_path)
        loaded = Interactions.load(tmp_path)
        assert (loaded.cooccurrence_ != whole.cooccurrence_).nnz == 0
        np.testing.assert_allclose(loaded.popularity_, whole.popularity_)


@pytest.fixture
def generator():
    vectors = unit_vectors(N_ITEMS, DIM, seed=5)
    ids = [f"i{n}" for n in range(N_ITEMS)]
    index = ExactIndex(DIM)
    index.add(ids, vectors)
    users, items, times, positive = random_events(200, seed=3)
    interactions = Interactions(N_ITEMS).fit(users, items, times, positive)
    user_ids = interactions.users_
    user_vectors = unit_vectors(len(user_ids), DIM, seed=6)
    user_index = ExactIndex(DIM)
    user_index.add(user_ids, user_vectors)
    texts = [f"item {n} {'red wool coat' if n == 7 else 'plain thing'}" for n in range(N_ITEMS)]
    catalogue = Catalogue.from_columns(ids, [f"C{n % 4}" for n in range(N_ITEMS)])
    lexical = LexicalIndex().fit(texts)
    config = ChannelConfig(dense=5, centre=3, lexical=5, neighbours=4, neighbour_items=6)
    gen = CandidateGenerator(
        config, catalogue, index, user_index, interactions, lexical, texts.__getitem__
    )
    return gen, vectors, user_vectors, interactions


def shopper(vectors: np.ndarray, items: list[int], texts: tuple[str, ...] = ()) -> Shopper:
    builder = ProfileBuilder(ProfileConfig(half_life_days=None))
    weights = np.ones(len(items))
    evidence = vectors[items]
    profile = builder.build("me", type_evidence(evidence, weights))
    return Shopper(
        "me",
        profile,
        np.array(items, dtype=np.int64),
        weights,
        texts,
        evidence,
        tuple(f"i{i}" for i in items),
        frozenset(f"i{i}" for i in items),
    )


def type_evidence(vectors, weights):
    from profiler.profiles import Evidence

    return Evidence(vectors.astype(np.float32), weights, np.full(len(weights), T0))


class TestChannels:
    def test_dense_channel_is_the_exact_top_k_without_seen_items(self, generator):
        gen, vectors, _, _ = generator
        me = shopper(vectors, [0, 1])
        found = gen.generate(me)
        dense = found.positions[found.channels[:, CHANNELS.index("dense")]]
        scores = vectors @ me.profile.vector
        scores[[0, 1]] = -np.inf
        assert set(dense) == set(np.argsort(-scores)[:5])
        assert not {0, 1} & set(found.positions)
        column = found.features[:, FEATURES.index("dense")]
        np.testing.assert_allclose(column, vectors[found.positions] @ me.profile.vector, atol=1e-6)

    def test_candidate_vectors_follow_the_item_index_when_it_changes(self, generator):
        """The generator reads candidates' vectors by labels it holds for the catalogue;
        an index rebuilt under the same ids (new labels) is followed, and an item gone
        from the index is an error naming it, not another item's vector."""
        gen, vectors, _, _ = generator
        me = shopper(vectors, [0, 1])
        gen.generate(me)
        ids = [f"i{n}" for n in range(N_ITEMS)]
        moved = vectors[::-1].copy()
        gen.item_index.remove(ids)
        gen.item_index.add(ids, moved)  # every id under a new label
        found = gen.generate(me)
        column = found.features[:, FEATURES.index("dense")]
        np.testing.assert_allclose(column, moved[found.positions] @ me.profile.vector, atol=1e-6)
        gen.item_index.remove(["i0"])
        with pytest.raises(KeyError, match="i0"):
            gen.generate(me)

    def test_lexical_channel_finds_the_matching_text(self, generator):
        gen, vectors, _, _ = generator
        found = gen.generate(shopper(vectors, [0], texts=("a red wool coat",)))
        lexical = found.positions[found.channels[:, CHANNELS.index("lexical")]]
        assert 7 in lexical
        bm25 = found.features[:, FEATURES.index("bm25")]
        assert found.positions[np.argmax(bm25)] == 7

    def test_neighbour_votes_match_a_brute_force_reference(self, generator):
        gen, vectors, user_vectors, interactions = generator
        me = shopper(vectors, [2])
        found = gen.generate(me)
        sims = user_vectors @ me.profile.vector
        nearest = np.argsort(-sims)[:4]
        weights = np.maximum(sims[nearest], 0)
        rows = [interactions.user_row_[interactions.users_[n]] for n in nearest]
        want = weights @ interactions.positives_[rows].toarray() / weights.sum()
        votes = found.features[:, FEATURES.index("votes")]
        np.testing.assert_allclose(votes, want[found.positions], atol=1e-6)

    def test_cooccurrence_feature_sums_counts_with_her_items(self, generator):
        gen, vectors, _, interactions = generator
        me = shopper(vectors, [3, 4])
        found = gen.generate(me)
        counts = np.asarray(interactions.cooccurrence_[[3, 4]].sum(axis=0)).ravel()
        column = found.features[:, FEATURES.index("cooccurrence")]
        np.testing.assert_allclose(column, np.log1p(counts[found.positions]))
        proposed = found.positions[found.channels[:, CHANNELS.index("cooccurrence")]]
        assert all(counts[p] > 0 for p in proposed)

    def test_category_affinity_is_her_share(self, generator):
        gen, vectors, _, _ = generator
        me = shopper(vectors, [0, 4, 1])  # categories C0, C0, C1
        found = gen.generate(me)
        share = found.features[:, FEATURES.index("category")]
        cats = found.positions % 4
        np.testing.assert_allclose(share[cats == 0], 2 / 3)
        np.testing.assert_allclose(share[cats == 1], 1 / 3)
        assert np.all(share[cats >= 2] == 0)

    def test_bad_channel_config_is_refused(self):
        with pytest.raises(ValueError, match="dense"):
            ChannelConfig(dense=0)


def test_sparse_helpers_agree_with_dense():
    matrix = sparse.random(5, 9, density=0.4, random_state=0, format="csr")
    from profiler.retrieval import _sparse_lookup

    row = matrix[2]
    wanted = np.arange(9)
    np.testing.assert_allclose(_sparse_lookup(row.indices, row.data, wanted), row.toarray().ravel())


def test_top_keeps_the_lower_positions_among_ties_at_the_kth_score():
    from profiler.retrieval import _top

    scores = np.array([0.0, 2.0, 1.0, 1.0, 3.0, 1.0, -1.0, 1.0])
    np.testing.assert_array_equal(_top(scores, 3), [4, 1, 2])
    np.testing.assert_array_equal(_top(scores, 4), [4, 1, 2, 3])
    np.testing.assert_array_equal(_top(scores, 10), [4, 1, 2, 3, 5, 7])  # positives only


@pytest.mark.parametrize("rounded", [False, True])
def test_top_through_a_sampled_threshold_is_the_exact_top_k(rounded):
    """Past 64 k positive scores ``_top`` partitions only those above a threshold taken
    from a sample: the same list as a full sort, ties at the k-th included."""
    from profiler.retrieval import _top

    rng = np.random.default_rng(0)
    n = 200_000
    scores = np.where(rng.random(n) < 0.3, rng.gamma(2.0, 2.0, n), 0.0).astype(np.float32)
    if rounded:  # thousands of ties at every score
        scores = np.round(scores)
    for k in (1, 10, 100, 500):
        positive = np.flatnonzero(scores > 0)
        want = positive[np.lexsort((positive, -scores[positive]))][:k]
        np.testing.assert_array_equal(_top(scores, k), want)
