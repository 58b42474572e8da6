"""Calibrating tag probabilities and choosing per-tag decision thresholds.

Three small pieces, each fitted on a validation split:

* :class:`TemperatureScaler` divides a classifier's logits by one learned temperature, so
  ``sigmoid(logits / T)`` are honest probabilities (Guo et al., 2017, for sigmoid outputs).
* :class:`PlattScaler` maps any real score, such as a zero-shot cosine similarity, to a
  probability ``sigmoid(a * score + b)`` (Platt, 1999).
* :func:`fit_thresholds` picks, per tag, the probability cut that maximises that tag's F1.

Both scalers persist as plain JSON-able dicts (``to_dict`` / ``from_dict``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit
from sklearn.exceptions import NotFittedError

__all__ = ["PlattScaler", "TemperatureScaler", "fit_thresholds"]

logger = logging.getLogger(__name__)

#: Default threshold grid for :func:`fit_thresholds`: 0.05, 0.10, ..., 0.95.
DEFAULT_GRID = np.linspace(0.05, 0.95, 19)


def _finite(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")
    if not np.isfinite(array).all():
        position = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise ValueError(f"{name} has a non-finite value at index {position}")
    return array


def _pair(values: Any, targets: Any, name: str, *, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(values, targets)`` as float64 arrays of one shape, targets in [0, 1] (or 0/1)."""
    x = _finite(values, name)
    y = _finite(targets, "targets")
    if x.shape != y.shape:
        raise ValueError(
            f"{name} and targets must have the same shape, got {x.shape} and {y.shape}"
        )
    bad = ((y != 0) & (y != 1)) if binary else ((y < 0) | (y > 1))
    if bad.any():
        position = tuple(int(i) for i in np.argwhere(bad)[0])
        allowed = "0 or 1" if binary else "in [0, 1]"
        raise ValueError(
            f"targets must be {allowed}, got {float(y[position])!r} at index {position}"
        )
    return x, y


def _require_keys(data: Mapping[str, Any], keys: tuple[str, ...], owner: str) -> None:
    for key in keys:
        if key not in data:
            raise KeyError(f"{owner}.from_dict: missing key {key!r} (got {sorted(data)})")


class TemperatureScaler:
    """One temperature ``T > 0`` for all tags: ``probs = sigmoid(logits / T)``, or
    ``softmax(logits / T)`` over the tags for a single-label classifier.

    ``fit`` minimises the mean binary cross-entropy of ``sigmoid(logits / T)`` against the
    targets over ``log T`` (a bounded 1-D search), so ``T > 1`` softens an overconfident
    model and ``T < 1`` sharpens an underconfident one. Dividing by a positive constant
    never reorders scores, so rankings and average precision are unchanged.

    Parameters
    ----------
    init : float, default 1.0
        Centre of the search: ``T`` is sought in ``[init * e**-3, init * e**3]``.
    activation : {"sigmoid", "softmax"}
        ``sigmoid``: independent tags, binary cross-entropy. ``softmax``: exactly one tag
        per row, cross-entropy over the tags (rows of ``logits``).

    Attributes
    ----------
    temperature_ : float
        The fitted temperature.

    Examples
    --------
    >>> scaler = TemperatureScaler().fit(val_logits, val_targets)  # doctest: +SKIP
    >>> probs = scaler.transform(test_logits)  # doctest: +SKIP
    """

    #: Half-width of the search window on ``log T``.
    log_range = 3.0

    def __init__(self, init: float = 1.0, activation: str = "sigmoid") -> None:
        self.init = init
        self.activation = activation

    def fit(self, logits: np.ndarray, targets: np.ndarray) -> TemperatureScaler:
        """Find the temperature that minimises binary cross-entropy on ``(logits, targets)``.

        Parameters
        ----------
        logits : ndarray, any shape, usually (n, T)
            Raw (pre-sigmoid) scores on a validation split.
        targets : ndarray, same shape as ``logits``
            Labels in ``[0, 1]`` (multi-hot 0/1, or soft labels).

        Returns
        -------
        TemperatureScaler
            ``self``, with ``temperature_`` set.
        """
        init = float(self.init)
        if not np.isfinite(init) or init <= 0:
            raise ValueError(f"init must be a positive finite temperature, got {self.init!r}")
        if self.activation not in ("sigmoid", "softmax"):
            raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {self.activation!r}")
        z, y = _pair(logits, targets, "logits", binary=False)
        if self.activation == "softmax":
            if z.ndim != 2:
                raise ValueError(f"softmax calibration needs 2-D logits, got shape {z.shape}")

            def loss(log_t: float) -> float:
                scaled = z * np.exp(-log_t)
                log_norm = np.logaddexp.reduce(scaled, axis=1, keepdims=True)
                return float(np.mean(-(y * (scaled - log_norm)).sum(axis=1)))

        else:
            z, y = z.ravel(), y.ravel()

            def loss(log_t: float) -> float:
                scaled = z * np.exp(-log_t)
                # softplus(s) - y * s is BCE(sigmoid(s), y), without overflow for large |s|.
                return float(np.mean(np.logaddexp(0.0, scaled) - y * scaled))

        low, high = np.log(init) - self.log_range, np.log(init) + self.log_range
        result = minimize_scalar(loss, bounds=(low, high), method="bounded")
        if min(result.x - low, high - result.x) < 1e-3:
            logger.warning(
                "temperature %.4g is at the edge of the search window [%.4g, %.4g]; "
                "the logits may be uninformative or init far off",
                np.exp(result.x),
                np.exp(low),
                np.exp(high),
            )
        self.temperature_ = float(np.exp(result.x))
        logger.info(
            "fitted temperature %.4f (BCE at T=1 %.4f -> %.4f)",
            self.temperature_,
            loss(0.0),
            result.fun,
        )
        return self

    def transform(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``sigmoid(logits / temperature_)``, same shape as input."""
        if not hasattr(self, "temperature_"):
            raise NotFittedError("TemperatureScaler is not fitted: call fit(logits, targets)")
        scaled = _finite(logits, "logits") / self.temperature_
        if getattr(self, "activation", "sigmoid") == "softmax":
            scaled = scaled - scaled.max(axis=-1, keepdims=True)
            exp = np.exp(scaled)
            return exp / exp.sum(axis=-1, keepdims=True)
        return expit(scaled)

    def to_dict(self) -> dict[str, float]:
        """JSON-able parameters and learned state."""
        if not hasattr(self, "temperature_"):
            raise NotFittedError("TemperatureScaler is not fitted: nothing to save")
        return {
            "init": float(self.init),
            "temperature": self.temperature_,
            "activation": self.activation,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TemperatureScaler:
        """Rebuild a fitted scaler from :meth:`to_dict` output."""
        _require_keys(data, ("temperature",), cls.__name__)
        temperature = float(data["temperature"])
        if not np.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be positive and finite, got {temperature!r}")
        scaler = cls(
            init=float(data.get("init", 1.0)), activation=data.get("activation", "sigmoid")
        )
        scaler.temperature_ = temperature
        return scaler

    def __repr__(self) -> str:
        fitted = f", temperature_={self.temperature_:.4g}" if hasattr(self, "temperature_") else ""
        return f"TemperatureScaler(init={self.init!r}{fitted})"


def fit_thresholds(
    probs: np.ndarray,
    targets: np.ndarray,
    grid: np.ndarray = DEFAULT_GRID,
    default: float = 0.5,
) -> np.ndarray:
    """Per-tag decision threshold that maximises that tag's F1 on a validation split.

    A row is predicted positive for a tag when ``probs >= threshold``. For each tag every
    threshold in ``grid`` is tried; the best F1 wins, ties going to the lowest threshold.
    A tag with no positive target has no meaningful F1 and gets ``default``.

    Parameters
    ----------
    probs : ndarray, shape (n, T)
        Calibrated validation probabilities.
    targets : ndarray, shape (n, T)
        Multi-hot ground truth (0/1).
    grid : ndarray, shape (G,), default 0.05, 0.10, ..., 0.95
        Candidate thresholds in ``[0, 1]``.
    default : float, default 0.5
        Threshold for tags without positives.

    Returns
    -------
    ndarray of float64, shape (T,)
        One threshold per tag.

    Examples
    --------
    >>> fit_thresholds(np.array([[0.9], [0.4], [0.2]]), np.array([[1], [1], [0]]),
    ...                grid=np.array([0.3, 0.5]))
    array([0.3])
    """
    p, y = _pair(probs, targets, "probs", binary=True)
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D [n, T], got shape {p.shape}")
    cuts = _finite(grid, "grid")
    if cuts.ndim != 1 or ((cuts < 0) | (cuts > 1)).any():
        raise ValueError(f"grid must be a 1-D array of thresholds in [0, 1], got {cuts.tolist()!r}")
    if not 0 <= default <= 1:
        raise ValueError(f"default must be in [0, 1], got {default!r}")
    positives = y.sum(axis=0)
    f1 = np.empty((len(cuts), p.shape[1]))
    for g, cut in enumerate(cuts):
        predicted = p >= cut
        tp = (predicted * y).sum(axis=0)
        denominator = predicted.sum(axis=0) + positives  # 2 TP + FP + FN
        f1[g] = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    thresholds = cuts[f1.argmax(axis=0)]
    thresholds[positives == 0] = default
    return thresholds.astype(np.float64)


class PlattScaler:
    """Map real scores to probabilities ``sigmoid(a * score + b)`` by logistic regression.

    One ``(a, b)`` pair is shared by all tags: every ``(score, target)`` cell is one
    training example. This turns zero-shot cosine similarities, whose scale means nothing
    by itself, into probabilities that thresholds and calibration metrics can use.

    Parameters
    ----------
    C : float, default 1e4
        Inverse L2 strength on ``a`` (scikit-learn's ``C``); large means nearly
        unregularised, while still keeping ``a`` finite on separable data.

    Attributes
    ----------
    a_ : float
        Slope; positive when higher scores mean more likely.
    b_ : float
        Intercept.
    """

    def __init__(self, C: float = 1e4) -> None:
        self.C = C

    def fit(self, scores: np.ndarray, targets: np.ndarray) -> PlattScaler:
        """Fit ``a`` and ``b`` on flattened ``(score, target)`` pairs.

        Parameters
        ----------
        scores : ndarray, any shape, usually (n, T)
            Raw scores on a validation split.
        targets : ndarray, same shape as ``scores``
            0/1 labels; both values must occur.

        Returns
        -------
        PlattScaler
            ``self``, with ``a_`` and ``b_`` set.
        """
        from sklearn.linear_model import LogisticRegression

        if not self.C > 0:
            raise ValueError(f"C must be positive, got {self.C!r}")
        s, y = _pair(scores, targets, "scores", binary=True)
        s, y = s.reshape(-1, 1), y.ravel()
        if y.min() == y.max():
            raise ValueError(
                f"targets are all {int(y[0])}: Platt scaling needs both positive and negative "
                "examples"
            )
        model = LogisticRegression(C=float(self.C), max_iter=1000).fit(s, y)
        self.a_ = float(model.coef_[0, 0])
        self.b_ = float(model.intercept_[0])
        if self.a_ <= 0:
            logger.warning(
                "Platt slope a=%.4g is not positive: scores rank tags backwards", self.a_
            )
        return self

    def transform(self, scores: np.ndarray) -> np.ndarray:
        """Probabilities ``sigmoid(a_ * scores + b_)``, same shape as ``scores``."""
        if not hasattr(self, "a_"):
            raise NotFittedError("PlattScaler is not fitted: call fit(scores, targets)")
        return expit(self.a_ * _finite(scores, "scores") + self.b_)

    def to_dict(self) -> dict[str, float]:
        """JSON-able parameters and learned state."""
        if not hasattr(self, "a_"):
            raise NotFittedError("PlattScaler is not fitted: nothing to save")
        return {"C": float(self.C), "a": self.a_, "b": self.b_}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlattScaler:
        """Rebuild a fitted scaler from :meth:`to_dict` output."""
        _require_keys(data, ("a", "b"), cls.__name__)
        scaler = cls(C=float(data.get("C", 1e4)))
        scaler.a_, scaler.b_ = float(data["a"]), float(data["b"])
        if not (np.isfinite(scaler.a_) and np.isfinite(scaler.b_)):
            raise ValueError(f"a and b must be finite, got a={scaler.a_!r}, b={scaler.b_!r}")
        return scaler

    def __repr__(self) -> str:
        fitted = f", a_={self.a_:.4g}, b_={self.b_:.4g}" if hasattr(self, "a_") else ""
        return f"PlattScaler(C={self.C!r}{fitted})"
