"""Vector search: :class:`profiler.vectors.FaissIndex` against the numpy ``ExactIndex``.

For each database size (default 10k, 100k and 1M vectors of dim 384) it measures, for
both backends: the time to ``add`` all vectors with string ids, queries per second of one
batched ``search`` call over all queries (k=10), and recall@10 against the exact ground
truth (the ``ExactIndex`` result ids, so the exact backend scores 1.0 by definition).

The vectors are SYNTHETIC: this machine holds nowhere near 1M real embeddings, so the
database and the queries are drawn alike from a seeded mixture of 1000 Gaussian clusters
(random unit centres plus isotropic noise whose norm matches the centre's), L2-normalised
and float32, like sentence-transformer outputs. Queries are fresh draws from the same
mixture, never copies of database vectors. Recall on real embeddings may differ; timings
depend only on sizes for the exact ``Flat`` factory.

``ExactIndex.search`` materialises the full ``(queries, size)`` score matrix plus an int64
``argpartition`` of the same shape (16 bytes per cell: 16 GB for 1000 queries over 1M
vectors), so the exact side is fed queries in chunks that keep that under
``--exact-memory`` (4 GB by default); at 10k and 100k all queries still go in one call.
The chunk size is reported, and its queries/s is total queries over total time.

Run from the repository root (the 1M size needs about 8 GB of RAM and several minutes)::

    .venv/bin/python benchmarks/search.py
    .venv/bin/python benchmarks/search.py --sizes 10000 --queries 200   # quick check

Results are printed as a table and written as JSON (default
``benchmarks/results/search.json``) with the machine's facts.
"""

from __future__ import annotations

import argparse
import gc
import logging
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from machine import machine_facts

from profiler.storage import write_json
from profiler.vectors import ExactIndex, FaissIndex, SearchResult, VectorIndex

logger = logging.getLogger("benchmarks.search")

DIM = 384
K = 10
N_CLUSTERS = 1000
NOISE_NORM = 1.0  # noise as long as the centre: a point's cosine to its own centre is ~0.7
GENERATE_CHUNK = 100_000  # rows drawn at a time, to bound the float32 temporaries
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "search.json"


def clustered_vectors(n: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit float32 vectors, each a random centre plus Gaussian noise."""
    dim = centres.shape[1]
    sigma = np.float32(NOISE_NORM / np.sqrt(dim))
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, GENERATE_CHUNK):
        stop = min(start + GENERATE_CHUNK, n)
        block = rng.standard_normal((stop - start, dim), dtype=np.float32)
        block *= sigma
        block += centres[rng.integers(len(centres), size=stop - start)]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:stop] = block
    return out


def unit_centres(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((n, dim), dtype=np.float32)
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true top-k ids that ``found`` also returns."""
    hits = sum(len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist()))
    return hits / truth.size


def timed_search(
    index: VectorIndex, queries: np.ndarray, k: int, chunk: int
) -> tuple[float, SearchResult]:
    start = time.perf_counter()
    parts = [index.search(queries[i : i + chunk], k) for i in range(0, len(queries), chunk)]
    seconds = time.perf_counter() - start
    if len(parts) == 1:
        return seconds, parts[0]
    return seconds, SearchResult(
        np.concatenate([p.ids for p in parts]), np.concatenate([p.scores for p in parts])
    )


def bench_size(
    size: int,
    queries: np.ndarray,
    centres: np.ndarray,
    rng: np.random.Generator,
    factory: str,
    exact_memory: int,
) -> list[dict]:
    """Build both indexes over ``size`` fresh vectors, search, and return one row each."""
    start = time.perf_counter()
    vectors = clustered_vectors(size, centres, rng)
    ids = [f"v{i}" for i in range(size)]
    logger.info("size %d: generated in %.1f s", size, time.perf_counter() - start)

    # 16 bytes per score cell: float32 scores, their negation, the int64 argpartition.
    exact_chunk = int(max(1, min(len(queries), exact_memory // (16 * size))))
    backends: list[tuple[str, Callable[[], VectorIndex], int]] = [
        ("exact", lambda: ExactIndex(DIM), exact_chunk),
        (f"faiss:{factory}", lambda: FaissIndex(DIM, factory=factory), len(queries)),
    ]
    rows = []
    truth = None
    for name, make_index, chunk in backends:
        index = make_index()
        start = time.perf_counter()
        index.add(ids, vectors)
        add_seconds = time.perf_counter() - start
        search_seconds, result = timed_search(index, queries, K, chunk)
        logger.info(
            "size %d %s: add %.2f s, search %.2f s", size, name, add_seconds, search_seconds
        )
        if truth is None:
            truth = result.ids  # the exact backend runs first
        rows.append(
            {
                "size": size,
                "backend": name,
                "dim": DIM,
                "k": K,
                "n_queries": len(queries),
                "queries_per_call": chunk,
                "vector_bytes": int(vectors.nbytes),
                "add_seconds": add_seconds,
                "search_seconds": search_seconds,
                "queries_per_second": len(queries) / search_seconds,
                "recall_at_k": recall_at_k(result.ids, truth),
            }
        )
        del index, result  # free this index before the next one is built
        gc.collect()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    for row in rows:
        row["ratio_vs_exact"] = row["queries_per_second"] / rows[0]["queries_per_second"]
        row["process_peak_rss_bytes"] = peak_rss
    return rows


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'size':>9} {'backend':<12} {'vectors MB':>10} {'add s':>8} {'q/call':>6} "
        f"{'queries/s':>10} {'recall@10':>9} {'vs exact':>9}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['size']:>9} {row['backend']:<12} {row['vector_bytes'] / 1e6:>10.1f} "
            f"{row['add_seconds']:>8.3f} {row['queries_per_call']:>6} "
            f"{row['queries_per_second']:>10.1f} {row['recall_at_k']:>9.4f} "
            f"{row['ratio_vs_exact']:>8.2f}x"
        )
    return "\n".join(lines)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be comma-separated ints: {text!r}") from None
    if not sizes or min(sizes) < K:
        raise argparse.ArgumentTypeError(f"sizes must be at least k={K}: {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Queries/s and recall@10 of FaissIndex against ExactIndex on synthetic data."
    )
    parser.add_argument(
        "--sizes", type=_sizes, default=[10_000, 100_000, 1_000_000], help="database sizes"
    )
    parser.add_argument("--queries", type=int, default=1000, help="queries per size")
    parser.add_argument("--factory", default="Flat", help="FAISS factory string (default Flat)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--exact-memory",
        type=float,
        default=4.0,
        help="GB the exact backend's score matrices may take per call (default 4)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    args = parser.parse_args(argv)
    if args.queries <= 0:
        parser.error("--queries must be positive")
    if args.exact_memory <= 0:
        parser.error("--exact-memory must be positive")
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.verbose:
        logging.getLogger("benchmarks").setLevel(logging.INFO)

    centre_seed, query_seed, *size_seeds = np.random.SeedSequence(args.seed).spawn(
        2 + len(args.sizes)
    )
    centres = unit_centres(N_CLUSTERS, DIM, np.random.default_rng(centre_seed))
    queries = clustered_vectors(args.queries, centres, np.random.default_rng(query_seed))
    rows = []
    for size, seed in zip(args.sizes, size_seeds):
        rows += bench_size(
            size,
            queries,
            centres,
            np.random.default_rng(seed),
            args.factory,
            int(args.exact_memory * 1e9),
        )
        gc.collect()  # the size's vectors and ids go before the next size is drawn

    print(format_table(rows))
    write_json(
        args.out,
        {
            "benchmark": "search",
            "config": {
                "sizes": args.sizes,
                "dim": DIM,
                "k": K,
                "n_queries": args.queries,
                "factory": args.factory,
                "seed": args.seed,
                "exact_memory_bytes": int(args.exact_memory * 1e9),
                "data": {
                    "kind": "synthetic",
                    "description": (
                        f"{N_CLUSTERS} random unit centres; each vector is a centre plus "
                        f"isotropic Gaussian noise of expected norm {NOISE_NORM}, then "
                        "L2-normalised, float32. Queries are independent draws from the "
                        "same mixture, not database vectors."
                    ),
                    "n_clusters": N_CLUSTERS,
                    "noise_norm": NOISE_NORM,
                },
            },
            "machine": machine_facts(("torch", "faiss-cpu", "numpy")),
            "results": rows,
        },
    )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
