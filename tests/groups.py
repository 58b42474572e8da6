"""A hand-built catalogue of three clear groups, shared by the evaluation tests.

Catalogue: 12 items in three groups of four, ``a0..a3`` (running shoes), ``b0..b3`` (coffee
mugs) and ``c0..c3`` (wool jackets), whose unit vectors lie near the basis vectors e0, e1
and e2 of an 8-d space (seeded noise, so no two scores tie).

Training users: five per group (``a-user0`` .. ``c-user4``); user ``j`` of group ``g`` buys
``g{j % 4}`` and ``g{(j + 1) % 4}`` and reviews the second with 5 stars and a text near the
group's axis. ``a-user0`` and ``a-user1`` also view ``a0``, the most interacted item.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from profiler.recommender import Corpus, Query

DIM = 8
T0 = 1_700_000_000.0
GROUPS = {"a": 0, "b": 1, "c": 2}
WORDS = {"a": "running shoes", "b": "coffee mug", "c": "wool jacket"}
COLUMNS = ["user_id", "timestamp", "kind", "item_id", "text", "rating", "text_row"]
DEFAULTS = ("", np.nan, -1)  # text, rating, text_row of an event that leaves them out


def around(axis: int, n: int, seed: int, noise: float = 0.1) -> np.ndarray:
    """``n`` float32 unit vectors scattered around basis vector ``axis``."""
    rng = np.random.default_rng(seed)
    vectors = np.eye(DIM)[axis] + noise * rng.standard_normal((n, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


ITEM_IDS = [f"{g}{j}" for g in GROUPS for j in range(4)]
ITEM_VECTORS = np.concatenate([around(axis, 4, seed=axis) for axis in GROUPS.values()])
ITEM_TEXTS = [f"{WORDS[i[0]]} model {i}" for i in ITEM_IDS]
#: Review texts: rows 5 * axis + j belong to user j of the group on that axis.
TEXT_VECTORS = np.concatenate([around(a, 5, seed=10 + a) for a in GROUPS.values()])
P = {item_id: position for position, item_id in enumerate(ITEM_IDS)}


def group(letter: str) -> list[int]:
    return [P[f"{letter}{j}"] for j in range(4)]


def frame(rows: list[tuple], start: float = T0) -> pd.DataFrame:
    """Rows of (user, kind, item[, text, rating, text_row]) an hour apart, oldest first."""
    records = []
    for n, (user, kind, item, *rest) in enumerate(rows):
        text, rating, text_row = (*rest, *DEFAULTS[len(rest) :])
        records.append((user, start + 3600.0 * n, kind, item, text, float(rating), text_row))
    return pd.DataFrame(records, columns=COLUMNS).astype(
        {"timestamp": np.float64, "rating": np.float64, "text_row": np.int64}
    )


def training_rows() -> list[tuple]:
    rows = []
    for g, axis in GROUPS.items():
        for j in range(5):
            user, first, second = f"{g}-user{j}", f"{g}{j % 4}", f"{g}{(j + 1) % 4}"
            rows += [(user, "purchase", first), (user, "purchase", second)]
            rows.append((user, "review", second, f"great {WORDS[g]}", 5.0, 5 * axis + j))
    return [*rows, ("a-user0", "view", "a0"), ("a-user1", "view", "a0")]


def make_corpus(rows: list[tuple]) -> Corpus:
    return Corpus(
        ITEM_IDS, ITEM_VECTORS, ITEM_TEXTS, [""] * len(ITEM_IDS), frame(rows), TEXT_VECTORS
    )


def query(*rows: tuple, texts: tuple[str, ...] = (), text_vectors=None) -> Query:
    """A shopper ``q`` with events (kind, item[, text, rating, text_row]) and free texts."""
    events = frame([("q", *row) for row in rows], start=T0 + 1e6)
    vectors = None if text_vectors is None else np.asarray(text_vectors, dtype=np.float32)
    return Query("q", events, texts, vectors)
