"""Review sentiment from text: a star rating for reviews that carry none.

A review without stars used to count as positive evidence whatever it said ("broke after
one day" raised the item's weight). :class:`SentimentModel` is the tag classifier's
machinery (:class:`~profiler.tags.classifier.TagClassifier`: the bundled MiniLM with a
probe-initialised head, fine-tuned, windows for long texts, temperature-calibrated) with
the five star ratings as its classes, trained on real star-rated reviews (the bundled
clothing reviews, or a workspace's own). It predicts a distribution over 1-5 stars; the
expected rating feeds the profile's rating factor where a review has no rating of its own
(and is marked as predicted there), and ``P(1 or 2 stars)`` is its negative score.

:func:`evaluate_sentiment` compares it with VADER (``vaderSentiment``, a lexicon and rules;
its compound score) and a majority baseline on held-out reviews: 5-class accuracy, the
mean absolute rating error, and ROC-AUC of negative (1-2 stars) against positive (4-5).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from profiler.storage import write_json
from profiler.tags.classifier import TagClassifier
from profiler.tags.taxonomy import Tag, Taxonomy

__all__ = ["RATINGS", "SentimentModel", "evaluate_sentiment", "summarise", "vader_scores"]

logger = logging.getLogger(__name__)

#: The classes: star ratings.
RATINGS = (1, 2, 3, 4, 5)
#: Most training reviews used (a stratified sample of the training users' reviews beyond
#: this): on 2 CPU cores each fine-tuning epoch over 3,000 reviews takes a few minutes.
MAX_TRAIN = 3000


class SentimentModel:
    """Star rating from review text.

    Parameters
    ----------
    classifier : TagClassifier
        Trained with one tag per rating, ``"1"`` .. ``"5"``.
    """

    def __init__(self, classifier: TagClassifier) -> None:
        names = classifier.taxonomy_.names
        if names != [str(r) for r in RATINGS]:
            raise ValueError(f"a sentiment classifier has the tags 1..5, got {names}")
        self.classifier = classifier

    @classmethod
    def train(
        cls,
        texts: Sequence[str],
        ratings: Sequence[float],
        groups: Sequence[str],
        *,
        base_model: str | os.PathLike[str] | None = None,
        epochs: int = 2,
        max_length: int = 256,
        max_train: int = MAX_TRAIN,
        seed: int = 0,
        device: str | None = None,
    ) -> tuple[SentimentModel, dict]:
        """Split by user (70/15/15), fine-tune on the training users' reviews, calibrate
        on validation and report the test users' metrics next to VADER and majority."""
        from profiler.tags.training import split_by_group

        texts = [str(t) for t in texts]
        stars = np.asarray(ratings, dtype=np.float64)
        if len(texts) != len(stars) or len(texts) != len(groups):
            raise ValueError("texts, ratings and groups must have the same length")
        known = np.isfinite(stars) & np.isin(np.round(stars), RATINGS)
        known &= np.array([bool(t.strip()) for t in texts], dtype=bool)
        if known.sum() < 50:
            raise ValueError(f"need at least 50 rated reviews with text, got {int(known.sum())}")
        rows = np.flatnonzero(known)
        texts = [texts[r] for r in rows]
        stars = np.round(stars[rows]).astype(int)
        groups = [str(groups[r]) for r in rows]
        train, val, test = split_by_group(groups, seed=seed)
        rng = np.random.default_rng(seed)
        if len(train) > max_train:
            train = np.sort(rng.choice(train, size=max_train, replace=False))
        targets = np.eye(len(RATINGS), dtype=np.float32)[stars - 1]
        taxonomy = Taxonomy([Tag(str(r), f"{r} star review") for r in RATINGS])
        classifier = TagClassifier(
            base_model, epochs=epochs, max_length=max_length, seed=seed, device=device
        ).fit(
            [texts[r] for r in train],
            targets[train],
            taxonomy,
            validation=([texts[r] for r in val], targets[val]),
        )
        model = cls(classifier)
        majority = int(np.bincount(stars[train]).argmax())
        report = evaluate_sentiment(model, [texts[r] for r in test], stars[test], majority)
        report.update(train_reviews=len(train), validation_reviews=len(val), test_reviews=len(test))
        return model, report

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Calibrated probabilities of 1..5 stars ``[n, 5]``."""
        return self.classifier.predict_proba(list(texts))

    def predict(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Expected rating and ``P(1 or 2 stars)`` of each text."""
        return summarise(self.predict_proba(texts))

    def save(self, directory: str | os.PathLike[str], report: dict | None = None) -> None:
        directory = Path(directory)
        self.classifier.save(directory)
        if report is not None:
            write_json(directory / "report.json", report)

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], *, device: str | None = None
    ) -> SentimentModel:
        directory = Path(directory)
        if not (directory / "head.safetensors").is_file():
            raise FileNotFoundError(
                f"{directory}: no sentiment model; run `profiler train-sentiment`"
            )
        return cls(TagClassifier.load(directory, device=device))


def summarise(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expected rating and ``P(1 or 2 stars)`` of rating distributions ``[n, 5]``."""
    return probs @ np.asarray(RATINGS, dtype=np.float64), probs[:, :2].sum(axis=1)


def vader_scores(texts: Sequence[str]) -> np.ndarray:
    """VADER's compound polarity in ``[-1, 1]`` per text (needs ``vaderSentiment``)."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as error:
        raise RuntimeError(
            "the VADER comparison needs vaderSentiment: pip install vaderSentiment"
        ) from error
    analyzer = SentimentIntensityAnalyzer()
    return np.array([analyzer.polarity_scores(t)["compound"] for t in texts])


def _auc(scores: np.ndarray, negative: np.ndarray) -> float:
    from profiler.metrics import macro_roc_auc

    return macro_roc_auc(negative[:, None].astype(int), scores[:, None])


def evaluate_sentiment(
    model: SentimentModel, texts: Sequence[str], stars: np.ndarray, majority: int
) -> dict:
    """Accuracy, mean absolute error and negative-vs-positive ROC-AUC of the model, VADER
    (compound score mapped linearly to 1-5 stars for accuracy and error) and always
    predicting the ``majority`` rating. The AUC leaves 3-star reviews out."""
    stars = np.asarray(stars, dtype=int)
    probs = model.predict_proba(texts)
    expected, negative_probs = summarise(probs)
    polar = stars != 3
    negative = stars[polar] <= 2
    rows = {
        "model": {
            "accuracy": float(np.mean(probs.argmax(axis=1) + 1 == stars)),
            "mae": float(np.mean(np.abs(expected - stars))),
            "roc_auc_negative": _auc(negative_probs[polar], negative),
        },
        "majority": {
            "accuracy": float(np.mean(stars == majority)),
            "mae": float(np.mean(np.abs(majority - stars))),
            "roc_auc_negative": 0.5,
        },
    }
    try:
        compound = vader_scores(texts)
    except RuntimeError as error:
        logger.warning("%s", error)
    else:
        vader_stars = np.clip(np.rint(3.0 + 2.0 * compound), 1, 5)
        rows["vader"] = {
            "accuracy": float(np.mean(vader_stars == stars)),
            "mae": float(np.mean(np.abs(3.0 + 2.0 * compound - stars))),
            "roc_auc_negative": _auc(-compound[polar], negative),
        }
    return {"systems": rows, "test_reviews": len(stars), "majority_rating": majority}
