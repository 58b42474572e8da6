"""A lexical tagger: logistic regression on word and character n-grams.

Brand names, model numbers and product words ("crochet", "tonal", "ps5") decide many
tags, and a sentence encoder that sees only the first window of a long text blurs them;
character n-grams also catch inflections and typos. :class:`LexicalTagger` is the lexical
half of the stacked tagger (:mod:`profiler.tags.stacking`); the plain word TF-IDF
:class:`~profiler.tags.baseline.TfidfLogisticTagger` stays the baseline it is compared to.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.special import expit, log_softmax

from profiler.storage import read_json, save_npy, write_json
from profiler.tags.zeroshot import check_texts
from profiler.text import TOKEN_PATTERN, prepare

__all__ = ["LexicalTagger"]

logger = logging.getLogger(__name__)

#: The two vocabularies: word 1-2 grams, and character 2-5 grams within word bounds.
#: Words come from :func:`profiler.text.prepare` (Chinese segmented by jieba).
VECTORIZERS = {
    "words": {
        "ngram_range": (1, 2),
        "min_df": 1,
        "preprocessor": prepare,
        "token_pattern": TOKEN_PATTERN,
    },
    "chars": {"analyzer": "char_wb", "ngram_range": (2, 5), "min_df": 2},
}


def _vectorizer(name: str, max_features: int | None = None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(sublinear_tf=True, max_features=max_features, **VECTORIZERS[name])


class LexicalTagger:
    """Sublinear TF-IDF of word 1-2 grams and character 2-5 grams (within word bounds),
    then logistic regression: one multinomial model when every text has exactly one tag,
    else one balanced binary model per tag.

    Parameters
    ----------
    C : float
        Inverse L2 strength.
    max_features : int
        Vocabulary cap of each of the two vectorisers.
    seed : int
        ``random_state`` of the regressions.

    Attributes
    ----------
    single_label_ : bool
        Whether one multinomial model was fitted (log-probabilities then sum to one).
    """

    def __init__(self, C: float = 10.0, max_features: int = 100_000, seed: int = 0) -> None:
        if not C > 0:
            raise ValueError(f"C must be positive, got {C!r}")
        self.C = C
        self.max_features = max_features
        self.seed = seed

    def fit(self, texts: Sequence[str], targets: np.ndarray) -> LexicalTagger:
        """Fit on texts and multi-hot ``targets`` ``[n, n_tags]``."""
        from sklearn.linear_model import LogisticRegression

        batch = check_texts(texts)
        labels = np.asarray(targets, dtype=np.float64)
        if labels.ndim != 2 or labels.shape[0] != len(batch) or not len(batch):
            raise ValueError(f"targets must be [{len(batch)}, n_tags], got {labels.shape}")
        self.n_tags_ = labels.shape[1]
        self.words_ = _vectorizer("words", self.max_features).fit(batch)
        self.chars_ = _vectorizer("chars", self.max_features).fit(batch)
        features = self._features(batch)
        self.single_label_ = bool((labels.sum(axis=1) == 1).all())
        present = labels.sum(axis=0) > 0
        self.coef_ = np.zeros((self.n_tags_, features.shape[1]))
        self.intercept_ = np.full(self.n_tags_, -30.0)  # never seen in training
        if self.single_label_:
            classes = labels.argmax(axis=1)
            if len(np.unique(classes)) < 2:
                raise ValueError("the lexical tagger needs at least two tags in training")
            model = LogisticRegression(C=float(self.C), max_iter=2000, random_state=self.seed)
            model.fit(features, classes)
            self.coef_[model.classes_], self.intercept_[model.classes_] = class_rows(model)
        else:
            for tag in np.flatnonzero(present & (labels.min(axis=0) == 0)):
                model = LogisticRegression(
                    C=float(self.C), max_iter=2000, class_weight="balanced", random_state=self.seed
                ).fit(features, labels[:, tag].astype(np.int64))
                self.coef_[tag] = model.coef_[0]
                self.intercept_[tag] = model.intercept_[0]
            self.intercept_[labels.min(axis=0) == 1] = 30.0  # always present
        logger.info(
            "lexical tagger: %d texts, %d word and %d character n-grams",
            len(batch),
            len(self.words_.vocabulary_),
            len(self.chars_.vocabulary_),
        )
        return self

    def _features(self, batch: list[str]):
        """Both vocabularies' TF-IDF rows side by side (sparse)."""
        from scipy import sparse

        return sparse.hstack([self.words_.transform(batch), self.chars_.transform(batch)]).tocsr()

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Scores ``[n, n_tags]``: log-probabilities (single-label) or per-tag log-odds."""
        if not hasattr(self, "coef_"):
            raise RuntimeError("this LexicalTagger is not fitted: call fit()")
        batch = check_texts(texts)
        if not batch:
            return np.empty((0, self.n_tags_))
        scores = np.asarray(self._features(batch) @ self.coef_.T) + self.intercept_
        return log_softmax(scores, axis=1) if self.single_label_ else scores

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        scores = self.logits(texts)
        return np.exp(scores) if self.single_label_ else expit(scores)

    # -- persistence (JSON vocabularies and .npy arrays, no pickle) ----------------------

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``lexical.json`` (settings, vocabularies) and ``lexical.*.npy`` to a folder."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocabularies = {}
        for name in ("words", "chars"):
            vectorizer = getattr(self, f"{name}_")
            terms = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.__getitem__)
            vocabularies[name] = terms
            save_npy(directory / f"lexical.{name}_idf.npy", vectorizer.idf_.astype(np.float64))
        save_npy(directory / "lexical.coef.npy", self.coef_.astype(np.float32))
        save_npy(directory / "lexical.intercept.npy", self.intercept_.astype(np.float64))
        write_json(
            directory / "lexical.json",
            {
                "C": self.C,
                "max_features": self.max_features,
                "seed": self.seed,
                "single_label": self.single_label_,
                "n_tags": self.n_tags_,
                "vocabularies": vocabularies,
            },
        )

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> LexicalTagger:
        directory = Path(directory)
        meta = read_json(directory / "lexical.json")
        tagger = cls(meta["C"], meta["max_features"], meta["seed"])
        tagger.single_label_, tagger.n_tags_ = bool(meta["single_label"]), int(meta["n_tags"])
        for name in VECTORIZERS:
            vectorizer = _vectorizer(name)
            terms = meta["vocabularies"][name]
            vectorizer.vocabulary_ = {term: i for i, term in enumerate(terms)}
            vectorizer.idf_ = np.load(directory / f"lexical.{name}_idf.npy", allow_pickle=False)
            setattr(tagger, f"{name}_", vectorizer)
        tagger.coef_ = np.load(directory / "lexical.coef.npy", allow_pickle=False)
        tagger.intercept_ = np.load(directory / "lexical.intercept.npy", allow_pickle=False)
        if tagger.coef_.shape != (
            tagger.n_tags_,
            sum(len(v) for v in meta["vocabularies"].values()),
        ):
            raise ValueError(f"{directory}: lexical tagger arrays do not match its vocabularies")
        return tagger


def class_rows(model) -> tuple[np.ndarray, np.ndarray]:
    """Per-class weights and intercepts of a fitted multinomial ``LogisticRegression``
    (with two classes scikit-learn keeps one row, the log-odds of the second class)."""
    if len(model.classes_) == 2:
        zeros = np.zeros_like(model.coef_)
        return np.vstack([zeros, model.coef_]), np.array([0.0, model.intercept_[0]])
    return model.coef_, model.intercept_
