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

Labelled files (:func:`rated_file`) carry star ratings, or polarity labels: a column of
only 0 and 1, or ``pos``/``positive``/``neg``/``negative``, trains positive as 5 stars and
negative as 1. A directory that holds no workspace gets a text-only model in
``DIR/sentiment/`` (:func:`train_text_only`, :func:`open_text_only`): ``profiler
train-sentiment`` and ``profiler sentiment`` need no catalogue.
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

__all__ = [
    "RATINGS",
    "SentimentModel",
    "evaluate_sentiment",
    "open_text_only",
    "rated_file",
    "summarise",
    "train_text_only",
    "vader_scores",
]

logger = logging.getLogger(__name__)

#: The classes: star ratings.
RATINGS = (1, 2, 3, 4, 5)
#: Most training reviews used (a stratified sample of the training users' reviews beyond
#: this): on 2 CPU cores each fine-tuning epoch over 3,000 reviews takes a few minutes.
MAX_TRAIN = 3000
#: Polarity labels a labelled file may use instead of stars, and the stars they train as.
POLARITY = {"pos": 5, "positive": 5, "neg": 1, "negative": 1}
#: Where a directory without a workspace keeps its text-only sentiment model.
TEXT_ONLY_DIR = "sentiment"


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


def rated_file(
    data: str | os.PathLike[str],
    text_column: str = "text",
    rating_column: str = "rating",
    group_column: str | None = None,
) -> tuple[list[str], np.ndarray, list[str]]:
    """Texts, star ratings (NaN where a row has none) and groups (``group_column``, else
    one per row) of a labelled file. Polarity labels become stars: a column of only 0 and
    1 (with a 0) or of :data:`POLARITY` words trains positive as 5 and negative as 1."""
    import pandas as pd

    from profiler.data import iter_rows

    rows = list(iter_rows(data))
    for number, row in enumerate(rows[:1], start=1):
        missing = [c for c in (text_column, rating_column) if c not in row]
        if missing:
            raise ValueError(f"{data}: row {number} has no column {missing[0]!r}")
    texts = [str(r.get(text_column) or "") for r in rows]
    raw = [r.get(rating_column) for r in rows]
    words = [POLARITY.get(v.strip().lower()) if isinstance(v, str) else None for v in raw]
    numbers = np.array([pd.to_numeric(v, errors="coerce") for v in raw], dtype=np.float64)
    ratings = np.where([w is not None for w in words], [w or 0 for w in words], numbers)
    values = set(numbers[np.isfinite(numbers)].tolist())
    if values and values <= {0.0, 1.0} and 0.0 in values:
        logger.info("%s: %s holds only 0 and 1: training 1 as 5 stars, 0 as 1", data, rating_column)
        binary = np.isfinite(numbers)
        ratings[binary] = np.where(numbers[binary] == 1.0, 5.0, 1.0)
    given = np.array([v is not None and str(v).strip() != "" for v in raw])
    unusable = np.flatnonzero(given & ~np.isin(ratings, RATINGS))
    if len(unusable):  # kept out of training, said once with the first row and its value
        first = int(unusable[0])
        logger.warning(
            "%s: %d rows have a %s that is not a star rating 1-5 or a polarity label, "
            "and are not trained on (first: row %d, %r)",
            data,
            len(unusable),
            rating_column,
            first + 1,
            raw[first],
        )
    groups = [str(r.get(group_column)) if group_column else f"row-{n}" for n, r in enumerate(rows)]
    return texts, ratings, groups


def train_text_only(
    directory: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str],
    text_column: str = "text",
    rating_column: str = "rating",
    group_column: str | None = None,
    model: str | os.PathLike[str] | None = None,
    epochs: int = 2,
    max_length: int = 256,
    seed: int = 0,
) -> tuple[SentimentModel, dict]:
    """Train a sentiment model on the labelled file ``data`` into ``directory``/sentiment
    (the directory is created if missing; one that holds a built workspace is refused).
    A retrain is staged beside the old model and swapped in when complete."""
    from profiler.storage import replacing
    from profiler.tags.standalone import is_workspace

    directory = Path(directory)
    if is_workspace(directory):
        raise ValueError(
            f"{directory}: holds a built workspace; `profiler train-sentiment` trains its "
            "model in place (a text-only model needs a directory of its own)"
        )
    texts, ratings, groups = rated_file(data, text_column, rating_column, group_column)
    model_, report = SentimentModel.train(
        texts, ratings, groups, base_model=model, epochs=epochs, max_length=max_length, seed=seed
    )
    with replacing(directory / TEXT_ONLY_DIR) as staging:
        model_.save(staging, {**report, "data": str(data)})
    logger.info("trained a text-only sentiment model in %s", directory / TEXT_ONLY_DIR)
    return model_, report


def open_text_only(directory: str | os.PathLike[str]) -> SentimentModel:
    """The text-only sentiment model of ``directory`` (``FileNotFoundError`` saying what
    to run when there is none)."""
    folder = Path(directory) / TEXT_ONLY_DIR
    if not (folder / "head.safetensors").is_file():
        raise FileNotFoundError(
            f"{directory}: no workspace and no sentiment model; run `profiler train-sentiment "
            f"--workspace {directory} --data FILE` first"
        )
    return SentimentModel.load(folder)


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
