"""Zero-shot tagging: cosine similarity between a text and each tag's own embedded text.

No labelled data is needed to rank tags: each tag becomes a short text (its name, or
``"name: description"``), is embedded once with the same :class:`~profiler.embedding.Embedder`
as the texts, and a text's score for a tag is the cosine of the two unit vectors. Cosines
are comparable within a row but are not probabilities; :meth:`ZeroShotTagger.fit` learns a
:class:`~profiler.tags.calibration.PlattScaler` on a few labelled texts to turn them into
probabilities.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from sklearn.exceptions import NotFittedError

from profiler.tags.calibration import PlattScaler

__all__ = ["ZeroShotTagger"]

logger = logging.getLogger(__name__)


class TextEncoder(Protocol):
    """Anything with the ``Embedder.encode`` contract: list of str -> float32 ``[n, d]``."""

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def check_texts(texts: Sequence[str], name: str = "texts") -> list[str]:
    """``texts`` as a list, after checking it is a sequence of str (not one str)."""
    if isinstance(texts, (str, bytes)):
        raise ValueError(f"{name} must be a list of str, not a single {type(texts).__name__}")
    texts = list(texts)
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"{name}[{position}] is {type(text).__name__}, not str: {text!r}")
    return texts


class ZeroShotTagger:
    """Score texts against a taxonomy by embedding similarity; calibrate with a few labels.

    Parameters
    ----------
    embedder : Embedder
        Encoder for both tag texts and input texts (``encode(list[str]) -> [n, d]``).
    names : sequence of str
        Tag names, in taxonomy order (column ``j`` of every output is ``names[j]``).
    descriptions : sequence of str or None, optional
        One description per tag (``None`` or ``""`` for none).
    template : str, default ``"{name}"``
        Format string for a tag's text, with ``{name}`` and optionally ``{description}``.
        When a tag has a description and the template does not use ``{description}``, it is
        appended as ``": {description}"``; so by default a tag's text is its name, or
        ``"name: description"``.

    Attributes
    ----------
    tag_texts_ : list of str
        The text embedded for each tag.
    tag_vectors_ : ndarray of float32, shape (T, d)
        Unit vectors of the tag texts, computed once on first use.
    scaler_ : PlattScaler
        Maps cosine scores to probabilities; set by :meth:`fit`.

    Examples
    --------
    >>> tagger = ZeroShotTagger(embedder, ["dresses", "jeans", "swimwear"])  # doctest: +SKIP
    >>> tagger.scores(["these skinny denim pants"]).argmax(axis=1)  # doctest: +SKIP
    array([1])
    """

    def __init__(
        self,
        embedder: TextEncoder,
        names: Sequence[str],
        descriptions: Sequence[str | None] | None = None,
        template: str = "{name}",
    ) -> None:
        self.embedder = embedder
        self.names = names
        self.descriptions = descriptions
        self.template = template

    def _tag_texts(self) -> list[str]:
        names = check_texts(self.names, "names")
        if not names:
            raise ValueError("names is empty: a taxonomy needs at least one tag")
        duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
        if duplicates:
            raise ValueError(f"names has duplicate tags: {duplicates}")
        descriptions = [None] * len(names) if self.descriptions is None else self.descriptions
        descriptions = list(descriptions)
        if len(descriptions) != len(names):
            raise ValueError(
                f"descriptions has {len(descriptions)} entries but names has {len(names)}"
            )
        uses_description = "{description}" in self.template
        texts = []
        for name, description in zip(names, descriptions):
            try:
                text = self.template.format(name=name, description=description or "")
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(
                    f"template {self.template!r} must only use {{name}} and {{description}}: "
                    f"{error!r}"
                ) from error
            if description and not uses_description:
                text = f"{text}: {description}"
            texts.append(text)
        return texts

    def _ensure_tag_vectors(self) -> np.ndarray:
        if not hasattr(self, "tag_vectors_"):
            texts = self._tag_texts()
            vectors = np.asarray(self.embedder.encode(texts), dtype=np.float32)
            if vectors.shape[0] != len(texts) or vectors.ndim != 2:
                raise ValueError(
                    f"embedder returned shape {vectors.shape} for {len(texts)} tag texts"
                )
            self.tag_texts_ = texts
            self.tag_vectors_ = _normalise(vectors, "tag vectors")
            logger.debug("embedded %d tag texts", len(texts))
        return self.tag_vectors_

    def _vectors(self, texts: Sequence[str] | None, vectors: np.ndarray | None) -> np.ndarray:
        if (texts is None) == (vectors is None):
            raise ValueError("pass exactly one of texts (raw str) or vectors (embedded rows)")
        tags = self._ensure_tag_vectors()
        if texts is not None:
            batch = check_texts(texts)
            if not batch:
                return np.empty((0, tags.shape[1]), dtype=np.float32)
            vectors = self.embedder.encode(batch)
        rows = np.asarray(vectors, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != tags.shape[1]:
            raise ValueError(
                f"vectors must be 2-D [n, {tags.shape[1]}] to match the tag vectors, "
                f"got shape {rows.shape}"
            )
        return _normalise(rows, "vectors")

    def scores(
        self, texts: Sequence[str] | None = None, vectors: np.ndarray | None = None
    ) -> np.ndarray:
        """Cosine similarity of each text to each tag.

        Parameters
        ----------
        texts : list of str, optional
            Raw texts, embedded here with ``embedder``.
        vectors : ndarray, shape (n, d), optional
            Texts already embedded with the same model (rows are re-normalised).

        Returns
        -------
        ndarray of float32, shape (n, T)
            Cosines in ``[-1, 1]``; column ``j`` is ``names[j]``.
        """
        rows = self._vectors(texts, vectors)
        return np.clip(rows @ self.tag_vectors_.T, -1.0, 1.0)

    def fit(
        self, texts_or_vectors: Sequence[str] | np.ndarray, targets: np.ndarray
    ) -> ZeroShotTagger:
        """Calibrate: fit a :class:`PlattScaler` on the cosine scores of labelled texts.

        Parameters
        ----------
        texts_or_vectors : list of str or ndarray, shape (n, d)
            Labelled texts, raw or already embedded.
        targets : ndarray, shape (n, T)
            Multi-hot labels (0/1) in taxonomy order; both values must occur.

        Returns
        -------
        ZeroShotTagger
            ``self``, with ``scaler_`` set.
        """
        is_vectors = isinstance(texts_or_vectors, np.ndarray) and texts_or_vectors.dtype.kind in (
            "f",
            "i",
            "u",
        )
        if is_vectors:
            cosine = self.scores(vectors=texts_or_vectors)
        else:
            cosine = self.scores(texts=texts_or_vectors)
        labels = np.asarray(targets)
        if labels.shape != cosine.shape:
            raise ValueError(
                f"targets must have shape {cosine.shape} ({len(cosine)} texts x "
                f"{cosine.shape[1]} tags), got {labels.shape}"
            )
        self.scaler_ = PlattScaler().fit(cosine, labels)
        logger.info("zero-shot calibration: %r", self.scaler_)
        return self

    def predict_proba(
        self, texts: Sequence[str] | None = None, vectors: np.ndarray | None = None
    ) -> np.ndarray:
        """Calibrated probability of each tag for each text.

        Parameters
        ----------
        texts : list of str, optional
            Raw texts.
        vectors : ndarray, shape (n, d), optional
            Texts already embedded with the same model.

        Returns
        -------
        ndarray of float64, shape (n, T)
            Probabilities in ``[0, 1]``, ordered within a row like :meth:`scores`.
        """
        if not hasattr(self, "scaler_"):
            raise NotFittedError(
                "ZeroShotTagger is not calibrated: call fit(texts, targets) on a few labelled "
                "texts first, or use scores() for raw cosine similarities"
            )
        cosine = self.scores(texts=texts, vectors=vectors)
        if cosine.size == 0:
            return np.empty(cosine.shape, dtype=np.float64)
        return self.scaler_.transform(cosine)

    def __repr__(self) -> str:
        return f"ZeroShotTagger(names={list(self.names)!r}, template={self.template!r})"


def _normalise(vectors: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(vectors).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{name} rows {np.flatnonzero(norms[:, 0] == 0).tolist()} are zero")
    return (vectors / norms).astype(np.float32)
