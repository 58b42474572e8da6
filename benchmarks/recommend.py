"""Serving latency of ``recommend``: one-query cold start on a workspace, or a synthetic shop
at scale (build time, known-user and one-text latency, memory).

DEMO MODE (default). Opens a workspace once (default ``index/demo``, built from the
bundled data when it does not exist yet), warms it up, then times
``Workspace.recommend(history=[query])`` for ``--n`` distinct real queries, one call at a
time, as a script or service would make them. Queries are bundled catalogue titles (short,
search-like texts), each used once, so no cached vector helps; the embedding cache is off
while timing, as in a server that does not write to disk per request.

In the same run it times the parts, so the table shows where a call's time goes and the
obvious floor it is compared against:

* ``encode``: ``SentenceTransformer.encode([query])`` on the same model (the floor: a
  recommend call cannot be cheaper than embedding its query);
* ``embedder``: the workspace's ``Embedder.encode([query])``;
* ``recommend``: the whole call (embed, score items and neighbours, rank, titles).

SCALE MODE (``--items N``). Generates a synthetic shop, builds a workspace from it with
``profiler.build(..., item_vectors=...)`` and serves it from a separate process:

* catalogue: item ids ``i{n}``, titles of 2-5 words from a fixed vocabulary (the 2,000
  commonest words of the bundled clothing titles and reviews, English stop words
  dropped): one word of the item's category's own 8-word topic plus 1-4 words drawn
  Zipf-like from the whole vocabulary; ``--categories`` categories ``Cat{n % C}``, one
  brand in ``N / 200``, log-normal prices;
* item vectors (float32, 384-d, seeded, unit length), written in chunks to a Parquet file
  (``item_id``, ``fixed_size_list<float32>[384]``) passed as ``--item-vectors``:

  - ``--vectors words`` (default): the normalised sum of the bundled model's vectors of
    the title's words plus isotropic Gaussian noise of norm ``--noise`` (0.5), so items
    sharing words are neighbours and an embedded title lands near items with its words;
  - ``--vectors anchored``: ``benchmarks/search.py``'s generator (a random bundled text's
    real vector plus noise with their covariance, ``--noise`` 1.0), unrelated to titles;
  - ``--vectors random``: isotropic random unit vectors.

  The kind decides how many IVF lists a search must scan (``FaissIndex`` builds IVF from
  150k vectors and tunes ``nprobe`` to recall@10 0.97), and so the dense channels' cost.
  Measured at 300k vectors (IVF2048; mean cosine of the 1st / 10th neighbour among
  6,250, real bundled embeddings 0.736 / 0.659): ``words`` 0.664 / 0.622 and
  ``nprobe`` 444 (the neighbours are as close as real ones but nearly tied, whatever the
  noise: 0.25, or noise with the words' covariance, gave 408-438); ``anchored`` 1.0
  0.598 / 0.504 and ``nprobe`` 102; ``anchored`` 0.5 0.775 / 0.608 and ``nprobe`` 2.
  ``random`` has no neighbourhood structure at all: the worst case, not a catalogue;
* events: 3 ``purchase`` events per shopper ``u{n}``, no texts, spread uniformly over 2024;
  each shopper has a home category, and each purchase is from it with probability 0.6
  (Zipf-like within it) or else from the whole catalogue (Zipf-like over a random
  popularity order).

Inputs go to ``index/bench-{N}x{U}-inputs/`` (reused when their settings match) and the
workspace is built fresh in ``index/bench-{N}x{U}``; the build's wall time is the target
(<= 15 min on 2 cores), and its INFO log lines are kept with their times, so the table
shows where the build's time goes. The build runs with the process's thread settings;
``OMP_NUM_THREADS=1`` (FAISS's OpenMP) changes it a lot on 2 cores: measured at 50k x 15k,
568 s with the default 2 threads and 177 s with 1, because the ranker's training queries
are single-query FAISS searches (a 50k ``Flat`` search: 26 ms on 2 OpenMP threads, 2.8 ms
on 1).

Then a serving process (this script again, with an internal flag) opens the workspace
with ``mmap=True``, loads the model and warms up (not timed), and times, one call at a
time on one thread (torch, BLAS through threadpoolctl, FAISS/OpenMP and the
``*_NUM_THREADS`` variables all at 1):

* ``user``: ``ws.recommend(user_id, k)`` for ``--n`` distinct random known users (target
  p99 <= 20 ms);
* ``text``: ``ws.recommend(history=[title], k)`` for ``--n`` distinct catalogue titles
  (target p99 <= 30 ms);
* ``embed``: the workspace embedder on the same titles, the floor of a one-text call;
* ``dense``: the old dense path, one exact product of the query vector with the whole item
  matrix (numpy ``items @ q`` and an ``argpartition`` top-k over the float32 matrix read
  into the serving process; skipped when it would not fit in half the free memory). Only
  timed: the point is the ratio to ``text``.

The serving process's peak RSS is reported before the dense matrix is loaded (target
<= 3 GiB) and after it: ``VmHWM`` of ``/proc/self/status`` where there is one, else
``resource.getrusage(RUSAGE_SELF).ru_maxrss``. Both are recorded: on Linux ``ru_maxrss``
keeps the launching process's peak across ``exec``, so after a build in the parent it
reads the build's peak, not the server's (measured: 2.15 GiB for a server whose
``VmHWM`` was 0.9 GiB). psutil's current RSS/USS are recorded too when it is installed.

Run from the repository root::

    .venv/bin/python benchmarks/recommend.py             # 500 queries on index/demo
    .venv/bin/python benchmarks/recommend.py --workspace index/amazon2023
    .venv/bin/python benchmarks/recommend.py --items 1000000 --users 300000
    .venv/bin/python benchmarks/recommend.py --items 50000 --users 15000 --n 100  # quick

Prints a table (p50, p90, p99, mean in milliseconds) and writes JSON (default
``benchmarks/results/recommend.json``, ``recommend-scale.json`` in scale mode) with the
machine's facts.
"""

from __future__ import annotations

import argparse
import collections
import gc
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from machine import write_results

import profiler
from profiler.data import clothing_catalog, clothing_events
from profiler.storage import atomic_path, read_json, write_json

logger = logging.getLogger("benchmarks.recommend")

DEFAULT_WORKSPACE = Path("index") / "demo"
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS / "recommend.json"
DEFAULT_SCALE_OUT = RESULTS / "recommend-scale.json"

#: Words in the synthetic titles' vocabulary.
VOCABULARY_SIZE = 2000
#: Words of each category's own topic; every title holds one of them.
TOPIC_WORDS = 8
#: Exponent of the Zipf-like draws (title words, items): weight of rank r is (r + 1)^-a.
ZIPF = 0.9
#: Share of a shopper's purchases made in her home category.
HOME_SHARE = 0.6
EVENTS_PER_USER = 3
#: ``--vectors`` kinds and their default ``--noise`` (module docs).
NOISE = {"words": 0.5, "anchored": 1.0, "random": None}
DIM = 384
CHUNK = 100_000
YEAR_START = pd.Timestamp("2024-01-01", tz="UTC").timestamp()
YEAR_SECONDS = 365 * 86_400.0
WARMUP = 20
#: Targets of the scale mode.
BUILD_TARGET_S = 15 * 60
USER_P99_TARGET_MS = 20.0
TEXT_P99_TARGET_MS = 30.0
RSS_TARGET_GIB = 3.0
#: Environment of the serving process: every thread pool at one thread from the start.
ONE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def latencies(call: Callable[[str], object], queries: Sequence[str]) -> np.ndarray:
    """Milliseconds per call, one call per query."""
    out = np.empty(len(queries))
    for i, query in enumerate(queries):
        start = time.perf_counter()
        call(query)
        out[i] = (time.perf_counter() - start) * 1000
    return out


def summary(name: str, ms: np.ndarray) -> dict:
    return {
        "side": name,
        "n": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def format_table(rows: list[dict]) -> str:
    header = f"{'side':<11} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['side']:<11} {row['n']:>5} {row['p50_ms']:>8.2f} {row['p90_ms']:>8.2f} "
            f"{row['p99_ms']:>8.2f} {row['mean_ms']:>8.2f}"
        )
    return "\n".join(lines)


# -- demo mode ------------------------------------------------------------------------------


def demo(args: argparse.Namespace) -> int:
    """One-text ``recommend`` on a workspace (default: the bundled demo) vs ``encode``."""
    import torch

    workspace = args.workspace or DEFAULT_WORKSPACE
    if args.threads:
        torch.set_num_threads(args.threads)

    if (workspace / "CURRENT").is_file():
        ws = profiler.open(workspace, device="cpu", show_progress_bar=False)
    else:
        logger.warning("building %s from the bundled data first", workspace)
        ws = profiler.build(
            workspace,
            catalog=clothing_catalog(),
            events=clothing_events(),
            device="cpu",
            show_progress_bar=False,
        )
    titles = pd.read_parquet(clothing_catalog(), columns=["title"])["title"]
    queries = titles[titles.str.strip() != ""].drop_duplicates().tolist()
    warmup, timed = queries[:WARMUP], queries[WARMUP : WARMUP + args.n]
    if len(timed) < args.n:
        logger.warning("only %d distinct queries available", len(timed))

    embedder = ws.embedder
    embedder.cache_dir, embedder._cache = None, None  # a server does not write per request
    model = embedder.model
    sides: dict[str, Callable[[str], object]] = {
        "encode": lambda q: model.encode([q], show_progress_bar=False, normalize_embeddings=True),
        "embedder": lambda q: embedder.encode([q]),
        "recommend": lambda q: ws.recommend(history=[q], k=args.k),
    }
    for call in sides.values():
        latencies(call, warmup)
    rows = [summary(name, latencies(call, timed)) for name, call in sides.items()]
    floor = rows[0]["p50_ms"]
    for row in rows:
        row["p50_vs_encode"] = row["p50_ms"] / floor

    print(format_table(rows))
    write_results(
        args.out or DEFAULT_OUT,
        "recommend",
        {
            "workspace": str(workspace),
            "items": len(ws.items),
            "users": len(ws.profiles),
            "k": args.k,
            "threads": torch.get_num_threads(),
            "model_id": ws.embedder.model_id,
            "queries": "bundled catalogue titles, each once",
        },
        rows,
    )
    return 0


# -- scale mode: the synthetic shop ---------------------------------------------------------


class ShopFiles(NamedTuple):
    """The synthetic shop's input files and what made them."""

    catalog: Path
    events: Path
    vectors: Path
    settings: dict
    facts: dict


def vocabulary(size: int = VOCABULARY_SIZE) -> list[str]:
    """The ``size`` commonest words of the bundled clothing titles and reviews.

    Words of three letters or more, English stop words (scikit-learn's list) dropped,
    commonest first (ties alphabetical), so the list is the same on every machine.

    Raises
    ------
    ValueError
        If the bundled texts hold fewer than ``size`` such words.
    """
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    titles = pd.read_parquet(clothing_catalog(), columns=["title"])["title"]
    reviews = pd.read_parquet(clothing_events(), columns=["text"])["text"]
    counts: collections.Counter[str] = collections.Counter()
    for text in [*titles.dropna(), *reviews.dropna()]:
        counts.update(
            w
            for w in re.findall(r"[a-z]+", text.lower())
            if len(w) >= 3 and w not in ENGLISH_STOP_WORDS
        )
    words = [w for w, _ in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))]
    if len(words) < size:
        raise ValueError(f"the bundled texts hold {len(words)} distinct words, not {size}")
    return words[:size]


def zipf_ranks(n: int, size: int, rng: np.random.Generator, a: float = ZIPF) -> np.ndarray:
    """``size`` ranks in ``[0, n)`` drawn with weight ``(rank + 1) ** -a``."""
    cdf = np.cumsum(1.0 / np.arange(1, n + 1) ** a)
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), n - 1)


def synthetic_catalogue(
    n_items: int, n_categories: int, words: Sequence[str], rng: np.random.Generator
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Items ``i{n}`` with 2-5 word titles, category ``Cat{n % C}``, brand and price.

    Returns
    -------
    catalogue : DataFrame
        ``item_id``, ``title``, ``category``, ``brand``, ``price``.
    title_words : ndarray of int, [n_items, 5]
        Vocabulary indexes: a title is its first ``lengths[n] - 1`` columns, then the
        topic word of its category, kept in the last column.
    lengths : ndarray of int
        Words per title (2-5).
    """
    n_words = len(words)
    topics = np.stack(
        [rng.choice(n_words, TOPIC_WORDS, replace=False) for _ in range(n_categories)]
    )
    category = np.arange(n_items) % n_categories
    title_words = zipf_ranks(n_words, n_items * 5, rng).reshape(n_items, 5)
    title_words[:, 4] = topics[category, rng.integers(TOPIC_WORDS, size=n_items)]
    lengths = rng.integers(2, 6, size=n_items)
    capitalised = [w.capitalize() for w in words]
    titles = [
        " ".join([*(capitalised[w] for w in row[: n - 1]), capitalised[row[4]]])
        for row, n in zip(title_words.tolist(), lengths.tolist())
    ]
    n_brands = max(1, n_items // 200)
    frame = pd.DataFrame(
        {
            "item_id": [f"i{n}" for n in range(n_items)],
            "title": titles,
            "category": [f"Cat{c}" for c in category],
            "brand": [f"Brand{b}" for b in rng.integers(n_brands, size=n_items)],
            "price": np.round(rng.lognormal(3.5, 0.8, size=n_items), 2),
        }
    )
    return frame, title_words, lengths


def synthetic_events(
    n_users: int, n_items: int, n_categories: int, rng: np.random.Generator
) -> pd.DataFrame:
    """:data:`EVENTS_PER_USER` purchases per shopper ``u{n}`` over 2024, no texts.

    Each purchase is from the shopper's home category with probability
    :data:`HOME_SHARE` (Zipf-like over the category's items in catalogue order), else from
    the whole catalogue (Zipf-like over a random popularity order).
    """
    users = np.repeat(np.arange(n_users), EVENTS_PER_USER)
    n_events = len(users)
    home = rng.integers(n_categories, size=n_users)[users]
    in_home = rng.random(n_events) < HOME_SHARE
    items = np.empty(n_events, dtype=np.int64)
    popular = rng.permutation(n_items)
    items[~in_home] = popular[zipf_ranks(n_items, int((~in_home).sum()), rng)]
    h = home[in_home]
    members = (n_items - h + n_categories - 1) // n_categories  # items of category h
    per_category = -(-n_items // n_categories)
    items[in_home] = h + n_categories * (zipf_ranks(per_category, len(h), rng) % members)
    return pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in users],
            "timestamp": YEAR_START + rng.random(n_events) * YEAR_SECONDS,
            "kind": "purchase",
            "item_id": [f"i{i}" for i in items],
        }
    )


def write_vectors(
    path: Path,
    item_ids: Sequence[str],
    draw: Callable[[int, int], tuple[np.ndarray, np.ndarray | None]],
) -> float | None:
    """Write unit float32 vectors ``[len(item_ids), DIM]`` to a Parquet file in chunks.

    Parameters
    ----------
    path : Path
        The ``.parquet`` file (``item_id`` string, ``vector`` fixed-size list of float32).
    item_ids : list of str
    draw : callable
        ``draw(start, stop)`` gives the unit vectors of those rows and their unit anchors
        (``None`` for vectors drawn around no anchor); only one chunk is in memory.

    Returns
    -------
    float or None
        Mean cosine between a vector and its anchor (``None`` without anchors).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("item_id", pa.string()), ("vector", pa.list_(pa.float32(), DIM))])
    cosine = None
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, len(item_ids), CHUNK):
            stop = min(start + CHUNK, len(item_ids))
            block, anchor = draw(start, stop)
            if anchor is not None:
                cosine = (cosine or 0.0) + float(np.einsum("ij,ij->", block, anchor))
            vectors = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), DIM)
            writer.write_table(
                pa.table({"item_id": pa.array(item_ids[start:stop]), "vector": vectors}, schema)
            )
    return None if cosine is None else cosine / len(item_ids)


def vector_source(
    kind: str,
    *,
    words: Sequence[str],
    title_words: np.ndarray,
    lengths: np.ndarray,
    noise: float | None,
    rng: np.random.Generator,
    cache_dir: Path,
) -> Callable[[int, int], tuple[np.ndarray, np.ndarray | None]]:
    """``draw(start, stop)`` for :func:`write_vectors`: the ``--vectors`` kinds (module docs).

    ``words``: the normalised sum of the bundled model's vectors of the title's words plus
    isotropic Gaussian noise of norm about ``noise``. ``anchored``: ``benchmarks/search.py``'s
    generator, a random bundled text's vector plus noise with those vectors' covariance
    scaled by ``noise``. ``random``: isotropic random unit vectors. Word and text vectors
    are cached in ``cache_dir``.
    """
    from scipy import sparse

    if kind == "random":

        def draw(start: int, stop: int) -> tuple[np.ndarray, None]:
            block = rng.standard_normal((stop - start, DIM), dtype=np.float32)
            return block / np.linalg.norm(block, axis=1, keepdims=True), None

        return draw
    if kind == "anchored":
        from search import AnchoredGenerator, real_vectors

        real = real_vectors(cache_dir)
        generator = AnchoredGenerator(real, noise)

        def draw(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
            block, which = generator.draw(stop - start, rng)
            return block, real[which]

        return draw
    embedder = profiler.Embedder(device="cpu", cache_dir=cache_dir, show_progress_bar=False)
    word_vectors = embedder.encode(list(words))
    del embedder
    # the title's words as a sparse bag [n_items, n_words]; the topic word sits in column 4,
    # the others in the first lengths - 1 columns
    used = np.arange(5) < (lengths - 1)[:, None]
    used[:, 4] = True
    bag = sparse.csr_matrix(
        (
            np.ones(int(used.sum()), np.float32),
            (np.repeat(np.arange(len(lengths)), used.sum(axis=1)), title_words[used]),
        ),
        shape=(len(lengths), len(words)),
    )

    def draw(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        block = rng.standard_normal((stop - start, DIM), dtype=np.float32)
        anchor = np.asarray(bag[start:stop] @ word_vectors, dtype=np.float32)
        anchor /= np.linalg.norm(anchor, axis=1, keepdims=True)
        block *= noise / np.sqrt(DIM)
        block += anchor
        return block / np.linalg.norm(block, axis=1, keepdims=True), anchor

    return draw


def synthetic_shop(
    directory: Path,
    *,
    n_items: int,
    n_users: int,
    n_categories: int,
    vectors: str,
    noise: float | None,
    seed: int,
) -> ShopFiles:
    """Write (or reuse, when ``inputs.json`` records the same settings) the shop's files.

    Returns
    -------
    ShopFiles
        ``catalog.parquet``, ``events.parquet`` and ``vectors.parquet`` in ``directory``,
        with the settings and facts (``inputs.json``, written last).
    """
    settings = {
        "items": n_items,
        "users": n_users,
        "categories": n_categories,
        "vocabulary": VOCABULARY_SIZE,
        "vectors": vectors,
        "noise": noise,
        "seed": seed,
        "events_per_user": EVENTS_PER_USER,
        "zipf": ZIPF,
        "home_share": HOME_SHARE,
    }
    files = ShopFiles(
        directory / "catalog.parquet",
        directory / "events.parquet",
        directory / "vectors.parquet",
        settings,
        {},
    )
    marker = directory / "inputs.json"
    if marker.is_file() and read_json(marker).get("settings") == settings:
        logger.info("reusing the synthetic shop in %s", directory)
        return files._replace(facts=read_json(marker)["facts"])
    marker.unlink(missing_ok=True)
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    words = vocabulary()
    catalogue, title_words, lengths = synthetic_catalogue(n_items, n_categories, words, rng)
    with atomic_path(files.catalog) as tmp:
        catalogue.to_parquet(tmp, index=False)
    logger.info("catalogue: %d items in %.1f s", n_items, time.perf_counter() - start)
    events = synthetic_events(n_users, n_items, n_categories, rng)
    with atomic_path(files.events) as tmp:
        events.to_parquet(tmp, index=False)
    logger.info("events: %d in %.1f s", len(events), time.perf_counter() - start)
    del events

    draw = vector_source(
        vectors,
        words=words,
        title_words=title_words,
        lengths=lengths,
        noise=noise,
        rng=rng,
        cache_dir=directory / "embeddings",
    )
    cosine = write_vectors(files.vectors, catalogue["item_id"].tolist(), draw)
    seconds = time.perf_counter() - start
    logger.info("vectors (%s) written; shop ready in %.1f s", vectors, seconds)
    facts = {"mean_cosine_to_anchor": cosine, "seconds": seconds}
    write_json(marker, {"settings": settings, "facts": facts})
    return files._replace(facts=facts)


# -- scale mode: build ----------------------------------------------------------------------


class _LogTimes(logging.Handler):
    """Keeps every log record's message with its seconds since the handler was made."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.start = time.perf_counter()
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(
            {
                "s": round(time.perf_counter() - self.start, 2),
                "logger": record.name,
                "message": record.getMessage(),
            }
        )


def ru_maxrss_mib() -> float:
    """``getrusage(RUSAGE_SELF).ru_maxrss`` in MiB (it is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mib() -> float:
    """This process's own peak resident set size in MiB: ``VmHWM`` (Linux), which starts
    afresh at ``exec``, else ``ru_maxrss``, which may include the parent's (module docs)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return ru_maxrss_mib()


def build_workspace(path: Path, files: ShopFiles) -> dict:
    """Build the workspace fresh at ``path``, timed, with its log lines and what it chose.

    Raises
    ------
    ValueError
        If ``path`` exists and is neither a workspace nor empty (it is never removed).
    """
    if path.exists():
        if not ((path / "CURRENT").is_file() or (path / ".lock").is_file()) and any(path.iterdir()):
            raise ValueError(f"{path}: exists and is not a workspace; not removing it")
        shutil.rmtree(path)
    handler = _LogTimes()
    logging.getLogger().addHandler(handler)
    try:
        start = time.perf_counter()
        ws = profiler.build(
            path,
            catalog=files.catalog,
            events=files.events,
            item_vectors=files.vectors,
            device="cpu",
            show_progress_bar=False,
        )
        seconds = time.perf_counter() - start
    finally:
        logging.getLogger().removeHandler(handler)
    items, users = ws.item_index, ws.user_index
    facts = {
        "seconds": seconds,
        "target_s": BUILD_TARGET_S,
        "peak_rss_mib": peak_rss_mib(),
        "counts": ws.manifest["counts"],
        "item_index": {"structure": items.structure_, "nprobe": items.nprobe_},
        "user_index": {"structure": users.structure_, "nprobe": users.nprobe_},
        "recommender": ws.manifest["recommender"],
        "disk_mib": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20,
        "log": handler.lines,
    }
    del ws
    gc.collect()
    return facts


# -- scale mode: serving (its own process) --------------------------------------------------


def _memory() -> dict:
    out = {"peak_rss_mib": peak_rss_mib(), "ru_maxrss_mib": ru_maxrss_mib()}
    try:
        import psutil
    except ImportError:
        return out
    info = psutil.Process().memory_full_info()
    out.update(psutil_rss_mib=info.rss / 2**20, psutil_uss_mib=info.uss / 2**20)
    return out


def _available_bytes() -> int:
    try:
        import psutil
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(psutil.virtual_memory().available)


def read_matrix(path: Path) -> np.ndarray:
    """All vectors of a vectors Parquet file as one float32 ``[n, d]`` array."""
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    out: np.ndarray | None = None
    at = 0
    for batch in file.iter_batches(batch_size=CHUNK, columns=["vector"]):
        column = batch.column(0)
        flat = column.flatten().to_numpy()
        if out is None:
            out = np.empty((file.metadata.num_rows, column.type.list_size), np.float32)
        out[at : at + len(batch)] = flat.reshape(len(batch), -1)
        at += len(batch)
    assert out is not None and at == len(out)
    return out


def dense_top(items: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """The old dense path: exact scores of every item, top ``k`` best first."""
    scores = items @ query
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def serve(args: argparse.Namespace) -> int:
    """Open the workspace for serving and time recommends, one call at a time, one thread.

    Writes its results as JSON to ``args.serve_out``.
    """
    import faiss
    import lightgbm  # noqa: F401  (loaded before the thread limits are set)
    import scipy.sparse  # noqa: F401
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    limits = threadpool_limits(limits=1)  # every BLAS and OpenMP pool, for the whole process
    rng = np.random.default_rng(args.seed + 1)

    start = time.perf_counter()
    ws = profiler.open(args.serve, mmap=True, device="cpu", show_progress_bar=False)
    open_s = time.perf_counter() - start
    embedder = ws.embedder
    embedder.cache_dir, embedder._cache = None, None  # a server does not write per request
    start = time.perf_counter()
    embedder.model  # noqa: B018  (loads the model: warm-up, not timed)
    model_s = time.perf_counter() - start

    users = ws.users
    chosen = rng.choice(len(users), size=min(len(users), WARMUP + args.n), replace=False)
    known = [users[i] for i in chosen]
    titles = ws.items["title"].drop_duplicates()
    chosen = rng.choice(len(titles), size=min(len(titles), WARMUP + args.n), replace=False)
    texts = titles.iloc[chosen].tolist()
    sides: dict[str, tuple[Callable[[str], object], list[str]]] = {
        "user": (lambda u: ws.recommend(u, k=args.k), known),
        "text": (lambda t: ws.recommend(history=[t], k=args.k), texts),
        "embed": (lambda t: embedder.encode([t], store=False), texts),
    }
    start = time.perf_counter()
    for call, queries in sides.values():
        latencies(call, queries[:WARMUP])
    warmup_s = time.perf_counter() - start
    memory_open = _memory()
    rows = [
        summary(name, latencies(call, queries[WARMUP:])) for name, (call, queries) in sides.items()
    ]
    memory = _memory()
    threads = {
        "torch": torch.get_num_threads(),
        "faiss_omp": faiss.omp_get_max_threads(),
        "threadpoolctl": sorted(
            {f"{p['user_api']}:{p['internal_api']}={p['num_threads']}" for p in threadpool_info()}
        ),
        "env": {name: os.environ.get(name) for name in ONE_THREAD_ENV},
    }

    dense: dict = {}
    n, dim = len(ws.items), ws.item_index.dim
    need = n * dim * 4
    if need > _available_bytes() / 2:
        dense["skipped"] = f"{need / 2**30:.1f} GiB matrix does not fit in half the free memory"
    else:
        queries = embedder.encode(texts, store=False)  # untimed: only the product is
        start = time.perf_counter()
        matrix = read_matrix(args.vectors_file)
        dense["load_s"] = time.perf_counter() - start
        if matrix.shape != (n, dim):
            raise ValueError(f"{args.vectors_file}: {matrix.shape}, the workspace has {n} items")
        for q in queries[:WARMUP]:
            dense_top(matrix, q, args.k)
        ms = np.empty(len(queries) - WARMUP)
        for i, q in enumerate(queries[WARMUP:]):
            begin = time.perf_counter()
            dense_top(matrix, q, args.k)
            ms[i] = (time.perf_counter() - begin) * 1000
        rows.append(summary("dense", ms))
        dense["memory"] = _memory()
    limits.restore_original_limits()

    write_json(
        args.serve_out,
        {
            "rows": rows,
            "open_s": open_s,
            "model_load_s": model_s,
            "warmup_s": warmup_s,
            "memory_after_warmup": memory_open,
            "memory": memory,
            "dense": dense,
            "threads": threads,
            "item_index": ws.item_index.structure_,
        },
    )
    return 0


# -- scale mode: the whole run ---------------------------------------------------------------


def format_scale_table(rows: list[dict]) -> str:
    targets = {"user": USER_P99_TARGET_MS, "text": TEXT_P99_TARGET_MS}
    header = (
        f"{'side':<6} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8} "
        f"{'p99 target':>11} {'p50/dense':>10}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        target = targets.get(row["side"])
        verdict = "" if target is None else f"<={target:.0f} " + _ok(row["p99_ms"] <= target)
        ratio = row.get("p50_vs_dense")
        lines.append(
            f"{row['side']:<6} {row['n']:>5} {row['p50_ms']:>8.2f} {row['p90_ms']:>8.2f} "
            f"{row['p99_ms']:>8.2f} {row['mean_ms']:>8.2f} {verdict:>11} "
            f"{'' if ratio is None else f'{ratio:.3f}':>10}"
        )
    return "\n".join(lines)


def _ok(passed: bool) -> str:
    return "ok" if passed else "MISS"


def format_build_log(lines: list[dict]) -> str:
    """Each build log line with its time since the start and since the line before."""
    out, previous = [], 0.0
    for line in lines:
        out.append(
            f"  {line['s']:8.1f} s  (+{line['s'] - previous:6.1f})  "
            f"{line['logger']}: {line['message'][:110]}"
        )
        previous = line["s"]
    return "\n".join(out)


def scale(args: argparse.Namespace) -> int:
    """Synthetic shop, fresh build, then a serving process; table and JSON."""
    n_users = args.users if args.users is not None else max(1, args.items * 3 // 10)
    n_categories = min(args.categories, args.items)
    name = f"bench-{args.items}x{n_users}" + ("" if args.vectors == "words" else f"-{args.vectors}")
    workspace = args.workspace or Path("index") / name
    files = synthetic_shop(
        Path("index") / f"{name}-inputs",
        n_items=args.items,
        n_users=n_users,
        n_categories=n_categories,
        vectors=args.vectors,
        noise=NOISE[args.vectors] if args.noise is None else args.noise,
        seed=args.seed,
    )
    if args.no_build:
        if not (workspace / "CURRENT").is_file():
            raise SystemExit(f"{workspace}: no workspace to serve; run without --no-build")
        build = {"skipped": f"--no-build: served the workspace built earlier in {workspace}"}
    else:
        build = build_workspace(workspace, files)
        print(f"\nbuild: {build['seconds']:.1f} s; where the time went (log lines):")
        print(format_build_log(build["log"]))

    env = {**os.environ, **ONE_THREAD_ENV}
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "serve.json"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve",
            str(workspace),
            "--serve-out",
            str(result),
            "--vectors-file",
            str(files.vectors),
            "--n",
            str(args.n),
            "-k",
            str(args.k),
            "--seed",
            str(args.seed),
        ]
        logger.info("serving process: %s", " ".join(command))
        done = subprocess.run(command, env=env, check=False)
        if done.returncode != 0:
            logger.error("the serving process failed with exit status %d", done.returncode)
            return done.returncode
        serving = read_json(result)

    rows = serving.pop("rows")
    dense = next((row for row in rows if row["side"] == "dense"), None)
    for row in rows:
        if dense is not None:
            row["p50_vs_dense"] = row["p50_ms"] / dense["p50_ms"]
            row["p99_vs_dense"] = row["p99_ms"] / dense["p99_ms"]
    peak_gib = serving["memory"]["peak_rss_mib"] / 1024
    by_side = {row["side"]: row for row in rows}
    targets = {
        "user_p99_ms": [by_side["user"]["p99_ms"], USER_P99_TARGET_MS],
        "text_p99_ms": [by_side["text"]["p99_ms"], TEXT_P99_TARGET_MS],
        "serving_peak_rss_gib": [peak_gib, RSS_TARGET_GIB],
    }
    if "seconds" in build:
        targets["build_s"] = [build["seconds"], BUILD_TARGET_S]

    threads = serving["threads"]
    print(
        f"\nserving: one call at a time on one thread (torch {threads['torch']}, "
        f"FAISS/OpenMP {threads['faiss_omp']}, threadpoolctl: "
        f"{', '.join(threads['threadpoolctl'])}; *_NUM_THREADS=1); k={args.k}"
    )
    print(format_scale_table(rows))
    print()
    if "seconds" in build:
        print(
            f"build        {build['seconds']:8.1f} s    target <= {BUILD_TARGET_S} s "
            f"{_ok(build['seconds'] <= BUILD_TARGET_S)}   (peak RSS of the building process "
            f"{build['peak_rss_mib'] / 1024:.1f} GiB; workspace {build['disk_mib']:.0f} MiB; "
            f"items {build['item_index']['structure']} nprobe {build['item_index']['nprobe']}, "
            f"users {build['user_index']['structure']} nprobe {build['user_index']['nprobe']})"
        )
        print(f"ranker       {build['recommender']['why']}")
        effort = build["recommender"].get("candidate_search", {}).get("effort")
        if effort:
            print(
                f"candidates   searched at {effort['known']:g} of the tuned nprobe for known "
                f"shoppers, {effort['texts']:g} for texts (chosen by the build)"
            )
    memory = serving["memory"]
    extra = ""
    if "psutil_rss_mib" in memory:
        extra = (
            f"; psutil now RSS {memory['psutil_rss_mib'] / 1024:.2f} GiB, "
            f"USS {memory['psutil_uss_mib'] / 1024:.2f} GiB"
        )
    print(
        f"serving RSS  {peak_gib:8.2f} GiB  target <= {RSS_TARGET_GIB:.0f} GiB "
        f"{_ok(peak_gib <= RSS_TARGET_GIB)}   (peak VmHWM before the dense matrix; "
        f"ru_maxrss {memory['ru_maxrss_mib'] / 1024:.2f} GiB{extra})"
    )
    if "memory" in serving["dense"]:
        print(
            f"with dense   {serving['dense']['memory']['peak_rss_mib'] / 1024:8.2f} GiB  "
            f"(after reading the {args.items} x {DIM} float32 matrix for the dense baseline)"
        )
    elif "skipped" in serving["dense"]:
        print(f"dense        skipped: {serving['dense']['skipped']}")
    print(
        f"open {serving['open_s']:.2f} s (mmap), model load {serving['model_load_s']:.2f} s, "
        f"warm-up {serving['warmup_s']:.2f} s"
    )
    write_results(
        args.out or DEFAULT_SCALE_OUT,
        "recommend-scale",
        {
            **files.settings,
            "shop": files.facts,
            "workspace": str(workspace),
            "inputs": str(files.catalog.parent),
            "n": args.n,
            "k": args.k,
            "serving": "separate process, mmap=True, one call at a time, one thread",
        },
        rows,
        targets=targets,
        build=build,
        serving=serving,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docs for the two modes.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    parser = argparse.ArgumentParser(description="Latency of recommend (demo or at scale).")
    parser.add_argument(
        "--workspace",
        type=Path,
        default=None,
        help=f"workspace (default {DEFAULT_WORKSPACE}; with --items index/bench-NxU)",
    )
    parser.add_argument("--n", type=int, default=500, help="timed queries per kind (default 500)")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads, demo mode (default: all)"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    scale_mode = parser.add_argument_group("scale mode")
    scale_mode.add_argument("--items", type=int, default=None, help="synthetic catalogue size")
    scale_mode.add_argument(
        "--users", type=int, default=None, help="shoppers (default 0.3 x items)"
    )
    scale_mode.add_argument("--categories", type=int, default=1000)
    scale_mode.add_argument("--vectors", choices=tuple(NOISE), default="words")
    scale_mode.add_argument(
        "--noise",
        type=float,
        default=None,
        help="noise around the anchors (default: words 0.5, anchored 1.0)",
    )
    scale_mode.add_argument("--seed", type=int, default=0)
    scale_mode.add_argument(
        "--no-build", action="store_true", help="serve the workspace an earlier run built"
    )
    parser.add_argument("--serve", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--serve-out", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--vectors-file", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.n <= 0:
        parser.error("--n must be positive")
    if args.items is not None and args.items < 2:
        parser.error("--items must be at least 2")
    if args.users is not None and args.users < 1:
        parser.error("--users must be positive")
    if args.categories < 1:
        parser.error("--categories must be positive")
    timed = args.items is not None or args.serve is not None
    logging.basicConfig(
        level=logging.INFO if timed else logging.WARNING,
        format=("%(asctime)s " if timed else "") + "%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.serve is not None:
        return serve(args)
    if args.items is not None:
        return scale(args)
    return demo(args)


if __name__ == "__main__":
    raise SystemExit(main())
