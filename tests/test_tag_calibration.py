"""Temperature and Platt scaling recover known parameters; thresholds pick the F1-best cut."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit
from sklearn.exceptions import NotFittedError

from profiler.metrics import expected_calibration_error
from profiler.tags.calibration import PlattScaler, TemperatureScaler, fit_thresholds


@pytest.fixture(scope="module")
def overconfident() -> tuple[np.ndarray, np.ndarray]:
    """Logits whose true temperature is 2.5: labels ~ Bernoulli(sigmoid(z / 2.5))."""
    rng = np.random.default_rng(7)
    logits = rng.normal(0.0, 3.0, size=20000)
    labels = (rng.random(20000) < expit(logits / 2.5)).astype(np.float64)
    return logits.reshape(5000, 4), labels.reshape(5000, 4)


class TestTemperatureScaler:
    def test_recovers_the_true_temperature(self, overconfident):
        logits, labels = overconfident
        scaler = TemperatureScaler().fit(logits, labels)
        assert scaler.temperature_ == pytest.approx(2.5, abs=0.2)

    def test_scaling_lowers_calibration_error(self, overconfident):
        logits, labels = overconfident
        scaler = TemperatureScaler().fit(logits, labels)
        before = expected_calibration_error(expit(logits), labels)
        after = expected_calibration_error(scaler.transform(logits), labels)
        assert after < before
        assert after < 0.02

    def test_transform_keeps_shape_and_order(self, overconfident):
        logits, labels = overconfident
        probs = TemperatureScaler().fit(logits, labels).transform(logits[:10])
        assert probs.shape == (10, 4)
        np.testing.assert_array_equal(np.argsort(probs, axis=1), np.argsort(logits[:10], axis=1))

    def test_round_trip_through_json(self, overconfident):
        scaler = TemperatureScaler(init=2.0).fit(*overconfident)
        loaded = TemperatureScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
        assert loaded.temperature_ == scaler.temperature_
        assert loaded.init == 2.0
        z = np.linspace(-5, 5, 11)
        np.testing.assert_array_equal(loaded.transform(z), scaler.transform(z))

    def test_errors(self):
        with pytest.raises(NotFittedError, match="call fit"):
            TemperatureScaler().transform(np.zeros(3))
        with pytest.raises(ValueError, match="init must be a positive"):
            TemperatureScaler(init=0.0).fit(np.zeros(3), np.ones(3))
        with pytest.raises(ValueError, match=r"\(3,\) and \(2,\)"):
            TemperatureScaler().fit(np.zeros(3), np.ones(2))
        with pytest.raises(KeyError, match="temperature"):
            TemperatureScaler.from_dict({"init": 1.0})
        with pytest.raises(ValueError, match="positive"):
            TemperatureScaler.from_dict({"temperature": -1.0})


class TestFitThresholds:
    def test_picks_the_f1_optimal_cut_per_tag(self):
        probs = np.array([[0.9, 0.8, 0.3], [0.6, 0.35, 0.2], [0.4, 0.6, 0.1], [0.2, 0.1, 0.9]])
        targets = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
        grid = np.array([0.3, 0.5, 0.7])
        # tag 0 (targets 1,1,0,0): 0.3 -> predicts rows 0,1,2: tp 2 fp 1 -> F1 4/5
        #                          0.5 -> rows 0,1: F1 1 (best); 0.7 -> row 0: F1 2/3
        # tag 1 (targets 1,1,0,0): 0.3 -> rows 0,1,2: F1 4/5 (best)
        #                          0.5 -> rows 0,2: tp 1 fp 1 fn 1 -> 1/2; 0.7 -> row 0: 2/3
        # tag 2: no positive -> default
        thresholds = fit_thresholds(probs, targets, grid=grid, default=0.42)
        np.testing.assert_allclose(thresholds, [0.5, 0.3, 0.42])

    def test_ties_go_to_the_lowest_threshold(self):
        # both 0.3 and 0.5 separate [0.9 | 0.1] perfectly (F1 1)
        thresholds = fit_thresholds(np.array([[0.9], [0.1]]), np.array([[1], [0]]), [0.3, 0.5])
        assert thresholds.tolist() == [0.3]

    def test_default_grid_and_shape(self):
        rng = np.random.default_rng(0)
        thresholds = fit_thresholds(rng.random((50, 6)), rng.random((50, 6)) < 0.4)
        assert thresholds.shape == (6,)
        assert np.isin(np.round(thresholds, 2), np.round(np.linspace(0.05, 0.95, 19), 2)).all()

    def test_bad_input(self):
        with pytest.raises(ValueError, match="grid"):
            fit_thresholds(np.zeros((2, 1)), np.zeros((2, 1)), grid=[0.5, 1.5])
        with pytest.raises(ValueError, match="2-D"):
            fit_thresholds(np.zeros(2), np.zeros(2))
        with pytest.raises(ValueError, match=r"0 or 1, got 0\.5"):
            fit_thresholds(np.zeros((2, 1)), np.full((2, 1), 0.5))


class TestPlattScaler:
    def test_recovers_slope_and_intercept(self):
        rng = np.random.default_rng(3)
        scores = rng.uniform(-1, 1, size=(5000, 4))
        targets = (rng.random(scores.shape) < expit(4.0 * scores - 1.0)).astype(int)
        scaler = PlattScaler().fit(scores, targets)
        assert scaler.a_ == pytest.approx(4.0, abs=0.2)
        assert scaler.b_ == pytest.approx(-1.0, abs=0.1)
        probs = scaler.transform(scores)
        assert probs.shape == scores.shape
        assert expected_calibration_error(probs, targets) < 0.02

    def test_round_trip_through_json(self):
        scores = np.array([[0.1, 0.5], [0.2, 0.7], [0.6, 0.3]])
        targets = np.array([[0, 1], [0, 1], [1, 0]])
        scaler = PlattScaler().fit(scores, targets)
        loaded = PlattScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
        assert (loaded.a_, loaded.b_, loaded.C) == (scaler.a_, scaler.b_, scaler.C)
        np.testing.assert_array_equal(loaded.transform(scores), scaler.transform(scores))

    def test_errors(self):
        with pytest.raises(NotFittedError, match="call fit"):
            PlattScaler().transform(np.zeros(3))
        with pytest.raises(ValueError, match="both positive and negative"):
            PlattScaler().fit(np.array([0.1, 0.2]), np.array([1, 1]))
        with pytest.raises(KeyError, match="'b'"):
            PlattScaler.from_dict({"a": 1.0})
