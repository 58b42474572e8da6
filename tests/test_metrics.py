"""Every ranking metric against hand-computed values, plus edge cases and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from profiler.metrics import (
    catalogue_coverage,
    hit_rate_at_k,
    intra_list_diversity,
    mrr,
    ndcg_at_k,
    recall_at_k,
)

RANKED = ["a", "b", "c", "d", "e"]


class TestRecall:
    def test_counts_hits_in_the_first_k(self):
        # relevant {b, d, z}: top-3 holds b -> 1/3; top-5 holds b and d -> 2/3
        assert recall_at_k(RANKED, {"b", "d", "z"}, k=3) == pytest.approx(1 / 3)
        assert recall_at_k(RANKED, {"b", "d", "z"}, k=5) == pytest.approx(2 / 3)

    def test_no_hit_is_zero(self):
        assert recall_at_k(RANKED, {"x", "y"}, k=5) == 0.0

    def test_k_larger_than_the_list_uses_the_whole_list(self):
        # b and d of {b, d}: 2/2
        assert recall_at_k(RANKED, {"b", "d"}, k=50) == 1.0

    def test_a_repeated_id_counts_once(self):
        # top-2 is [b, b]: one distinct hit of {b, c} -> 1/2, not 2/2
        assert recall_at_k(["b", "b", "c"], {"b", "c"}, k=2) == 0.5


class TestHitRate:
    def test_hit_inside_and_outside_k(self):
        # c is at rank 3
        assert hit_rate_at_k(RANKED, {"c"}, k=3) == 1.0
        assert hit_rate_at_k(RANKED, {"c"}, k=2) == 0.0

    def test_no_hit_and_long_k(self):
        assert hit_rate_at_k(RANKED, {"z"}, k=100) == 0.0
        assert hit_rate_at_k(RANKED, {"e"}, k=100) == 1.0


class TestNdcg:
    def test_hits_at_ranks_two_and_four_of_three_relevant(self):
        # DCG = 1/log2(3) + 1/log2(5); IDCG = 1/log2(2) + 1/log2(3) + 1/log2(4)
        #     = (0.63093 + 0.43068) / (1 + 0.63093 + 0.5) = 1.06161 / 2.13093 = 0.49819
        ranked = ["x", "a", "y", "b", "z"]
        expected = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))
        assert ndcg_at_k(ranked, {"a", "b", "c"}, k=5) == pytest.approx(expected)
        assert expected == pytest.approx(0.49819, abs=1e-5)

    def test_ideal_dcg_is_capped_at_k(self):
        # 3 relevant but k=2: IDCG counts 2 hits, so [a, b] is perfect
        assert ndcg_at_k(["a", "b", "x"], {"a", "b", "c"}, k=2) == pytest.approx(1.0)

    def test_perfect_and_no_hit(self):
        assert ndcg_at_k(["a", "b"], {"a", "b"}, k=2) == pytest.approx(1.0)
        assert ndcg_at_k(["x", "y"], {"a", "b"}, k=2) == 0.0

    def test_k_larger_than_the_list(self):
        # one relevant item at rank 2: (1/log2(3)) / (1/log2(2)) = 0.63093
        assert ndcg_at_k(["x", "a"], {"a"}, k=10) == pytest.approx(1 / math.log2(3))

    def test_a_repeated_id_gains_once(self):
        # [a, a] with relevant {a, b}, k=2: DCG = 1, IDCG = 1 + 1/log2(3)
        assert ndcg_at_k(["a", "a"], {"a", "b"}, k=2) == pytest.approx(1 / (1 + 1 / math.log2(3)))


class TestMrr:
    def test_first_relevant_rank(self):
        # first of {c, e} is c at rank 3 -> 1/3
        assert mrr(RANKED, {"c", "e"}) == pytest.approx(1 / 3)

    def test_looks_at_the_whole_list(self):
        ranked = [f"x{i}" for i in range(11)] + ["a"]
        assert mrr(ranked, {"a"}) == pytest.approx(1 / 12)

    def test_no_hit_is_zero(self):
        assert mrr(RANKED, {"z"}) == 0.0
        assert mrr([], {"z"}) == 0.0


class TestCoverage:
    def test_distinct_items_over_catalogue(self):
        # {a, b, c} of 10 items
        assert catalogue_coverage([["a", "b"], ["b", "c"], []], n_items=10) == pytest.approx(0.3)

    def test_no_lists_is_zero(self):
        assert catalogue_coverage([], n_items=5) == 0.0

    def test_accepts_a_generator(self):
        assert catalogue_coverage((ranked for ranked in [["a"], ["b"]]), n_items=4) == 0.5

    @pytest.mark.parametrize("n_items", [0, -3, 2.5])
    def test_bad_catalogue_size(self, n_items):
        with pytest.raises(ValueError, match="n_items"):
            catalogue_coverage([["a"]], n_items=n_items)

    def test_more_ids_than_the_catalogue_holds(self):
        with pytest.raises(ValueError, match="3 distinct"):
            catalogue_coverage([["a", "b", "c"]], n_items=2)


class TestIntraListDiversity:
    def test_mean_pairwise_cosine_distance(self):
        # pairs (e1, e1): 1 - 1 = 0; (e1, e2): 1 - 0 = 1; (e1, e2): 1 -> (0 + 1 + 1) / 3
        vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        assert intra_list_diversity(vectors) == pytest.approx(2 / 3)

    def test_forty_five_degrees(self):
        # one pair at 45 degrees: 1 - cos(pi/4) = 1 - 0.70711 = 0.29289
        vectors = np.array([[1.0, 0.0], [math.sqrt(0.5), math.sqrt(0.5)]])
        assert intra_list_diversity(vectors) == pytest.approx(1 - math.sqrt(0.5))

    def test_rows_are_normalised(self):
        # [2, 0] and [3, 3] are 45 degrees apart whatever their lengths: 1 - 0.70711
        vectors = np.array([[2.0, 0.0], [3.0, 3.0]])
        assert intra_list_diversity(vectors) == pytest.approx(1 - math.sqrt(0.5))

    def test_short_lists_are_zero(self):
        assert intra_list_diversity(np.array([[1.0, 0.0]])) == 0.0
        assert intra_list_diversity(np.zeros((0, 4))) == 0.0

    def test_bad_shapes_and_values(self):
        with pytest.raises(ValueError, match="2-D"):
            intra_list_diversity(np.array([1.0, 0.0]))
        with pytest.raises(ValueError, match="NaN"):
            intra_list_diversity(np.array([[1.0, np.nan], [0.0, 1.0]]))
        with pytest.raises(ValueError, match=r"rows \[1\] are zero"):
            intra_list_diversity(np.array([[1.0, 0.0], [0.0, 0.0]]))


@pytest.mark.parametrize("metric", [recall_at_k, hit_rate_at_k, ndcg_at_k])
class TestBadInput:
    @pytest.mark.parametrize("k", [0, -1, 2.5, True, None])
    def test_bad_k(self, metric, k):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            metric(RANKED, {"a"}, k)

    def test_numpy_integer_k_is_fine(self, metric):
        assert metric(RANKED, {"a"}, np.int64(1)) == 1.0

    def test_empty_relevant(self, metric):
        with pytest.raises(ValueError, match="relevant is empty"):
            metric(RANKED, set(), 5)


def test_mrr_empty_relevant():
    with pytest.raises(ValueError, match="relevant is empty"):
        mrr(RANKED, set())


def test_macro_roc_auc_counts_ties_half_and_skips_one_class_tags():
    from profiler.metrics import macro_roc_auc

    targets = np.array([[1, 1], [0, 1], [1, 1], [0, 1]])
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.1, 0.4]])
    assert macro_roc_auc(targets, scores) == 0.75  # tag 2 is all positive: left out
    tied = np.array([[0.5, 0.0]] * 4)
    assert macro_roc_auc(targets, tied) == 0.5
    with pytest.raises(ValueError, match="ROC-AUC"):
        macro_roc_auc(np.ones((3, 1)), np.zeros((3, 1)))


def test_novelty_and_long_tail_by_hand():
    from profiler.metrics import long_tail_share, novelty, self_information, short_head

    counts = {"a": 6, "b": 2, "c": 0}
    bits = self_information(counts, 4)  # shares (c + 1) / (8 + 4)
    assert bits["a"] == pytest.approx(-np.log2(7 / 12))
    assert novelty(["a", "c"], bits) == pytest.approx((-np.log2(7 / 12) - np.log2(1 / 12)) / 2)
    head = short_head(counts, 10)  # 20% of 10 items: the 2 most interacted-with
    assert head == {"a", "b"}
    assert long_tail_share(["a", "c", "d", "b"], head) == 0.5
    assert long_tail_share([], head) == 0.0 and novelty([], bits) == 0.0
