"""Offline evaluation: temporal splits, cold-start buckets, metrics, baselines, reports.

Splits never peek at the future: a test shopper's query holds only events before her cut,
and the training events every system learns from end there too.

* :func:`leave_last_out`: each user's last event with an item is the target; everything
  before it is her history and training data. ``truncate`` adds the same users with only
  their last ``n`` history events (``0`` = the text of the last one, no events), which is how
  the cold-start buckets are filled from warm data.
* :func:`temporal_split`: one global cut at a time quantile; warm users (events on both
  sides) are queried with their events before the cut; their liked items after it are the
  targets.
* :func:`text_split`: a random share of shoppers is held out; each is queried with the text
  of her event alone (no events) and its item is the target: text-only cold start.

Buckets by history length: ``0`` (text only), ``1``, ``2-4``, ``5+``.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import threadpoolctl

from profiler import metrics
from profiler.recommender import Corpus, Query, Recommender
from profiler.storage import atomic_path, write_text

__all__ = [
    "BUCKETS",
    "Case",
    "Split",
    "bucket_of",
    "default_systems",
    "evaluate",
    "leave_last_out",
    "temporal_split",
    "text_split",
    "write_report",
]

logger = logging.getLogger(__name__)

BUCKETS = ("0", "1", "2-4", "5+")
METRICS = (
    "recall@10",
    "recall@50",
    "ndcg@10",
    "mrr",
    "hit@10",
    "coverage@10",
    "diversity@10",
    "novelty@10",
    "long_tail@10",
)


def bucket_of(n_events: int) -> str:
    """History-length bucket: ``0`` (text only), ``1``, ``2-4``, ``5+``."""
    if n_events <= 0:
        return "0"
    if n_events == 1:
        return "1"
    return "2-4" if n_events <= 4 else "5+"


@dataclass(frozen=True, eq=False)
class Case:
    """One test query and the items it should retrieve."""

    query: Query
    targets: frozenset[str]

    @property
    def bucket(self) -> str:
        return bucket_of(self.query.n_events)


@dataclass(frozen=True, eq=False)
class Split:
    """Training events (nothing after any test cut) and the test cases."""

    name: str
    train: pd.DataFrame
    cases: list[Case]


def _sorted(events: pd.DataFrame) -> pd.DataFrame:
    return events.sort_values(["user_id", "timestamp"], kind="stable")


def _text_query(user: str | None, event: pd.Series, text_vectors: np.ndarray) -> Query | None:
    """A query holding only one event's text (no events): the text-only case."""
    if not event["text"] or event["text_row"] < 0:
        return None
    return Query(user, _empty_like(event), (event["text"],), text_vectors[[int(event["text_row"])]])


def _empty_like(event: pd.Series) -> pd.DataFrame:
    return pd.DataFrame(columns=event.index).astype(
        {"timestamp": float, "rating": float, "text_row": np.int64}
    )


def leave_last_out(
    events: pd.DataFrame,
    text_vectors: np.ndarray,
    *,
    min_history: int = 1,
    truncate: Sequence[int] = (),
) -> Split:
    """Hold out each user's last event with an item.

    Parameters
    ----------
    events : DataFrame
        All events (with ``text_row``).
    text_vectors : ndarray
        Event-text vectors (``events.text_row`` indexes it), for text-only queries.
    min_history : int
        Users need at least this many events before the target.
    truncate : sequence of int
        Also query each user with only her last ``n`` history events; ``0`` means the
        text of her last history event alone.
    """
    train_parts, cases = [], []
    for user, group in _sorted(events).groupby("user_id", sort=False):
        with_item = np.flatnonzero(group["item_id"].to_numpy() != "")
        if not len(with_item) or with_item[-1] < min_history:
            train_parts.append(group)
            continue
        cut = int(with_item[-1])
        target = group.iloc[cut]
        # Only strictly earlier events are history: a simultaneous one is not "before".
        history = group.iloc[:cut][group["timestamp"].iloc[:cut] < target["timestamp"]]
        if len(history) < min_history:
            train_parts.append(history)
            continue
        train_parts.append(history)
        targets = frozenset([target["item_id"]])
        cases.append(Case(Query(user, history), targets))
        for n in sorted(set(truncate)):
            if n == 0:
                query = _text_query(user, history.iloc[-1], text_vectors)
                if query is not None:
                    cases.append(Case(query, targets))
            elif n < len(history):
                cases.append(Case(Query(user, history.iloc[-n:]), targets))
    train = pd.concat(train_parts) if train_parts else events.iloc[:0]
    return Split("leave-last-out", train.sort_values("timestamp", kind="stable"), cases)


def temporal_split(
    events: pd.DataFrame,
    *,
    quantile: float = 0.8,
    min_rating: float = 4.0,
) -> Split:
    """One global cut at the ``quantile`` of event times.

    Training events are all events before the cut. Warm users (events on both sides) are
    queried with their events before the cut; targets are the items they interacted with
    after it, keeping only ratings ``>= min_rating`` where a rating exists.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    cut = float(np.quantile(events["timestamp"], quantile))
    before = events[events["timestamp"] < cut]
    after = events[(events["timestamp"] >= cut) & (events["item_id"] != "")]
    liked = after[after["rating"].isna() | (after["rating"] >= min_rating)]
    history_of = before.groupby("user_id", sort=False).indices
    cases = []
    for user, rows in liked.groupby("user_id", sort=False).indices.items():
        if user in history_of:
            history = before.iloc[history_of[user]]
            cases.append(Case(Query(user, history), frozenset(liked["item_id"].iloc[rows])))
    logger.info("temporal cut at %s: %d warm users", pd.Timestamp(cut, unit="s"), len(cases))
    return Split(f"temporal@{quantile:g}", before, cases)


def text_split(
    events: pd.DataFrame,
    text_vectors: np.ndarray,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Split:
    """Hold out a random share of users; query each with one event's text, target its item."""
    users = events["user_id"].unique()
    rng = np.random.default_rng(seed)
    test_users = set(rng.choice(users, size=max(1, int(len(users) * test_fraction)), replace=False))
    is_test = events["user_id"].isin(test_users).to_numpy()
    cases = []
    for _, event in events[is_test].iterrows():
        query = _text_query(None, event, text_vectors) if event["item_id"] else None
        if query is not None:
            cases.append(Case(query, frozenset([event["item_id"]])))
    return Split("text-only", events[~is_test], cases)


def default_systems(seed: int = 0) -> list[Recommender]:
    """The profiler (the two-stage recommender ``build`` trains) and every baseline,
    unfitted."""
    from profiler.baselines import (
        ALSBaseline,
        ItemKNN,
        MeanEmbedding,
        Popularity,
        TfidfBaseline,
    )
    from profiler.ranking import TwoStageRecommender

    return [
        TwoStageRecommender(),
        Popularity(),
        TfidfBaseline(),
        MeanEmbedding(),
        ItemKNN(),
        ALSBaseline(seed=seed),
    ]


@dataclass(frozen=True)
class Row:
    """Mean metrics of one system on one bucket (``all`` = every case)."""

    system: str
    bucket: str
    users: int
    values: dict[str, float]

    def to_dict(self) -> dict:
        return {"system": self.system, "bucket": self.bucket, "users": self.users, **self.values}


#: ALS settings tried by :func:`tune_als`, so the strongest baseline is tuned as well.
ALS_GRID: Sequence[dict] = (
    {"factors": 32, "alpha": 1.0},
    {"factors": 64, "alpha": 1.0},
    {"factors": 64, "alpha": 10.0},
    {"factors": 128, "alpha": 10.0},
    {"factors": 64, "alpha": 40.0},
)


def validation_split(corpus: Corpus, split: Split, truncate: Sequence[int]) -> Split:
    """The same kind of split carved from the training events alone, so tuning never sees
    a test user's test items: text-only shoppers for a text split, else each training
    user's last event."""
    if split.name == "text-only":
        return text_split(split.train, corpus.text_vectors, seed=1)
    return leave_last_out(split.train, corpus.text_vectors, truncate=truncate)


def tune_als(corpus: Corpus, validation: Split, seed: int = 0) -> Recommender:
    """The ALS setting with the best validation NDCG@10, unfitted."""
    from profiler.baselines import ALSBaseline

    best, best_score = None, -1.0
    for settings in ALS_GRID:
        model = ALSBaseline(seed=seed, **settings).fit(corpus.with_events(validation.train))
        score = float(
            np.mean(
                [
                    metrics.ndcg_at_k(model.recommend(c.query, k=10), c.targets, 10)
                    for c in validation.cases
                ]
            )
        )
        logger.info("ALS validation NDCG@10 %.4f with %s", score, settings)
        if score > best_score:
            best, best_score = ALSBaseline(seed=seed, **settings), score
    return best


def evaluate(
    corpus: Corpus,
    split: Split,
    systems: Iterable[Recommender] | None = None,
    *,
    tune: bool = True,
    truncate: Sequence[int] = (),
    fitted: list[Recommender] | None = None,
) -> list[Row]:
    """Fit every system on the split's training events and score its test cases.

    ALS's factors and confidence are tuned on a validation split of the training events
    (never on test users) when ``tune`` is true; the profiler's ranker chooses its own
    scorer on the training events while it fits.

    ``fitted``, when given, receives the fitted systems (tuned ALS included).

    Returns
    -------
    list of Row
        One row per (system, bucket), plus ``all`` per system.
    """
    from profiler.baselines import ALSBaseline

    systems = list(default_systems() if systems is None else systems)
    train_corpus = corpus.with_events(split.train)
    validation = validation_split(corpus, split, truncate) if tune else None
    if validation is not None and not validation.cases:
        logger.warning("no validation users: default settings are used untuned")
        validation = None
    fitted = [] if fitted is None else fitted
    for system in systems:
        if validation is not None and isinstance(system, ALSBaseline):
            system = tune_als(corpus, validation, system.seed)
        fitted.append(system.fit(train_corpus))
    with threadpoolctl.threadpool_limits(1, "blas"):  # per-query work is matrix-vector sized
        return _score_cases(corpus, split, fitted)


def _score_cases(corpus: Corpus, split: Split, fitted: Sequence[Recommender]) -> list[Row]:
    rows = []
    # popularity for novelty and the long tail: every item event in the workspace
    n_items = len(corpus.item_ids)
    counts = corpus.events["item_id"][corpus.events["item_id"] != ""].value_counts().to_dict()
    bits = metrics.self_information(counts, n_items)
    unseen = float(np.log2(sum(counts.values()) + n_items))
    bits = {i: bits.get(i, unseen) for i in corpus.item_ids}
    head = metrics.short_head(counts, n_items)
    for system in fitted:
        per_bucket: dict[str, list[dict]] = defaultdict(list)
        lists: dict[str, list[list[str]]] = defaultdict(list)
        for case in split.cases:
            ranked = system.recommend(case.query, k=50)
            top = ranked[:10]
            values = {
                "recall@10": metrics.recall_at_k(ranked, case.targets, 10),
                "recall@50": metrics.recall_at_k(ranked, case.targets, 50),
                "ndcg@10": metrics.ndcg_at_k(ranked, case.targets, 10),
                "mrr": metrics.mrr(ranked, case.targets),
                "hit@10": metrics.hit_rate_at_k(ranked, case.targets, 10),
                "diversity@10": metrics.intra_list_diversity(
                    corpus.item_vectors[corpus.positions(top)]
                ),
                "novelty@10": metrics.novelty(top, bits),
                "long_tail@10": metrics.long_tail_share(top, head),
            }
            for name in (case.bucket, "all"):
                per_bucket[name].append(values)
                lists[name].append(top)
        for name in [*BUCKETS, "all"]:
            if not per_bucket.get(name):
                continue
            means = {
                m: float(np.mean([v[m] for v in per_bucket[name]]))
                for m in METRICS
                if m != "coverage@10"
            }
            means["coverage@10"] = metrics.catalogue_coverage(lists[name], len(corpus.item_ids))
            rows.append(Row(system.name, name, len(per_bucket[name]), means))
    return rows


def write_report(
    rows: Sequence[Row], directory: str | os.PathLike[str], name: str, title: str
) -> dict[str, Path]:
    """Write ``{name}.jsonl``, ``{name}.md`` (table) and ``{name}.png`` (NDCG@10 bars)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {ext: directory / f"{name}.{ext}" for ext in ("jsonl", "md", "png")}
    write_text(paths["jsonl"], "".join(json.dumps(r.to_dict()) + "\n" for r in rows))
    write_text(paths["md"], markdown_table(rows, title))
    _bar_chart(rows, paths["png"], title)
    return paths


def markdown_table(rows: Sequence[Row], title: str = "") -> str:
    """Rows as a markdown table, best NDCG@10 per bucket in bold."""
    best: dict[str, float] = {}
    for row in rows:
        best[row.bucket] = max(best.get(row.bucket, -1.0), row.values["ndcg@10"])
    header = "| bucket | system | users | " + " | ".join(METRICS) + " |"
    lines = [f"### {title}\n" if title else "", header, "|" + "---|" * (3 + len(METRICS))]
    order = {b: i for i, b in enumerate([*BUCKETS, "all"])}
    for row in sorted(rows, key=lambda r: (order[r.bucket], -r.values["ndcg@10"])):
        cells = []
        for metric in METRICS:
            text = f"{row.values[metric]:.4f}"
            if metric == "ndcg@10" and row.values[metric] == best[row.bucket]:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {row.bucket} | {row.system} | {row.users} | " + " | ".join(cells) + " |")
    return "\n".join(line for line in lines if line) + "\n"


def _bar_chart(rows: Sequence[Row], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # plotting is an extra
        raise ImportError(
            "the bar chart needs matplotlib: pip install 'interest-profiler[notebooks]'"
        ) from exc
    buckets = [b for b in [*BUCKETS, "all"] if any(r.bucket == b for r in rows)]
    systems = list(dict.fromkeys(r.system for r in rows))
    value = {(r.system, r.bucket): r.values["ndcg@10"] for r in rows}
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(buckets), 3.6))
    for s, system in enumerate(systems):
        xs = np.arange(len(buckets)) + s * width
        ax.bar(xs, [value.get((system, b), 0.0) for b in buckets], width, label=system)
    ax.set_xticks(np.arange(len(buckets)) + 0.4 - width / 2, buckets)
    ax.set(xlabel="history length bucket", ylabel="NDCG@10", title=title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
