"""Where exact search gets too slow: single-thread queries/s of FAISS ``Flat`` by size.

Justifies :data:`profiler.vectors.ANN_THRESHOLD`: ``FaissIndex(factory="auto")`` keeps exact
``Flat`` search while it still answers at least ``--target`` (1,000) queries/s with one
thread in batches of ``--queries`` (1000) 384-d queries, k=10. Vectors are random unit
vectors: ``Flat`` search time depends only on the sizes, not on the data.

Run from the repository root::

    .venv/bin/python benchmarks/search_threshold.py
    .venv/bin/python benchmarks/search_threshold.py --sizes 50000,100000

Prints a table and writes JSON (default ``benchmarks/results/search_threshold.json``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np
from machine import write_results

from profiler.vectors import ANN_THRESHOLD, FaissIndex

DIM = 384
K = 10
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "search_threshold.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="50000,100000,150000,200000,300000",
        type=lambda text: [int(part) for part in text.split(",")],
    )
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--target", type=float, default=1000.0, help="queries/s to keep")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    queries = rng.standard_normal((args.queries, DIM), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    rows = []
    faiss.omp_set_num_threads(1)
    for size in args.sizes:
        vectors = rng.standard_normal((size, DIM), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        index = FaissIndex(DIM, factory="Flat")
        index.add([f"v{i}" for i in range(size)], vectors)
        best = np.inf
        for _ in range(args.repeats):
            start = time.perf_counter()
            index.search(queries, K)
            best = min(best, time.perf_counter() - start)
        rows.append({"size": size, "queries_per_second": args.queries / best})
        del index, vectors
    print(f"{'size':>9} {'Flat q/s (1 thread)':>20} {'>= target':>9}")
    for row in rows:
        ok = "yes" if row["queries_per_second"] >= args.target else "no"
        print(f"{row['size']:>9} {row['queries_per_second']:>20.1f} {ok:>9}")
    print(f"ANN_THRESHOLD in profiler.vectors: {ANN_THRESHOLD}")
    write_results(
        args.out,
        "search_threshold",
        {"dim": DIM, "k": K, "n_queries": args.queries, "target": args.target},
        rows,
        packages=("faiss-cpu", "numpy"),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
