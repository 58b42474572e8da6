"""TF-IDF + logistic regression: the classical multi-label baseline every tagger must beat.

Word uni- and bigrams with sublinear TF-IDF, then one independent, class-balanced logistic
regression per tag (one-vs-rest). Fast to train on a CPU and hard to beat on keyword-heavy
tags, so it is the reference the embedding and fine-tuned taggers are compared against.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy.special import expit
from sklearn.exceptions import NotFittedError

from profiler.tags.zeroshot import check_texts
from profiler.text import TOKEN_PATTERN, prepare

__all__ = ["TfidfLogisticTagger"]

logger = logging.getLogger(__name__)


class TfidfLogisticTagger:
    """Sublinear TF-IDF (1-2 grams) and one balanced logistic regression per tag.

    A tag whose training column is constant (never positive, or always positive) gets no
    model: its probability is that constant, 0.0 or 1.0, for every text. Fitting a
    classifier on one class would fail or learn nothing.

    Parameters
    ----------
    C : float, default 4.0
        Inverse L2 strength of each logistic regression.
    max_features : int or None, default 50000
        Vocabulary cap (most frequent n-grams kept).
    seed : int, default 0
        ``random_state`` of the regressions.

    Attributes
    ----------
    vectorizer_ : TfidfVectorizer
        The fitted vectoriser.
    coef_ : ndarray of float64, shape (T, F)
        Per-tag weights over the vocabulary (zeros for constant tags).
    intercept_ : ndarray of float64, shape (T,)
        Per-tag intercepts.
    trained_ : ndarray of bool, shape (T,)
        Which tags got a model; the rest are constant.
    constant_ : ndarray of float64, shape (T,)
        Probability given to the untrained tags (their training value).

    Examples
    --------
    >>> tagger = TfidfLogisticTagger().fit(train_texts, train_targets)  # doctest: +SKIP
    >>> probs = tagger.predict_proba(["denim shorts for summer"])  # doctest: +SKIP
    """

    def __init__(self, C: float = 4.0, max_features: int | None = 50000, seed: int = 0) -> None:
        self.C = C
        self.max_features = max_features
        self.seed = seed

    def fit(self, texts: Sequence[str], targets: np.ndarray) -> TfidfLogisticTagger:
        """Fit the vocabulary and one logistic regression per non-constant tag.

        Parameters
        ----------
        texts : list of str
            Training texts.
        targets : ndarray, shape (n, T)
            Multi-hot labels (0/1) in taxonomy order.

        Returns
        -------
        TfidfLogisticTagger
            ``self``, fitted.
        """
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        batch = check_texts(texts)
        labels = np.asarray(targets, dtype=np.float64)
        if labels.ndim != 2 or labels.shape[0] != len(batch):
            raise ValueError(
                f"targets must be 2-D [{len(batch)}, T] (one row per text), "
                f"got shape {labels.shape}"
            )
        if not batch or labels.shape[1] == 0:
            raise ValueError(f"need at least one text and one tag, got targets {labels.shape}")
        bad = (labels != 0) & (labels != 1)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(
                f"targets must be 0/1, got {float(labels[row, col])!r} at row {row}, column {col}"
            )
        if not self.C > 0:
            raise ValueError(f"C must be positive, got {self.C!r}")

        self.vectorizer_ = TfidfVectorizer(
            sublinear_tf=True,
            ngram_range=(1, 2),
            min_df=1,
            max_features=self.max_features,
            preprocessor=prepare,  # Chinese segmented into words by jieba
            token_pattern=TOKEN_PATTERN,
        )
        features = self.vectorizer_.fit_transform(batch)
        n_tags = labels.shape[1]
        self.trained_ = labels.min(axis=0) != labels.max(axis=0)
        self.constant_ = np.where(self.trained_, np.nan, labels[0])
        self.coef_ = np.zeros((n_tags, features.shape[1]))
        self.intercept_ = np.zeros(n_tags)
        for tag in np.flatnonzero(self.trained_):
            model = LogisticRegression(
                C=float(self.C), max_iter=1000, class_weight="balanced", random_state=self.seed
            ).fit(features, labels[:, tag].astype(np.int64))
            self.coef_[tag] = model.coef_[0]
            self.intercept_[tag] = model.intercept_[0]
        untrained = np.flatnonzero(~self.trained_)
        if untrained.size:
            logger.warning(
                "tags at columns %s are constant in training; they get fixed probabilities %s",
                untrained.tolist(),
                self.constant_[untrained].tolist(),
            )
        logger.info(
            "TF-IDF baseline: %d texts, %d features, %d of %d tags trained",
            len(batch),
            features.shape[1],
            int(self.trained_.sum()),
            n_tags,
        )
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probability of each tag for each text.

        Parameters
        ----------
        texts : list of str
            Texts to tag.

        Returns
        -------
        ndarray of float64, shape (n, T)
            Independent per-tag probabilities in ``[0, 1]``.
        """
        if not hasattr(self, "vectorizer_"):
            raise NotFittedError("TfidfLogisticTagger is not fitted: call fit(texts, targets)")
        batch = check_texts(texts)
        if not batch:
            return np.empty((0, len(self.intercept_)))
        logits = np.asarray(self.vectorizer_.transform(batch) @ self.coef_.T) + self.intercept_
        probs = expit(logits)
        probs[:, ~self.trained_] = self.constant_[~self.trained_]
        return probs

    def __repr__(self) -> str:
        return (
            f"TfidfLogisticTagger(C={self.C!r}, max_features={self.max_features!r}, "
            f"seed={self.seed!r})"
        )
