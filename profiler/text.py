"""Text as the lexical models see it, in any language: Chinese is segmented into words.

Lexical models (BM25, TF-IDF baselines, the lexical tagger) find words with a regular
expression, and Chinese writes no spaces between words: a whole review would be one
"word". :func:`segment` therefore

- folds full-width forms to half-width (Unicode NFKC: ``ＡＢＣ１２３`` -> ``ABC123``,
  ``，`` -> ``,``) in any text that is not plain ASCII;
- converts traditional Chinese characters to simplified (OpenCC ``t2s``), so ``衣服``
  and ``衣服``/``電腦`` and ``电脑`` are one term;
- cuts each run of Chinese characters into words with ``jieba`` (precise mode) and
  separates them with spaces.

Plain ASCII text is returned as it is, without loading either library, so English
pipelines see exactly the text they saw before. :data:`TOKEN_PATTERN` is the usual
"two or more word characters" pattern plus single Chinese characters, which are often
whole words (``好``, ``差``).
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata

__all__ = [
    "FIELD_LABELS",
    "TOKEN_PATTERN",
    "has_cjk",
    "prepare",
    "segment",
    "shorten",
    "strip_field_labels",
    "words",
]

logger = logging.getLogger(__name__)

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_RUN = re.compile(f"[{_CJK}]+")
#: Words for lexical models: 2+ word characters, or one Chinese character
TOKEN_PATTERN = rf"(?u)\b\w\w+\b|[{_CJK}]"
_TOKEN = re.compile(TOKEN_PATTERN)
#: Labels an item's text puts before its category and brand (``"Title. Category: Dresses.
#: Brand: Acme"``, :func:`profiler.workspace.item_document`).
FIELD_LABELS = ("Category", "Brand")
_FIELD_LABEL = re.compile(rf"(?:^|(?<=\. ))(?:{'|'.join(FIELD_LABELS)}): ")


def strip_field_labels(text: str) -> str:
    """``text`` without the field labels of an item's text, for BM25: every item with a
    category holds the word "category", so it scores nothing and its postings list is
    the whole catalogue (at 1M items, two such words were 10 of a query's 15 ms)."""
    return _FIELD_LABEL.sub("", text)


def has_cjk(text: str) -> bool:
    """Whether ``text`` holds a Chinese (CJK unified) character."""
    return _CJK_RUN.search(text) is not None


@functools.lru_cache(maxsize=1)
def _converter():
    import opencc

    return opencc.OpenCC("t2s")


@functools.lru_cache(maxsize=1)
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # its dictionary-loading chatter
    jieba.initialize()
    return jieba


def segment(text: str) -> str:
    """``text`` with full-width forms folded, traditional characters simplified and
    Chinese words separated by spaces (module docstring); ASCII text unchanged.

    Examples
    --------
    >>> segment("这件衣服质量很好")  # doctest: +SKIP
    '这件 衣服 质量 很 好'
    """
    if text.isascii():
        return text
    text = unicodedata.normalize("NFKC", text)
    if not has_cjk(text):
        return text
    text = _converter().convert(text)
    cut = _jieba().lcut

    def words_of(run: re.Match) -> str:
        return " " + " ".join(cut(run.group(0), HMM=True)) + " "

    return " ".join(_CJK_RUN.sub(words_of, text).split())


def prepare(text: str) -> str:
    """What a vectorizer's preprocessor returns: :func:`segment`, lower-cased."""
    return segment(text).lower()


def words(text: str) -> list[str]:
    """The words lexical models index: :data:`TOKEN_PATTERN` over :func:`prepare`."""
    return _TOKEN.findall(prepare(text))


def shorten(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, ending with "…" when cut; Chinese is cut
    at a word boundary (jieba's), not inside a word."""
    if len(text) <= limit:
        return text
    cut = limit - 1
    if has_cjk(text[:limit]):
        ends = [end for _, _, end in _jieba().tokenize(text[: limit + 8]) if end <= cut]
        cut = ends[-1] if ends and ends[-1] > 0 else cut
    return text[:cut].rstrip() + "…"
