"""Tagging metrics against hand-computed values, an sklearn oracle for AP, and bad shapes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from profiler.metrics import (
    expected_calibration_error,
    mean_average_precision,
    multilabel_f1,
    top_label_calibration_error,
)


class TestMultilabelF1:
    # 4 rows x 4 tags; tag 3 has neither a positive target nor a positive prediction.
    TARGETS = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]])
    PREDICTIONS = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]])

    def test_hand_computed(self):
        # tag 0: tp 1 (row 0), fp 1 (row 3), fn 1 (row 1) -> F1 = 2/(2+1+1) = 0.5
        # tag 1: tp 2 (rows 1, 3), fp 0, fn 0             -> F1 = 1
        # tag 2: tp 0, fp 1 (row 1), fn 0                 -> F1 = 0 (predicted, so counted)
        # tag 3: nothing positive                         -> skipped
        # micro: tp 3, fp 2, fn 1 -> 6 / (6 + 2 + 1) = 2/3; macro: (0.5 + 1 + 0) / 3 = 0.5
        micro, macro = multilabel_f1(self.TARGETS, self.PREDICTIONS)
        assert micro == pytest.approx(2 / 3)
        assert macro == pytest.approx(0.5)

    def test_perfect_predictions(self):
        assert multilabel_f1(self.TARGETS, self.TARGETS) == (1.0, 1.0)

    def test_nothing_positive_anywhere_is_zero(self):
        zeros = np.zeros((2, 3))
        assert multilabel_f1(zeros, zeros) == (0.0, 0.0)

    def test_non_binary_predictions_are_rejected(self):
        with pytest.raises(ValueError, match=r"0\.7 at row 1, column 0"):
            multilabel_f1(np.zeros((2, 2)), np.array([[0, 1], [0.7, 0]]))


class TestMeanAveragePrecision:
    def test_hand_computed(self):
        targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
        scores = np.array([[0.9, 0.5, 0.1], [0.8, 0.2, 0.2], [0.3, 0.1, 0.3], [0.1, 0.7, 0.4]])
        # tag 0: order rows 0,1,2,3 -> hits at ranks 1 and 3: (1/1 + 2/3) / 2 = 5/6
        # tag 1: order rows 3,0,1,2 -> hit at rank 3: (1/3) / 1 = 1/3
        # tag 2: no positive -> skipped.  MAP = (5/6 + 1/3) / 2 = 7/12
        assert mean_average_precision(targets, scores) == pytest.approx(7 / 12)

    def test_ties_keep_row_order(self):
        # equal scores: the stable sort keeps row 0 first, so a positive in row 1 is rank 2
        assert mean_average_precision(np.array([[0], [1]]), np.array([[0.5], [0.5]])) == 0.5
        assert mean_average_precision(np.array([[1], [0]]), np.array([[0.5], [0.5]])) == 1.0

    def test_matches_sklearn_on_distinct_scores(self):
        rng = np.random.default_rng(0)
        targets = (rng.random((40, 5)) < 0.3).astype(int)
        scores = rng.random((40, 5))
        expected = np.mean([average_precision_score(targets[:, t], scores[:, t]) for t in range(5)])
        assert mean_average_precision(targets, scores) == pytest.approx(expected)

    def test_no_positive_tag_raises(self):
        with pytest.raises(ValueError, match="no positive"):
            mean_average_precision(np.zeros((3, 2)), np.ones((3, 2)))


class TestExpectedCalibrationError:
    PROBS = np.array([[0.9, 0.2], [0.7, 0.1]])
    TARGETS = np.array([[1, 0], [0, 0]])

    def test_one_item_per_bin(self):
        # 10 bins: 0.9 -> bin 9, 0.2 -> 2, 0.7 -> 7, 0.1 -> 1, one cell each (weight 1/4):
        # (|0.9-1| + |0.2-0| + |0.7-0| + |0.1-0|) / 4 = (0.1 + 0.2 + 0.7 + 0.1) / 4 = 0.275
        assert expected_calibration_error(self.PROBS, self.TARGETS, n_bins=10) == pytest.approx(
            0.275
        )

    def test_shared_bins_average_before_the_gap(self):
        # 2 bins: [0, .5) holds 0.2, 0.1 (mean 0.15, targets mean 0) -> 2/4 * 0.15 = 0.075
        #         [.5, 1] holds 0.9, 0.7 (mean 0.8, targets mean 0.5) -> 2/4 * 0.3 = 0.15
        assert expected_calibration_error(self.PROBS, self.TARGETS, n_bins=2) == pytest.approx(
            0.225
        )

    def test_probability_one_falls_in_the_last_bin(self):
        assert expected_calibration_error(np.array([[1.0, 0.0]]), np.array([[1, 0]])) == 0.0

    def test_bad_input(self):
        with pytest.raises(ValueError, match="n_bins"):
            expected_calibration_error(self.PROBS, self.TARGETS, n_bins=0)
        with pytest.raises(ValueError, match=r"\[0, 1\], got 1\.5"):
            expected_calibration_error(np.array([[1.5]]), np.array([[1]]))
        with pytest.raises(ValueError, match="non-finite value at row 0, column 1"):
            expected_calibration_error(np.array([[0.5, np.nan]]), np.array([[1, 0]]))


class TestTopLabelCalibrationError:
    PROBS = np.array([[0.9, 0.2], [0.3, 0.6], [0.55, 0.5]])
    TARGETS = np.array([[1, 0], [1, 0], [1, 1]])

    def test_hand_computed(self):
        # per row (confidence, correct): (0.9, 1), (0.6, 0: tag 1 is not a target), (0.55, 1)
        # 10 bins -> bins 9, 6, 5, one row each: (0.1 + 0.6 + 0.45) / 3 = 1.15 / 3
        assert top_label_calibration_error(self.PROBS, self.TARGETS, n_bins=10) == pytest.approx(
            1.15 / 3
        )
        # 2 bins -> all in [.5, 1]: |mean conf 2.05/3 - accuracy 2/3| = 0.05 / 3
        assert top_label_calibration_error(self.PROBS, self.TARGETS, n_bins=2) == pytest.approx(
            0.05 / 3
        )

    def test_tie_takes_the_first_tag(self):
        # argmax of [0.5, 0.5] is tag 0, which is not a target: |0.5 - 0| = 0.5
        assert top_label_calibration_error(np.array([[0.5, 0.5]]), np.array([[0, 1]])) == 0.5


@pytest.mark.parametrize(
    "metric",
    [
        lambda a, b: multilabel_f1(a, b),
        lambda a, b: mean_average_precision(a, b),
        lambda a, b: expected_calibration_error(a, b),
        lambda a, b: top_label_calibration_error(a, b),
    ],
)
class TestShapes:
    def test_mismatched_shapes_name_both(self, metric):
        with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 2\)"):
            metric(np.ones((2, 3)), np.ones((2, 2)))

    def test_one_dimensional_input_is_rejected(self, metric):
        with pytest.raises(ValueError, match=r"2-D \[n, T\], got shape \(3,\)"):
            metric(np.ones(3), np.ones(3))

    def test_empty_input_is_rejected(self, metric):
        with pytest.raises(ValueError, match="empty"):
            metric(np.ones((0, 3)), np.ones((0, 3)))
