"""Serving latency: one-query cold-start ``recommend`` with the model already loaded.

Opens a workspace once (default ``index/demo``, built from the bundled data when it does
not exist yet), warms it up, then times ``Workspace.recommend(history=[query])`` for
``--n`` distinct real queries, one call at a time, as a script or service would make
them. Queries are bundled catalogue titles (short, search-like texts), each used once, so
no cached vector helps; the embedding cache is off while timing, as in a server that does
not write to disk per request.

In the same run it times the parts, so the table shows where a call's time goes and the
obvious floor it is compared against:

* ``encode``: ``SentenceTransformer.encode([query])`` on the same model (the floor: a
  recommend call cannot be cheaper than embedding its query);
* ``embedder``: the workspace's ``Embedder.encode([query])``;
* ``recommend``: the whole call (embed, score items and neighbours, rank, titles).

Run from the repository root::

    .venv/bin/python benchmarks/recommend.py             # 500 queries on index/demo
    .venv/bin/python benchmarks/recommend.py --workspace index/amazon2023

Prints a table (p50, p90, p99, mean in milliseconds) and writes JSON (default
``benchmarks/results/recommend.json``) with the machine's facts.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from machine import write_results

import profiler
from profiler.data import clothing_catalog, clothing_events

logger = logging.getLogger("benchmarks.recommend")

DEFAULT_WORKSPACE = Path("index") / "demo"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "recommend.json"


def latencies(call: Callable[[str], object], queries: list[str]) -> np.ndarray:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Latency of one-query cold-start recommend.")
    parser.add_argument("--workspace", type=Path, default=DEFAULT_WORKSPACE)
    parser.add_argument("--n", type=int, default=500, help="timed queries (default 500)")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = parser.parse_args(argv)
    if args.n <= 0:
        parser.error("--n must be positive")
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    if (args.workspace / "manifest.json").is_file():
        ws = profiler.open(args.workspace, device="cpu", show_progress_bar=False)
    else:
        logger.warning("building %s from the bundled data first", args.workspace)
        ws = profiler.build(
            args.workspace,
            catalog=clothing_catalog(),
            events=clothing_events(),
            device="cpu",
            show_progress_bar=False,
        )
    titles = pd.read_parquet(clothing_catalog(), columns=["title"])["title"]
    queries = titles[titles.str.strip() != ""].drop_duplicates().tolist()
    warmup, timed = queries[:20], queries[20 : 20 + args.n]
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
        args.out,
        "recommend",
        {
            "workspace": str(args.workspace),
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


if __name__ == "__main__":
    raise SystemExit(main())
